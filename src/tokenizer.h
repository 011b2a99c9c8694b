// tokenizer.h: text <-> tokens.
//
// The byte-level tokenizer maps each byte to its value and adds one
// end-of-text token (256), so vocab_size is 257. GPT-2 BPE will be a second
// kind behind the same three calls.
#ifndef PARTITA_TOKENIZER_H
#define PARTITA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct Tokenizer {
    int kind;           // TOKENIZER_* of deck.h
    int vocab_size;
    int eot;            // end-of-text token, written between documents
    const char *name;   // stored as the token file's `tokenizer` attribute
} Tokenizer;

void tokenizer_init(Tokenizer *tk, int kind);
// Encodes n bytes of text into out (room for at least n tokens); returns the count.
size_t tokenizer_encode(const Tokenizer *tk, const uint8_t *text, size_t n, uint32_t *out);
// Decodes tokens to text (room for n bytes; EOT is dropped); returns the length.
size_t tokenizer_decode(const Tokenizer *tk, const uint32_t *tok, size_t n, char *out);

#endif
