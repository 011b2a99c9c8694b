// offload.h: ZeRO-Infinity: the optimizer states (and, under ZeRO-3, the
// parameter shard) of one flat range of n floats owned by this rank, kept in
// a file on NVMe and streamed through a few staging buffers (src/aio.h).
//
// The unit of work is "one flat range [begin, begin + n) owned by this rank",
// so a ZeRO parameter group gets one Offload each.
//
// File layout (one file per rank and range: <nvme_dir>/<run>.rank<R>.g<G>.offload,
// created empty at start, reserved with fallocate, deleted at the end):
//   [ params (only with params = nvme) | exp_avg | exp_avg_sq ]
// each region the range's n floats in flat order, padded to the file's O_DIRECT
// alignment (region bytes = align_up(4 n, align)). Subgroup i covers floats
// [i G, min((i+1) G, n)) of every region (G = subgroup_mb, a multiple of the
// alignment), so its reads and writes are aligned.
//
// The update (offload_update), per subgroup i in order: the reads of i+1 are
// issued (once its staging buffer's write-back has finished), i's reads are
// waited for, AdamW runs on i (the same kernel calls, in the same order, as
// the in-memory update: bit-identical), and i's write-back is issued. With
// `buffers` >= 3 the read of i+1, the update of i and the write-back of i-1
// overlap; prefetch = false serialises them (for measurements).
//
// Parameters on NVMe (ZeRO-3): offload_param_fetch reads this rank's part of a
// unit (what it contributes to the unit's all-gather) and issues the read of the
// next unit in the direction of travel (forward: u+1, backward: u-1), so each
// rank reads only its own 1/N, ahead of the all-gather.
#ifndef PARTITA_OFFLOAD_H
#define PARTITA_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "aio.h"
#include "deck.h"
#include "model.h"
#include "optim.h"

enum { OFF_P, OFF_M, OFF_V, OFF_NARR };

typedef struct OffloadSlot {
    float *arr[OFF_NARR];       // (G) staging for params (params = nvme only), exp_avg, exp_avg_sq
    int sub;                    // subgroup it holds; -1 none
    uint64_t rd[OFF_NARR], wr[OFF_NARR];   // tickets in flight (0: none)
} OffloadSlot;

typedef struct Offload {
    int params_nvme;            // the parameter shard lives in the file too
    int prefetch;
    size_t begin, n;            // the flat range [begin, begin + n) this rank owns
    size_t G;                   // floats per subgroup
    int nsub, nbuf;
    uint64_t region;            // bytes per array region of the file
    Aio aio;
    AioFile file;
    OffloadSlot *slots;         // (nbuf)
    // params on NVMe: the units' owned parts and two bounce buffers (this unit, the next)
    int nunits;
    size_t *ulo, *uhi;          // (nunits) owned part [ulo, uhi) of each unit, flat indices
    float *bounce[2];
    size_t bounce_cap;          // bytes of each
    int bounce_unit[2];         // unit read into it (-1 none)
    uint64_t bounce_tk[2];
    int last_unit;              // the unit fetched last (for the direction of travel)
    // accounting
    size_t held_bytes;          // staging + bounce memory: what host_cap_mb caps
    double update_s;            // seconds of AdamW on offloaded subgroups
} Offload;

// Opens (creates, reserves) the file for the range [begin, begin + n) of this
// rank; a failure (no directory, no space for the reservation) is fatal, with
// the path, the bytes and a hint. group names the range in the file name.
void offload_create(Offload *o, const OffloadConfig *c, const char *run_name, int rank, int group, size_t begin,
                    size_t n, int params_nvme);
// Deletes the file.
void offload_free(Offload *o);

// Copies between memory and the file's region `which` (OFF_*), for the
// elements [begin, begin + n): start-up, checkpoints (pull/push). Blocking.
void offload_put(Offload *o, int which, const float *src);
void offload_get(Offload *o, int which, float *dst);
// Initial parameters (params = nvme): model_init_range one subgroup at a time.
void offload_init_params(Offload *o, const Model *m, uint64_t seed, double std);

// One AdamW step of the range (see the top): params in memory (NULL when they
// are on NVMe), grads the range's reduced gradients (scaled here by grad_scale).
void offload_update(Offload *o, const Model *m, Optim *opt, float *params, float *grads, double lr, float grad_scale);

// Params on NVMe: the owned parts of each unit ([ulo[u], uhi[u]), flat).
void offload_set_units(Offload *o, int nunits, const size_t *ulo, const size_t *uhi);
// Reads unit u's owned part into dst (uhi - ulo floats) and issues the next unit's read.
void offload_param_fetch(Offload *o, int u, float *dst);

// Bytes moved and seconds waited on I/O so far (this rank).
// `partita estimate`: per-rank bytes on NVMe and in memory, bytes per step, a
// predicted step time from measured disk and AdamW rates (estimate_offload.c).
void offload_estimate(const Config *c, const Model *m, int ranks);

uint64_t offload_read_bytes(const Offload *o);
uint64_t offload_write_bytes(const Offload *o);
double offload_io_wait(const Offload *o);

#endif
