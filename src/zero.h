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
//
// Node-shared parameters ([zero] node_shared, on by default): at stages 1-3
// on the cpu backend with one parameter group, no parameter offload, and every
// rank on one node, the shards live back to back in one MPI-3 shared window
// (comm_shared_alloc), which every rank reads in place as the whole flat
// layout. Each rank still updates only its own shard; nothing is gathered (the
// gathers' copies were CPU work that took the very cores the ranks compute
// on), and two barriers a step (zero_step's start and end) keep reads and
// updates apart. Stages 1-2 then hold one shard of the parameters per rank
// too, stage 3 no gather slots. Reductions are unchanged (unless fused,
// below), and the losses are bit-identical with the window off
// (tests/test_zero.py).
//
// Fused gradients ([zero] fused_grads, on by default where it applies):
// stages 2-3 with node-shared parameters on exactly two ranks (one group,
// gradients in memory, the embeddings taken early). The gradient shards too
// live back to back in a node-shared window (gsh): the whole flat gradient
// layout, each rank's part its shard. The weight gradients of the matrix
// products (wte's LM head and each dense layer's four matrices:
// model_dweight_tensor), nearly every float of the model, are not
// reduce-scattered at all: each rank's product writes half of the tensor's
// rows, then, once the other rank's flag says its half is there, adds its
// contribution to the other half (kernels.h matmul_dweight_rows, beta 1).
// Rank 0 writes rows [0, ceil(rows/2)) first, rank 1 the rest, so the two
// halves of a pair are written concurrently and the sum's order is fixed
// (the losses are deterministic, and equal the reduce-scatter's within
// rounding: fl(a + b) taken block by block of the product's inner
// dimension). The sum thus rides inside the products, which are bound by
// arithmetic, not memory: the reduce-scatter's copies and sums (CPU work on
// the cores that compute, which no overlap can hide when every core
// computes) are gone. A rank that comes to its second half before the other
// rank's first is there does not wait: it postpones that product (a copy of
// dout in a ring of two layers' worth; inp, an activation, stays) and runs
// the postponed ones oldest first once their rows are there, at the latest
// before the bucket's finish (with overlap on, when the bucket two later is
// staged; off, at once) or the encoder's rows; so one rank's stall costs the
// other nothing for up to two buckets (with activation recomputation, whose
// inputs do not stay, and where the ring is full, it waits as before). Flags (fsh,
// lock-free 64-bit C11 atomics, asserted at compile time:
// per rank and tensor, "first half written"
// and "both written"; per rank, "encoder rows folded"; each the micro-step's
// generation) order the writes; a wait on one counts as communication and is
// bounded by [comm] timeout_s. The other tensors (biases, LayerNorms: a few
// KB a layer; a MoE layer's experts at ep = 1, whole) are packed per bucket
// and all-reduced, and the encoder's rows exchanged as before; each rank adds
// what falls in its shard. A rank's wte part 0 waits for the other's fold of
// the previous micro-step's rows, which with overlap on comes only at the
// next micro-step's start. The shard is read by the norm and the update only
// after the other rank's "both written" flags of every tensor with elements
// in it, and no rank writes the next step's gradients before the update's
// barrier (zero_step) or, on a step skipped for a non-finite norm, the norm's
// all-reduce, which follows every rank's reads.
//
// The embeddings' gradient, early (every stage, ZeroConfig.tokens set: the
// trainer does on cpu): where every rank's token rows are few next to the
// vocabulary (p B T <= Vp), the embeddings' bucket is reduced as soon as the
// LM head has added its part of the tied wte's gradient, overlapping the whole
// backward, instead of the vocabulary-sized reduction waiting for the last
// layer; the encoder's sparse rows follow at the end by a small all-gather
// (p B T (C + 1) floats), each rank adding those in its range (its shard, or
// all at stage 0) after the reduction, row by row (ParamStore.embed_early /
// embed_rows). Stages 0-1 reduce once a step, so only their last micro-step
// takes this path.
//
// The step's first reduction of each bucket lands in the gradient shard
// itself (stage 1's only one, stages 2-3's first micro-step): no fold, and
// the shard is never zeroed.
//
// Parameter groups: the flat layout is one or more contiguous ranges, each
// partitioned as above within its own group of ranks and reduced over it. A
// dense model (or ep = 1) has one: everything over all data-parallel ranks
// (dp x sp). With expert parallelism (model.h: ngroups = 2) the held experts
// are a second range, partitioned over the expert-data-parallel group (dp/ep
// ranks holding the same experts). Gradients of every group are divided by
// the data-parallel count (an expert's gradient sums tokens of its whole ep
// group, then over the expert-data-parallel group: every token of the step
// once), and the gradient norm adds every group's. A rank's shards of the
// groups sit back to back in its shard buffers (gshard, recv where kept, and the
// parameters at stage 3), group 0's first; each group has its own AdamW. The
// experts' units get buckets of their own (a bucket never spans groups) and,
// at stage 3, a gather slot of their own.
//
// Offload (offload.h): each group's owned range gets an Offload of its own
// (zero_attach_offload), which holds the group's AdamW moments and, at stage
// 3, its parameter shard (ZeroOffload says what): zero_create leaves out the
// memory those would take (zero_plan counts the same), so on cuda the device
// holds only what stays there. The reduced gradients go to the file too
// (ZeroOffload.grads) only with one group: the shard then gives way to three
// landing buffers (two layer staging slots, the embeddings).
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
    int group;              // the parameter group of its units
    size_t begin, end;      // flat range
    int ready;              // units finished this micro-step
    float *staging;         // stage 2/3: where its gradients accumulate this micro-step
    int slot;               // staging slot in use, -1 none
    int pending;            // launched, not yet folded into the shard
    int direct;             // its reduction lands in the gradient shard itself (the step's first
                            // reduction of it, in memory): nothing to fold
    CommReq req;
    int *packed;            // fused: (npacked) its tensors the products do not reduce ...
    int npacked;
    size_t pack_at, pack_n; //   ... packed at Zero.pack + pack_at, pack_n floats
    uint64_t gen;           // fused: the micro-step (Zero.gen) it was launched in
} ZeroBucket;

typedef struct ZeroSlot {   // stage 3: a working buffer for one unit's gathered parameters
    float *buf;
    size_t cap;
    int unit;               // -1: empty
    int held;
    CommReq req;
} ZeroSlot;

enum { ZSLOT_LAYER_A, ZSLOT_LAYER_B, ZSLOT_EMBED, ZSLOT_FINAL, ZSLOT_EXPERT, ZSLOT_N };

enum { ZERO_MAX_GROUPS = 2 };

// One parameter group: a flat range and the ranks that partition it.
typedef struct ZeroGroup {
    Comm *comm;             // its reductions and gathers (NULL in a plan)
    int p, r;               // ranks of the group, this rank's index
    size_t begin, end;      // the flat range
    size_t S;               // shard size ceil((end - begin) / p)
    size_t own_begin, own_end;  // this rank's shard (stage 0: the whole range)
    size_t at;              // where the shard starts in the rank's shard buffers
    Optim *optim;           // AdamW over the shard (&Zero.optim for group 0)
    float *host_m, *host_v; // host copies of its moments (the moments themselves on cpu; offloaded:
                            //   mapped only between zero_pull_states / zero_host_buffers and the next step)
    size_t *counts;         // (p) scratch
    struct Offload *off;    // offload.h: this group's owned range off the backend; NULL: in memory
} ZeroGroup;

// What the offload engine holds instead of zero's own buffers (all 0: nothing).
typedef struct ZeroOffload {
    int moments;            // every group's AdamW moments
    int params;             // stage 3: every group's parameter shard
    int grads;              // stage 2-3, one group only: the reduced gradient shard
} ZeroOffload;

// A second half postponed (fused gradients, above): store_dweight's arguments,
// dout in the ring at [at, at + n) unless it stays (n = 0).
typedef struct ZeroPostponed {
    int t, IC, OC, trans_w;
    const float *dout, *inp;
    size_t N, at, n;
} ZeroPostponed;

typedef struct Zero {
    int stage, overlap, prefetch;
    Comm *comm;             // group 0's: all data-parallel ranks
    const Model *m;
    int p, r;               // in comm
    size_t N;               // the rank's flat layout (every group)
    size_t S, own_begin, own_end;   // group 0's shard (ZeroGroup)
    int ngroups;
    ZeroGroup g[ZERO_MAX_GROUPS];
    size_t own;             // the rank's shards of every group, back to back
    float *params;          // stage 0-2: (N) full; stage 3: (own) shards
    int shared;             // parameters in a node-shared window (share_params in zero.c): shm.base
    CommShared shm;         //   holds every rank's shard back to back (the flat layout, read in place);
                            //   params = shm.base (stages 1-2) or this rank's shard, shm.mine (3)
    float *grads;           // stage 0-1: (N) full working gradients
    float *gshard;          // stage 1-3: (own) reduced gradients
    float *recv;            // stages 2-3 with ZeroConfig.accum > 1: (own) where the micro-steps after
                            // the first land before they are added (the first lands in gshard)
    Optim optim;            // group 0's shard (all of it at stage 0)
    Optim xoptim;           // group 1's (the held experts), when there is one
    ZeroSlot slots[ZSLOT_N];
    float *gring[2];        // stage 2-3: staging ring for layer buckets
    int gring_bucket[2];
    int gring_next;
    float *gembed;          // stage 2-3: staging for the embeddings bucket (none when fused)
    int nbuckets;
    ZeroBucket *buckets;
    int *bucket_of;         // (nunits)
    int first_micro, last_micro;
    float *gland[3];        // gradients on NVMe: landing of the two layer staging slots and the embeddings
    size_t *counts;         // (p) scratch
    float *host_params;     // host copies of params and moments for checkpoints: the buffers
    float *host_m, *host_v; //   themselves on cpu, filled by zero_pull_states on cuda (group 0's;
                            //   every group's in ZeroGroup)
    size_t state_bytes;     // resident model states: parameters, gradients, moments
    size_t working_bytes;   // gather slots and gradient staging
    int early;              // the embeddings' gradient reduced from the LM head on (above)
    size_t etokens;         // token rows per micro-step the exchange holds
    float *xrows;           // (p, 1 + etokens (1 + C)) every rank's position offset, tokens, encoder rows
    float *esparse;         // (ecap, C) the encoder rows that fall in this rank's range of the
                            // embeddings, summed; slot i holds row erow[i] (zero when free)
    int esparse_due;        // esparse waits to be added after the embeddings bucket's reduction
    uint32_t *erow;         // (ecap) the row of each slot in use: wte row t as t, wpe row q as Vp + q
    size_t nerow, ecap;     // slots in use; slots
    int32_t *eslot;         // (Vp + maxT) each row's slot in esparse, -1 none
    int fused;              // fused gradients (above)
    CommShared gsh;         //   every rank's gradient shard back to back: gshard is gsh.mine
    CommShared fsh;         //   (p, 2 ntensors + 1) uint64 flags: first half written, both written; folded
    uint64_t gen;           //   micro-steps begun since creation: the flags' generation
    char *fuse;             //   (ntensors) 1: reduced by its product (model_dweight_tensor)
    float *pack;            //   every bucket's packed other tensors, back to back
    ZeroPostponed *dq;      //   (ntensors) postponed second halves, a ring:
    int dq_front, dq_n;     //   the oldest's slot, and how many
    float *dring;           //   their copies of dout: a ring of dring_cap floats, the
    size_t dring_cap, dring_tail;   //   newest copy ending at dring_tail
    uint64_t npostponed;    //   products postponed since creation (run.h5 grad_postponed)
    int fault_postpone;     //   [zero] fault_postpone (test only): postpone every one that may be
    ParamStore store;
    ZeroOffload offl;       // what the groups' Offloads hold (zero_create_offload)
} Zero;

// What a layout costs one rank, computed without allocating: the numbers
// `partita estimate` prints and zero_create checks its allocations against.
typedef struct ZeroPlan {
    size_t params, grads, optim;    // resident model-state bytes
    size_t working;                 // gather slots, gradient staging, landing buffers
    size_t mpi_temp;                // what MPI allocates inside a reduction (not ours; planned)
    double sent[COMM_NOPS];         // bytes this rank sends per optimizer step (no evaluation)
} ZeroPlan;

// p, r: the data-parallel ranks and this rank's index; with expert
// parallelism (m->ep_size > 1) the experts' group is the p/ep ranks r % ep.
void zero_plan(const Model *m, const ZeroConfig *zc, int p, int r, int accum, ZeroPlan *plan);
// The same with what the offload engine holds left out (off NULL: nothing).
void zero_plan_offload(const Model *m, const ZeroConfig *zc, const ZeroOffload *off, int p, int r, int accum,
                       ZeroPlan *plan);

void zero_create(Zero *z, const ZeroConfig *zc, Comm *comm, const Model *m, const OptimConfig *oc,
                 int64_t steps);
// The same with the expert-data-parallel group xcomm for a model with expert
// parallelism (m->ngroups = 2; xcomm NULL otherwise).
void zero_create_ep(Zero *z, const ZeroConfig *zc, Comm *comm, Comm *xcomm, const Model *m, const OptimConfig *oc,
                    int64_t steps);
// The same, leaving out what the offload engine will hold (off NULL: nothing;
// off->params needs stage 3, off->grads stage 2-3 and one group): no backend
// memory is taken for it. Each group's Offload is then attached
// (zero_attach_offload) before zero_init_weights.
void zero_create_offload(Zero *z, const ZeroConfig *zc, Comm *comm, Comm *xcomm, const Model *m,
                         const OptimConfig *oc, int64_t steps, const ZeroOffload *off);
void zero_free(Zero *z);
// Hands group k's owned range [own_begin, own_end) to `off` (made for that
// range): its moments (and the stage-3 shard, the reduced gradients) are used
// from there; host_* hold them only between zero_pull_states and the next step
// (checkpoints), and between a resume's read and zero_push_states.
void zero_attach_offload(Zero *z, int k, struct Offload *off);
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
// Stages 0-2 (each rank holds every parameter): every rank's shard of the
// parameters to every rank of its group (tag names it in debug checks); a no-op
// at stage 3. After a load at stages 1-2 (each rank read its shard) zero_share_loaded calls it.
void zero_gather_params(Zero *z, const char *tag);
// Stage 0 on a backend without device memory (host buffers are the states):
// whether a checkpoint load may read only the rank's partition of every state
// and share the rest by zero_share_loaded (moments not offloaded).
int zero_reads_partition(const Zero *z);
// After a checkpoint load filled what this rank read: every rank's part to
// every rank that holds it (stages 1-2: the parameter shards; stage 0 reading
// partitions: the parameters and moments, so a p-rank job reads each byte from
// disk once, not p times; node-shared parameters: a barrier). Nothing else.
void zero_share_loaded(Zero *z);


// The parameter/gradient store the model computes through.
const ParamStore *zero_store(Zero *z);
// Shard bounds of rank k of group 0 for the flat range [b, e).
void zero_part(const Zero *z, int k, size_t b, size_t e, size_t *pb, size_t *pe);
// The length of every shard but the last of n floats over p ranks: n / p
// rounded up, then up to a page of the layout (MODEL_ALIGN_FLOATS) where that
// adds at most 1% (shards of 100 pages and more) and leaves the last rank
// some: so every shard starts on a page, and a checkpoint load reads it in
// place (model.h).
size_t zero_shard_floats(size_t n, int p);
// Shard bounds of rank k of group g for the flat range [b, e) (inside the group).
void zero_group_part(const ZeroGroup *g, int k, size_t b, size_t e, size_t *pb, size_t *pe);

#endif
