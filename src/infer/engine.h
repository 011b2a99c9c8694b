// engine.h: how inference holds the model: this rank's tensor-parallel slices
// of the parameters (matrices in a weight dtype), the paged KV cache, and the
// passes run through the model's own forward (model_forward_paged).
//
// The engine is a parameter store, not a second model: model.c runs the
// layers; the engine only decides what each rank holds (model.h TP_*: c_attn
// and c_fc by columns, both c_proj by rows, the rest whole) and in which
// dtype (WDT_*: fp32, bf16, or int8 with a scale per output channel).
//
// Mixture of Experts: each rank of an expert-parallel group holds E_l/ep whole
// experts of every MoE layer (fp32, whatever the dtype of the dense matrices),
// the gate (and PR-MoE's residual MLP and coefficient) whole; the batch is
// replicated on every rank and model.c sums the experts' outputs over the ep
// group (moe.h, moe_layer_create_replicated).
#ifndef PARTITA_ENGINE_H
#define PARTITA_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "deck.h"
#include "device.h"
#include "model.h"

typedef struct Engine {
    Model m;                    // this rank's inference model (its table: the held slices)
    ParamStore ps;
    const Backend *bk;
    int wdtype;                 // WDT_* of the matrices
    float *flat;                // (m.nparams) backend memory: the non-matrix tensors
    void **mats;                // (ntensors) each held matrix, or NULL
    float **scales;             // (ntensors) int8 per-row scales, or NULL
    size_t held_bytes;          // bytes of the matrices as held (what a decode pass streams)
    PagedKV kv;                 // kv.kv: backend memory
    int Nmax, Smax;             // rows per pass, sampled rows per pass
    struct Stream *stream;      // ZeRO-Inference: the layer matrices streamed (stream.h), or NULL
    // Expert parallelism (engine_create_ep): the groups split from the job's ranks
    int split;                  // tpc / epc were split here (freed with the engine)
    Comm tpc, epc;              // tensor- and expert-parallel groups
    int ep_size, ep_rank;       // this rank's place in its ep group
    int replica, replicas;      // which model copy (tp x ep ranks) this rank is part of, of how many
} Engine;

// g: the whole model's table (model_table) and full its parameters in that
// layout (host memory). tp: the tensor-parallel group (every rank calls this).
void engine_create(Engine *e, const Model *g, const float *full, const ModelConfig *mc, const Backend *bk,
                   Comm *tp, int wdtype, int nblocks, int bs, int Nmax, int Smax, int max_blocks);
// The same with expert parallelism: the ranks of world form replicas of tp x
// ep consecutive ranks; inside one, the tp groups are consecutive ranks and
// the ep group is the ranks with the same tp rank (rank = replica tp ep +
// ep_rank tp + tp_rank). ep = 1: world is the tp group (tp = its size) or,
// tp = 1, each rank a replica of its own. The MoE layers come from g (see
// engine_whole_model).
void engine_create_ep(Engine *e, const Model *g, const float *full, const ModelConfig *mc, const Backend *bk,
                      Comm *world, int tp, int ep, int wdtype, int nblocks, int bs, int Nmax, int Smax,
                      int max_blocks);
// As engine_create (a dense model, tp = the group's size), with the layer
// matrices streamed by st (stream.h; the engine owns it from here): the rest
// of the model from st's resident segment, the weight dtype the file's.
void engine_create_streamed(Engine *e, const Model *g, struct Stream *st, const ModelConfig *mc, const Backend *bk,
                            Comm *tp, int nblocks, int bs, int Nmax, int Smax, int max_blocks);
void engine_free(Engine *e);

// What engine_open chose: the pass geometry, the host copy of the weights
// (resident mode; NULL when streamed) and the device the engine runs on.
typedef struct EngineSetup {
    int bs, max_blocks;         // KV block size, blocks per sequence
    int Nmax, Smax;             // rows per pass (the token budget, raised to max_batch when streaming), sampled rows
    float *full;                // (g.nparams) the whole model's weights, or NULL
    DeviceInfo dev;             // device_stop(&dev) when done
} EngineSetup;

// The engine an inference deck describes, the one setup `generate` and `serve`
// share (collective over world): the whole model's table g (engine_whole_model),
// the weights read ([generate] weights) or streamed ([generate] weights_from),
// the backend the deck asks for, and the engine at [parallel] tp x ep.
// local_rank: this rank's place on its node (engine_start_ranks).
void engine_open(Engine *e, Model *g, EngineSetup *es, const Deck *d, Comm *world, int local_rank);
// What engine_open needs of a deck run on `size` ranks: the weights file (or a
// stream), tp x ep = size, tp dividing the heads, no MoE streaming, naive on one
// rank from resident weights. 0, or -1 with msg (n bytes) naming the key and a hint.
int engine_check_deck(const Deck *d, int size, char *msg, size_t n);

// The whole model an inference deck describes, MoE layers and every expert
// included (ep = 1): the table alone (T = 0), or with activations for B x T on
// the cpu (the naive forward). Its routing is generate's: eval capacity,
// tokens dropped only with [generate] moe_drop = true.
void engine_whole_model(Model *g, const Config *c, int B, int T);
size_t engine_kv_bytes_per_block(const Model *m, int tp, int bs);

// Device memory an engine needs at most (held matrices, the rest of the
// parameters, the KV cache, a pass's activations and tables): the arena of a
// cuda run.
size_t engine_arena_bytes(const Model *g, int tp, int nblocks, int bs, int Nmax, int Smax, int max_blocks);

// One pass (every rank of the replica, the same pass); logits (nsample, Vp)
// on the replica's first rank (tp rank 0 and ep rank 0; NULL elsewhere).
void engine_forward(Engine *e, const RaggedBatch *b, float *logits);

// A float as bf16 (round to nearest even; NaN kept a NaN).
uint16_t engine_bf16(float x);

// The ranks of an inference job (generate, eval): kernel threads as in
// training ([run] threads, else the node's cores shared among its ranks) and
// the world communicator `name` with the deck's debug and timeout. Returns
// this rank's place on its node (which GPU it takes).
int engine_start_ranks(Comm *comm, const char *name, int64_t threads_key, int debug, double timeout_s);

#endif
