// engine.h: the inference forward pass over a ragged batch, tensor-parallel.
//
// A pass is N token rows from any number of sequences (decode tokens and
// prompt chunks side by side: Dynamic SplitFuse), each with its position and
// its sequence's KV block table. Matrix products run once over all N rows.
// With tp ranks, each holds NH/tp heads and H/tp MLP columns (Megatron
// style): c_attn and c_fc split by columns, the two c_proj by rows, one
// all-reduce after attention and one after the MLP. Embeddings, LayerNorms and
// the LM head are replicated.
#ifndef PARTITA_ENGINE_H
#define PARTITA_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "model.h"

typedef struct EngineLayer {
    const float *ln1w, *ln1b, *qkvw, *qkvb, *attpw, *attpb;   // qkvw (C, 3Cl), attpw (Cl, C)
    const float *ln2w, *ln2b, *fcw, *fcb, *fcpw, *fcpb;       // fcw (C, Hl), fcpw (Hl, C)
} EngineLayer;

typedef struct Engine {
    GPTShape s;
    int tp, tp_rank;
    Comm *comm;
    int Cl, NHl, Hl;            // this rank's slice of channels, heads, MLP hidden
    float *weights;             // one buffer: replicated tensors and this rank's slices
    const float *wte, *wpe, *lnfw, *lnfb;
    EngineLayer *layers;
    float *kv;                  // (nblocks, L, 2, bs, Cl) the paged KV cache
    int nblocks, bs;
    size_t block_stride, layer_stride, v_offset;
    int Nmax, Smax;             // rows per pass, sampled rows per pass
    float *x, *ln, *mean, *rstd, *qkv, *att, *proj, *fc, *fcg, *lnf, *logits;  // scratch for Nmax rows
} Engine;

// full: the whole model's parameters in the flat layout of model.h (m's table).
void engine_create(Engine *e, const Model *m, const float *full, Comm *comm, int nblocks, int bs, int Nmax, int Smax);
void engine_free(Engine *e);
size_t engine_kv_bytes_per_block(const Model *m, int tp, int bs);

// Runs N rows; fills logits (nsample, Vp) for the rows listed in sample_rows.
// tables: (N, max_blocks) block table of each row's sequence.
void engine_forward(Engine *e, int N, const int32_t *tok, const int32_t *pos, const int32_t *tables,
                    int max_blocks, int nsample, const int32_t *sample_rows, float *logits);

#endif
