// zero.h: ZeRO stages 0-3 over the data-parallel group.
//
// The flat parameter layout is cut into p equal shards of S = ceil(N/p)
// elements; rank r owns [r S, min((r+1) S, N)).
//   stage 0: every rank holds everything; gradients are all-reduced.
//   stage 1: AdamW moments sharded; gradients reduce-scattered after the last
//            micro-step, each rank updates its shard, parameters all-gathered.
//   stage 2: gradients sharded too: each bucket of finished units is
//            reduce-scattered during backward into the owner's shard.
//   stage 3: parameters sharded too: each unit (embeddings, a layer, ln_f) is
//            all-gathered just before its forward and again before its
//            backward, freed after, and the next unit's gather is issued while
//            the current one computes.
// Buckets group whole units (in backward order) up to [zero] bucket_mb; the
// embeddings are their own bucket, since the tied wte gathers gradients both
// first (LM head) and last (encoder) in backward. Collectives are issued
// non-blocking and waited on only when their buffer is needed again
// ([zero] overlap = false waits at once, to measure what overlap hides).
#ifndef PARTITA_ZERO_H
#define PARTITA_ZERO_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "deck.h"
#include "model.h"
#include "optim.h"

typedef struct ZeroBucket {
    int u_lo, u_hi;         // units u_lo..u_hi
    size_t begin, end;      // flat range
    int ready;              // units finished this micro-step
    float *staging;         // stage 2/3: where its gradients accumulate this micro-step
    int slot;               // staging slot in use, -1 none
    int pending;            // launched, not yet folded into the shard
    CommReq req;
} ZeroBucket;

typedef struct ZeroSlot {   // stage 3: a working buffer for one unit's gathered parameters
    float *buf;
    size_t cap;
    int unit;               // -1: empty
    int held;
    CommReq req;
} ZeroSlot;

enum { ZSLOT_LAYER_A, ZSLOT_LAYER_B, ZSLOT_EMBED, ZSLOT_FINAL, ZSLOT_N };

typedef struct Zero {
    int stage, overlap, prefetch;
    Comm *comm;
    const Model *m;
    int p, r;
    size_t N, S, own_begin, own_end;
    float *params;          // stage 0-2: (N) full; stage 3: (own) shard
    float *grads;           // stage 0-1: (N) full working gradients
    float *gshard;          // stage 1-3: (own) reduced gradients
    float *recv;            // stage 1-3: (own) reduce-scatter landing area
    Optim optim;            // over the owned range (all of it at stage 0)
    ZeroSlot slots[ZSLOT_N];
    float *gring[2];        // stage 2-3: staging ring for layer buckets
    int gring_bucket[2];
    int gring_next;
    float *gembed;          // stage 2-3: staging for the embeddings bucket
    int nbuckets;
    ZeroBucket *buckets;
    int *bucket_of;         // (nunits)
    int first_micro, last_micro;
    float *gland[3];        // gradients on NVMe: landing of the two layer staging slots and the embeddings
    size_t *counts;         // (p) scratch
    float *host_params;     // host copies of params and moments for checkpoints: the buffers
    float *host_m, *host_v; //   themselves on cpu, filled by zero_pull_states on cuda
    size_t state_bytes;     // resident model states: parameters, gradients, moments
    size_t working_bytes;   // gather slots and gradient staging
    ParamStore store;
    struct Offload *off;    // offload.h: the owned range's moments (and stage-3 shard) on NVMe; NULL: in memory
} Zero;

// What a layout costs one rank, computed without allocating: the numbers
// `partita estimate` prints and zero_create checks its allocations against.
typedef struct ZeroPlan {
    size_t params, grads, optim;    // resident model-state bytes
    size_t working;                 // gather slots, gradient staging, landing buffers
    size_t mpi_temp;                // what MPI allocates inside a reduction (not ours; planned)
    double sent[COMM_NOPS];         // bytes this rank sends per optimizer step (no evaluation)
} ZeroPlan;

void zero_plan(const Model *m, const ZeroConfig *zc, int p, int r, int accum, ZeroPlan *plan);

void zero_create(Zero *z, const ZeroConfig *zc, Comm *comm, const Model *m, const OptimConfig *oc,
                 int64_t steps);
void zero_free(Zero *z);
// Hands the owned range's optimizer states (and, with params = nvme, the
// stage-3 parameter shard) to an Offload made for [own_begin, own_end): their
// memory is released; host_* hold them only between zero_pull_states and the
// next step (checkpoints), and between a resume's read and zero_push_states.
// Call before zero_init_weights.
void zero_attach_offload(Zero *z, struct Offload *off);
// Offloaded: makes sure host_* exist (allocated, untouched until a checkpoint
// is read into them) before ckpt_resume; a no-op otherwise.
void zero_host_buffers(Zero *z);
// Initial weights (model_init_range over what this rank holds).
void zero_init_weights(Zero *z, uint64_t seed, double std);
// Copies parameters and moments backend -> host_* (before a checkpoint is
// written) and host_* -> backend (after one is read); no-ops on cpu.
void zero_pull_states(Zero *z);
void zero_push_states(Zero *z);

void zero_begin_step(Zero *z, int64_t step);
void zero_begin_micro(Zero *z, int micro, int accum);
// After the last micro-step: completes every reduction, averages over ranks,
// returns the global gradient norm.
double zero_reduce_grads(Zero *z);
// AdamW on the owned shard (gradients scaled by grad_scale), then (stages 1-2)
// all-gathers the updated parameters.
void zero_step(Zero *z, double lr, float grad_scale);

// The parameter/gradient store the model computes through.
const ParamStore *zero_store(Zero *z);
// Shard bounds of rank k for the flat range [b, e).
void zero_part(const Zero *z, int k, size_t b, size_t e, size_t *pb, size_t *pe);

#endif
