// data.h: token files and the micro-batch loader.
//
// A token file is HDF5 with a 1-D /tokens dataset (uint16 or uint32) and the
// attributes vocab_size, tokenizer and eot. The loader cuts a token range into
// rows of T+1 tokens (inputs are the first T, targets the last T) and serves
// rows by a global row index g:
//   order = sequential: row g is tokens [(g mod R)(T+1), (g mod R + 1)(T+1)) of the range
//   order = shuffled:   row g is row perm_e(g mod R), perm_e a seeded permutation
//                       of the R rows drawn afresh for each epoch e = g / R.
// The trainer asks rank r of dp for micro-step a of step s for the B rows
// starting at g = ((s * grad_accum + a) * dp + r) * B, so that the rows of a
// step are the same whatever the layout (dp, micro_batch, grad_accum).
#ifndef PARTITA_DATA_H
#define PARTITA_DATA_H

#include <hdf5.h>
#include <stdint.h>

typedef struct TokenFile {
    char path[512];
    hid_t file, dset;
    uint64_t ntok;
    int64_t vocab_size, eot;
    char tokenizer[64];
} TokenFile;

void tokenfile_open(TokenFile *f, const char *path);
void tokenfile_close(TokenFile *f);

typedef struct Loader {
    const TokenFile *f;
    uint64_t begin;         // first token of the range
    uint64_t rows;          // R, rows of T+1 tokens in the range
    int B, T;
    int order;              // ORDER_*
    uint64_t seed;
    int64_t vocab;          // model vocabulary: every token must be below it
    uint32_t *perm;         // (rows) permutation of the current epoch (shuffled only)
    int64_t perm_epoch;
    uint32_t *row;          // (T+1) read buffer
    int slice_off, slice_len;   // serve tokens [off, off+len) of each row (sequence parallelism); 0, T
} Loader;

// Serves rows of the tokens [begin, end) of f. Fatal if not one row fits.
void loader_create(Loader *ld, const TokenFile *f, uint64_t begin, uint64_t end, int B, int T,
                   int order, uint64_t seed, int64_t vocab);
void loader_free(Loader *ld);
// Sequence parallelism: loader_batch serves tokens [off, off + len) of each
// row's inputs and targets, (B, len) each.
void loader_set_slice(Loader *ld, int off, int len);
// Rows g0 .. g0+B-1 into inputs and targets, (B, T) each (or the slice).
void loader_batch(Loader *ld, uint64_t g0, int32_t *inputs, int32_t *targets);

#endif
