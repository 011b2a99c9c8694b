// utf8.h: strict UTF-8 checks shared by the deck, the JSON reader and generation.
//
// "Valid" is RFC 3629: shortest form only (no overlong encodings), no UTF-16
// surrogates (U+D800..U+DFFF), nothing above U+10FFFF. NUL is a valid code point
// here; callers that keep C strings refuse or replace it themselves.
#ifndef PARTITA_UTF8_H
#define PARTITA_UTF8_H

#include <stddef.h>

// Bytes of the valid sequence that starts s[0] (1..4), or 0 if none does (n > 0).
size_t utf8_seq_len(const char *s, size_t n);

// 1 if s[0..n) is valid UTF-8; otherwise 0 and, when bad_at is not NULL, the
// offset of the first byte that starts no valid sequence.
int utf8_valid(const char *s, size_t n, size_t *bad_at);

// Copies s[0..n) into out as valid UTF-8 without NUL bytes: each byte that starts
// no valid sequence, and each NUL, becomes U+FFFD (EF BF BD). out needs room for
// 3 n + 1 bytes; it is NUL-terminated. Returns the bytes written, not counting the NUL.
size_t utf8_clean(const char *s, size_t n, char *out);

#endif
