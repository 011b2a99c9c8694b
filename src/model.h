// model.h: the GPT-2 model: parameter table, forward, backward.
//
// Parameters live in one flat fp32 buffer; a table of named tensors gives each
// one's Hugging Face GPT-2 name, shape and offset (wte.weight, wpe.weight,
// h.0.ln_1.weight, h.0.attn.c_attn.weight, ..., ln_f.bias), so other tools map
// them one to one. Linear weights use HF's Conv1D layout (in, out); the LM head
// is tied to wte. Tensors are laid out layer by layer so a layer's parameters
// are one contiguous range (what ZeRO-3 gathers). Gradients mirror the layout.
#ifndef PARTITA_MODEL_H
#define PARTITA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "deck.h"

typedef struct GPTShape {
    int V, Vp;      // vocabulary, padded vocabulary (wte rows)
    int L, C, NH;   // layers, channels, heads
    int maxT;       // wpe rows
    int H;          // MLP hidden = mlp_ratio * C
} GPTShape;

typedef struct ParamTensor {
    char name[48];
    int ndim;
    int shape[2];
    size_t offset, numel;   // in floats, into the flat buffer
    int decay;              // 1: AdamW weight decay applies (matrices)
} ParamTensor;

// Per-layer tensor order, the index of h.<l>.<name> is 2 + 12*l + j.
enum { P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPW, P_ATTPB,
       P_LN2W, P_LN2B, P_FCW, P_FCB, P_FCPW, P_FCPB, P_PER_LAYER };

typedef struct Model {
    GPTShape s;
    int ntensors;
    ParamTensor *tensors;   // wte, wpe, h.0.* ... h.L-1.*, ln_f.weight, ln_f.bias
    size_t nparams;
    float *params;          // (nparams)
    float *grads;           // (nparams)
    int B, T;               // the batch the activations are sized for
    float *acts;            // all activations, one buffer
    size_t nacts;
    float *scratch;         // backward scratch, one buffer
    size_t nscratch;
    int fwd_B, fwd_T;       // shape of the last forward
    float mean_loss;        // of the last forward with targets
} Model;

GPTShape model_shape(const ModelConfig *mc);
// Builds the table, allocates parameters and gradients (zeroed) and the
// activations for micro-batches of up to B x T.
void model_create(Model *m, const ModelConfig *mc, int B, int T);
void model_free(Model *m);

// GPT-2 init: matrices N(0, std), residual projections N(0, std/sqrt(2L)),
// biases 0, LayerNorm weights 1. Each tensor from its own seeded stream.
void model_init_weights(Model *m, uint64_t seed, double std);

const ParamTensor *model_find(const Model *m, const char *name);

// Forward of B x T tokens (B <= m->B, T <= m->T). With targets, returns the mean
// loss over the rows whose target is >= 0 and keeps what backward needs;
// without (NULL), returns 0 and leaves logits in place.
float model_forward(Model *m, const int32_t *inputs, const int32_t *targets, int B, int T);
// Backward of the last forward. dloss: d(objective)/d(per-token loss), e.g.
// 1/(B*T*grad_accum). Parameter gradients accumulate into m->grads.
void model_backward(Model *m, const int32_t *inputs, const int32_t *targets, int B, int T, float dloss);
void model_zero_grad(Model *m);

// Logits of the last forward, (B, T, Vp); valid until the next backward.
const float *model_logits(const Model *m);

// Training FLOPs per token (forward + backward): 6 * (non-wpe parameters)
// + 12 * L * C * T for attention scores and values.
double model_flops_per_token(const Model *m, int T);

#endif
