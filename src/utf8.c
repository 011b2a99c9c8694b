// utf8.c: strict UTF-8 (RFC 3629) validation and repair.
#include "utf8.h"

#include <string.h>

size_t utf8_seq_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0) return 0;
    unsigned c = u[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;           // no overlong 3-byte forms
        else if (c == 0xED) hi = 0x9F;      // no surrogates U+D800..U+DFFF
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;           // no overlong 4-byte forms
        else if (c == 0xF4) hi = 0x8F;      // nothing above U+10FFFF
    } else return 0;                        // 0x80..0xC1 (continuation, overlong), 0xF5..0xFF
    if (n < len || u[1] < lo || u[1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if ((u[k] & 0xC0) != 0x80) return 0;
    return len;
}

int utf8_valid(const char *s, size_t n, size_t *bad_at) {
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len(s + i, n - i);
        if (k == 0) {
            if (bad_at) *bad_at = i;
            return 0;
        }
        i += k;
    }
    return 1;
}

size_t utf8_clean(const char *s, size_t n, char *out) {
    char *o = out;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len(s + i, n - i);
        if (k == 0 || s[i] == '\0') {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(o, s + i, k);
            o += k;
            i += k;
        }
    }
    *o = '\0';
    return (size_t)(o - out);
}
