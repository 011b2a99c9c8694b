// comm.h: collectives on the kernels' buffers, with byte counters, a debug
// mode that checks every rank issues the same collective, and a timeout.
//
// Every collective adds the bytes this rank sends (ring algorithms: an
// all-reduce of n floats sends 2 (p-1)/p n, a reduce-scatter or all-gather sends
// the total less this rank's own part) to a counter per op, which run.h5
// records per step. Waits poll with MPI_Test and sleep between polls: ranks may
// outnumber cores, and MPICH's blocking busy-poll then steals the core from the
// rank that still computes.
//
// On the cuda backend the float buffers of the non-blocking collectives are
// device memory and move by one of two paths ([comm] device_path):
//   nccl:   NCCL on a communication stream; the collective starts after the
//           work already issued on the compute stream, and comm_wait makes the
//           compute stream wait for it (the host does not block).
//           Uneven parts (shards cut by a bucket) are padded to the largest in
//           a device scratch so each bucket is one ncclReduceScatter or
//           ncclAllGather; the padding never leaves comm.
//   staged: device -> host mirror, MPI on the mirror, host -> device when the
//           request completes. Slower, but ranks may share one GPU (NCCL
//           refuses that), so tests run np=2/4 on one device. Every device
//           buffer a staged collective touches must be registered first
//           (comm_register), which allocates its host mirror once.
// The f64 reductions and comm_bcast always take host buffers. On the host
// and staged paths an all-gather is point to point (each rank's part sent to
// every other rank): MPICH's MPI_Iallgatherv with a rank of count 0 did not
// advance under polls (bench/overlap_probe.c).
#ifndef PARTITA_COMM_H
#define PARTITA_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

enum { COMM_PATH_HOST = 0, COMM_PATH_STAGED, COMM_PATH_NCCL };

// How host-path collectives advance while the caller computes ([comm] progress;
// the trainer's default is thread, a zeroed CommOptions gets poll):
//   poll:   only inside comm calls (comm_test between layers, comm_wait);
//   thread: also a progress thread per communicator that, while a collective
//           is in flight, calls MPI_Iprobe on a private duplicate of the
//           communicator every progress_us (MPICH moves messages only inside
//           MPI calls; any call drives the one progress engine) and sleeps
//           on a condition variable while none is. Needs MPI_THREAD_MULTIPLE
//           (main.c asks for it; fatal with a hint where MPI gives less);
//   none:   only inside comm_wait (comm_polls() is 0: callers skip their
//           polls), the baseline that shows what the polls buy.
enum { COMM_PROGRESS_POLL = 0, COMM_PROGRESS_THREAD, COMM_PROGRESS_NONE };

enum { COMM_ALLREDUCE = 0, COMM_REDUCE_SCATTER, COMM_ALLGATHER, COMM_ALLTOALL, COMM_BCAST, COMM_NOPS };
enum { COMM_SYNC = COMM_NOPS };    // comm_shared_sync's barrier: moves no bytes, so no counter

// What a collective is, as ranks compare it in debug mode.
typedef struct CommSig {
    int64_t step;
    int32_t op;
    int32_t seq;            // collectives issued this step on this group
    int64_t count;          // elements in total
    char tag[40];           // the tensor or unit it moves
} CommSig;

typedef struct CommReq {
    MPI_Request req;
    int active;
    int slot;               // v-collectives: its counts slot in Comm.vargs until completion; -1 none
    int npreq;              // host all-gather: its point-to-point requests (the slot's in Comm.preqs); 0 none
    CommSig sig;
    int event;              // nccl: the completion event's slot, -1 none
    float *land;            // staged: device buffer the result goes to on completion ...
    const float *land_host; //   ... from this host mirror ...
    size_t land_n;          //   ... this many floats
    float *sum_dst;         // two-rank reduce-scatter: on completion sum_dst (the peer's part, received)
    const float *sum_src;   //   += sum_src (this rank's own) ...
    size_t sum_n;           //   ... this many floats; 0 none
} CommReq;

typedef struct CommOptions {
    int debug;              // check signatures before every collective
    double timeout_s;       // a wait longer than this is fatal, naming the collective; 0 = none
    int fault_skip_rank;    // test only: this rank skips one collective ...
    int64_t fault_skip_step;//   ... its first one of this step
    double fault_hang_s;    //   ... or, when > 0, stalls this long before it
    int oversubscribed;     // ranks x threads exceed the node's cores: long waits nap
    int path;               // COMM_PATH_*: how the float collectives reach their buffers
    const struct Backend *bk;   // staged: the copies between device and host mirrors
    int progress;           // COMM_PROGRESS_*
    double progress_us;     // thread: the pause between two probes (0: sched_yield only)
    int compute_only;       // COMM_COMPUTE_*: benchmark baseline (below)
} CommOptions;

// [comm] compute_only, the "compute alone" of an overlap measurement (bench/run.sh
// part 8): the float collectives (all-reduce, reduce-scatter, all-gather,
// all-to-all) and the node-shared barriers return at once, moving and counting
// nothing, so each rank runs its own layout's computation on its own stale
// data: the real run's work without its communication. The scalar agreements
// (comm_allreduce_*_f64: loss, gradient norm; comm_bcast) still run, so ranks
// keep step as they do for real. Only inside a step (comm_set_step ..
// comm_end_step): set-up, loads, evaluation and writes communicate. Losses are
// meaningless. ALTERNATE skips on steps 1, 3, 5, ... (1-based) and
// communicates on the others: each real step sits between two baseline steps,
// and the machine's drift over minutes cancels in their difference.
enum { COMM_COMPUTE_OFF = 0, COMM_COMPUTE_ON, COMM_COMPUTE_ALTERNATE };

typedef struct CommMirror {     // staged path: a registered device buffer and its host mirror
    const float *dev;
    float *host;
    size_t n;
} CommMirror;

enum { COMM_GATHER_TAG = 30001 };  // the all-gathers' point-to-point messages on Comm.comm
enum { COMM_RS_TAG = 30002 };      // the two-rank reduce-scatters' (comm_ireduce_scatter_sum)
enum { COMM_SLOTS = 64 };       // v-collectives (reduce-scatter, all-gather, all-to-all) in flight at
                                // once on one communicator: each owns one slot of counts until completion

typedef struct Comm {
    MPI_Comm comm;
    char name[16];          // group name: "dp"
    int rank, size;
    CommOptions opt;
    int64_t step;
    int stepping;           // between comm_set_step and comm_end_step
    int32_t seq;
    int skipped;
    uint64_t bytes[COMM_NOPS];  // bytes sent by this rank, per op, since start
    uint64_t calls[COMM_NOPS];
    double wait_s;          // time blocked in waits: communication not hidden by compute
    double wait_op_s[COMM_NOPS + 1];    // wait_s by what was waited for (COMM_* op; COMM_SYNC last)
    double busy_s;          // time inside MPI outside waits: issuing the dp collectives and polling
                            // them (comm_progress, comm_test), where MPICH copies and reduces on the
                            // calling thread: communication work that took the compute's core
    double inflight_s;      // time at least one collective was in flight (issue to observed completion)
    int inflight;           // collectives issued and not yet seen complete
    double inflight_t0;     // when inflight last went from 0 to 1
    MPI_Comm probe;         // a private duplicate of comm that comm_progress and the thread probe
    struct CommProgress *prog;  // progress = thread: the thread and what it shares with the caller
    int *vargs;             // (COMM_SLOTS, 4, size) send counts, displacements, receive counts and
                            // displacements of each v-collective in flight: the MPI standard forbids
                            // touching them before the request completes, so no two requests share them
    MPI_Request *preqs;     // (COMM_SLOTS, 2 (size - 1)) the point-to-point requests of each all-gather
                            // in flight (host path: see comm_iallgather)
    uint64_t busy;          // bit k: slot k belongs to a request not yet completed
    CommSig *sigs;          // (size) scratch for debug checks
    CommMirror *mirrors;    // staged: (cap_mirrors) registered buffers, grown by comm_register (setup only)
    int nmirrors, cap_mirrors;
    struct NcclComm *nccl;  // nccl path: the communicator and its streams/events
} Comm;

// Collective over all ranks of comm; with the nccl path it creates the NCCL
// communicator (collective: every rank of comm calls it).
void comm_init(Comm *c, MPI_Comm comm, const char *name, const CommOptions *opt);
// Staged path: buf (n floats of device memory) may be a collective's buffer;
// allocates its host mirror (the table of mirrors grows as needed: call it
// while setting up, not in the step loop). A no-op on the other paths.
void comm_register(Comm *c, const float *buf, size_t n, const char *what);
const char *comm_path_name(int path);
void comm_free(Comm *c);
const char *comm_op_name(int op);
// Marks the start of a step: signatures carry it, the fault switch and
// compute_only key on it.
void comm_set_step(Comm *c, int64_t step);
// Marks the end of a step's gradients and update: compute_only applies only
// between comm_set_step and this (never to set-up, loads, evaluation, writes).
void comm_end_step(Comm *c);

// Non-blocking collectives; each returns at once with r active (inactive when
// compute_only skips it). Buffers must stay untouched until comm_wait(r).
void comm_iallreduce_sum(Comm *c, float *buf, size_t n, const char *tag, CommReq *r);
// send holds every rank's part back to back, counts[k] elements for rank k;
// the sum of this rank's part lands in recv. Host paths at two ranks: by point
// to point, the peer's part received into recv and this rank's added when the
// request is seen complete (comm_test or comm_wait); MPI_Ireduce_scatter else.
void comm_ireduce_scatter_sum(Comm *c, const float *send, float *recv, const size_t *counts,
                              const char *tag, CommReq *r);
// In place: buf holds every rank's part back to back (counts[k] for rank k);
// this rank's own part must be in place already.
void comm_iallgather(Comm *c, float *buf, const size_t *counts, const char *tag, CommReq *r);
// send holds counts[k] floats for rank k back to back; recv receives
// rcounts[k] floats from rank k back to back (MoE dispatch, Ulysses).
// The v-collectives copy counts into a slot of their own: the caller may reuse
// its arrays at once. Up to COMM_SLOTS may be in flight on one communicator
// (fatal beyond, naming the group).
void comm_ialltoallv(Comm *c, const float *send, const size_t *counts, float *recv, const size_t *rcounts,
                     const char *tag, CommReq *r);
// Waits for r (no-op if inactive), yielding the core, timing the wait.
void comm_wait(Comm *c, CommReq *r);
// Non-blocking progress: returns 1 if r is complete (and marks it inactive).
int comm_test(Comm *c, CommReq *r);
// Whether callers should poll (comm_progress, comm_test) between their kernels: 0 with progress = none.
int comm_polls(const Comm *c);
// Runs MPI's progress engine once, for every collective in flight, touching none of their requests.
void comm_progress(Comm *c);
// Seconds with a collective in flight, counting one still in flight up to now.
double comm_inflight_s(const Comm *c);
const char *comm_progress_name(int progress);

// Node-shared memory. When every rank of c runs on this node, one MPI-3
// shared window (MPI_Win_allocate_shared) holds each rank's `bytes` back to
// back in rank order, so every rank reads all of it in place: ZeRO keeps its
// parameter shards there and gathers nothing (zero.h). Collective over c.
typedef struct CommShared {
    MPI_Win win;
    MPI_Comm comm;          // the node's ranks (all of c's)
    char *base;             // rank 0's first byte: the whole array
    char *mine;             // this rank's segment
    int on;
} CommShared;
// 1 with s set up; 0 (s->on = 0, nothing allocated) where c's ranks span
// nodes or the window is not contiguous (s->why says which).
int comm_shared_alloc(Comm *c, size_t bytes, CommShared *s, char *why, size_t n);
// Every rank's writes before it visible to every rank's reads after it (a
// barrier with memory synchronisation; the wait counts as communication).
void comm_shared_sync(Comm *c, CommShared *s);
void comm_shared_free(CommShared *s);
// Node-shared flags (zero.c's fused reduction): waits until *flag, a counter
// that rank `peer` of c raises in a shared window, reaches want. It yields the
// core between looks (naps where ranks outnumber cores), counts the wait as
// communication of op (wait_s), and is fatal past [comm] timeout_s, naming
// the peer and what (the text of what then name). Returns at once while
// compute_only skips this step's float collectives.
void comm_flag_wait(Comm *c, _Atomic uint64_t *flag, uint64_t want, int op, int peer, const char *what,
                    const char *name);
// Whether comm_flag_wait(c, flag, want, ...) would return at once.
int comm_flag_ready(const Comm *c, _Atomic uint64_t *flag, uint64_t want);

// Blocking conveniences.
void comm_allreduce_sum(Comm *c, float *buf, size_t n, const char *tag);
void comm_allreduce_sum_f64(Comm *c, double *buf, int n, const char *tag);
void comm_allreduce_max_f64(Comm *c, double *buf, int n, const char *tag);
void comm_bcast(Comm *c, void *buf, size_t bytes, int root, const char *tag);
// MPI_Allreduce in place for a rank that may come long before the others (a
// checkpoint load's agreements): it polls with naps where MPICH would spin,
// which takes a core from the ranks still reading on a node whose cores are
// all busy (two ranks on two cores: a load's spread grew by a third).
void comm_allreduce_napping(MPI_Comm comm, void *buf, int n, MPI_Datatype type, MPI_Op op);

#endif
