// tokenizer.h: text <-> tokens.
//
// Two kinds behind the same calls:
//   byte  each byte is its own token and one end-of-text token (256) follows, so
//         vocab_size is 257; nothing to load (tokenizer_init).
//   gpt2  GPT-2's byte-level BPE from encoder.json + vocab.bpe (or the Hugging
//         Face names vocab.json + merges.txt) in a directory (tokenizer_open):
//         GPT-2's pre-tokenisation pattern with Unicode letter/number classes,
//         merges by rank, <|endoftext|> (50256) between documents. The text
//         "<|endoftext|>" inside a document is ordinary text (as in the
//         gpt-3-encoder JavaScript and tiktoken's default), never token 50256.
// Encoding keeps a bounded word cache inside the tokenizer: one Tokenizer per
// thread. Every size read from the files is bounded (TOK_MAX_*); a bad file is
// refused with the file, line or byte offset and the reason.
#ifndef PARTITA_TOKENIZER_H
#define PARTITA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum {
    TOK_MAX_VOCAB = 1 << 20,            // entries of encoder.json
    TOK_MAX_TOKEN_BYTES = 256,          // bytes of one token
    TOK_MAX_FILE = 64 << 20,            // bytes of encoder.json or vocab.bpe
};

typedef struct Bpe Bpe;

typedef struct Tokenizer {
    int kind;           // TOKENIZER_* of deck.h
    int vocab_size;
    int eot;            // end-of-text token, written between documents
    const char *name;   // stored as the token file's `tokenizer` attribute
    char hash[40];      // "fnv1a64:<16 hex>" of the vocabulary and merges (byte: "byte")
    int max_token_bytes;// the most bytes one token decodes to
    Bpe *bpe;           // gpt2 only
} Tokenizer;

// The byte tokenizer (kind TOKENIZER_BYTE; any other kind is fatal: use tokenizer_open).
void tokenizer_init(Tokenizer *tk, int kind);
// Any kind: gpt2 loads from dir (ignored for byte). Returns 0, or -1 with why
// naming the file and the reason (the tokenizer then holds nothing).
int tokenizer_open(Tokenizer *tk, int kind, const char *dir, char *why, size_t n);
void tokenizer_free(Tokenizer *tk);

// Encodes n bytes of text into out (room for at least n tokens); returns the
// count. Any bytes are accepted: a byte that starts no valid UTF-8 sequence
// counts as a punctuation character, so decode(encode(x)) == x for every x.
size_t tokenizer_encode(const Tokenizer *tk, const uint8_t *text, size_t n, uint32_t *out);
// Decodes tokens to text (room for n * max_token_bytes bytes; EOT and ids
// outside the vocabulary are dropped); returns the length.
size_t tokenizer_decode(const Tokenizer *tk, const uint32_t *tok, size_t n, char *out);

// Streaming decode for generate/serve: one token at a time, holding back the
// bytes of a UTF-8 sequence the token leaves incomplete, so that every piece
// written is whole characters (a byte that can start no valid sequence is
// passed through for the caller to clean). out: room for max_token_bytes + 4.
typedef struct TokStream {
    uint8_t held[4];
    int nheld;
} TokStream;
size_t tokenizer_decode_step(const Tokenizer *tk, TokStream *st, uint32_t tok, char *out);
// The held bytes (an incomplete sequence at the end of the output); out: room for 4.
size_t tokenizer_decode_flush(TokStream *st, char *out);

#endif
