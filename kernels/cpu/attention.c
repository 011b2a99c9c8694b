// attention.c: causal multi-head self-attention, tiled with an online softmax
// (flash-attention style); the T x T score matrix is never formed.
//
// Tiles are ATT_TILE queries x ATT_TILE keys and start at multiples of
// ATT_TILE, so the only key tile that crosses the causal diagonal is the
// diagonal one, and only it can be partial. Every product is cut into
// row_panel calls: one output row of ATT_TILE floats held in eight AVX
// registers while a panel of contiguous rows streams past (GCC keeps the
// fixed-size accumulator in registers; a loop over a row in memory would
// load and store it for every FMA). Panels are local copies, zero-padded to
// HSW = HS rounded up to ATT_TILE columns, so no product needs bounds.
// Scratch lives on the stack, sized by HS (about 150 KiB per thread for
// HS = 64 in the backward); HS <= ATT_HSMAX.
#include <assert.h>
#include <math.h>
#include <string.h>
#include <omp.h>
#include "kernels.h"
#include "fastmath.h"

#define ATT_TILE 64
#define ATT_HSMAX KERNELS_ATT_HSMAX

// Rows of a tile are 3C floats apart in qkv, each in its own page, so the
// hardware prefetcher does not follow them: the next tile is requested while
// the current one is computed (a hint only; no-op on compilers without it).
#if defined(__GNUC__)
#define ATT_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#define ATT_NOINLINE __attribute__((noinline))
#else
#define ATT_PREFETCH(p) ((void)(p))
#define ATT_NOINLINE
#endif

// c = beta c + sum_{k<K} a[k*sa] b[k,:], over ATT_TILE columns; beta == 0 ignores
// the old c (which may then be garbage). Kept out of line: compiled on its own,
// GCC holds acc in eight registers; inlined into the tile loops it spills them.
static ATT_NOINLINE void row_panel(float *c,          // (ATT_TILE)
                                   const float *a,    // (K), stride sa
                                   int sa,
                                   const float *b,    // (K, ATT_TILE), row stride ldb
                                   int ldb, int K, float beta)
{
    float acc[ATT_TILE];
    if (beta == 0.0f) {
        for (int j = 0; j < ATT_TILE; j++) acc[j] = 0.0f;
    } else {
        for (int j = 0; j < ATT_TILE; j++) acc[j] = beta * c[j];
    }
    for (int k = 0; k < K; k++) {
        const float ak = a[(size_t)k * sa];
        const float *bk = b + (size_t)k * ldb;
        for (int j = 0; j < ATT_TILE; j++) acc[j] = fmaf(ak, bk[j], acc[j]);
    }
    for (int j = 0; j < ATT_TILE; j++) c[j] = acc[j];
}

// c[0:HSW] = beta c + sum_{k<K} a[k*sa] b[k, 0:HSW], HSW a multiple of ATT_TILE.
static void row_panel_wide(float *c,            // (HSW)
                           const float *a,      // (K), stride sa
                           int sa,
                           const float *b,      // (K, HSW), row stride ldb
                           int ldb, int K, float beta, int HSW)
{
    for (int c0 = 0; c0 < HSW; c0 += ATT_TILE) row_panel(c + c0, a, sa, b + c0, ldb, K, beta);
}

// Asks for n rows of HS floats, stride ld, to be brought into cache.
static void prefetch_rows(const float *src,     // (n, HS), row stride ld
                          size_t ld, int n, int HS)
{
    for (int i = 0; i < n; i++)
        for (int d = 0; d < HS; d += 16) ATT_PREFETCH(src + (size_t)i * ld + d);
}

// dst[d, j] = row j of src (stride C3), column d: a (HS, ATT_TILE) transposed tile,
// zero for j >= n.
static void load_transposed(float *dst,         // (HS, ATT_TILE)
                            const float *src,   // n rows of stride C3, offset to the head
                            size_t C3, int n, int HS)
{
    for (int j = 0; j < n; j++) {
        const float *row = src + (size_t)j * C3;
        for (int d = 0; d < HS; d++) dst[d * ATT_TILE + j] = row[d];
    }
    for (int d = 0; d < HS; d++)
        for (int j = n; j < ATT_TILE; j++) dst[d * ATT_TILE + j] = 0.0f;
}

// dst[i, 0:HSW] = s * (row i of src, HS columns), zero-padded; rows n..ATT_TILE-1 zero.
static void load_rows(float *dst,               // (ATT_TILE, HSW)
                      const float *src,         // n rows of stride ld, offset to the head
                      size_t ld, int n, int HS, int HSW, float s)
{
    for (int i = 0; i < n; i++) {
        const float *row = src + (size_t)i * ld;
        float *d = dst + (size_t)i * HSW;
        for (int k = 0; k < HS; k++) d[k] = row[k] * s;
        for (int k = HS; k < HSW; k++) d[k] = 0.0f;
    }
    memset(dst + (size_t)n * HSW, 0, sizeof(float) * (size_t)(ATT_TILE - n) * HSW);
}

// Dropout on probabilities p[0..n) of query i, keys k0.. of (b, h): p *= keep * scale.
static void drop_row(float *p, const Dropout *d, int b, int h, int i, int k0, int n, int T)
{
    const uint64_t rk = dropout_row(d->key, d->row0 + (uint64_t)b);
    const uint64_t e0 = ((uint64_t)(d->head0 + h) * (uint64_t)T + (uint64_t)i) * (uint64_t)T + (uint64_t)k0;
    for (int j = 0; j < n; j++) p[j] = dropout_bits(rk, e0 + (uint64_t)j) >= d->threshold ? p[j] * d->scale : 0.0f;
}

// One (b, h, query tile): o_i = sum_{j<=i} softmax_j(scale q_i . k_j) v_j, keys
// visited tile by tile with a running max m_i and sum l_i. The key tiles before
// the diagonal were read by the previous query tile and are still in L2.
static void attention_forward_tile(float *out,          // (B, T, C)
                                   float *lse,          // (B, NH, T)
                                   const float *qkv,    // (B, T, 3C)
                                   int b, int h, int qt, int T, int C, int NH,
                                   const Dropout *drop) // or NULL
{
    const int HS = C / NH;
    const int HSW = (HS + ATT_TILE - 1) / ATT_TILE * ATT_TILE;
    const size_t C3 = 3 * (size_t)C;
    const float scale = 1.0f / sqrtf((float)HS);
    const int q0 = qt * ATT_TILE;
    const int nq = T - q0 < ATT_TILE ? T - q0 : ATT_TILE;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    float q[ATT_TILE * HSW];            // (ATT_TILE, HSW) scaled queries
    float o[ATT_TILE * HSW];            // (ATT_TILE, HSW) unnormalized outputs
    float kt[HS * ATT_TILE];            // (HS, ATT_TILE) keys, transposed
    float v[ATT_TILE * HSW];            // (ATT_TILE, HSW) values
    float st[ATT_TILE * ATT_TILE];      // (ATT_TILE, ATT_TILE) scores, then probabilities
    float m[ATT_TILE], l[ATT_TILE];     // running max and sum per query

    load_rows(q, base + (size_t)q0 * C3, C3, nq, HS, HSW, scale);
    for (int i = 0; i < nq; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    for (int k0 = 0; k0 <= q0; k0 += ATT_TILE) {
        const int nk = T - k0 < ATT_TILE ? T - k0 : ATT_TILE;
        const int diag = k0 == q0;
        load_transposed(kt, base + (size_t)k0 * C3 + C, C3, nk, HS);
        load_rows(v, base + (size_t)k0 * C3 + 2 * (size_t)C, C3, nk, HS, HSW, 1.0f);
        for (int i = 0; i < nq; i++)
            row_panel(st + (size_t)i * ATT_TILE, q + (size_t)i * HSW, 1, kt, ATT_TILE, HS, 0.0f);
        for (int i = 0; i < nq; i++) {
            const int jn = diag ? i + 1 : nk;   // causal: key k0+j <= query q0+i
            float *s = st + (size_t)i * ATT_TILE;
            float mx = m[i];
            #pragma omp simd reduction(max:mx)
            for (int j = 0; j < jn; j++) mx = s[j] > mx ? s[j] : mx;
            float sum = 0.0f;
            #pragma omp simd reduction(+:sum)
            for (int j = 0; j < jn; j++) {
                float p = exp_fast(s[j] - mx);
                s[j] = p;
                sum += p;
            }
            // first tile: nothing to rescale; later the factor may underflow to
            // exactly 0, which row_panel also treats as a fresh start
            const float corr = k0 == 0 ? 0.0f : exp_fast(m[i] - mx);
            l[i] = k0 == 0 ? sum : fmaf(l[i], corr, sum);
            m[i] = mx;
            if (drop) drop_row(s, drop, b, h, q0 + i, k0, jn, T);
            row_panel_wide(o + (size_t)i * HSW, s, 1, v, HSW, jn, corr, HSW);
        }
    }
    float *lrow = lse + ((size_t)b * NH + h) * T + q0;
    for (int i = 0; i < nq; i++) {
        float *orow = out + ((size_t)b * T + q0 + i) * C + (size_t)h * HS;
        const float inv = 1.0f / l[i];
        for (int d = 0; d < HS; d++) orow[d] = o[(size_t)i * HSW + d] * inv;
        lrow[i] = m[i] + logf(l[i]);
    }
}

// Prefetches tile t of q, k and v rows (t*ATT_TILE ..) of the head at base.
static void prefetch_qkv_tile(const float *base,   // (T, 3C), offset to the head
                              int t, int T, int C, int HS)
{
    const size_t C3 = 3 * (size_t)C;
    const int r0 = t * ATT_TILE, n = T - r0 < ATT_TILE ? T - r0 : ATT_TILE;
    for (int part = 0; part < 3; part++) prefetch_rows(base + (size_t)r0 * C3 + part * (size_t)C, C3, n, HS);
}

// out = softmax(scale Q K^T + causal mask) V per (b, head); lse = log-sum-exp per query.
// Parallel over (b, head), query tiles in order within a head; each unit writes
// only its own rows. While a tile is computed the next one (or the next unit's
// first one) is prefetched.
void attention_forward(float *out,          // (B, T, C)
                       float *lse,          // (B, NH, T)
                       const float *qkv,    // (B, T, 3C)
                       int B, int T, int C, int NH, const Dropout *drop)
{
    assert(C % NH == 0 && C / NH <= ATT_HSMAX);
    if (drop && drop->threshold == 0) drop = NULL;
    const int HS = C / NH, nqt = (T + ATT_TILE - 1) / ATT_TILE, units = B * NH;
    const size_t C3 = 3 * (size_t)C;
    #pragma omp parallel
    {
        const int nth = omp_get_num_threads();
        #pragma omp for schedule(static, 1)
        for (int bh = 0; bh < units; bh++) {
            const int b = bh / NH, h = bh % NH, nx = bh + nth;
            const float *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
            const float *nbase = qkv + (size_t)(nx / NH) * T * C3 + (size_t)(nx % NH) * HS;
            if (bh < nth) prefetch_qkv_tile(base, 0, T, C, HS);
            for (int qt = 0; qt < nqt; qt++) {
                if (qt + 1 < nqt) prefetch_qkv_tile(base, qt + 1, T, C, HS);
                else if (nx < units) prefetch_qkv_tile(nbase, 0, T, C, HS);
                attention_forward_tile(out, lse, qkv, b, h, qt, T, C, NH, drop);
            }
        }
    }
}

// One (b, h), key tiles outer, query tiles inner. With P = exp(S - lse),
// D_i = dout_i . out_i and dS = P (dout V^T - D): dV_j = sum_i P_ij dout_i and
// dK_j = scale sum_i dS_ij q_i stay local to the key tile; dQ_i = scale sum_j
// dS_ij k_j is added to dqkv, whose head columns this call owns and zeroes.
// With dropout (f = keep / (1 - p)): dV_j = sum_i P_ij f_ij dout_i and
// dS = P (f dP - D); D_i = dout_i . out_i still equals sum_j P_ij f_ij dP_ij.
static void attention_backward_head(float *dqkv,        // (B, T, 3C)
                                    const float *dout,  // (B, T, C)
                                    const float *qkv,   // (B, T, 3C)
                                    const float *out,   // (B, T, C)
                                    const float *lse,   // (B, NH, T)
                                    int b, int h, int T, int C, int NH,
                                    int next,           // next (b, head) unit, to prefetch, or -1
                                    const Dropout *drop)// or NULL
{
    const int HS = C / NH;
    const int HSW = (HS + ATT_TILE - 1) / ATT_TILE * ATT_TILE;
    const size_t C3 = 3 * (size_t)C;
    const float scale = 1.0f / sqrtf((float)HS);
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    const float *gbase = dout + (size_t)b * T * C + (size_t)h * HS;
    const float *obase = out + (size_t)b * T * C + (size_t)h * HS;
    const int n0 = T < ATT_TILE ? T : ATT_TILE;
    float *dbase = dqkv + (size_t)b * T * C3 + (size_t)h * HS;
    const float *lrow = lse + ((size_t)b * NH + h) * T;
    float kt[HS * ATT_TILE];            // (HS, ATT_TILE) keys, transposed
    float vt[HS * ATT_TILE];            // (HS, ATT_TILE) values, transposed
    float k[ATT_TILE * HSW];            // (ATT_TILE, HSW) keys
    float dk[ATT_TILE * HSW];           // (ATT_TILE, HSW) dK of the key tile
    float dv[ATT_TILE * HSW];           // (ATT_TILE, HSW) dV of the key tile
    float q[ATT_TILE * HSW];            // (ATT_TILE, HSW) scaled queries
    float go[ATT_TILE * HSW];           // (ATT_TILE, HSW) dout rows
    float pt[ATT_TILE * ATT_TILE];      // (ATT_TILE, ATT_TILE) P, zero where masked
    float dst[ATT_TILE * ATT_TILE];     // (ATT_TILE, ATT_TILE) dS, zero where masked
    float dp[ATT_TILE], tmp[HSW], D[ATT_TILE];
    float fm[ATT_TILE];                 // dropout: keep * scale of the row's keys

    for (int t = 0; t < T; t++) {
        float *r = dbase + (size_t)t * C3;
        for (int d = 0; d < HS; d++) r[d] = 0.0f;
    }
    for (int k0 = 0; k0 < T; k0 += ATT_TILE) {
        const int nk = T - k0 < ATT_TILE ? T - k0 : ATT_TILE;
        const int k1 = k0 + ATT_TILE, n1 = T - k1 < ATT_TILE ? T - k1 : ATT_TILE;
        if (k1 < T) {                           // keys and values of the next key tile
            prefetch_rows(base + (size_t)k1 * C3 + C, C3, n1, HS);
            prefetch_rows(base + (size_t)k1 * C3 + 2 * (size_t)C, C3, n1, HS);
        } else if (next >= 0) {                 // the first tiles of the next unit
            const int nb = next / NH, nh = next % NH;
            const float *b2 = qkv + (size_t)nb * T * C3 + (size_t)nh * HS;
            for (int part = 0; part < 3; part++) prefetch_rows(b2 + part * (size_t)C, C3, n0, HS);
            prefetch_rows(dout + (size_t)nb * T * C + (size_t)nh * HS, C, n0, HS);
            prefetch_rows(out + (size_t)nb * T * C + (size_t)nh * HS, C, n0, HS);
        }
        load_transposed(kt, base + (size_t)k0 * C3 + C, C3, nk, HS);
        load_transposed(vt, base + (size_t)k0 * C3 + 2 * (size_t)C, C3, nk, HS);
        load_rows(k, base + (size_t)k0 * C3 + C, C3, nk, HS, HSW, 1.0f);
        memset(dk, 0, sizeof dk);
        memset(dv, 0, sizeof dv);
        for (int q0 = k0; q0 < T; q0 += ATT_TILE) {
            const int nq = T - q0 < ATT_TILE ? T - q0 : ATT_TILE;
            const int diag = k0 == q0;
            const int q1 = q0 + ATT_TILE, m1 = T - q1 < ATT_TILE ? T - q1 : ATT_TILE;
            if (q1 < T) {                       // queries, dout and out of the next query tile
                prefetch_rows(base + (size_t)q1 * C3, C3, m1, HS);
                prefetch_rows(gbase + (size_t)q1 * C, C, m1, HS);
                prefetch_rows(obase + (size_t)q1 * C, C, m1, HS);
            }
            load_rows(q, base + (size_t)q0 * C3, C3, nq, HS, HSW, scale);
            load_rows(go, gbase + (size_t)q0 * C, C, nq, HS, HSW, 1.0f);
            for (int i = 0; i < nq; i++) {
                const float *orow = obase + (size_t)(q0 + i) * C;
                const float *gi = go + (size_t)i * HSW;
                float acc = 0.0f;
                #pragma omp simd reduction(+:acc)
                for (int d = 0; d < HS; d++) acc = fmaf(gi[d], orow[d], acc);
                D[i] = acc;
            }
            for (int i = 0; i < nq; i++) {
                const int jn = diag ? i + 1 : nk;
                const float li = lrow[q0 + i], Di = D[i];
                float *pi = pt + (size_t)i * ATT_TILE, *dsi = dst + (size_t)i * ATT_TILE;
                row_panel(pi, q + (size_t)i * HSW, 1, kt, ATT_TILE, HS, 0.0f);
                row_panel(dp, go + (size_t)i * HSW, 1, vt, ATT_TILE, HS, 0.0f);
                if (!drop) {
                    for (int j = 0; j < ATT_TILE; j++) {
                        float sj = j < jn ? pi[j] : -INFINITY;   // masked: exp_fast gives exactly 0
                        float p = exp_fast(sj - li);
                        pi[j] = p;
                        dsi[j] = p * (dp[j] - Di);
                    }
                } else {        // f = keep * scale: P f for dV, P (f dP - D) for dS
                    for (int j = 0; j < ATT_TILE; j++) fm[j] = j < jn ? 1.0f : 0.0f;
                    drop_row(fm, drop, b, h, q0 + i, k0, jn, T);
                    for (int j = 0; j < ATT_TILE; j++) {
                        float sj = j < jn ? pi[j] : -INFINITY;
                        float p = exp_fast(sj - li);
                        pi[j] = p * fm[j];
                        dsi[j] = p * (fm[j] * dp[j] - Di);
                    }
                }
                // dQ_i += scale dS_i K
                row_panel_wide(tmp, dsi, 1, k, HSW, jn, 0.0f, HSW);
                float *dqi = dbase + (size_t)(q0 + i) * C3;
                for (int d = 0; d < HS; d++) dqi[d] = fmaf(scale, tmp[d], dqi[d]);
            }
            memset(pt + (size_t)nq * ATT_TILE, 0, sizeof(float) * (size_t)(ATT_TILE - nq) * ATT_TILE);
            memset(dst + (size_t)nq * ATT_TILE, 0, sizeof(float) * (size_t)(ATT_TILE - nq) * ATT_TILE);
            // dV_j += sum_i P_ij dout_i; dK_j += sum_i dS_ij (scale q_i); rows i < j are 0 on the diagonal
            for (int j = 0; j < nk; j++) {
                const int i0 = diag ? j : 0;
                row_panel_wide(dv + (size_t)j * HSW, pt + (size_t)i0 * ATT_TILE + j, ATT_TILE,
                               go + (size_t)i0 * HSW, HSW, nq - i0, 1.0f, HSW);
                row_panel_wide(dk + (size_t)j * HSW, dst + (size_t)i0 * ATT_TILE + j, ATT_TILE,
                               q + (size_t)i0 * HSW, HSW, nq - i0, 1.0f, HSW);
            }
        }
        for (int j = 0; j < nk; j++) {
            float *r = dbase + (size_t)(k0 + j) * C3;
            for (int d = 0; d < HS; d++) {
                r[C + d] = dk[(size_t)j * HSW + d];
                r[2 * C + d] = dv[(size_t)j * HSW + d];
            }
        }
    }
}

// Flash-attention backward: scores recomputed per tile from qkv and lse.
// Parallel over (b, head): each thread owns that head's dq, dk, dv columns;
// all (b, head) units cost the same, so a static schedule balances them.
void attention_backward(float *dqkv,        // (B, T, 3C) overwritten
                        const float *dout,  // (B, T, C)
                        const float *qkv,   // (B, T, 3C)
                        const float *out,   // (B, T, C)
                        const float *lse,   // (B, NH, T)
                        int B, int T, int C, int NH, const Dropout *drop)
{
    assert(C % NH == 0 && C / NH <= ATT_HSMAX);
    if (drop && drop->threshold == 0) drop = NULL;
    const int units = B * NH;
    #pragma omp parallel
    {
        const int nth = omp_get_num_threads();
        #pragma omp for schedule(static, 1)
        for (int bh = 0; bh < units; bh++)
            attention_backward_head(dqkv, dout, qkv, out, lse, bh / NH, bh % NH, T, C, NH,
                                    bh + nth < units ? bh + nth : -1, drop);
    }
}
