// model.c: GPT-2 forward and backward over the kernels of kernels.h.
#include "model.h"
#include "kernels.h"   // the WDT_* and EPI_* constants only: compute goes through the Backend
#include "log.h"
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

GPTShape model_shape(const ModelConfig *mc) {
    GPTShape s;
    s.V = (int)mc->vocab;
    s.Vp = (int)(((mc->vocab + mc->vocab_pad - 1) / mc->vocab_pad) * mc->vocab_pad);
    s.L = (int)mc->layers;
    s.C = (int)mc->d_model;
    s.NH = (int)mc->heads;
    s.maxT = (int)mc->seq_len;
    s.H = (int)(mc->mlp_ratio * mc->d_model);
    return s;
}

// ---------------------------------------------------------------------------
// Parameter table

static size_t page_up(size_t at) { return (at + MODEL_ALIGN_FLOATS - 1) / MODEL_ALIGN_FLOATS * MODEL_ALIGN_FLOATS; }

size_t model_align_offset(size_t at, size_t numel) {
    return numel * sizeof(float) < MODEL_ALIGN_BYTES ? at : page_up(at);
}

size_t model_count_params(const Model *m) {
    size_t n = 0;
    for (int i = 0; i < m->ntensors; i++)
        if (m->tensors[i].held) n += m->tensors[i].numel;
    return n;
}

static ParamTensor *add_tensor(Model *m, const char *name, int rows, int cols, int decay, int layer, int kind,
                               int expert) {
    ParamTensor *p = &m->tensors[m->ntensors++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols;
    p->numel = (size_t)rows * (size_t)(cols ? cols : 1);
    m->nparams = model_align_offset(m->nparams, p->numel);
    p->offset = m->nparams;
    p->decay = decay;
    p->layer = layer;
    p->kind = kind;
    p->expert = expert;
    p->held = 1;
    p->unit = layer < 0 ? (kind == K_LNFW || kind == K_LNFB ? m->s.L + 1 : 0) : 1 + layer;
    m->nparams += p->numel;
    return p;
}

static const char *kind_name[K_NKINDS] = {
    [K_WTE] = "wte.weight", [K_WPE] = "wpe.weight", [K_LN1W] = "ln_1.weight", [K_LN1B] = "ln_1.bias",
    [K_QKVW] = "attn.c_attn.weight", [K_QKVB] = "attn.c_attn.bias", [K_ATTPW] = "attn.c_proj.weight",
    [K_ATTPB] = "attn.c_proj.bias", [K_LN2W] = "ln_2.weight", [K_LN2B] = "ln_2.bias",
    [K_FCW] = "mlp.c_fc.weight", [K_FCB] = "mlp.c_fc.bias", [K_FCPW] = "mlp.c_proj.weight",
    [K_FCPB] = "mlp.c_proj.bias", [K_GATE] = "mlp.gate.weight", [K_RFCW] = "mlp.residual.c_fc.weight",
    [K_RFCB] = "mlp.residual.c_fc.bias", [K_RFCPW] = "mlp.residual.c_proj.weight",
    [K_RFCPB] = "mlp.residual.c_proj.bias", [K_COEFW] = "mlp.coefficient.weight", [K_COEFB] = "mlp.coefficient.bias",
    [K_XFCW] = "c_fc.weight", [K_XFCB] = "c_fc.bias", [K_XFCPW] = "c_proj.weight", [K_XFCPB] = "c_proj.bias",
    [K_LNFW] = "ln_f.weight", [K_LNFB] = "ln_f.bias"};

// A layer tensor of the training table, registered in the (layer, kind) lookup.
static void add_layer_tensor(Model *m, int l, int kind, int rows, int cols) {
    char name[64];
    snprintf(name, sizeof name, "h.%d.%s", l, kind_name[kind]);
    m->lt[l * K_NKINDS + kind] = m->ntensors;
    add_tensor(m, name, rows, cols, cols != 0, l, kind, -1);
}

// Layer l's MLP as a Mixture of Experts: the gate (and PR-MoE's residual MLP
// and coefficient) with the dense parameters, then every expert under its
// global name; experts held elsewhere are marked, and placed after the loop.
static void add_moe_mlp(Model *m, int l) {
    const int C = m->s.C, H = m->s.H, E = m->moe.experts[l], El = E / m->ep_size;
    add_layer_tensor(m, l, K_GATE, C, E);
    if (m->moe.residual) {
        add_layer_tensor(m, l, K_RFCW, C, H);
        add_layer_tensor(m, l, K_RFCB, H, 0);
        add_layer_tensor(m, l, K_RFCPW, H, C);
        add_layer_tensor(m, l, K_RFCPB, C, 0);
        add_layer_tensor(m, l, K_COEFW, C, 2);
        add_layer_tensor(m, l, K_COEFB, 2, 0);
    }
    m->xt[l] = m->ntensors;
    const int xr[4] = {C, H, H, C}, xc[4] = {H, 0, C, 0};
    for (int e = 0; e < E; e++) {
        for (int j = 0; j < 4; j++) {
            char name[64];
            snprintf(name, sizeof name, "h.%d.mlp.experts.%d.%s", l, e, kind_name[K_XFCW + j]);
            size_t keep = m->nparams;
            ParamTensor *t = add_tensor(m, name, xr[j], xc[j], xc[j] != 0, l, K_XFCW + j, e);
            if (m->ep_size == 1) continue;
            m->nparams = keep;              // placed in the expert group below
            t->held = e / El == m->ep_rank;
            t->unit = m->xunit[l];
        }
    }
}

// ep > 1: the held experts, layer by layer, after the dense group; the
// others at nparams (outside every range a rank holds or reads).
static void place_experts(Model *m) {
    m->nparams = page_up(m->nparams);     // the expert group starts on a page too
    m->group_end[0] = m->nparams;
    for (int i = 0; i < m->ntensors; i++) {
        ParamTensor *t = &m->tensors[i];
        if (t->expert < 0 || !t->held) continue;
        m->nparams = model_align_offset(m->nparams, t->numel);
        t->offset = m->nparams;
        m->nparams += t->numel;
    }
    for (int i = 0; i < m->ntensors; i++)
        if (!m->tensors[i].held) m->tensors[i].offset = m->nparams;
    m->group_end[1] = m->nparams;
}

static void build_units(Model *m) {
    m->unit_begin = xcalloc(sizeof(size_t) * (size_t)m->nunits, "unit table");
    m->unit_end = xcalloc(sizeof(size_t) * (size_t)m->nunits, "unit table");
    for (int u = 0; u < m->nunits; u++) m->unit_begin[u] = SIZE_MAX;
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        if (!t->held || t->apart) continue;
        size_t *b = &m->unit_begin[t->unit], *e = &m->unit_end[t->unit];
        if (t->offset < *b) *b = t->offset;
        if (t->offset + t->numel > *e) *e = t->offset + t->numel;
    }
    for (int u = 0; u < m->nunits; u++)
        if (m->unit_begin[u] == SIZE_MAX) m->unit_begin[u] = m->unit_end[u] = u ? m->unit_end[u - 1] : 0;
    // The units tile each group: an alignment gap goes to the unit after it (the
    // one before the expert group to ln_f), so that every float of the layout is
    // in one unit, and reductions and gathers cover the layout exactly.
    if (m->infer) return;
    const int L = m->s.L;
    for (int u = 1; u <= L + 1; u++) m->unit_begin[u] = m->unit_end[u - 1];
    m->unit_end[L + 1] = m->group_end[0];
    for (int u = L + 2; u < m->nunits; u++) m->unit_begin[u] = u == L + 2 ? m->group_end[0] : m->unit_end[u - 1];
}

static void build_table(Model *m) {
    const GPTShape *s = &m->s;
    const int L = s->L;
    size_t cap = 4 + (size_t)(K_NKINDS - 4) * (size_t)L;
    for (int l = 0; l < L && m->moe.nmoe; l++) cap += 4 * (size_t)m->moe.experts[l];
    m->tensors = xcalloc(sizeof(ParamTensor) * cap, "parameter table");
    m->lt = xmalloc(sizeof(int) * (size_t)(L + 1) * K_NKINDS, "tensor lookup");
    for (size_t i = 0; i < (size_t)(L + 1) * K_NKINDS; i++) m->lt[i] = -1;
    m->xt = xmalloc(sizeof(int) * (size_t)(L > 0 ? L : 1), "expert lookup");
    m->xunit = xmalloc(sizeof(int) * (size_t)(L > 0 ? L : 1), "expert units");
    m->nunits = L + 2;
    for (int l = 0; l < L; l++) {
        m->xt[l] = -1;
        m->xunit[l] = 1 + l;
        if (m->moe.nmoe && m->moe.experts[l] > 0 && m->ep_size > 1) m->xunit[l] = m->nunits++;
    }
    int *g = m->lt + (size_t)L * K_NKINDS;
    g[K_WTE] = m->ntensors;
    add_tensor(m, "wte.weight", s->Vp, s->C, 1, -1, K_WTE, -1);
    g[K_WPE] = m->ntensors;
    add_tensor(m, "wpe.weight", s->maxT, s->C, 1, -1, K_WPE, -1);
    const int C = s->C, H = s->H, Ct = m->Ct, Ht = m->Ht;
    // Training: HF Conv1D shapes (in, out). Inference: the held slice, matrices as (out, in) rows apart.
    const int rows[K_FCPB + 1] = {[K_LN1W] = C, C, C, 3 * C, C, C, C, C, C, H, H, C};
    const int cols[K_FCPB + 1] = {[K_LN1W] = 0, 0, 3 * C, 0, C, 0, 0, 0, H, 0, C, 0};
    const int hrows[K_FCPB + 1] = {[K_LN1W] = C, C, 3 * Ct, 3 * Ct, C, C, C, C, Ht, Ht, C, C};
    const int hcols[K_FCPB + 1] = {[K_LN1W] = 0, 0, C, 0, Ct, 0, 0, 0, C, 0, Ht, 0};
    const int split[K_FCPB + 1] = {[K_LN1W] = TP_WHOLE, TP_WHOLE, TP_COLS_QKV, TP_COLS_QKV, TP_ROWS, TP_RANK0,
                                   TP_WHOLE, TP_WHOLE, TP_COLS, TP_COLS, TP_ROWS, TP_RANK0};
    for (int l = 0; l < L; l++) {
        int moe = m->moe.nmoe && m->moe.experts[l] > 0;
        // A layer with aligned matrices starts on a page too, so every layer has the
        // same gaps and the same extent (the stager sizes one buffer for all).
        if (!m->infer) m->nparams = model_align_offset(m->nparams, (size_t)C * (size_t)(3 * C > H ? 3 * C : H));
        for (int j = K_LN1W; j <= K_FCPB; j++) {
            if (moe && j >= K_FCW) break;
            if (!m->infer) {
                add_layer_tensor(m, l, j, rows[j], cols[j]);
                continue;
            }
            char name[64];
            snprintf(name, sizeof name, "h.%d.%s", l, kind_name[j]);
            m->lt[l * K_NKINDS + j] = m->ntensors;
            if (hcols[j]) {     // apart: no room in the flat layout
                size_t keep = m->nparams;
                add_tensor(m, name, hrows[j], hcols[j], 1, l, j, -1);
                m->nparams = keep;
                m->tensors[m->ntensors - 1].apart = 1;
            } else {
                add_tensor(m, name, hrows[j], 0, 0, l, j, -1);
            }
            m->tensors[m->ntensors - 1].tp_split = split[j];
        }
        if (moe) add_moe_mlp(m, l);
    }
    g[K_LNFW] = m->ntensors;
    add_tensor(m, "ln_f.weight", C, 0, 0, -1, K_LNFW, -1);
    g[K_LNFB] = m->ntensors;
    add_tensor(m, "ln_f.bias", C, 0, 0, -1, K_LNFB, -1);
    m->ngroups = 1;
    m->group_end[0] = m->group_end[1] = m->nparams;
    if (m->ep_size > 1 && m->moe.nmoe) {
        m->ngroups = 2;
        place_experts(m);
    }
    build_units(m);
}

int model_tensor(const Model *m, int layer, int kind, int expert) {
    int row = layer < 0 ? m->s.L : layer;
    if (kind >= K_XFCW && kind <= K_XFCPB) {
        if (layer < 0 || m->xt[layer] < 0 || expert < 0 || expert >= m->moe.experts[layer]) return -1;
        return m->xt[layer] + 4 * expert + (kind - K_XFCW);
    }
    return m->lt[row * K_NKINDS + kind];
}

// Training holds every head and hidden column.
static void hold_all(Model *m) {
    m->tp_size = 1;
    m->Ct = m->s.C;
    m->NHt = m->s.NH;
    m->Ht = m->s.H;
}

int model_unit_of(const Model *m, size_t i) {
    int lo = 0, hi = m->nunits - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (m->unit_begin[mid] <= i) lo = mid; else hi = mid - 1;
    }
    return lo;
}

const ParamTensor *model_find(const Model *m, const char *name) {
    for (int i = 0; i < m->ntensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

static int LT(const Model *m, int l, int kind) { return model_tensor(m, l, kind, -1); }
enum { U_EMBED = 0 };
static int U_LAYER(int l) { return 1 + l; }
static int U_FINAL(const Model *m) { return m->s.L + 1; }
static int is_moe(const Model *m, int l) { return m->moe.nmoe && m->moe.experts[l] > 0; }

int model_dweight_tensor(const Model *m, int t) {
    if (t < 0 || t >= m->ntensors) return 0;
    if (t == LT(m, -1, K_WTE)) return 1;
    for (int l = 0; l < m->s.L; l++) {
        if (t == LT(m, l, K_QKVW) || t == LT(m, l, K_ATTPW)) return 1;
        if (!is_moe(m, l) && (t == LT(m, l, K_FCW) || t == LT(m, l, K_FCPW))) return 1;
    }
    return 0;
}

// The gradients of a matrix product (kernels.h matmul_backward); where the
// store takes the weight's (ParamStore.dweight), its two parts go around the
// input's gradient, which gives the other rank time to finish its first part.
// kept: DW_* (model.h).
static void linear_backward(const Model *m, const ParamStore *ps, int t, float *dinp, float *dweight, float *dbias,
                            const float *dout, const float *inp, const float *weight, size_t N, int IC, int OC,
                            int trans_w, int kept) {
    if (!ps->takes_dweight || !ps->takes_dweight(ps->ctx, t)) {
        m->bk->matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC, trans_w);
        return;
    }
    ps->dweight(ps->ctx, t, 0, dout, inp, N, IC, OC, trans_w, kept);
    m->bk->matmul_backward(dinp, NULL, dbias, dout, inp, weight, N, IC, OC, trans_w);
    ps->dweight(ps->ctx, t, 1, dout, inp, N, IC, OC, trans_w, kept);
}

// Tensor idx inside the unit buffer `base` of unit u (parameters or gradients).
static float *TP(const Model *m, const float *base, int u, int idx) {
    return (float *)base + (m->tensors[idx].offset - m->unit_begin[u]);
}

// ---------------------------------------------------------------------------
// Activation layout: one buffer, carved by the same walk at create time and at
// every use, so the offsets can never disagree.

// What a rank's activations look like: its T tokens of each row, and with
// sequence parallelism the full rows Tf = T * sp for its NHl heads (Cl channels).
typedef struct Geom {
    int B, T, Tf, NHl, Cl;
    int sp;             // 1: qkvh and atth alias qkv and atty
    int recompute;      // RECOMPUTE_LAYER: one layer's block, reused; outputs kept per layer
    int infer;          // a pass of B rows (T = 1) of which S are sampled: one block, the residual in place
    int S;
} Geom;

static Geom geom(const GPTShape *s, int B, int T, int sp, int sp_rank, int recompute) {
    Geom g = {.B = B, .T = T, .Tf = T * sp, .NHl = s->NH, .Cl = s->C, .sp = sp, .recompute = recompute};
    if (sp > 1) {
        int h0;
        ulysses_split_heads(s->NH, sp, sp_rank, &h0, &g.NHl);
        g.Cl = g.NHl * (s->C / s->NH);
    }
    return g;
}

static Geom model_geom(const Model *m, int B, int T) {
    Geom g = geom(&m->s, B, T, m->sp, m->sp_rank, m->recompute);
    if (m->infer) {
        g.infer = 1;
        g.S = m->Smax;
    }
    return g;
}

typedef struct Acts {
    float *encoded;                 // (B, T, C)
    // per layer l, at stride per_layer (recompute: one block for every layer)
    float *ln1, *ln1_mean, *ln1_rstd;   // (B,T,C) (B,T) (B,T)
    float *qkv, *atty;                  // (B,T,3C) (B,T,C); with sp, qkv is NULL: the projections
                                        // are built in the all-to-all buffer and only qkvh is kept
    float *qkvh, *atth, *att_lse;       // (B,Tf,3Cl) (B,Tf,Cl) (B,NHl,Tf): attention on this rank's heads
    float *attproj, *res2;              // (B,T,C)
    float *ln2, *ln2_mean, *ln2_rstd;
    float *fch, *fch_gelu;              // (B,T,H)
    float *fcproj, *res3;               // (B,T,C)
    size_t per_layer;
    float *outs;                        // recompute: (L, B, T, C) each layer's output
    float *lnf, *lnf_mean, *lnf_rstd;   // (B,T,C) (B,T) (B,T)
    float *logits;                      // (B,T,Vp)
    float *losses, *lse;                // (B,T)
    size_t total;
    int recompute;
    int infer;
} Acts;

static float *carve(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;     // keep every array 64-byte aligned
    return p;
}

// Inference: one block for every layer, the residual stream x updated in place
// (encoded = res2 = res3), only the sampled rows through the LM head; fch is
// the scratch of the fused products' epilogues on their sgemm path.
static Acts acts_layout_infer(const GPTShape *s, float *base, Geom g) {
    Acts a;
    memset(&a, 0, sizeof a);
    size_t N = (size_t)g.B, S = (size_t)g.S, C = (size_t)s->C, off = 0;
    size_t wide = (size_t)s->H > 3 * C ? (size_t)s->H : 3 * C;
    a.recompute = a.infer = 1;
    a.res3 = a.res2 = a.encoded = carve(base, &off, N * C);
    a.ln1 = a.ln2 = carve(base, &off, N * C);
    a.ln1_mean = a.ln2_mean = carve(base, &off, N);
    a.ln1_rstd = a.ln2_rstd = carve(base, &off, N);
    a.qkv = a.qkvh = carve(base, &off, N * 3 * C);
    a.atty = a.atth = carve(base, &off, N * C);
    a.attproj = a.fcproj = carve(base, &off, N * C);
    a.fch = carve(base, &off, N * wide);
    a.fch_gelu = carve(base, &off, N * (size_t)s->H);
    a.lnf = carve(base, &off, S * C);
    a.lnf_mean = carve(base, &off, S);
    a.lnf_rstd = carve(base, &off, S);
    a.logits = carve(base, &off, S * (size_t)s->Vp);
    a.losses = carve(base, &off, S);
    a.lse = carve(base, &off, S);
    a.total = off;
    return a;
}

static Acts acts_layout(const GPTShape *s, float *base, Geom g) {
    if (g.infer) return acts_layout_infer(s, base, g);
    Acts a;
    a.infer = 0;
    size_t BT = (size_t)g.B * g.T, BTf = (size_t)g.B * g.Tf, C = (size_t)s->C, Cl = (size_t)g.Cl, off = 0;
    a.recompute = g.recompute;
    a.encoded = carve(base, &off, BT * C);
    size_t layer0 = off;
    a.ln1 = carve(base, &off, BT * C);
    a.ln1_mean = carve(base, &off, BT);
    a.ln1_rstd = carve(base, &off, BT);
    a.qkv = g.sp > 1 ? NULL : carve(base, &off, BT * 3 * C);
    a.atty = carve(base, &off, BT * C);
    a.qkvh = g.sp > 1 ? carve(base, &off, BTf * 3 * Cl) : a.qkv;
    a.atth = g.sp > 1 ? carve(base, &off, BTf * Cl) : a.atty;
    a.att_lse = carve(base, &off, BTf * (size_t)g.NHl);
    a.attproj = carve(base, &off, BT * C);
    a.res2 = carve(base, &off, BT * C);
    a.ln2 = carve(base, &off, BT * C);
    a.ln2_mean = carve(base, &off, BT);
    a.ln2_rstd = carve(base, &off, BT);
    a.fch = carve(base, &off, BT * (size_t)s->H);
    a.fch_gelu = carve(base, &off, BT * (size_t)s->H);
    a.fcproj = carve(base, &off, BT * C);
    a.res3 = carve(base, &off, BT * C);
    a.per_layer = off - layer0;
    off = layer0 + a.per_layer * (size_t)(g.recompute ? 1 : s->L);
    a.outs = g.recompute ? carve(base, &off, BT * C * (size_t)s->L) : NULL;
    a.lnf = carve(base, &off, BT * C);
    a.lnf_mean = carve(base, &off, BT);
    a.lnf_rstd = carve(base, &off, BT);
    a.logits = carve(base, &off, BT * (size_t)s->Vp);
    a.losses = carve(base, &off, BT);
    a.lse = carve(base, &off, BT);
    a.total = off;
    return a;
}

// Pointer p of layer 0 moved to layer l (with recompute every layer shares the block).
static float *at(const Acts *a, float *p, int l) { return a->recompute ? p : p + a->per_layer * (size_t)l; }

// Layer l's output (the residual stream after it) and input.
static float *layer_out(const Acts *a, int l, size_t BTC) {
    if (a->infer) return a->res3;
    return a->recompute ? a->outs + BTC * (size_t)l : at(a, a->res3, l);
}
static const float *layer_in(const Acts *a, int l, size_t BTC) {
    return l > 0 && !a->infer ? layer_out(a, l - 1, BTC) : a->encoded;
}

// Backward scratch: the residual-stream gradient plus one buffer per width.
// With sp, dh1 and dh2 are also the all-to-all send and receive buffers (sized
// for both): the MLP's hidden gradients are dead whenever an exchange runs
// (in forward, in a layer's recompute, and in backward's attention, which
// comes after the MLP's), so sequence parallelism adds no buffer of its own.
// Backward's attention gradients of this rank's heads over full rows live in
// them too: d(atth) in send, d(qkvh) in recv (see attention_bwd).
typedef struct Scratch {
    float *dres, *dc, *d3c, *dh1, *dh2;
    size_t total;
} Scratch;

static Scratch scratch_layout(const GPTShape *s, float *base, Geom g, size_t a2a) {
    Scratch d;
    size_t BT = (size_t)g.B * g.T, off = 0, wide = BT * s->H > a2a ? BT * s->H : a2a;
    d.dres = carve(base, &off, BT * s->C);
    d.dc = carve(base, &off, BT * s->C);
    d.d3c = carve(base, &off, BT * 3 * (size_t)s->C);
    d.dh1 = carve(base, &off, wide);
    d.dh2 = carve(base, &off, wide);
    d.total = off;
    return d;
}

// Floats of each all-to-all buffer for geometry g: 0 without sp.
static size_t a2a_floats(const GPTShape *s, Geom g) {
    return g.sp > 1 ? ulysses_buffer_floats(g.B, g.T, s->C, s->NH, g.sp) : 0;
}

// A copy of the MoE shape (the model owns it) and the expert layout.
static void set_moe(Model *m, const MoeSpec *moe, int ep, int ep_rank) {
    m->ep_size = ep > 1 ? ep : 1;
    m->ep_rank = ep > 1 ? ep_rank : 0;
    if (!moe || !moe->nmoe) return;
    m->moe = *moe;
    m->moe.experts = xmalloc(sizeof(int) * (size_t)m->s.L, "moe layers");
    memcpy(m->moe.experts, moe->experts, sizeof(int) * (size_t)m->s.L);
    for (int l = 0; l < m->s.L; l++)
        SYS_CHECK(moe->experts[l] % m->ep_size == 0, "layer %d: %d experts do not split over ep = %d", l,
                  moe->experts[l], m->ep_size);
}

void model_table_moe(Model *m, const ModelConfig *mc, const MoeSpec *moe, int ep, int ep_rank) {
    memset(m, 0, sizeof *m);
    m->s = model_shape(mc);
    m->sp = 1;
    set_moe(m, moe, ep, ep_rank);
    hold_all(m);
    build_table(m);
}

void model_table(Model *m, const ModelConfig *mc) { model_table_moe(m, mc, NULL, 1, 0); }

size_t model_activation_bytes_layout(const Model *m, int B, int T, int sp, int sp_rank, int recompute) {
    Geom g = geom(&m->s, B, T, sp, sp_rank, recompute);
    size_t floats = acts_layout(&m->s, NULL, g).total + scratch_layout(&m->s, NULL, g, a2a_floats(&m->s, g)).total;
    size_t moe = 0;
    for (int l = 0; l < m->s.L; l++)
        if (is_moe(m, l)) moe += moe_layer_bytes(&m->moe, m->moe.experts[l], m->s.C, m->s.H, B, T, m->ep_size);
    return sizeof(float) * floats + 2 * sizeof(int32_t) * (size_t)B * (size_t)T + moe;
}

size_t model_activation_bytes(const Model *m, int B, int T) {
    return model_activation_bytes_layout(m, B, T, m->sp ? m->sp : 1, m->sp_rank, m->recompute);
}

void model_create_parallel(Model *m, const ModelConfig *mc, int B, int T, const Backend *bk,
                           const ModelParallel *mp) {
    memset(m, 0, sizeof *m);
    m->s = model_shape(mc);
    m->sp = mp && mp->sp ? mp->sp->size : 1;
    m->sp_rank = mp && mp->sp ? mp->sp->rank : 0;
    m->recompute = mp ? mp->recompute : RECOMPUTE_NONE;
    SYS_CHECK((size_t)T * (size_t)m->sp <= (size_t)m->s.maxT, "sequence length %d exceeds model.seq_len %d",
              T * m->sp, m->s.maxT);
    m->ep = mp && mp->ep && mp->ep->size > 1 ? mp->ep : NULL;
    set_moe(m, mp ? mp->moe : NULL, m->ep ? m->ep->size : 1, m->ep ? m->ep->rank : 0);
    SYS_CHECK(!m->moe.nmoe || m->sp == 1, "Mixture of Experts with sequence parallelism (sp = %d) is not supported",
              m->sp);
    hold_all(m);
    build_table(m);
    m->dropout = (float)mc->dropout;
    m->bk = bk;
    m->B = B;
    m->T = T;
    Geom g = model_geom(m, B, T);
    m->nacts = acts_layout(&m->s, NULL, g).total;
    m->acts = bk->alloc(m->nacts * sizeof(float), "activations");
    m->nscratch = scratch_layout(&m->s, NULL, g, a2a_floats(&m->s, g)).total;
    m->scratch = bk->alloc(m->nscratch * sizeof(float), "backward scratch");
    m->tok = bk->alloc((size_t)B * T * sizeof(int32_t), "input tokens");
    m->tgt = bk->alloc((size_t)B * T * sizeof(int32_t), "target tokens");
    m->host_losses = xcalloc((size_t)B * T * sizeof(float), "per-token losses");
    if (m->sp > 1) {    // the all-to-all buffers are the scratch's dh1 and dh2
        Scratch d = scratch_layout(&m->s, m->scratch, g, a2a_floats(&m->s, g));
        ulysses_create(&m->ulysses, mp->sp, bk, B, T, m->s.C, m->s.NH, d.dh1, d.dh2);
    }
    if (m->moe.nmoe) {
        m->moel = xcalloc(sizeof(MoeLayer) * (size_t)m->s.L, "moe layers");
        for (int l = 0; l < m->s.L; l++)
            if (is_moe(m, l)) moe_layer_create(&m->moel[l], &m->moe, l, m->s.C, m->s.H, B, T, m->ep, bk);
    }
}

void model_create(Model *m, const ModelConfig *mc, int B, int T, const Backend *bk) {
    model_create_parallel(m, mc, B, T, bk, NULL);
}

void model_free(Model *m) {
    if (m->moel)
        for (int l = 0; l < m->s.L; l++) moe_layer_free(&m->moel[l]);
    free(m->moel);
    free(m->moe.experts);
    free(m->lt);
    free(m->xt);
    free(m->xunit);
    free(m->tensors);
    free(m->unit_begin);
    free(m->unit_end);
    if (m->bk) {
        m->bk->release(m->acts);
        m->bk->release(m->scratch);
        m->bk->release(m->tok);
        m->bk->release(m->tgt);
        if (m->pos) m->bk->release(m->pos);
        if (m->tables) m->bk->release(m->tables);
    }
    free(m->host_losses);
    if (m->sp > 1) ulysses_free(&m->ulysses);
    memset(m, 0, sizeof *m);
}

void model_init_range(const Model *m, float *dst, size_t begin, size_t end, uint64_t seed, double std) {
    double proj_std = std / sqrt(2.0 * m->s.L);
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        size_t lo = t->offset > begin ? t->offset : begin;
        size_t hi = t->offset + t->numel < end ? t->offset + t->numel : end;
        if (lo >= hi) continue;
        float *p = dst + (lo - begin);
        size_t k0 = lo - t->offset, n = hi - lo;
        const char *dot = strrchr(t->name, '.');
        if (strcmp(dot, ".bias") == 0) {
            memset(p, 0, n * sizeof(float));
        } else if (strstr(t->name, "ln_")) {
            for (size_t k = 0; k < n; k++) p[k] = 1.0f;
        } else {
            double sd = strstr(t->name, "c_proj.weight") ? proj_std : std;
            // wte rows past the real vocabulary are never looked up nor scored
            size_t live = i == 0 ? (size_t)m->s.V * m->s.C : t->numel;
            Rng r = rng_stream(seed, RNG_INIT, (uint64_t)i);
            rng_skip(&r, 2 * k0);   // each normal takes two draws
            for (size_t k = 0; k < n; k++) p[k] = k0 + k < live ? (float)(sd * rng_normal(&r)) : 0.0f;
        }
    }
}

const float *model_logits(const Model *m) {
    return acts_layout(&m->s, m->acts, model_geom(m, m->fwd_B, m->fwd_T)).logits;
}

double model_flops_per_token(const Model *m, int T) {
    // Active parameters: every tensor but wpe, an expert's counted top_k / E
    // of the time (each token runs k of the layer's E experts).
    double n = 0.0;
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        if (t->kind == K_WPE) continue;
        n += t->expert >= 0 ? (double)t->numel * m->moe.top_k / m->moe.experts[t->layer] : (double)t->numel;
    }
    return 6.0 * n + 12.0 * m->s.L * m->s.C * (double)T;
}
// ---------------------------------------------------------------------------
// Forward and backward

// Where layer l's QKV projection goes: its activation, or with sp the
// all-to-all receive buffer, which seq_to_heads packs from before it receives.
static float *qkv_out(Model *m, const Acts *a, int l) {
    return m->sp > 1 ? m->ulysses.recv : at(a, a->qkv, l);
}

// Dropout site (layer, site) of this micro-batch (kernels.h Dropout), or NULL
// when the last forward did not drop. Positions are global: this rank's offset
// in the row (sp); attention runs on full rows of this rank's heads.
static const Dropout *drop_at(const Model *m, Dropout *d, int layer, int site) {
    if (!m->drop_on) return NULL;
    int h0 = 0, nh = m->s.NH;
    if (site == DROP_ATTN && m->sp > 1) ulysses_split_heads(m->s.NH, m->sp, m->sp_rank, &h0, &nh);
    int64_t pos0 = site == DROP_ATTN ? 0 : (int64_t)m->sp_rank * m->T;
    *d = dropout_of(m->dropout, dropout_key(m->moe_seed, m->moe_step, layer, site), m->moe_row0, pos0, h0);
    return d;
}

// A residual branch's output: dropped in place when dropout is on.
static void drop_branch(const Model *m, float *x, int layer, int site) {
    Dropout d;
    if (drop_at(m, &d, layer, site)) m->bk->dropout_forward(x, x, &d, m->fwd_B, m->fwd_T, m->s.C);
}

// The gradient of a residual branch's output from dres: dres itself, or with
// dropout its masked copy in spare.
static const float *branch_grad(const Model *m, float *spare, const float *dres, int layer, int site) {
    Dropout d;
    if (!drop_at(m, &d, layer, site)) return dres;
    m->bk->dropout_backward(spare, dres, &d, m->fwd_B, m->fwd_T, m->s.C);
    return spare;
}

// What a pass over the paged KV cache adds to a forward: the cache and the
// rows' tables (already in backend memory: m->tok, m->pos, m->tables).
typedef struct Paged {
    const PagedKV *kv;
    int max_blocks;
    const RaggedBatch *b;   // the pass (host arrays): its runs of rows are MoE capacity groups
} Paged;

// Attention of layer l's qkv (qkv_out) into atty: on this rank's tokens and
// all heads, or (sp > 1) all-to-all to full rows of this rank's heads and back,
// or (a pass, pg) each row's key and value into the cache, then every row
// over its sequence's cache.
static void attention_fwd(Model *m, const Acts *a, int l, int B, int T, const Paged *pg) {
    const Backend *k = m->bk;
    Dropout dd;
    const Dropout *drop = drop_at(m, &dd, l, DROP_ATTN);
    float *qkv = qkv_out(m, a, l), *atty = at(a, a->atty, l);
    if (pg) {
        const PagedKV *kv = pg->kv;
        float *kvl = kv->kv + (size_t)l * kv->layer_stride;
        k->kv_store(kvl, kv->block_stride, kv->v_offset, qkv, m->tables, pg->max_blocks, m->pos, B, m->Ct, kv->bs);
        k->paged_attention_forward(atty, qkv, 3 * m->Ct, kvl, kv->block_stride, kv->v_offset, m->tables,
                                   pg->max_blocks, m->pos, B, m->Ct, m->NHt, kv->bs);
        return;
    }
    if (m->sp == 1) {
        k->attention_forward(atty, at(a, a->att_lse, l), qkv, B, T, m->s.C, m->s.NH, drop);
        return;
    }
    Ulysses *u = &m->ulysses;
    char tag[40];
    snprintf(tag, sizeof tag, "qkv h.%d", l);
    ulysses_seq_to_heads(u, at(a, a->qkvh, l), qkv, B, T, 3, tag);
    k->attention_forward(at(a, a->atth, l), at(a, a->att_lse, l), at(a, a->qkvh, l), B, T * m->sp, u->Cl, u->NHl,
                         drop);
    snprintf(tag, sizeof tag, "att h.%d", l);
    ulysses_heads_to_seq(u, atty, at(a, a->atth, l), B, T, 1, tag);
}

// d.dc holds d(atty) of layer l; leaves d(qkv) in d.d3c. With sp, d(atth)
// lands in the send buffer and d(qkvh) is written to the receive buffer, each
// free at that point (ulysses.h: src may be recv, dst send).
static void attention_bwd(Model *m, const Acts *a, const Scratch *d, int l, int B, int T) {
    const Backend *k = m->bk;
    Dropout dd;
    const Dropout *drop = drop_at(m, &dd, l, DROP_ATTN);
    if (m->sp == 1) {
        k->attention_backward(d->d3c, d->dc, at(a, a->qkv, l), at(a, a->atty, l), at(a, a->att_lse, l), B, T,
                              m->s.C, m->s.NH, drop);
        return;
    }
    Ulysses *u = &m->ulysses;
    char tag[40];
    snprintf(tag, sizeof tag, "d att h.%d", l);
    float *datth = u->send, *dqkvh = u->recv;
    ulysses_seq_to_heads(u, datth, d->dc, B, T, 1, tag);
    k->attention_backward(dqkvh, datth, at(a, a->qkvh, l), at(a, a->atth, l), at(a, a->att_lse, l), B,
                          T * m->sp, u->Cl, u->NHl, drop);
    snprintf(tag, sizeof tag, "d qkv h.%d", l);
    ulysses_heads_to_seq(u, d->d3c, dqkvh, B, T, 3, tag);
}

// out = inp @ W + bias for layer l's matrix j (its bias is j + 1): the
// training layout through matmul_forward (epi must be EPI_NONE), or the matrix
// as the inference store holds it, with the epilogue fused (tmp: its scratch).
static void linear(Model *m, const ParamStore *ps, const float *pl, int l, int j, float *out, const float *inp,
                   size_t N, int IC, int OC, int epi, float *tmp) {
    const int u = U_LAYER(l);
    const float *w = TP(m, pl, u, LT(m, l, j)), *bias = TP(m, pl, u, LT(m, l, j + 1));
    if (!m->infer) {
        m->bk->matmul_forward(out, inp, w, bias, N, IC, OC, 0);
        return;
    }
    HeldMatrix hm = ps->matrix(ps->ctx, LT(m, l, j));
    m->bk->matmul_held_forward(out, inp, hm.w, hm.dtype, hm.scale, bias, N, IC, OC, epi, tmp);
}

// out_res = res + inp @ W_j + b_j for the row-split projections (c_proj):
// with tp, the partial products are summed over the group first (the bias is
// held by one rank); an inference pass at tp = 1 adds into the residual
// stream in place, fused.
static void project_residual(Model *m, const ParamStore *ps, const float *pl, int l, int j, float *out_res,
                             const float *res, float *proj, const float *inp, size_t N, int IC, float *tmp) {
    const int C = m->s.C;
    if (m->infer && m->tp_size == 1) {
        linear(m, ps, pl, l, j, out_res, inp, N, IC, C, EPI_RESIDUAL, tmp);   // out_res == res
        return;
    }
    linear(m, ps, pl, l, j, proj, inp, N, IC, C, EPI_NONE, tmp);
    if (m->tp_size > 1) comm_allreduce_sum(m->tp, proj, N * (size_t)C, "tp");
    drop_branch(m, proj, l, j == K_ATTPW ? DROP_ATTN_RESID : DROP_MLP_RESID);
    m->bk->residual_forward(out_res, res, proj, N * (size_t)C);
}

// Layer l's forward from `res` into layer_out(l), with the layer's parameters
// pl (and, in a pass, the matrices of ps). Training and inference run this
// same code; a pass (pg) differs in its attention (the paged cache), in the
// held slices (widths Ct, Ht), and in the fused epilogues.
// Points layer l's MoE runtime at its parameters: pl the layer's unit, pe the
// unit of its held experts (pl itself at ep = 1); gl, ge their gradients (or NULL).
static void moe_bind(Model *m, int l, const float *pl, const float *pe, float *gl, float *ge) {
    MoeLayer *ml = &m->moel[l];
    const int u = U_LAYER(l), ux = m->xunit[l];
#define DW(kind) (LT(m, l, kind) < 0 ? NULL : TP(m, pl, u, LT(m, l, kind)))
#define DG(kind) (LT(m, l, kind) < 0 ? NULL : TP(m, gl, u, LT(m, l, kind)))
    ml->w.gate = DW(K_GATE);
    ml->w.rfcw = DW(K_RFCW);
    ml->w.rfcb = DW(K_RFCB);
    ml->w.rpw = DW(K_RFCPW);
    ml->w.rpb = DW(K_RFCPB);
    ml->w.coefw = DW(K_COEFW);
    ml->w.coefb = DW(K_COEFB);
    for (int le = 0; le < ml->El; le++) {
        int t = model_tensor(m, l, K_XFCW, ml->e0 + le);
        MoeExpertW *w = &ml->w.experts[le];
        w->fcw = TP(m, pe, ux, t);
        w->fcb = TP(m, pe, ux, t + 1);
        w->pw = TP(m, pe, ux, t + 2);
        w->pb = TP(m, pe, ux, t + 3);
        if (!ge) continue;
        MoeExpertG *g = &ml->g.experts[le];
        g->fcw = TP(m, ge, ux, t);
        g->fcb = TP(m, ge, ux, t + 1);
        g->pw = TP(m, ge, ux, t + 2);
        g->pb = TP(m, ge, ux, t + 3);
    }
    if (!gl) return;
    ml->g.gate = DG(K_GATE);
    ml->g.rfcw = DG(K_RFCW);
    ml->g.rfcb = DG(K_RFCB);
    ml->g.rpw = DG(K_RFCPW);
    ml->g.rpb = DG(K_RFCPB);
    ml->g.coefw = DG(K_COEFW);
    ml->g.coefb = DG(K_COEFB);
#undef DW
#undef DG
}

// Layer l's MoE MLP: ln2 -> fcproj, res3 = res2 + fcproj.
static void moe_mlp_forward(Model *m, const Acts *a, int l, const float *pl, const ParamStore *ps, int phase, int B,
                            int T) {
    const int u = U_LAYER(l), ux = m->xunit[l];
    const size_t N = (size_t)B * T, C = (size_t)m->s.C;
    const float *pe = ux == u ? pl : ps->params(ps->ctx, ux, phase);
    moe_bind(m, l, pl, pe, NULL, NULL);
    float *fcproj = at(a, a->fcproj, l);
    moe_forward(&m->moel[l], fcproj, at(a, a->ln2, l), B, T, m->moe_eval, m->moe_seed, m->moe_step, m->moe_row0);
    // A recompute in backward keeps the experts held for the backward that follows.
    if (ux != u && phase == PHASE_FWD) ps->release(ps->ctx, ux, phase);
    drop_branch(m, fcproj, l, DROP_MLP_RESID);
    m->bk->residual_forward(layer_out(a, l, N * C), at(a, a->res2, l), fcproj, N * C);
}

// Row i of a pass continues row i - 1's run: the next position of the same
// sequence (the same block table).
static int same_run(const RaggedBatch *b, int i) {
    const size_t mb = (size_t)b->max_blocks;
    return b->pos[i] == b->pos[i - 1] + 1 &&
           memcmp(b->tables + (size_t)i * mb, b->tables + (size_t)(i - 1) * mb, mb * sizeof(int32_t)) == 0;
}

// A pass's MoE MLP: ln2 -> fcproj, res3 = res2 + fcproj, eval capacity. Without
// drops one routing over every row (no choice can drop, whatever the grouping);
// with drops each run of one sequence's consecutive rows is a capacity group
// (a prompt chunk, or a whole row in eval), a decode token a group of its own.
static void moe_mlp_forward_paged(Model *m, const Acts *a, int l, const float *pl, const ParamStore *ps,
                                  const Paged *pg) {
    const RaggedBatch *b = pg->b;
    const int u = U_LAYER(l), ux = m->xunit[l];
    const size_t C = (size_t)m->s.C;
    const float *pe = ux == u ? pl : ps->params(ps->ctx, ux, PHASE_FWD);
    moe_bind(m, l, pl, pe, NULL, NULL);
    MoeLayer *ml = &m->moel[l];
    if (!m->moe.drop_tokens) {
        moe_forward(ml, a->fcproj, a->ln2, b->N, 1, 1, 0, 0, 0);
    } else {
        for (int i = 0, j; i < b->N; i = j) {
            for (j = i + 1; j < b->N && same_run(b, j); j++) {}
            moe_forward(ml, a->fcproj + (size_t)i * C, a->ln2 + (size_t)i * C, 1, j - i, 1, 0, 0, 0);
        }
    }
    if (ux != u) ps->release(ps->ctx, ux, PHASE_FWD);
    m->bk->residual_forward(a->res3, a->res2, a->fcproj, (size_t)b->N * C);
}

static void layer_forward(Model *m, const Acts *a, int l, const float *pl, const ParamStore *ps, int B, int T,
                          const Paged *pg, int phase) {
    const GPTShape *s = &m->s;
    const int C = s->C, Ct = m->Ct, Ht = m->Ht, u = U_LAYER(l);
    const size_t N = (size_t)B * T;
    const Backend *k = m->bk;
    const float *res = layer_in(a, l, N * C);
#define W(j) TP(m, pl, u, LT(m, l, j))
    float *ln1 = at(a, a->ln1, l), *qkv = qkv_out(m, a, l), *atty = at(a, a->atty, l);
    float *attproj = at(a, a->attproj, l), *res2 = at(a, a->res2, l), *ln2 = at(a, a->ln2, l);
    float *fch = at(a, a->fch, l), *fch_gelu = at(a, a->fch_gelu, l);
    float *fcproj = at(a, a->fcproj, l), *res3 = layer_out(a, l, N * C);
    k->layernorm_forward(ln1, at(a, a->ln1_mean, l), at(a, a->ln1_rstd, l), res, W(K_LN1W), W(K_LN1B), N, C);
    linear(m, ps, pl, l, K_QKVW, qkv, ln1, N, C, 3 * Ct, EPI_NONE, fch);
    attention_fwd(m, a, l, B, T, pg);
    project_residual(m, ps, pl, l, K_ATTPW, res2, res, attproj, atty, N, Ct, fch);
    k->layernorm_forward(ln2, at(a, a->ln2_mean, l), at(a, a->ln2_rstd, l), res2, W(K_LN2W), W(K_LN2B), N, C);
    if (is_moe(m, l)) {
        if (pg) moe_mlp_forward_paged(m, a, l, pl, ps, pg);
        else moe_mlp_forward(m, a, l, pl, ps, phase, B, T);
        return;
    }
    if (m->infer) {
        linear(m, ps, pl, l, K_FCW, fch_gelu, ln2, N, C, Ht, EPI_GELU, fch);
    } else {
        linear(m, ps, pl, l, K_FCW, fch, ln2, N, C, Ht, EPI_NONE, NULL);
        k->gelu_forward(fch_gelu, fch, N * Ht);
    }
    project_residual(m, ps, pl, l, K_FCPW, res3, res2, fcproj, fch_gelu, N, Ht, fch);
#undef W
}

float model_forward(Model *m, const ParamStore *ps, const int32_t *inputs, const int32_t *targets,
                    int B, int T, int for_backward) {
    SYS_CHECK(!m->infer, "model_forward on an inference model (use model_forward_paged)");
    SYS_CHECK(B <= m->B && T <= m->T, "batch %dx%d exceeds the allocated %dx%d", B, T, m->B, m->T);
    SYS_CHECK(m->sp == 1 || T == m->T, "sequence parallelism runs full rows only (%d of %d tokens)", T, m->T);
    const GPTShape *s = &m->s;
    const int C = s->C, L = s->L, UF = U_FINAL(m);
    const size_t N = (size_t)B * T;
    const Backend *k = m->bk;
    Acts a = acts_layout(s, m->acts, model_geom(m, B, T));
    m->fwd_B = B;
    m->fwd_T = T;
    m->moe_eval = !for_backward;
    m->drop_on = for_backward && m->dropout > 0.0f;
    k->from_host_i32(m->tok, inputs, N);
    if (targets) k->from_host_i32(m->tgt, targets, N);

    // Position embeddings from this rank's offset in the row.
    const size_t pos0 = (size_t)m->sp_rank * (size_t)m->T * (size_t)C;
    const float *emb = ps->params(ps->ctx, U_EMBED, PHASE_FWD);
    k->encoder_forward(a.encoded, m->tok, TP(m, emb, U_EMBED, 0), TP(m, emb, U_EMBED, 1) + pos0, B, T, C);
    ps->release(ps->ctx, U_EMBED, PHASE_FWD);
    drop_branch(m, a.encoded, -1, DROP_EMBED);
    for (int l = 0; l < L; l++) {
        const int u = U_LAYER(l);
        layer_forward(m, &a, l, ps->params(ps->ctx, u, PHASE_FWD), ps, B, T, NULL, PHASE_FWD);
        ps->release(ps->ctx, u, PHASE_FWD);
    }
    m->moe_aux = 0.0;
    for (int l = 0; l < L; l++)
        if (is_moe(m, l)) m->moe_aux += m->moel[l].stats.aux / B;
    const float *res = layer_in(&a, L, N * C);
    // The LM head: ln_f and the tied wte, held through backward when it follows.
    const int lnf = LT(m, -1, K_LNFW);
    const float *fin = ps->params(ps->ctx, UF, PHASE_FWD);
    k->layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, res, TP(m, fin, UF, lnf), TP(m, fin, UF, lnf + 1), N, C);
    emb = ps->params(ps->ctx, U_EMBED, PHASE_FWD);
    k->matmul_forward(a.logits, a.lnf, TP(m, emb, U_EMBED, 0), NULL, N, C, s->Vp, 1);
    if (!for_backward) {
        ps->release(ps->ctx, U_EMBED, PHASE_FWD);
        ps->release(ps->ctx, UF, PHASE_FWD);
    }
    if (!targets) return 0.0f;

    k->crossentropy_forward(a.losses, a.lse, a.logits, m->tgt, N, s->V, s->Vp);
    k->to_host(m->host_losses, a.losses, N);
    double sum = 0.0;
    size_t counted = 0;
    for (size_t i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        sum += m->host_losses[i];
        counted++;
    }
    m->mean_loss = counted ? (float)(sum / (double)counted) : 0.0f;
    return m->mean_loss;
}

void model_backward(Model *m, const ParamStore *ps, const int32_t *inputs, const int32_t *targets,
                    int B, int T, float dloss) {
    const GPTShape *s = &m->s;
    const int C = s->C, H = s->H, L = s->L, UF = U_FINAL(m);
    const size_t N = (size_t)B * T;
    const Backend *k = m->bk;
    (void)inputs;   // the forward copied both to m->tok and m->tgt
    (void)targets;
    Geom g = model_geom(m, B, T);
    Acts a = acts_layout(s, m->acts, g);
    Scratch d = scratch_layout(s, m->scratch, g, a2a_floats(s, g));

    // LM head (parameters still held from forward): logits -> dlogits in place,
    // then into dlnf and the tied wte.
    const int lnf = LT(m, -1, K_LNFW);
    const float *emb = ps->params(ps->ctx, U_EMBED, PHASE_BWD);
    const float *fin = ps->params(ps->ctx, UF, PHASE_BWD);
    float *gemb = ps->grads(ps->ctx, U_EMBED);
    k->crossentropy_backward(a.logits, a.logits, a.lse, m->tgt, dloss, N, s->V, s->Vp);
    // dlogits and lnf stay until the next forward; a layer's dout is scratch, and
    // its input an activation that recomputation overwrites.
    linear_backward(m, ps, 0, d.dc, TP(m, gemb, U_EMBED, 0), NULL, a.logits, a.lnf, TP(m, emb, U_EMBED, 0), N, C, s->Vp,
                    1, DW_DOUT_KEPT | DW_INP_KEPT);
    const int kept = a.recompute ? 0 : DW_INP_KEPT;
    int early = ps->embed_early && ps->embed_early(ps->ctx, N);
    ps->release(ps->ctx, U_EMBED, PHASE_BWD);
    k->zero(d.dres, N * C);
    const float *last = layer_in(&a, L, N * C);
    float *gfin = ps->grads(ps->ctx, UF);
    k->layernorm_backward(d.dres, TP(m, gfin, UF, lnf), TP(m, gfin, UF, lnf + 1), d.dc, last,
                       TP(m, fin, UF, lnf), a.lnf_mean, a.lnf_rstd, N, C);
    ps->release(ps->ctx, UF, PHASE_BWD);
    ps->grads_ready(ps->ctx, UF);

    for (int l = L - 1; l >= 0; l--) {
        const int u = U_LAYER(l);
        const float *pl = ps->params(ps->ctx, u, PHASE_BWD);
        // Activation checkpointing: the layer's activations again, from its kept input.
        if (m->recompute && l < L - 1) layer_forward(m, &a, l, pl, ps, B, T, NULL, PHASE_BWD);   // the last is still there
        float *gl = ps->grads(ps->ctx, u);
#define W(j) TP(m, pl, u, LT(m, l, j))
#define G(j) TP(m, gl, u, LT(m, l, j))
        const float *res = layer_in(&a, l, N * C);
        // res3 = res2 + fcproj: d.dres is d(res3), and flows to both.
        if (is_moe(m, l)) {
            const int ux = m->xunit[l];
            const float *pe = ux == u ? pl : ps->params(ps->ctx, ux, PHASE_BWD);
            float *ge = ux == u ? gl : ps->grads(ps->ctx, ux);
            moe_bind(m, l, pl, pe, gl, ge);
            moe_backward(&m->moel[l], d.dc, branch_grad(m, d.d3c, d.dres, l, DROP_MLP_RESID), at(&a, a.ln2, l),
                         (float)m->moe.aux_w * dloss * (float)T);
            if (ux != u) {
                ps->release(ps->ctx, ux, PHASE_BWD);
                ps->grads_ready(ps->ctx, ux);
            }
        } else {
            linear_backward(m, ps, LT(m, l, K_FCPW), d.dh1, G(K_FCPW), G(K_FCPB),
                            branch_grad(m, d.d3c, d.dres, l, DROP_MLP_RESID), at(&a, a.fch_gelu, l), W(K_FCPW), N, H, C,
                            0, kept);
            k->gelu_backward(d.dh2, at(&a, a.fch, l), d.dh1, N * H);
            linear_backward(m, ps, LT(m, l, K_FCW), d.dc, G(K_FCW), G(K_FCB), d.dh2, at(&a, a.ln2, l), W(K_FCW), N, C,
                            H, 0, kept);
        }
        k->layernorm_backward(d.dres, G(K_LN2W), G(K_LN2B), d.dc, at(&a, a.res2, l), W(K_LN2W),
                           at(&a, a.ln2_mean, l), at(&a, a.ln2_rstd, l), N, C);
        // res2 = res + attproj: d.dres is now d(res2).
        linear_backward(m, ps, LT(m, l, K_ATTPW), d.dc, G(K_ATTPW), G(K_ATTPB),
                        branch_grad(m, d.d3c, d.dres, l, DROP_ATTN_RESID), at(&a, a.atty, l), W(K_ATTPW), N, C, C, 0, kept);
        attention_bwd(m, &a, &d, l, B, T);
        linear_backward(m, ps, LT(m, l, K_QKVW), d.dc, G(K_QKVW), G(K_QKVB), d.d3c, at(&a, a.ln1, l), W(K_QKVW), N, C,
                        3 * C, 0, kept);
        k->layernorm_backward(d.dres, G(K_LN1W), G(K_LN1B), d.dc, res, W(K_LN1W),
                           at(&a, a.ln1_mean, l), at(&a, a.ln1_rstd, l), N, C);
#undef W
#undef G
        ps->release(ps->ctx, u, PHASE_BWD);
        ps->grads_ready(ps->ctx, u);
    }
    const size_t pos0 = (size_t)m->sp_rank * (size_t)m->T * (size_t)C;
    branch_grad(m, d.dres, d.dres, -1, DROP_EMBED);     // in place
    if (early) {
        ps->embed_rows(ps->ctx, d.dres, m->tok, B, T, m->sp_rank * m->T);
        return;
    }
    k->encoder_backward(TP(m, gemb, U_EMBED, 0), TP(m, gemb, U_EMBED, 1) + pos0, d.dres, m->tok, B, T, C);
    ps->grads_ready(ps->ctx, U_EMBED);
}

// ---------------------------------------------------------------------------
// Inference: a ragged batch over the paged KV cache, through layer_forward

void model_create_infer(Model *m, const ModelConfig *mc, int Nmax, int Smax, int max_blocks, const Backend *bk,
                        Comm *tp) {
    model_create_infer_moe(m, mc, Nmax, Smax, max_blocks, bk, tp, NULL, NULL);
}

void model_create_infer_moe(Model *m, const ModelConfig *mc, int Nmax, int Smax, int max_blocks, const Backend *bk,
                            Comm *tp, const MoeSpec *moe, Comm *ep) {
    memset(m, 0, sizeof *m);
    m->s = model_shape(mc);
    m->sp = 1;
    m->infer = 1;
    m->tp = tp;
    m->tp_size = tp ? tp->size : 1;
    m->tp_rank = tp ? tp->rank : 0;
    SYS_CHECK(m->s.NH % m->tp_size == 0 && m->s.H % m->tp_size == 0,
              "tp = %d must divide the heads (%d) and the MLP width (%d)", m->tp_size, m->s.NH, m->s.H);
    SYS_CHECK(Nmax > 0 && Smax > 0 && Smax <= Nmax && max_blocks > 0, "inference pass of %d rows, %d sampled, %d blocks",
              Nmax, Smax, max_blocks);
    SYS_CHECK(bk->embed_rows && bk->kv_store && bk->paged_attention_forward && bk->matmul_held_forward,
              "the %s backend has no inference kernels", bk->name);
    m->NHt = m->s.NH / m->tp_size;
    m->Ct = m->NHt * (m->s.C / m->s.NH);
    m->Ht = m->s.H / m->tp_size;
    m->ep = ep && ep->size > 1 ? ep : NULL;
    set_moe(m, moe, m->ep ? ep->size : 1, m->ep ? ep->rank : 0);
    build_table(m);
    m->bk = bk;
    m->B = Nmax;
    m->T = 1;
    m->Smax = Smax;
    m->max_blocks = max_blocks;
    m->nacts = acts_layout(&m->s, NULL, model_geom(m, Nmax, 1)).total;
    m->acts = bk->alloc(m->nacts * sizeof(float), "inference activations");
    m->tok = bk->alloc((size_t)Nmax * sizeof(int32_t), "pass tokens");
    m->pos = bk->alloc((size_t)Nmax * sizeof(int32_t), "pass positions");
    m->tables = bk->alloc((size_t)Nmax * (size_t)max_blocks * sizeof(int32_t), "pass block tables");
    m->tgt = bk->alloc((size_t)Smax * sizeof(int32_t), "pass targets");
    m->host_losses = xcalloc((size_t)Smax * sizeof(float), "per-token losses");
    if (m->moe.nmoe) {
        m->moe_eval = 1;
        m->moel = xcalloc(sizeof(MoeLayer) * (size_t)m->s.L, "moe layers");
        for (int l = 0; l < m->s.L; l++)
            if (is_moe(m, l)) moe_layer_create_replicated(&m->moel[l], &m->moe, l, m->s.C, m->s.H, Nmax, m->ep, bk);
    }
}

PagedKV model_kv_layout(const Model *m, int nblocks, int bs) {
    PagedKV kv = {.kv = NULL, .nblocks = nblocks, .bs = bs};
    kv.v_offset = (size_t)bs * (size_t)m->Ct;
    kv.layer_stride = 2 * kv.v_offset;
    kv.block_stride = kv.layer_stride * (size_t)m->s.L;
    return kv;
}

// Rank 0 composed the pass; every rank checks it before indexing with it.
static void check_pass(const Model *m, const PagedKV *kv, const RaggedBatch *b) {
    SYS_CHECK(b->N >= 0 && b->nsample >= 0 && b->N <= m->B && b->nsample <= m->Smax && b->max_blocks == m->max_blocks,
              "pass of %d rows (%d sampled, %d blocks per sequence) exceeds %d (%d, %d)", b->N, b->nsample,
              b->max_blocks, m->B, m->Smax, m->max_blocks);
    for (int i = 0; i < b->N; i++) {
        SYS_CHECK(b->tok[i] >= 0 && b->tok[i] < m->s.V && b->pos[i] >= 0 && b->pos[i] < m->s.maxT &&
                      b->pos[i] / kv->bs < b->max_blocks,
                  "pass row %d: token %d at position %d outside the model", i, b->tok[i], b->pos[i]);
        int32_t blk = b->tables[(size_t)i * b->max_blocks + b->pos[i] / kv->bs];
        SYS_CHECK(blk >= 0 && blk < kv->nblocks, "pass row %d: KV block %d outside the pool of %d", i, blk, kv->nblocks);
    }
    for (int k = 0; k < b->nsample; k++)
        SYS_CHECK(b->sample[k] >= 0 && b->sample[k] < b->N, "sampled row %d of a pass of %d rows", b->sample[k], b->N);
}

void model_forward_paged(Model *m, const ParamStore *ps, const PagedKV *kv, const RaggedBatch *b,
                         float *host_logits) {
    SYS_CHECK(m->infer, "model_forward_paged on a training model");
    check_pass(m, kv, b);
    const GPTShape *s = &m->s;
    const int C = s->C, L = s->L, UF = U_FINAL(m), N = b->N, S = b->nsample;
    const Backend *k = m->bk;
    if (N == 0) return;
    Acts a = acts_layout(s, m->acts, model_geom(m, N, 1));
    m->fwd_B = N;
    m->fwd_T = 1;
    k->from_host_i32(m->tok, b->tok, (size_t)N);
    k->from_host_i32(m->pos, b->pos, (size_t)N);
    k->from_host_i32(m->tables, b->tables, (size_t)N * (size_t)b->max_blocks);
    const Paged pg = {.kv = kv, .max_blocks = b->max_blocks, .b = b};
    const float *emb = ps->params(ps->ctx, U_EMBED, PHASE_FWD);
    k->embed_rows(a.encoded, m->tok, m->pos, TP(m, emb, U_EMBED, 0), TP(m, emb, U_EMBED, 1), N, C);
    ps->release(ps->ctx, U_EMBED, PHASE_FWD);
    for (int l = 0; l < L; l++) {
        const int u = U_LAYER(l);
        layer_forward(m, &a, l, ps->params(ps->ctx, u, PHASE_FWD), ps, N, 1, &pg, PHASE_FWD);
        ps->release(ps->ctx, u, PHASE_FWD);
    }
    if (!host_logits || S == 0) return;     // the LM head only where the logits are wanted
    // The sampled rows of the residual stream (ln1 is free now), ln_f, the tied head.
    for (int i = 0; i < S; i++) k->copy(a.ln1 + (size_t)i * C, a.res3 + (size_t)b->sample[i] * C, (size_t)C);
    const int lnf = LT(m, -1, K_LNFW);
    const float *fin = ps->params(ps->ctx, UF, PHASE_FWD);
    k->layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, a.ln1, TP(m, fin, UF, lnf), TP(m, fin, UF, lnf + 1), (size_t)S, C);
    ps->release(ps->ctx, UF, PHASE_FWD);
    HeldMatrix head = ps->matrix(ps->ctx, 0);
    k->matmul_held_forward(a.logits, a.lnf, head.w, head.dtype, head.scale, NULL, (size_t)S, C, s->Vp, EPI_NONE, NULL);
    k->to_host(host_logits, a.logits, (size_t)S * (size_t)s->Vp);
}
