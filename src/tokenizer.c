// tokenizer.c: the byte-level tokenizer.
#include "tokenizer.h"
#include "deck.h"

void tokenizer_init(Tokenizer *tk, int kind) {
    // Only TOKENIZER_BYTE exists; the deck refuses any other name.
    (void)kind;
    *tk = (Tokenizer){.kind = TOKENIZER_BYTE, .vocab_size = 257, .eot = 256, .name = "byte"};
}

size_t tokenizer_encode(const Tokenizer *tk, const uint8_t *text, size_t n, uint32_t *out) {
    (void)tk;
    for (size_t i = 0; i < n; i++) out[i] = text[i];
    return n;
}

size_t tokenizer_decode(const Tokenizer *tk, const uint32_t *tok, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if ((int)tok[i] != tk->eot && tok[i] < 256) out[k++] = (char)tok[i];
    return k;
}
