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
// segments held in host memory (pinned on a device backend, mlock'ed on cpu
// where the limit allows), used in place on cpu. With tensor parallelism each
// rank reads only its own shard's segments (a file cut for the run's tp by
// `partita stage --shards`), or 1/N of each whole layer (see stream_open).
// On a device backend each slot has a device slot: when layer l is released
// (its kernels queued), layer l+1 is made ready and copied host->device on the
// backend's copy stream, so the copy overlaps layer l's compute; layer l+1's
// kernels wait for the copy's event, the host does not.
// A segment's checksum is verified the first time this rank reads it.
#ifndef PARTITA_STREAM_H
#define PARTITA_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include <hdf5.h>

#include "comm.h"
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
    uint64_t device_window_bytes;  // device backends: the device slots' bytes
    uint64_t resident_bytes;   // the resident segment's bytes
    uint64_t resident_read;    // of which this rank read (1/N when shared)
    uint64_t share_bytes_sent; // sent by this rank in the share group's all-gathers
    int share_ranks;           // ranks reading each layer 1/N (1: every rank reads its own)
    int window, dtype, io_depth;
} StreamStats;

// Opens d's [generate] stage for this rank of the tensor-parallel group tp,
// checks it against the whole model's table g (shape, its shards = tp or 1,
// dtype = [generate] weights_dtype) and reads and verifies the resident
// segment. Every rank of tp calls it (collective); errors are fatal with the
// reason and a hint.
//
// Shared reading ([generate] stream_share, on by default): segments every rank
// of tp needs whole (the resident segment; each layer when the file holds
// whole layers, --shards 1, and tp > 1) are read 1/N by each of the N ranks
// and completed by an all-gather over a duplicate of tp (comm's "stream"
// group, counted), instead of each rank reading all. A whole-layer file at
// tp > 1 is then cut to the rank's slice in host memory (fp32, bf16).
Stream *stream_open(const Deck *d, const Model *g, const Backend *bk, const Comm *tp);
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
// The device arena a streamed engine needs: resident_arena (engine_arena_bytes,
// which counts every layer matrix in fp32) less the layer matrices, plus the
// window's device slots of this tp's slices in wdtype.
size_t stream_arena_bytes(const Model *g, int tp, int window, int wdtype, size_t resident_arena);
// Prints the stream's figures (bytes read per pass, achieved read bandwidth,
// stall) and stores them as attributes of f (the generation file's summary).
void stream_report(const Stream *st, hid_t f);

#endif
