// scheduler.h: the FastGen scheduler, shared by `generate` (a batch job) and
// `serve` (a server): requests are submitted, each step composes one forward
// pass (Dynamic SplitFuse, vLLM/Orca continuous batching, or static batches),
// broadcasts it to the other tensor-parallel ranks, runs it, samples, and
// reports every produced token through a callback. A request is retired (its
// KV blocks freed, the scheduler's references dropped) when it finishes or is
// cancelled; the scheduler's memory is fixed at creation (max_batch slots, the
// block pool), so a long-running server grows nothing.
//
// KV cache: `reserve` takes prompt + max_tokens blocks at admission (no
// preemption ever); `lazy` (FastGen, vLLM) takes the prompt's blocks at
// admission and one more block each time a sequence fills its last; when the
// pool runs dry the most recently admitted running sequence is preempted (its
// blocks freed, its prompt and outputs recomputed when it runs again).
// Outputs do not depend on either choice, nor on the mode: each sequence's
// tokens depend on its own tokens and seed only.
#ifndef PARTITA_SCHEDULER_H
#define PARTITA_SCHEDULER_H

#include <stdint.h>

#include "comm.h"
#include "engine.h"
#include "sampler.h"

enum { SCHED_SPLITFUSE = 0, SCHED_STATIC, SCHED_CONTINUOUS };   // the order of deck.h GEN_*
enum { SEQ_NEW = 0, SEQ_WAITING, SEQ_RUNNING, SEQ_DONE };
enum { FINISH_LENGTH = 0, FINISH_STOP, FINISH_CANCELLED };

typedef struct Seq {
    // The caller's, set before sched_submit and left alone until on_done.
    const int32_t *prompt;      // (plen)
    int plen, max_tokens;
    SamplerParams sp;
    int32_t *out;               // (max_tokens) written by the scheduler
    void *user;
    // The scheduler's.
    int state;                  // SEQ_*
    int nout;                   // tokens in out
    int fed;                    // tokens in the KV cache
    int nblocks;                // blocks in table
    int slot;                   // running slot, -1 when not running
    int preemptions;
    int32_t *table;             // (max_blocks) the slot's block table while running
    struct Seq *prev, *next;    // the waiting queue
} Seq;

typedef struct SchedHooks {
    void *ctx;
    // s->out[s->nout - 1] is new; return 1 to finish s now (a stop string).
    int (*on_token)(void *ctx, Seq *s, double now);
    // s is retired (FINISH_*); the scheduler holds no reference to it any more.
    void (*on_done)(void *ctx, Seq *s, int reason, double now);
} SchedHooks;

typedef struct SchedOptions {
    int mode;                   // SCHED_*
    int reserve;                // 1: blocks for prompt + max_tokens at admission
    int max_batch;              // sequences running at once
    int kv_block, kv_blocks;    // tokens per block, blocks in the pool
    int max_blocks;             // per sequence (the model's positions / kv_block)
    double t0;                  // wall_seconds() origin of the times passed to the hooks
} SchedOptions;

typedef struct Sched {
    SchedOptions o;
    SchedHooks h;
    Comm *comm;
    Engine *e;
    Sampler *smp;
    Seq *wait_head, *wait_tail;
    int nwaiting;
    Seq **running;              // (max_batch) in admission order
    int nrunning;
    int32_t *tables;            // (max_batch, max_blocks)
    int *free_slots, nfree_slots;
    int32_t *free_blocks;       // (kv_blocks) stack
    int nfree;
    int32_t *msg;               // a pass as broadcast: N, nsample, quit, tok, pos, tables, sample rows
    size_t msg_len;
    Seq **sample_seq;           // (Smax)
    float *logits;              // (Smax, Vp)
    int next_decode;            // round-robin start in running
    long passes, preemptions;
    double pass_tokens;
} Sched;

// Rank 0 of the tensor-parallel group (the others call sched_follow).
void sched_create(Sched *s, const SchedOptions *o, const SchedHooks *h, Comm *comm, Engine *e, Sampler *smp);
void sched_free(Sched *s);
// KV blocks for n tokens.
int sched_blocks(const Sched *s, int n);
// Queues q (prompt, max_tokens, sp, out, user set; plen + max_tokens within
// the model's positions and its blocks within the pool: the caller refuses others).
void sched_submit(Sched *s, Seq *q);
// Retires q now, waiting or running (on_done with FINISH_CANCELLED).
void sched_cancel(Sched *s, Seq *q, double now);
// Admits, composes, broadcasts, runs and samples one pass; returns its rows
// (0: nothing could run, no pass made).
int sched_step(Sched *s);
int sched_busy(const Sched *s);
int sched_blocks_used(const Sched *s);
// An empty pass (the other ranks wake and wait again); the final pass (they return).
void sched_idle(Sched *s);
void sched_quit(Sched *s);
// The other tensor-parallel ranks: run whatever pass rank 0 broadcasts, until the final one.
void sched_follow(Comm *comm, Engine *e, int max_blocks);

#endif
