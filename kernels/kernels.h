// kernels.h: the one compute interface of Partita.
//
// Every op of the model, forward and backward, as a small pure function: raw
// pointers plus dimensions in, no model struct, no MPI, no allocation. The cpu
// backend (kernels/cpu) implements it with OpenBLAS sgemm for matrix products
// and OpenMP for the rest; the cuda backend implements the same signatures.
//
// Conventions (STYLE.md): B batch, T sequence, C channels, NH heads, HS = C/NH,
// N = B*T rows, V vocabulary, Vp padded vocabulary. Matrices are row-major.
// Parameter gradients accumulate (+=) so gradient accumulation is free;
// activation gradients are overwritten unless a comment says "accumulates".
// All reductions have a fixed order that does not depend on the thread count,
// so the same inputs give the same bits whatever OMP_NUM_THREADS is.
#ifndef PARTITA_KERNELS_H
#define PARTITA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The largest head size HS = C/NH each attention kernel runs: their per-thread
// scratch (stack arrays, registers) is sized by it. The deck refuses larger heads.
#define KERNELS_ATT_HSMAX 256         // cpu attention_forward/backward
#define KERNELS_PAGED_HSMAX 512       // cpu paged_attention_forward
#define KERNELS_CUDA_ATT_HSMAX 128    // cuda attention (per-thread registers)
#define KERNELS_CUDA_PAGED_HSMAX 256  // cuda paged attention

// out[b,t,:] = wte[tok[b,t],:] + wpe[t,:]
void encoder_forward(float *out,            // (B, T, C)
                     const int32_t *tok,    // (B, T)
                     const float *wte,      // (Vp, C)
                     const float *wpe,      // (maxT, C)
                     int B, int T, int C);
// dwte[tok] += dout, dwpe[t] += sum_b dout.
void encoder_backward(float *dwte,          // (Vp, C) accumulates
                      float *dwpe,          // (maxT, C) accumulates
                      const float *dout,    // (B, T, C)
                      const int32_t *tok,   // (B, T)
                      int B, int T, int C);

// out = (x - mean) * rstd * weight + bias, per row of C; eps = 1e-5.
void layernorm_forward(float *out,          // (N, C)
                       float *mean,         // (N)
                       float *rstd,         // (N)
                       const float *inp,    // (N, C)
                       const float *weight, // (C)
                       const float *bias,   // (C)
                       size_t N, int C);
void layernorm_backward(float *dinp,        // (N, C) accumulates (residual stream)
                        float *dweight,     // (C) accumulates
                        float *dbias,       // (C) accumulates
                        const float *dout,  // (N, C)
                        const float *inp,   // (N, C)
                        const float *weight,// (C)
                        const float *mean,  // (N)
                        const float *rstd,  // (N)
                        size_t N, int C);

// Between two tiles of a matrix product the cpu kernels call fn(ctx) on the
// thread that set the hook (ZeRO advances its collectives in flight there:
// MPICH moves a large message only inside MPI calls, a shared-memory cell per
// call, and a layer's products run for tens of milliseconds). Per thread
// (thread-local: OpenMP's other threads never call it); fn NULL turns it off.
// The tiles and their order do not change: results are bit-identical.
void kernels_set_tile_hook(void (*fn)(void *ctx), void *ctx);

// out = inp @ W + bias. W is (IC, OC) when trans_w == 0 (Hugging Face Conv1D
// layout) and (OC, IC) when trans_w == 1 (the tied LM head: logits = x @ wte^T).
// bias may be NULL.
void matmul_forward(float *out,             // (N, OC)
                    const float *inp,       // (N, IC)
                    const float *weight,    // (IC, OC) or (OC, IC)
                    const float *bias,      // (OC) or NULL
                    size_t N, int IC, int OC, int trans_w);
// dinp = dout @ W^T (overwritten); dweight += inp^T @ dout (in W's layout);
// dbias += sum over rows of dout (skipped when dbias is NULL).
void matmul_backward(float *dinp,           // (N, IC) overwritten
                     float *dweight,        // like weight, accumulates
                     float *dbias,          // (OC) accumulates, or NULL
                     const float *dout,     // (N, OC)
                     const float *inp,      // (N, IC)
                     const float *weight,   // (IC, OC) or (OC, IC)
                     size_t N, int IC, int OC, int trans_w);
// dweight NULL: matmul_backward computes dinp (and dbias) only, and the
// weight's gradient is left to matmul_dweight_rows.

// Rows [r0, r1) of the weight's gradient (rows in W's layout: of IC when
// trans_w == 0, of OC when 1): dweight rows = beta dweight rows + their part of
// inp^T @ dout (its transpose when trans_w). dweight is the whole tensor; the
// other rows are not touched. ZeRO's fused two-rank reduction (zero.h) sums
// two ranks' gradients through it, each writing half the rows of one tensor.
void matmul_dweight_rows(float *dweight,    // like weight
                         const float *dout, // (N, OC)
                         const float *inp,  // (N, IC)
                         size_t N, int IC, int OC, int trans_w, int r0, int r1, float beta);

// Dropout (training only), counter-based: element e of global row r at a site
// is kept when dropout_bits(key, r, e) >= threshold, the key naming (run seed,
// optimizer step, layer, site). No state and no mask in memory: forward and
// backward (and a recompute) draw the same mask from the same counters, and a
// rank draws its elements by their global indices, so every layout (dp, sp,
// ZeRO stage, accumulation split, recompute) drops the same elements.
// The hash is splitmix64's finalizer; tests/test_dropout.py implements the same.
#ifdef __CUDACC__
#define KERNELS_HD __host__ __device__
#else
#define KERNELS_HD
#endif
enum { DROP_EMBED = 0, DROP_ATTN = 1, DROP_ATTN_RESID = 2, DROP_MLP_RESID = 3 };   // the sites
static inline KERNELS_HD uint64_t dropout_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
// layer -1: the embeddings.
static inline KERNELS_HD uint64_t dropout_key(uint64_t seed, int64_t step, int layer, int site) {
    uint64_t h = dropout_mix(seed ^ 0xD2B74407B1CE6E93ull);
    h = dropout_mix(h + (uint64_t)step * 0x9E3779B97F4A7C15ull);
    return dropout_mix(h + (uint64_t)(4 * ((int64_t)layer + 1) + site));
}
// The key of global row r (hoisted out of the loop over a row's elements).
static inline KERNELS_HD uint64_t dropout_row(uint64_t key, uint64_t r) {
    return dropout_mix(key + r * 0x9E3779B97F4A7C15ull);
}
// 32 random bits of element e of a row.
static inline KERNELS_HD uint32_t dropout_bits(uint64_t row_key, uint64_t e) {
    return (uint32_t)(dropout_mix(row_key ^ (e * 0xD1B54A32D192ED03ull)) >> 32);
}

// One site's dropout for one call. Elements: (B, T, C) activations, e = (pos0 +
// t) * C + c of row row0 + b; attention probabilities (b, h, i, j) of rows of T,
// e = ((head0 + h) * T + i) * T + j. Kept elements are scaled by scale.
typedef struct Dropout {
    uint64_t key;           // dropout_key(seed, step, layer, site)
    uint64_t row0;          // global row index of b = 0 (in the run's data order)
    int64_t pos0;           // global position of t = 0 (this rank's offset in the row)
    int head0;              // global index of head h = 0 (sequence parallelism holds a slice)
    uint32_t threshold;     // floor(p 2^32): drop when the bits are below it
    float scale;            // 1 / (1 - p), rounded to float
} Dropout;
// The threshold and scale of probability p in [0, 1).
static inline Dropout dropout_of(float p, uint64_t key, uint64_t row0, int64_t pos0, int head0) {
    Dropout d = {key, row0, pos0, head0, 0u, 1.0f};
    double t = (double)p * 4294967296.0;
    d.threshold = t >= 4294967295.0 ? 4294967295u : (uint32_t)t;
    d.scale = (float)(1.0 / (1.0 - (double)p));
    return d;
}

// out[b,t,c] = inp[b,t,c] * scale where kept, 0 where dropped (out may be inp).
void dropout_forward(float *out,            // (B, T, C)
                     const float *inp,      // (B, T, C)
                     const Dropout *d, int B, int T, int C);
// dinp = dout * scale where kept, 0 where dropped: the same mask (dinp may be dout).
void dropout_backward(float *dinp,          // (B, T, C) overwritten
                      const float *dout,    // (B, T, C)
                      const Dropout *d, int B, int T, int C);

// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void gelu_forward(float *out, const float *inp, size_t n);
// dinp = dout * gelu'(inp)  (overwritten)
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

// out = a + b
void residual_forward(float *out, const float *a, const float *b, size_t n);

// Causal multi-head self-attention, tiled with an online softmax: for each
// (b, head) and tile of queries, key tiles are visited in order with a running
// max and sum, so at most one (tile x tile) block of scores per head exists at
// a time; the T x T matrix is never formed. scale = 1/sqrt(HS).
// qkv[b,t,:] holds q (C), k (C), v (C); head h uses columns h*HS..h*HS+HS-1 of each.
// lse[b,h,t] = log sum_j exp(score_tj) is kept for the backward pass.
// drop (NULL: none): dropout on the probabilities, GPT-2's attn_pdrop: o_i =
// sum_j P_ij keep_ij scale v_j; lse is that of the undropped P. The T of a
// call is the whole row (sequence parallelism runs attention on full rows).
void attention_forward(float *out,          // (B, T, C)
                       float *lse,          // (B, NH, T)
                       const float *qkv,    // (B, T, 3C)
                       int B, int T, int C, int NH, const Dropout *drop);
// Recomputes the scores tile by tile from qkv and lse (flash-attention style);
// with drop, the mask too (dV uses P keep scale, dS = P (keep scale dP - D)).
void attention_backward(float *dqkv,        // (B, T, 3C) overwritten
                        const float *dout,  // (B, T, C)
                        const float *qkv,   // (B, T, 3C)
                        const float *out,   // (B, T, C)
                        const float *lse,   // (B, NH, T)
                        int B, int T, int C, int NH, const Dropout *drop);

// Attention of single query rows over a paged KV cache (inference). Row i
// belongs to the sequence whose block table is tables + i*max_blocks and sits
// at position pos[i]; it attends over that sequence's keys/values 0..pos[i].
// Key j of a sequence is in block tables[j / bs], slot j % bs: its K at
// kv + block*block_stride + slot*C, its V v_offset floats further on.
// C = NH*HS are the heads this rank holds. scale = 1/sqrt(HS).
void paged_attention_forward(float *out,               // (N, C)
                             const float *q, int q_stride, // (N, q_stride): q is the first C columns
                             const float *kv, size_t block_stride, size_t v_offset,
                             const int32_t *tables, int max_blocks, // (N, max_blocks)
                             const int32_t *pos,       // (N)
                             int N, int C, int NH, int bs);

// Inference rows (a ragged batch): out[i,:] = wte[tok[i],:] + wpe[pos[i],:].
void embed_rows(float *out,                 // (N, C)
                const int32_t *tok,         // (N)
                const int32_t *pos,         // (N)
                const float *wte,           // (Vp, C)
                const float *wpe,           // (maxT, C)
                int N, int C);
// Each row's key and value (columns [C, 2C) and [2C, 3C) of its qkv row) into
// its cache slot: block tables[i*max_blocks + pos[i]/bs], slot pos[i] % bs, at
// the layout of paged_attention_forward.
void kv_store(float *kv, size_t block_stride, size_t v_offset,
              const float *qkv,             // (N, 3C)
              const int32_t *tables, int max_blocks, const int32_t *pos,
              int N, int C, int bs);

// Weights held for inference: W is (OC, IC) (one row per output column), as
// fp32, bf16 (the upper half of an fp32, rounded to nearest even) or int8
// with a scale per row (W_fp32[j, :] ~ scale[j] * W_int8[j, :]).
enum { WDT_F32 = 0, WDT_BF16 = 1, WDT_I8 = 2 };
// What is done with y = inp @ W^T + bias: stored, stored as GELU(y), or added to out.
enum { EPI_NONE = 0, EPI_GELU = 1, EPI_RESIDUAL = 2 };
// Small N (decode) streams each weight once over all threads; larger N uses
// sgemm (bf16/int8 converted block by block). tmp (N, OC) is scratch for
// epilogues on the large-N path. scale is NULL unless wdtype == WDT_I8.
void matmul_held_forward(float *out,        // (N, OC)
                         const float *inp,  // (N, IC)
                         const void *weight, int wdtype, const float *scale,
                         const float *bias, // (OC) or NULL
                         size_t N, int IC, int OC, int epilogue,
                         float *tmp);       // (N, OC)

// Fused softmax + cross-entropy over the first V of Vp logits per row:
// losses[i] = lse_i - logits[i, target_i], lse_i = log sum_{v<V} exp(logits[i,v]).
// Probabilities are never stored. A target < 0 marks a row that is ignored
// (loss 0, gradient 0).
void crossentropy_forward(float *losses,        // (N)
                          float *lse,           // (N)
                          const float *logits,  // (N, Vp)
                          const int32_t *targets, // (N)
                          size_t N, int V, int Vp);
// dlogits[i,v] = dloss * (softmax_v - [v == target_i]) for v < V, 0 for v >= V.
// dlogits may alias logits (the gradient overwrites the logits in place).
void crossentropy_backward(float *dlogits,      // (N, Vp)
                           const float *logits, // (N, Vp)
                           const float *lse,    // (N)
                           const int32_t *targets, // (N)
                           float dloss,
                           size_t N, int V, int Vp);

// AdamW with decoupled weight decay, bias-corrected, t = 1, 2, ...:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p)
void adamw_update(float *param, const float *grad, float *m, float *v, size_t n,
                  float lr, float beta1, float beta2, float eps, float wd, int t);

// x *= s
void scale_inplace(float *x, float s, size_t n);

// sum of squares in float64, summed in fixed-size chunks in a fixed order.
double sumsq(const float *x, size_t n);
// Its pieces, for a vector summed piece by piece (host only): sumsq(x, n) is
// the in-order sum over chunks c of sumsq_chunk(x + c k, min(k, n - c k)),
// k = sumsq_chunk_size(n) (at most 4096 chunks).
size_t sumsq_chunk_size(size_t n);
double sumsq_chunk(const float *x, size_t n);

// Kernel threads (OpenMP and OpenBLAS) for this process.
void kernels_set_threads(int n);
int kernels_get_threads(void);

// Mixture of Experts (src/moe.h): pos[n*K + k] is the dispatch-buffer row of
// choice k of token n, or -1 where it was dropped; w (N*K) weights, NULL = 1.
// dst[pos[n,k]] = w[n,k] * src[n] (rows not named are left as they are)
void moe_dispatch(float *dst, const float *src, const int32_t *pos, const float *w, size_t N, int K, int C);
// out[n] (= or +=) sum_k w[n,k] * y[pos[n,k]], choices summed in k order
void moe_combine(float *out, const float *y, const int32_t *pos, const float *w, size_t N, int K, int C,
                 int accumulate);
// dots[n,k] = a[n] . y[pos[n,k]] (0 where dropped); pos NULL: K = 1 and row n of y
void moe_rowdot(float *dots, const float *a, const float *y, const int32_t *pos, size_t N, int K, int C);

#ifdef __cplusplus
}
#endif

#endif
