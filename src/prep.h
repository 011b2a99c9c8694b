// prep.h: `partita prep`: text files -> an HDF5 token file.
#ifndef PARTITA_PREP_H
#define PARTITA_PREP_H

#include <stddef.h>
#include <stdint.h>

// argv: [--tokenizer byte|gpt2] [--tokenizer-dir DIR] OUT.h5 PATH... (files, or
// directories read recursively in name order). Each file is one document (a
// .jsonl file: each line's "text"), followed by the end-of-text token. /tokens
// records vocab_size, eot, tokenizer (its name), tokenizer_hash (which
// vocabulary and merges) and documents. Collective over MPI_COMM_WORLD (the
// same file whatever the rank count). Returns the exit code.
int prep_main(int argc, char **argv);

// Whether the token file at path was made by the deck's tokenizer (kind,
// loaded from dir for gpt2, to compare its vocabulary hash) and fits a model
// of model_vocab tokens. A file without a tokenizer attribute (made outside
// prep) passes. Returns 0, or -1 with why naming the file, both tokenizers
// (or vocabularies) and what to do.
int prep_check_tokens(const char *path, int kind, const char *dir, int64_t model_vocab, char *why, size_t n);

#endif
