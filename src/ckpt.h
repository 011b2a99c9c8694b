// ckpt.h: parallel HDF5 checkpoints that survive crashes and reload at any layout.
//
// File <dir>/step-NNNNNN.h5: one global dataset per tensor, /params/<name>,
// /optim/exp_avg/<name>, /optim/exp_avg_sq/<name> (fp32, the tensor's shape).
// Format 3: the datasets are contiguous, allocated when the file is created
// (collectively, in flat order, the large ones aligned to the file system's
// block), and their bytes move at the datasets' offsets (ckpt_io.h: O_DIRECT
// for the block-aligned interior of each tensor part, pwrite/pread for its
// ends): each rank writes its dp shard of the flat layout and reads only its
// shard (at ZeRO 1-2 the parameters are then all-gathered; stage 0 reads what
// it holds, every state whole); HDF5 writes only metadata. /meta also
// holds `index` ("name offset numel" per tensor: the flat layout). Formats 1-2
// (HDF5 hyperslab writes) read the same way. /meta holds step,
// tokens_seen, data_cursor, seed, optim_t, the model shape, the resolved deck,
// the layout that wrote it, format_version and one checksum per dataset
// ("checksum:/params/..."): the sum mod 2^64 of mix64(i << 32 ^ bits(x_i))
// over elements i, so ranks sum their parts in any order.
//
// Format 2 adds meta_checksum: FNV-1a 64 over every other attribute of /meta
// in byte order of their names, each as u64le(len(name)) name tag
// u64le(len(value)) value, tag 'i' (signed integer, value int64 LE), 'u'
// (unsigned integer, uint64 LE), 'f' (float, float64 LE) or 's' (string, its
// bytes). Any edited, added or removed attribute (an edited step, a per-dataset
// checksum) fails it. Format 1 files (no format_version, no meta_checksum) are
// still read, with a warning that /meta is not verified.
// analysis/inspect_ckpt.py recomputes both kinds of checksum.
//
// A write goes to step-NNNNNN.h5.tmp, is flushed and synced, renamed, and only
// then does <dir>/latest name it. Pruning keeps the newest `keep` checkpoints
// this job wrote and deletes only those (never a checkpoint of an earlier job)
// and leftovers step-*.h5.tmp of crashed writes. Reads and writes run under a
// watchdog: one that does not finish within [comm] timeout_s ends the job with
// a message naming the file and the rank (watchdog.h).
#ifndef PARTITA_CKPT_H
#define PARTITA_CKPT_H

#include <stddef.h>
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
    double open_s, read_s, rest_s;  // a load's phases on this rank: opening and checking /meta; reading
                                    // and checksumming the states (and agreeing on the sums); the rest
    uint64_t read_bytes;    // the states' bytes this rank read
    uint64_t inplace_bytes; //   ... of which by O_DIRECT straight into the state buffers (no bounce, no copy)
} CkptState;

// The checkpoints this job wrote that are still on disk (oldest first): the
// only ones pruning may delete. Zero-initialised = none; the trainer holds one.
typedef struct CkptJob {
    int64_t *steps;
    size_t n, cap;
    struct CkptPending *pending;    // the checkpoint being written (async: in the background)
    double layout_s, data_s, publish_s;     // the last write's phases on this rank: laying out the
                                            // file, the states (async: the host copy), /meta + rename
    uint64_t direct_bytes, buffered_bytes;  // the last finished write's bytes on this rank: by
                                            // O_DIRECT, through the page cache (ckpt_io.h)
} CkptJob;
void ckpt_job_free(CkptJob *j);
// The share of this rank's last finished write that bypassed the page cache (0-1).
double ckpt_direct_share(const CkptJob *job);

// Collective over z's group. Writes the checkpoint of `st` into dir, records
// it in job and prunes job's older ones beyond [checkpoint] keep. With
// [checkpoint] async it first finishes the previous one (ckpt_flush), lays the
// file out, copies this rank's states to a host buffer and returns while a
// writer thread writes them; ckpt_poll or ckpt_flush publishes it. z, d and
// deck_text must outlive the write.
void ckpt_write(CkptJob *job, const Zero *z, const Deck *d, const char *deck_text, const char *dir,
                const CkptState *st);
// Collective: publishes the asynchronous checkpoint in flight if every rank's
// writer is done (one tiny all-reduce while one is in flight; nothing otherwise).
void ckpt_poll(CkptJob *job);
// Collective: waits for the asynchronous checkpoint in flight, then publishes it.
void ckpt_flush(CkptJob *job);
// Collective. Loads path into z (any layout that wrote it) and st. Returns 0,
// or -1 with why filled (the same on every rank) when the file is damaged: it
// cannot be opened, /meta fails its checksum or an attribute is out of range,
// a dataset is missing, misshapen, unreadable or fails its checksum. Fatal,
// naming the attribute and the deck key, when it is whole but written for
// another model.
int ckpt_load(Zero *z, const Deck *d, const char *path, CkptState *st, char *why, size_t n);
// Collective. Resolves [checkpoint] resume and loads: "none" -> 0; a path ->
// that file (fatal if damaged); "auto" -> the file <dir>/latest names, else
// (missing or damaged: a warning names it and why) the newest step-*.h5 in dir
// that loads whole; 0 if dir holds none, fatal if it holds some and none loads.
// Returns 1 with path (n bytes) filled when it resumed.
int ckpt_resume(Zero *z, const Deck *d, const char *dir, CkptState *st, char *path, size_t n);

// `partita ckpt info FILE` and `partita ckpt export FILE OUT.h5` (one rank).
int ckpt_main(int argc, char **argv);

// The order-independent checksum of n floats that start at element `first` of a dataset.
uint64_t ckpt_checksum(const float *x, size_t n, uint64_t first);

#endif
