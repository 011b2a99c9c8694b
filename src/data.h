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

#define DATA_MAX_SOURCES 16   // token files one run mixes
#define DATA_MIX_PERIOD 4096   // rows of one period of the mixing schedule (weights to 1/4096)

typedef struct Loader Loader;

// Data mixing: row g of the mixed stream is row k of source s, where
// s = sched[g mod P] and k = (g / P) * count[s] + nth[g mod P] (P = DATA_MIX_PERIOD):
// each period of P rows holds count[s] rows of source s (the weights, rounded by
// largest remainder; every source with a weight gets at least one row), spread
// through the period by smooth weighted round-robin. Row k of a source is served
// by the source's own loader (its own order; shuffled with its own seed). The
// stream depends on g alone: the same in every layout, resumable at any cursor.
typedef struct DataMix {
    int n;
    TokenFile files[DATA_MAX_SOURCES];
    Loader *src;                        // (n) one loader per source
    uint32_t count[DATA_MAX_SOURCES];   // rows of each source per period
    double weight[DATA_MAX_SOURCES];    // as given, normalised to sum 1
    uint8_t sched[DATA_MIX_PERIOD];     // source of each row of a period
    uint32_t nth[DATA_MIX_PERIOD];      // its index among that source's rows of the period
} DataMix;

struct Loader {
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
    DataMix *mix;               // non-NULL: rows come from several sources (data_open_mix)
    int mix_owns_files;         // loader_free closes the mix's token files (the train loader's)
};

// Serves rows of the tokens [begin, end) of f. Fatal if not one row fits.
void loader_create(Loader *ld, const TokenFile *f, uint64_t begin, uint64_t end, int B, int T,
                   int order, uint64_t seed, int64_t vocab);
void loader_free(Loader *ld);
// Sequence parallelism: loader_batch serves tokens [off, off + len) of each
// row's inputs and targets, (B, len) each.
void loader_set_slice(Loader *ld, int off, int len);
// Rows g0 .. g0+B-1 into inputs and targets, (B, T) each (or the slice).
void loader_batch(Loader *ld, uint64_t g0, int32_t *inputs, int32_t *targets);

// Splits "a.h5, b.h5" into at most max paths (spaces trimmed) in buf; returns
// how many, or -1 (too many, or an empty entry).
int data_split_list(const char *list, char buf[][512], int max);
// Data mixing over the token files of list (comma-separated) with weights ("" =
// equal; else one non-negative number per file, not all 0). Each file's tail of
// val_fraction (when val_fraction > 0) is held out, and val (when not NULL)
// serves those tails mixed by the same weights. Loaders created here own their
// files: loader_free closes them. Returns 0, or -1 with err (a bad weights list).
int data_open_mix(Loader *train, Loader *val, const char *list, const char *weights, double val_fraction, int B,
                  int T, int order, uint64_t seed, int64_t vocab, char *err, size_t n);

#endif
