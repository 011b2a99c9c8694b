// stream.h: ZeRO-Inference: the layer matrices of an inference engine
// streamed from a staged weight file (stage.h) through a window of W layer
// slots, instead of held whole.
//
// The resident part (embeddings, every layer's vectors, ln_f, the LM head) is
// read once at open; each layer's four matrices pass through the window: when
// layer l is released its slot is refilled with the next layer not yet
// requested (l + W, wrapping into the next pass), so while layer l computes,
// layers l+1 .. l+W-1 are arriving. nvme: O_DIRECT reads through the one I/O
// engine (aio.h), io_depth 1 MiB requests in flight; host: the rank's layer
// segments held in host memory (mlock'ed where the limit allows) and copied
// into the slot. With tensor parallelism each rank reads only its own shard's
// segments (the file is cut for the run's tp by `partita stage --shards`).
// A segment's checksum is verified the first time this rank reads it.
#ifndef PARTITA_STREAM_H
#define PARTITA_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include <hdf5.h>

#include "deck.h"
#include "model.h"

typedef struct Stream Stream;

typedef struct StreamStats {
    uint64_t bytes_read;       // layer bytes this rank read (nvme) or copied (host)
    uint64_t bytes_per_pass;   // this rank's layer bytes: what one pass reads
    uint64_t passes;           // passes that ran the layers
    double pass_s;             // wall seconds inside the layers of those passes
    double stall_s;            // of which waiting for a layer to arrive
    uint64_t window_bytes;     // the slots' bytes (the window's bound)
    uint64_t resident_bytes;   // the resident segment's bytes
    int window, dtype, io_depth;
} StreamStats;

// Opens d's [generate] stage for rank tp_rank of tp_size, checks it against
// the whole model's table g (shape, tp = its shards, dtype = [generate]
// weights_dtype) and reads and verifies the resident segment. Every rank calls
// it; errors are fatal with the reason and a hint.
Stream *stream_open(const Deck *d, const Model *g, const Backend *bk, int tp_rank, int tp_size);
void stream_close(Stream *st);

// Whole tensor t of the whole model's table (a non-matrix tensor) as fp32,
// from the resident segment; NULL for a layer matrix (streamed).
const float *stream_resident(const Stream *st, int t);
// The resident tensors have been copied (the engine holds them): frees them.
void stream_resident_done(Stream *st);
// The file's weight dtype (WDT_*).
int stream_dtype(const Stream *st);

// Layer l's matrices are wanted now (blocks until they arrive) / are done with
// (its slot takes the next layer). Layers go in order 0..L-1, pass after pass.
void stream_acquire(Stream *st, int layer);
void stream_release(Stream *st, int layer);
// Matrix tensor t (inference table index) of the acquired layer, as held.
HeldMatrix stream_matrix(Stream *st, int t);

void stream_stats(const Stream *st, StreamStats *s);
// Prints the stream's figures (bytes read per pass, achieved read bandwidth,
// stall) and stores them as attributes of f (the generation file's summary).
void stream_report(const Stream *st, hid_t f);

#endif
