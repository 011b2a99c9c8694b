// offload.h: ZeRO-Infinity and Deep Optimizer States: the optimizer states (and,
// under ZeRO-3, the parameter shard; with the moments on NVMe at ZeRO 2-3 on
// the cpu backend, the reduced gradients) of one flat range of n floats owned
// by this rank, kept in host memory or in a file on NVMe and streamed through
// a few staging buffers (src/aio.h).
//
// The unit of work is "one flat range [begin, begin + n) owned by this rank",
// so a ZeRO parameter group gets one Offload each.
//
// Tiers. The moments live in host memory (`host`: pinned, cuda only; on the
// cpu backend host memory is where they already are) or in the file (`nvme`).
// The parameters: on the device (none), pinned host memory (host, cuda) or the
// file (nvme); gradients: on the backend (in memory), or in the file (grads).
//
// File layout (one file per rank and range: <nvme_dir>/<run>.rank<R>.g<G>.offload,
// created empty at start, reserved with fallocate, deleted at the end):
//   [ params (params = nvme) | exp_avg | exp_avg_sq | grads (gradients on NVMe) ]
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
// Deep Optimizer States (cuda): subgroup i is updated on the GPU when
// dos_on_gpu(stride, i) (dos.h): its moments are copied host -> device into
// staging (the activations' memory, free between backward and the next
// forward, when it is large enough), updated by the device AdamW, and copied
// back, asynchronously on the backend's copy stream; the other subgroups'
// gradients and parameters are copied device -> host, updated by the host
// AdamW (kernels/cpu/adamw.c, OpenMP + SIMD) and the parameters copied back.
// The GPU subgroups' copies and kernels run while the host updates the next
// CPU subgroups. The stride comes from measured rates (offload_dos_plan).
//
// Parameters off the device (ZeRO-3): offload_param_fetch copies this rank's
// part of a unit (what it contributes to the unit's all-gather) from host
// memory, or reads it from the file and issues the read of the next unit in
// the direction of travel (forward: u+1, backward: u-1), so each rank reads
// only its own 1/N, ahead of the all-gather.
//
// Gradients on NVMe (offload_grad_put): the reduced gradients of each bucket,
// which arrive in descending flat order (backward order), are accumulated
// over micro-steps in the file's grads region, written in aligned spans: a
// bucket [lo, hi) writes [align_up(lo), align_up(hi)), the floats
// [hi, align_up(hi)) coming from the bucket above (kept in memory, less than a
// block) and [lo, align_up(lo)) kept for the bucket below. After the last
// micro-step the 1/ranks scale is applied before the write, and sumsq's chunk
// partials (kernels.h) are taken as chunks complete, so the norm has the bits
// of sumsq over the whole shard.
#ifndef PARTITA_OFFLOAD_H
#define PARTITA_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "aio.h"
#include "backend.h"
#include "deck.h"
#include "dos.h"
#include "model.h"
#include "optim.h"

enum { OFF_P, OFF_M, OFF_V, OFF_G, OFF_NARR };

typedef struct OffloadSlot {
    float *arr[OFF_NARR];       // (G) host staging (pinned on cuda), NULL where the array does not move
    int sub;                    // subgroup it holds; -1 none
    uint64_t rd[OFF_NARR], wr[OFF_NARR];   // file tickets in flight (0: none)
    void *ev;                   // cuda: this slot's device copies done (NULL on cpu)
    int gpu_pending;            // cuda: a GPU update whose moments are on their way back
    int dirty;                  // updated, not yet written back
} OffloadSlot;

typedef struct Offload {
    const Backend *bk;          // the run's backend (device memory on cuda)
    int device;                 // bk->device_memory
    int tier;                   // OFFLOAD_HOST or OFFLOAD_NVME: where the moments live
    int params_tier;            // OFFLOAD_NONE (with the backend), _HOST, _NVME
    int grads_nvme;             // reduced gradients in the file (cpu backend, ZeRO 2-3)
    int prefetch;
    size_t begin, n;            // the flat range [begin, begin + n) this rank owns
    size_t G;                   // floats per subgroup
    int nsub, nbuf;
    int in_file[OFF_NARR];      // arrays with a region in the file
    uint64_t roff[OFF_NARR];    // byte offset of each region
    uint64_t region;            // bytes per array region of the file
    Aio aio;
    AioFile file;               // tier nvme only (file.fd > 0)
    OffloadSlot *slots;         // (nbuf)
    float *hm, *hv, *hp;        // host tier (cuda): moments, and params = host, of the range (pinned)
    // params off the device: the units' owned parts and two bounce buffers (this unit, the next)
    int nunits;
    size_t *ulo, *uhi;          // (nunits) owned part [ulo, uhi) of each unit, flat indices
    float *bounce[2];
    size_t bounce_cap;          // bytes of each
    int bounce_unit[2];         // unit read into it (-1 none)
    uint64_t bounce_tk[2];
    int last_unit;              // the unit fetched last (for the direction of travel)
    // gradients on NVMe
    float *gacc[2];             // accumulation/write buffers of a bucket's part (alternating)
    uint64_t gacc_tk[2];
    size_t gacc_cap;            // floats of each
    int gacc_next;
    float *gcarry;              // floats [carry_lo, align_up(carry_lo)) for the bucket below
    size_t carry_lo;
    size_t gchunk;              // sumsq_chunk_size(n)
    double *gpart;              // (n / gchunk + 1) chunk partials of the step's sum of squares
    float *gck;                 // (gchunk) the chunk being assembled across buckets
    // Deep Optimizer States (cuda)
    int stride;                 // subgroup i on the GPU when dos_on_gpu(stride, i)
    DosRates rates;             // measured at start
    double predicted_s, cpu_only_s;   // the model's update time at stride, and all on the CPU
    float *dm[2], *dv[2];       // (G) device staging of moments, two sets
    int dset;
    void *fence;                // cuda: the copy stream's last copy
    // accounting
    size_t held_bytes;          // staging + bounce memory: what host_cap_mb caps
    double update_s;            // seconds of AdamW on offloaded subgroups
    uint64_t host_bytes_moved;  // cuda: bytes copied host <-> device by the update
} Offload;

// Sets up the range [begin, begin + n) of this rank: moments on `c->optimizer`
// (host tier: pinned memory, cuda only), parameters on params_tier, gradients
// in the file when grads_nvme. The file (tier nvme) is created and reserved; a
// failure (no directory, no space) is fatal, with the path, the bytes and a
// hint. group names the range in the file name.
void offload_create(Offload *o, const OffloadConfig *c, const Backend *bk, const char *run_name, int rank, int group,
                    size_t begin, size_t n, int params_tier, int grads_nvme);
// Deletes the file, frees the buffers.
void offload_free(Offload *o);

// Copies between memory (host) and array `which` (OFF_P/M/V) of the tier, for
// the elements [begin, begin + n): start-up, checkpoints (pull/push). Blocking.
void offload_put(Offload *o, int which, const float *src);
void offload_get(Offload *o, int which, float *dst);
// Initial parameters (params off the device): model_init_range one subgroup at a time.
void offload_init_params(Offload *o, const Model *m, uint64_t seed, double std);

// cuda: measures the rates Deep Optimizer States needs (host<->device
// bandwidth each way, host and device AdamW rates, the host's slowdown while
// copies run), chooses the stride (stride >= 0: that one; -1: dos_choose; 0
// when dos is off or the parameters are off the device), and takes its device
// staging from the model's activations when they hold it (else from the
// backend). A no-op on cpu.
void offload_dos_plan(Offload *o, const Model *m, int dos, int stride);
// Device bytes offload_dos_plan takes when the activations are too small
// (for the arena), for a range of `own` floats.
size_t offload_device_bytes(const OffloadConfig *c, size_t own);

// One AdamW step of the range (see the top): params the range's parameters on
// the backend (NULL when they are off it), grads the range's reduced gradients
// on the backend (NULL when they are in the file; scaled here by grad_scale).
void offload_update(Offload *o, const Model *m, Optim *opt, float *params, float *grads, double lr, float grad_scale);

// Params off the device: the owned parts of each unit ([ulo[u], uhi[u]), flat).
void offload_set_units(Offload *o, int nunits, const size_t *ulo, const size_t *uhi);
// Copies unit u's owned part to dst (backend memory, uhi - ulo floats) and
// issues the next unit's read.
void offload_param_fetch(Offload *o, int u, float *dst);

// Gradients on NVMe: buffers for bucket parts of up to max_part floats.
void offload_grad_buffers(Offload *o, size_t max_part);
// The reduced part [lo, hi) (relative to begin) of one bucket: added to the
// micro-steps before it (first: there are none), scaled by `scale` (!= 1) and
// summed into the norm after the last, written. Parts come in descending order.
void offload_grad_put(Offload *o, size_t lo, size_t hi, const float *part, int first, int last, float scale);
// After the last part of the step: waits for the writes, returns the sum of
// squares (the bits of sumsq over the whole range).
double offload_grad_sumsq(Offload *o);

// `partita estimate`: per-rank bytes on NVMe and in memory, bytes per step, a
// predicted step time from measured disk and AdamW rates (estimate_offload.c).
void offload_estimate(const Config *c, const Model *m, int ranks);

// Bytes moved and seconds waited on I/O so far (this rank).
uint64_t offload_read_bytes(const Offload *o);
uint64_t offload_write_bytes(const Offload *o);
double offload_io_wait(const Offload *o);

#endif
