// model.h: the GPT-2 model: parameter table, forward, backward.
//
// Parameters live in one flat fp32 buffer; a table of named tensors gives each
// one's Hugging Face GPT-2 name, shape and offset (wte.weight, wpe.weight,
// h.0.ln_1.weight, h.0.attn.c_attn.weight, ..., ln_f.bias), so other tools map
// them one to one. Linear weights use HF's Conv1D layout (in, out); the LM head
// is tied to wte. Tensors are laid out layer by layer so a layer's parameters
// are one contiguous range (what ZeRO-3 gathers). Gradients mirror the layout.
//
// A tensor of MODEL_ALIGN_BYTES or more starts at a multiple of MODEL_ALIGN_FLOATS
// (4 KiB) in the layout; the gap before it is padding (zero, in no tensor, never
// updated). Checkpoints place such tensors' datasets on a block of the file
// (ckpt.c), so with state buffers whose element 0 sits on a page (the cpu
// backend's alloc, ZeRO's shard boundaries) a load reads them by O_DIRECT
// straight into place instead of through a bounce buffer and a copy.
#ifndef PARTITA_MODEL_H
#define PARTITA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "comm.h"
#include "deck.h"
#include "moe.h"
#include "ulysses.h"

#define MODEL_ALIGN_FLOATS ((size_t)1024)
#define MODEL_ALIGN_BYTES ((size_t)65536)

typedef struct GPTShape {
    int V, Vp;      // vocabulary, padded vocabulary (wte rows)
    int L, C, NH;   // layers, channels, heads
    int maxT;       // wpe rows
    int H;          // MLP hidden = mlp_ratio * C
} GPTShape;

// What a tensor is: its kind (below), its layer (-1: wte, wpe, ln_f) and, for
// an expert's MLP, the expert's global index (-1 otherwise). Code finds tensors
// by (layer, kind, expert) through model_tensor, never by index arithmetic.
enum { K_WTE, K_WPE, K_LN1W, K_LN1B, K_QKVW, K_QKVB, K_ATTPW, K_ATTPB, K_LN2W, K_LN2B,
       K_FCW, K_FCB, K_FCPW, K_FCPB,                 // the dense MLP
       K_GATE, K_RFCW, K_RFCB, K_RFCPW, K_RFCPB, K_COEFW, K_COEFB,   // MoE gate; PR-MoE residual MLP, coefficient
       K_XFCW, K_XFCB, K_XFCPW, K_XFCPB,             // one expert's MLP
       K_LNFW, K_LNFB, K_NKINDS };

typedef struct ParamTensor {
    char name[64];          // global name (as in checkpoints and weight files)
    int layer, kind, expert;
    int unit;               // the unit that holds it
    int held;               // 0: another rank's expert (offset is then nparams: outside every range)
    int ndim;
    int shape[2];
    size_t offset, numel;   // in floats, into the flat buffer
    int decay;              // 1: AdamW weight decay applies (matrices)
    // Inference tables (model_create_infer) only: how this rank's tensor is cut
    // from the whole one (TP_*), and whether it is held apart from the flat
    // layout (a matrix reached through ParamStore.matrix; offset is then unused).
    int tp_split;
    int apart;
} ParamTensor;

// How a tensor-parallel rank holds a tensor (Megatron style): whole, a slice
// of columns (of each of q, k and v for c_attn), a slice of rows, or whole on
// tp rank 0 and zero elsewhere (the biases after a row-split product, so the
// all-reduce adds them once).
enum { TP_WHOLE = 0, TP_COLS, TP_COLS_QKV, TP_ROWS, TP_RANK0 };

// Units: the pieces the parameter store hands out whole. Unit 0 is the
// embeddings (wte, wpe), unit 1 + l is layer l, unit L + 1 is ln_f; with
// expert parallelism (ep > 1), unit L + 2 + j holds the experts this rank holds
// of the j-th MoE layer. Each is one contiguous range [unit_begin, unit_end)
// of the flat layout. The layout has two groups: dense parameters (units
// 0..L+1, the same on every data-parallel rank) in [0, group_end[0]), then
// (ep > 1) the held experts in [group_end[0], group_end[1]); at ep = 1 a
// layer's experts sit inside its unit, like its dense MLP would.
enum { PHASE_FWD = 0, PHASE_BWD = 1 };

// How the model reaches parameters and gradients, so that it need not know
// whether they are local, sharded and gathered (ZeRO-3), or offloaded.
// Pointers returned are the base of the unit: tensor t of unit u is at
// base + (t.offset - unit_begin[u]).
// A matrix as an inference store holds it: (out, in) rows, in a weight dtype
// (kernels.h WDT_*), with a scale per row for int8.
typedef struct HeldMatrix {
    const void *w;
    int dtype;
    const float *scale;
} HeldMatrix;

// ParamStore.dweight's kept: buffers that outlive the call.
enum { DW_DOUT_KEPT = 1, DW_INP_KEPT = 2 };

typedef struct ParamStore {
    void *ctx;
    // Full parameters of unit u, valid until release(u, phase).
    const float *(*params)(void *ctx, int unit, int phase);
    void (*release)(void *ctx, int unit, int phase);
    // Where unit u's gradients accumulate (+=) during this micro-step's backward.
    float *(*grads)(void *ctx, int unit);
    // Unit u's gradients of this micro-step are complete.
    void (*grads_ready)(void *ctx, int unit);
    // Optional (NULL: unused). Called once the LM head has added its part of
    // the tied wte's gradient, with this micro-step's token rows. Returning 1,
    // the store takes the embeddings' gradient as complete but for the
    // encoder's rows (so it may start reducing it with 12 layers of backward
    // still to run), and the model hands those rows to embed_rows instead of
    // adding them itself and calling grads_ready(U_EMBED).
    int (*embed_early)(void *ctx, size_t tokens);
    // The encoder's gradient: row i of dout (B T rows of C) adds to wte row
    // tok[i] and to wpe row pos0 + i % T.
    void (*embed_rows)(void *ctx, const float *dout, const int32_t *tok, int B, int T, int pos0);
    // Optional (NULL: unused). Whether the store computes the gradient of
    // matrix tensor t (tensor-table index; model_dweight_tensor) itself, summing
    // it across ranks as it goes (zero.h, the fused reduction). The model then
    // computes only the input's gradient (and the bias's) and calls dweight for
    // the weight's: part 0 before the input's gradient, part 1 after it. kept
    // (DW_*) says which of dout and inp stay as they are until model_backward
    // returns; the store may finish part 1 later from those (and copies of the rest).
    int (*takes_dweight)(void *ctx, int tensor);
    void (*dweight)(void *ctx, int tensor, int part, const float *dout, const float *inp, size_t N, int IC,
                    int OC, int trans_w, int kept);
    // Inference stores only (model_forward_paged): matrix tensor t (tensor-table
    // index) as held. The LM head uses t = 0 (wte).
    HeldMatrix (*matrix)(void *ctx, int tensor);
} ParamStore;

// The paged KV cache (backend memory): (nblocks, L, 2, bs, Ct) floats, K then V
// of bs slots per layer per block, Ct the channels of this rank's heads.
typedef struct PagedKV {
    float *kv;
    int nblocks, bs;
    size_t block_stride, layer_stride, v_offset;
} PagedKV;

// One inference pass: N token rows from any number of sequences (decode
// tokens and prompt chunks side by side), host arrays. Row i is token tok[i]
// at position pos[i] of the sequence whose block table is tables + i *
// max_blocks; logits are computed for the rows listed in sample.
typedef struct RaggedBatch {
    int N, nsample, max_blocks;
    const int32_t *tok, *pos, *tables, *sample;
} RaggedBatch;

// How a rank's model splits the work with others: sequence parallelism over
// the group sp (Ulysses, ulysses.h), and activation checkpointing.
typedef struct ModelParallel {
    Comm *sp;               // the sequence group; NULL or size 1: none
    int recompute;          // RECOMPUTE_* (deck.h): keep only layer inputs, recompute in backward
    const MoeSpec *moe;     // NULL or nmoe = 0: a dense GPT
    Comm *ep;               // the expert-parallel group; NULL or size 1: every expert held here
} ModelParallel;

typedef struct Model {
    GPTShape s;
    int ntensors;
    ParamTensor *tensors;   // wte, wpe, h.0.* ... h.L-1.*, ln_f.weight, ln_f.bias
    size_t nparams;         // floats in the flat layout (wte's padded rows and alignment gaps included)
    int nunits;             // L + 2
    size_t *unit_begin, *unit_end;  // (nunits) ranges in floats
    const Backend *bk;      // where activations live and kernels run
    int B, T;               // the batch the activations are sized for (T: this rank's tokens)
    int sp, sp_rank;        // sequence group: this rank holds tokens [sp_rank T, (sp_rank+1) T) of each row
    int recompute;          // RECOMPUTE_*
    Ulysses ulysses;        // sp > 1: the all-to-alls around attention
    float *acts;            // all activations, one buffer (backend memory)
    size_t nacts;
    float *scratch;         // backward scratch, one buffer (backend memory)
    size_t nscratch;
    int32_t *tok, *tgt;     // (B*T) the micro-batch's inputs and targets (backend memory)
    float *host_losses;     // (B*T) per-token losses copied back for the mean
    int fwd_B, fwd_T;       // shape of the last forward
    float mean_loss;        // of the last forward with targets
    // Inference (model_create_infer): B = Nmax rows per pass, T = 1.
    int infer;
    int Smax, max_blocks;   // sampled rows per pass, blocks per sequence
    Comm *tp;               // the tensor-parallel group, or NULL
    int tp_size, tp_rank;
    int Ct, NHt, Ht;        // channels of the heads held, heads held, MLP hidden held (all of them at tp = 1)
    int32_t *pos, *tables;  // (Nmax) (Nmax, max_blocks) backend memory
    // Mixture of Experts (training)
    MoeSpec moe;            // nmoe = 0: dense
    MoeLayer *moel;         // (L) runtime of the MoE layers (zeroed for dense layers)
    Comm *ep;
    int ep_size, ep_rank;
    int *lt;                // (L + 1, K_NKINDS) tensor index of (layer, kind), row L: wte, wpe, ln_f; -1 none
    int *xt;                // (L) tensor index of expert 0's first tensor (its block of 4 per expert), -1 dense
    int *xunit;             // (L) the unit holding layer l's held experts
    int ngroups;            // 1, or 2 with expert parallelism
    size_t group_end[2];    // group g is [g ? group_end[0] : 0, group_end[g])
    // The counters of MoE jitter and of dropout's masks: the run's seed, the
    // step, the global index of the micro-batch's first row (set by the trainer).
    uint64_t moe_seed;
    int64_t moe_step;
    uint64_t moe_row0;
    int moe_eval;           // the last forward used the eval capacity (no backward)
    double moe_aux;         // last forward: sum over MoE layers of the mean over rows of the aux term
    // Dropout ([model] dropout): GPT-2's sites (embeddings, attention
    // probabilities, both residual branches), in forwards with for_backward and
    // their backward only; masks drawn from (moe_seed, moe_step, moe_row0 + b).
    float dropout;
    int drop_on;            // the last forward dropped (training)
} Model;

// Tensor index of (layer, kind, expert) (layer -1: wte, wpe, ln_f; expert -1
// unless an expert's kind), or -1 when the model has none.
int model_tensor(const Model *m, int layer, int kind, int expert);
// Where a tensor of numel floats goes when the layout's next free float is at.
size_t model_align_offset(size_t at, size_t numel);
// The parameters this rank holds: its tensors' elements (wte's padded rows and
// an inference table's matrices held apart included, alignment gaps not;
// nparams counts the flat layout: gaps in, matrices apart out).
size_t model_count_params(const Model *m);
// The table alone for a MoE model at expert layout (ep, ep_rank).
void model_table_moe(Model *m, const ModelConfig *mc, const MoeSpec *moe, int ep, int ep_rank);

GPTShape model_shape(const ModelConfig *mc);
// Builds the table and allocates the activations for micro-batches of up to
// B x T on backend bk. Parameters and gradients belong to the ParamStore
// (zero.h) and live on the same backend.
void model_create(Model *m, const ModelConfig *mc, int B, int T, const Backend *bk);
// The same for one rank of a sequence group (T is then the rank's T/sp tokens
// of each row, at position offset sp_rank * T) and/or with recompute.
void model_create_parallel(Model *m, const ModelConfig *mc, int B, int T, const Backend *bk,
                           const ModelParallel *mp);
void model_free(Model *m);
// The table and units alone (no activations): for tools that only need sizes.
void model_table(Model *m, const ModelConfig *mc);

// GPT-2 init of the flat elements [begin, end) into dst (dst[0] is element
// begin): matrices N(0, std), residual projections N(0, std/sqrt(2L)), biases 0,
// LayerNorm weights 1. Every element comes from its tensor's seeded stream at
// its own position, so any shard initialises alone to the values the whole would have.
void model_init_range(const Model *m, float *dst, size_t begin, size_t end, uint64_t seed, double std);

const ParamTensor *model_find(const Model *m, const char *name);
// Whether model_backward writes tensor t's gradient by one matrix product alone
// (so ParamStore.dweight may take it): wte (the LM head; the encoder's rows go
// to embed_rows where the store takes the embeddings early) and the four
// matrices of each dense layer (not the experts').
int model_dweight_tensor(const Model *m, int t);
// Unit holding flat element i.
int model_unit_of(const Model *m, size_t i);

// Forward of B x T tokens (B <= m->B, T <= m->T); inputs and targets are host
// arrays (copied to the backend here). With targets, returns the mean
// loss over the rows whose target is >= 0 and keeps what backward needs. With
// for_backward, the LM head's parameters stay held for model_backward.
float model_forward(Model *m, const ParamStore *ps, const int32_t *inputs, const int32_t *targets,
                    int B, int T, int for_backward);
// Backward of the last forward (which had for_backward set). dloss:
// d(objective)/d(per-token loss), e.g. 1/(B*T*grad_accum). Gradients accumulate
// into the store's buffers; grads_ready is called unit by unit as each completes.
void model_backward(Model *m, const ParamStore *ps, const int32_t *inputs, const int32_t *targets,
                    int B, int T, float dloss);

// A model for inference: passes of up to Nmax rows (Smax of them sampled)
// over a paged KV cache with max_blocks blocks per sequence; with tp (NULL or
// size 1: none) the rank holds NH/tp heads and H/tp MLP columns: c_attn and
// c_fc by columns, both c_proj by rows (their biases on tp rank 0), one
// all-reduce after each; the rest whole. The table is this rank's: shapes are
// the held slices, matrices are apart (ParamStore.matrix), the flat layout
// holds the rest.
void model_create_infer(Model *m, const ModelConfig *mc, int Nmax, int Smax, int max_blocks, const Backend *bk,
                        Comm *tp);
// The same for a Mixture-of-Experts model (moe NULL or nmoe = 0: dense):
// with ep (NULL or size 1: none) the rank holds experts [ep_rank E_l/ep, ...)
// of each MoE layer (whole, fp32, in the training layout: a unit per layer's
// held experts), the batch is replicated over the group and the MoE outputs
// are summed over it (moe_layer_create_replicated). The gate, PR-MoE's
// residual MLP and coefficient are held whole. Routing uses the eval capacity;
// moe->drop_tokens decides whether tokens are dropped (the capacity group is
// a pass's run of consecutive rows of one sequence).
void model_create_infer_moe(Model *m, const ModelConfig *mc, int Nmax, int Smax, int max_blocks, const Backend *bk,
                            Comm *tp, const MoeSpec *moe, Comm *ep);
// The KV cache's geometry for this model (kv left NULL: the caller allocates
// nblocks * block_stride floats).
PagedKV model_kv_layout(const Model *m, int nblocks, int bs);
// One pass through the same layer code as model_forward: parameters through
// ps (ps->matrix for matrices), each row's key and value stored into the
// cache before any row attends. Fills host_logits (nsample, Vp).
void model_forward_paged(Model *m, const ParamStore *ps, const PagedKV *kv, const RaggedBatch *b,
                         float *host_logits);

// Logits of the last forward, (B, T, Vp), in backend memory; valid until the
// next backward.
const float *model_logits(const Model *m);

// Training FLOPs per token (forward + backward): 6 * (non-wpe parameters)
// + 12 * L * C * T for attention scores and values.
double model_flops_per_token(const Model *m, int T);
// Bytes of activations, backward scratch, all-to-all buffers and token
// buffers for a B x T micro-batch (T: this rank's tokens), for the model's
// own sp and recompute.
size_t model_activation_bytes(const Model *m, int B, int T);
// The same for any layout, without a model: rank sp_rank of a sequence group
// of sp holding B x T tokens of rows of T*sp; recompute: RECOMPUTE_*.
size_t model_activation_bytes_layout(const Model *m, int B, int T, int sp, int sp_rank, int recompute);

#endif
