// ckpt.h: parallel HDF5 checkpoints that survive crashes and reload at any layout.
//
// File <dir>/step-NNNNNN.h5: one global dataset per tensor, /params/<name>,
// /optim/exp_avg/<name>, /optim/exp_avg_sq/<name> (fp32, the tensor's shape),
// written collectively: each rank writes the slice of the flat layout its dp
// shard covers as up to three hyperslabs per tensor. /meta holds step,
// tokens_seen, data_cursor, seed, optim_t, the model shape, the resolved deck,
// the layout that wrote it and one checksum per dataset ("checksum:/params/..."):
// the sum mod 2^64 of mix64(i << 32 ^ bits(x_i)) over elements i, so ranks sum
// their parts in any order (analysis/inspect_ckpt.py recomputes it).
// A write goes to step-NNNNNN.h5.tmp, is flushed and synced, renamed, and only
// then does <dir>/latest name it; at most `keep` checkpoints are kept.
#ifndef PARTITA_CKPT_H
#define PARTITA_CKPT_H

#include <stdint.h>

#include "comm.h"
#include "deck.h"
#include "model.h"
#include "zero.h"

typedef struct CkptState {
    int64_t step;           // optimizer steps done
    double tokens_seen;
    int64_t data_cursor;    // the next step's index into the data order (= step)
    int64_t data_rows;      // global token rows consumed (the data cursor in rows); -1: not in the file
} CkptState;

// Collective over z's group. Writes the checkpoint of `st` into dir.
void ckpt_write(const Zero *z, const Deck *d, const char *deck_text, const char *dir, const CkptState *st);
// Collective. Loads path into z (any layout that wrote it) and st; fatal, naming
// the dataset, if it does not fit the deck's model or fails its checksum.
void ckpt_read(Zero *z, const Deck *d, const char *path, CkptState *st);
// Resolves [checkpoint] resume: "none" -> 0; "auto" -> the newest checkpoint in
// dir that opens and passes its checks (warning about newer ones that do not),
// or 0 if none; a path -> that path. Returns 1 with path filled to resume.
int ckpt_find_resume(const Deck *d, const char *dir, char *path, size_t n, int rank);

// `partita ckpt info FILE` and `partita ckpt export FILE OUT.h5` (one rank).
int ckpt_main(int argc, char **argv);

// The order-independent checksum of n floats that start at element `first` of a dataset.
uint64_t ckpt_checksum(const float *x, size_t n, uint64_t first);

#endif
