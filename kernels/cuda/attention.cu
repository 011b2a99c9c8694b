// attention.cu: causal multi-head self-attention, flash-attention style: the
// T x T score matrix is never formed.
//
// Tiles are ATT_TILE (64) queries x 64 keys, starting at multiples of 64. A block
// of 256 threads owns one (b, head, tile); thread t works on tile row t/4 with
// its 3 neighbours (lanes of one warp): for scores it takes columns t%4 + 4k,
// for outputs the head dimensions t%4 + 4k, kept in registers (HSMAX/4 each).
// Shared-memory rows have an odd stride (HS | 1) so that a warp's 8 rows fall in
// 8 different banks.
//
// forward:  block (b, h, query tile) visits key tiles 0..its own with an online
//           softmax (running max m and sum l), writes out and lse = m + log l.
// backward: D = rowsum(dout * out); then two kernels, each output written by
//           exactly one block in a fixed order, no atomics:
//           dQ  block (b, h, query tile) loops key tiles 0..its own,
//           dKV block (b, h, key tile) loops query tiles from its own to the end;
//           both recompute P = exp(S - lse) and dS = P (dP - D), dP = dout V^T.
// dropout (drop.threshold > 0): f = keep * scale of (b, head0 + h, i, j) from
// its counter (kernels.h); forward O = sum P f V (lse of the undropped P),
// backward dV = sum P f dout, dS = P (f dP - D).
#include <cstdio>

#include "cuda_common.cuh"
#include "kernels.h"

#define ATT_TILE 64
#define ATT_THREADS 256
#define ATT_HSMAX KERNELS_CUDA_ATT_HSMAX
#define ATT_PS 68       // row stride of the P / dS tile in the forward and dQ kernels
#define ATT_PSB 65      // the same in the dKV kernel (smaller, so HS = 128 fits an A100)

// keep * scale of probability (b, h, query i, key j), or 1 without dropout.
__device__ __forceinline__ float drop_factor(const Dropout &d, int b, int h, int i, int j, int T)
{
    if (d.threshold == 0) return 1.0f;
    const uint64_t e = ((uint64_t)(d.head0 + h) * (uint64_t)T + (uint64_t)i) * (uint64_t)T + (uint64_t)j;
    return dropout_bits(dropout_row(d.key, d.row0 + (uint64_t)b), e) >= d.threshold ? d.scale : 0.0f;
}

// odd row stride for tiles of HS columns
static __host__ __device__ __forceinline__ int att_stride(int HS) { return HS | 1; }

// dst[i, d] = mul * src[(r0 + i) * ld + d] for the 64 rows of a tile; rows >= T are 0.
__device__ __forceinline__ void load_tile(float *dst, const float *src, size_t ld, int r0, int T,
                                          int HS, int HSP, float mul)
{
    for (int idx = threadIdx.x; idx < ATT_TILE * HS; idx += ATT_THREADS) {
        int i = idx / HS, d = idx - i * HS;
        int t = r0 + i;
        dst[i * HSP + d] = t < T ? src[(size_t)t * ld + d] * mul : 0.0f;
    }
}

// acc[k] (column g + 4k of a head row) += sum_j w[j] * tile[j, g + 4k], over the
// key tile's rows that exist: O += P V in forward, dQ += dS K in backward.
template <int HSMAX>
__device__ __forceinline__ void accumulate_row(float acc[HSMAX / 4], const float *w, const float *tile,
                                               int rows, int g, int HS, int HSP)
{
    for (int j = 0; j < rows; j++) {
        const float p = w[j];
#pragma unroll
        for (int k = 0; k < HSMAX / 4; k++) {
            const int d = g + 4 * k;
            if (d < HS) acc[k] = fmaf(p, tile[j * HSP + d], acc[k]);
        }
    }
}

// ---------------------------------------------------------------- forward

template <int HSMAX>
__global__ void __launch_bounds__(ATT_THREADS)
attention_forward_kernel(float *out, float *lse, const float *qkv, int B, int T, int C, int NH, Dropout drop)
{
    extern __shared__ float sm[];
    const int HS = C / NH, HSP = att_stride(HS);
    const int BH = B * NH, nqt = (T + ATT_TILE - 1) / ATT_TILE;
    const int qt = nqt - 1 - (int)(blockIdx.x / BH);   // heaviest query tiles first
    const int bh = blockIdx.x % BH, b = bh / NH, h = bh % NH;
    const int q0 = qt * ATT_TILE;
    const size_t C3 = 3 * (size_t)C;
    const float scale = 1.0f / sqrtf((float)HS);
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    float *Qs = sm;                         // (64, HSP) scaled queries
    float *Ks = Qs + ATT_TILE * HSP;        // (64, HSP)
    float *Vs = Ks + ATT_TILE * HSP;        // (64, HSP)
    float *Ps = Vs + ATT_TILE * HSP;        // (64, ATT_PS) probabilities
    const int i = threadIdx.x >> 2, g = threadIdx.x & 3, qi = q0 + i;

    load_tile(Qs, base, C3, q0, T, HS, HSP, scale);
    float o[HSMAX / 4];
#pragma unroll
    for (int k = 0; k < HSMAX / 4; k++) o[k] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    for (int k0 = 0; k0 <= q0; k0 += ATT_TILE) {
        __syncthreads();                    // previous tile fully used
        load_tile(Ks, base + C, C3, k0, T, HS, HSP, 1.0f);
        load_tile(Vs, base + 2 * (size_t)C, C3, k0, T, HS, HSP, 1.0f);
        __syncthreads();
        float s[16];
#pragma unroll
        for (int jj = 0; jj < 16; jj++) s[jj] = 0.0f;
        for (int d = 0; d < HS; d++) {
            const float qd = Qs[i * HSP + d];
#pragma unroll
            for (int jj = 0; jj < 16; jj++) s[jj] = fmaf(qd, Ks[(g + 4 * jj) * HSP + d], s[jj]);
        }
        float mx = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < 16; jj++) {
            if (k0 + g + 4 * jj > qi) s[jj] = -INFINITY;   // causal mask
            mx = fmaxf(mx, s[jj]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m, mx);    // finite: key 0 is visible to every query
        const float corr = expf(m - mnew);  // 0 on the first tile
        float sum = 0.0f;
#pragma unroll
        for (int jj = 0; jj < 16; jj++) {
            const float p = expf(s[jj] - mnew);
            Ps[i * ATT_PS + g + 4 * jj] = p * drop_factor(drop, b, h, qi, k0 + g + 4 * jj, T);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l = fmaf(l, corr, sum);
        m = mnew;
        __syncwarp();                       // the row's P, written by its 4 lanes
#pragma unroll
        for (int k = 0; k < HSMAX / 4; k++) o[k] *= corr;
        accumulate_row<HSMAX>(o, Ps + i * ATT_PS, Vs, T - k0 < ATT_TILE ? T - k0 : ATT_TILE, g, HS, HSP);
    }
    if (qi < T) {
        const float inv = 1.0f / l;
        float *orow = out + ((size_t)b * T + qi) * C + (size_t)h * HS;
#pragma unroll
        for (int k = 0; k < HSMAX / 4; k++) {
            const int d = g + 4 * k;
            if (d < HS) orow[d] = o[k] * inv;
        }
        if (g == 0) lse[((size_t)b * NH + h) * T + qi] = m + logf(l);
    }
}

// ---------------------------------------------------------------- backward

// D[b, h, t] = sum_d dout[b, t, h*HS + d] out[b, t, h*HS + d]; one warp per (b, t, h).
__global__ void attention_rowdot_kernel(float *D, const float *dout, const float *out, int B, int T,
                                        int C, int NH)
{
    const int HS = C / NH, lane = threadIdx.x & 31;
    const size_t w = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (w >= (size_t)B * T * NH) return;
    const int h = (int)(w % NH);
    const size_t bt = w / NH;
    const float *go = dout + bt * C + (size_t)h * HS, *o = out + bt * C + (size_t)h * HS;
    float s = 0.0f;
    for (int d = lane; d < HS; d += 32) s = fmaf(go[d], o[d], s);
    s = warp_sum(s);
    if (lane == 0) {
        const size_t b = bt / T, t = bt % T;
        D[(b * NH + h) * T + t] = s;
    }
}

// dQ = scale sum_j dS_ij k_j for the 64 queries of a tile, key tiles in order.
template <int HSMAX>
__global__ void __launch_bounds__(ATT_THREADS)
attention_dq_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
                    const float *D, int B, int T, int C, int NH, Dropout drop)
{
    extern __shared__ float sm[];
    const int HS = C / NH, HSP = att_stride(HS);
    const int BH = B * NH, nqt = (T + ATT_TILE - 1) / ATT_TILE;
    const int qt = nqt - 1 - (int)(blockIdx.x / BH);
    const int bh = blockIdx.x % BH, b = bh / NH, h = bh % NH;
    const int q0 = qt * ATT_TILE;
    const size_t C3 = 3 * (size_t)C;
    const float scale = 1.0f / sqrtf((float)HS);
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    float *Qs = sm;                         // (64, HSP) scaled queries
    float *Os = Qs + ATT_TILE * HSP;        // (64, HSP) dout rows of the head
    float *Ks = Os + ATT_TILE * HSP;        // (64, HSP)
    float *Vs = Ks + ATT_TILE * HSP;        // (64, HSP)
    float *Ss = Vs + ATT_TILE * HSP;        // (64, ATT_PS) dS
    const int i = threadIdx.x >> 2, g = threadIdx.x & 3, qi = q0 + i;

    load_tile(Qs, base, C3, q0, T, HS, HSP, scale);
    load_tile(Os, dout + (size_t)b * T * C + (size_t)h * HS, C, q0, T, HS, HSP, 1.0f);
    const size_t lrow = ((size_t)b * NH + h) * T;
    const float li = qi < T ? lse[lrow + qi] : 0.0f;
    const float Di = qi < T ? D[lrow + qi] : 0.0f;
    float dq[HSMAX / 4];
#pragma unroll
    for (int k = 0; k < HSMAX / 4; k++) dq[k] = 0.0f;

    for (int k0 = 0; k0 <= q0; k0 += ATT_TILE) {
        __syncthreads();
        load_tile(Ks, base + C, C3, k0, T, HS, HSP, 1.0f);
        load_tile(Vs, base + 2 * (size_t)C, C3, k0, T, HS, HSP, 1.0f);
        __syncthreads();
        float s[16], dp[16];
#pragma unroll
        for (int jj = 0; jj < 16; jj++) s[jj] = dp[jj] = 0.0f;
        for (int d = 0; d < HS; d++) {
            const float qd = Qs[i * HSP + d], od = Os[i * HSP + d];
#pragma unroll
            for (int jj = 0; jj < 16; jj++) {
                const int r = (g + 4 * jj) * HSP + d;
                s[jj] = fmaf(qd, Ks[r], s[jj]);
                dp[jj] = fmaf(od, Vs[r], dp[jj]);
            }
        }
#pragma unroll
        for (int jj = 0; jj < 16; jj++) {
            const bool valid = k0 + g + 4 * jj <= qi && qi < T;
            const float p = valid ? expf(s[jj] - li) : 0.0f;
            const float f = valid ? drop_factor(drop, b, h, qi, k0 + g + 4 * jj, T) : 1.0f;
            Ss[i * ATT_PS + g + 4 * jj] = p * (f * dp[jj] - Di);
        }
        __syncwarp();
        accumulate_row<HSMAX>(dq, Ss + i * ATT_PS, Ks, T - k0 < ATT_TILE ? T - k0 : ATT_TILE, g, HS, HSP);
    }
    if (qi < T) {
        float *r = dqkv + ((size_t)b * T + qi) * C3 + (size_t)h * HS;
#pragma unroll
        for (int k = 0; k < HSMAX / 4; k++) {
            const int d = g + 4 * k;
            if (d < HS) r[d] = dq[k] * scale;
        }
    }
}

// dV = sum_i P_ij dout_i, dK = sum_i dS_ij (scale q_i) for the 64 keys of a tile,
// query tiles from the key tile to the end, in order.
template <int HSMAX>
__global__ void __launch_bounds__(ATT_THREADS)
attention_dkv_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
                     const float *D, int B, int T, int C, int NH, Dropout drop)
{
    extern __shared__ float sm[];
    const int HS = C / NH, HSP = att_stride(HS);
    const int BH = B * NH;
    const int kt = (int)(blockIdx.x / BH);             // heaviest key tiles (most queries) first
    const int bh = blockIdx.x % BH, b = bh / NH, h = bh % NH;
    const int k0 = kt * ATT_TILE;
    const size_t C3 = 3 * (size_t)C;
    const float scale = 1.0f / sqrtf((float)HS);
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * HS;
    const float *obase = dout + (size_t)b * T * C + (size_t)h * HS;
    float *Ks = sm;                         // (64, HSP) this block's keys
    float *Vs = Ks + ATT_TILE * HSP;        // (64, HSP) this block's values
    float *Qs = Vs + ATT_TILE * HSP;        // (64, HSP) scaled queries of the current tile
    float *Os = Qs + ATT_TILE * HSP;        // (64, HSP) dout rows of the current tile
    float *Ps = Os + ATT_TILE * HSP;        // (64 keys, ATT_PSB) P^T
    float *Ss = Ps + ATT_TILE * ATT_PSB;    // (64 keys, ATT_PSB) dS^T
    const int j = threadIdx.x >> 2, g = threadIdx.x & 3, kj = k0 + j;
    const size_t lrow = ((size_t)b * NH + h) * T;

    load_tile(Ks, base + C, C3, k0, T, HS, HSP, 1.0f);
    load_tile(Vs, base + 2 * (size_t)C, C3, k0, T, HS, HSP, 1.0f);
    float dk[HSMAX / 4], dv[HSMAX / 4];
#pragma unroll
    for (int k = 0; k < HSMAX / 4; k++) dk[k] = dv[k] = 0.0f;

    for (int q0 = k0; q0 < T; q0 += ATT_TILE) {
        __syncthreads();
        load_tile(Qs, base, C3, q0, T, HS, HSP, scale);
        load_tile(Os, obase, C, q0, T, HS, HSP, 1.0f);
        __syncthreads();
        float s[16], dp[16];
#pragma unroll
        for (int ii = 0; ii < 16; ii++) s[ii] = dp[ii] = 0.0f;
        for (int d = 0; d < HS; d++) {
            const float kd = Ks[j * HSP + d], vd = Vs[j * HSP + d];
#pragma unroll
            for (int ii = 0; ii < 16; ii++) {
                const int r = (g + 4 * ii) * HSP + d;
                s[ii] = fmaf(Qs[r], kd, s[ii]);
                dp[ii] = fmaf(Os[r], vd, dp[ii]);
            }
        }
#pragma unroll
        for (int ii = 0; ii < 16; ii++) {
            const int qi = q0 + g + 4 * ii;
            const bool valid = kj <= qi && qi < T;
            const float p = valid ? expf(s[ii] - lse[lrow + qi]) : 0.0f;
            const float f = valid ? drop_factor(drop, b, h, qi, kj, T) : 1.0f;
            const float ds = valid ? p * (f * dp[ii] - D[lrow + qi]) : 0.0f;
            Ps[j * ATT_PSB + g + 4 * ii] = p * f;
            Ss[j * ATT_PSB + g + 4 * ii] = ds;
        }
        __syncwarp();
        const int iend = T - q0 < ATT_TILE ? T - q0 : ATT_TILE;
        for (int i = 0; i < iend; i++) {
            const float p = Ps[j * ATT_PSB + i], ds = Ss[j * ATT_PSB + i];
#pragma unroll
            for (int k = 0; k < HSMAX / 4; k++) {
                const int d = g + 4 * k;
                if (d < HS) {
                    dv[k] = fmaf(p, Os[i * HSP + d], dv[k]);
                    dk[k] = fmaf(ds, Qs[i * HSP + d], dk[k]);
                }
            }
        }
    }
    if (kj < T) {
        float *r = dqkv + ((size_t)b * T + kj) * C3 + (size_t)h * HS;
#pragma unroll
        for (int k = 0; k < HSMAX / 4; k++) {
            const int d = g + 4 * k;
            if (d < HS) {
                r[C + d] = dk[k];
                r[2 * (size_t)C + d] = dv[k];
            }
        }
    }
}

// ---------------------------------------------------------------- host side

static void check_shape(int B, int T, int C, int NH)
{
    CUDA_REQUIRE(B > 0 && T > 0 && NH > 0 && C % NH == 0,
                 "attention needs B, T, NH > 0 and C divisible by NH");
    CUDA_REQUIRE(C / NH <= ATT_HSMAX, "the cuda attention supports head sizes HS = C/NH <= 128");
    CUDA_REQUIRE((size_t)B * NH * ((T + ATT_TILE - 1) / ATT_TILE) < ((size_t)1 << 31),
                 "attention grid too large");
}

// Raises the kernel's dynamic shared-memory limit; aborts when the device has less.
template <typename K>
static void set_smem(K kernel, size_t bytes, const char *name)
{
    if (bytes > cuda_smem_optin()) {
        char what[200];
        snprintf(what, sizeof what, "%s needs %zu bytes of shared memory, the device allows %zu",
                 name, bytes, cuda_smem_optin());
        cuda_fatal(__FILE__, __LINE__, "attention launch", what,
                   "use a smaller head size (HS = C/NH) or a GPU with more shared memory");
    }
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int HSMAX>
static void forward_launch(float *out, float *lse, const float *qkv, int B, int T, int C, int NH, Dropout drop)
{
    const int HSP = att_stride(C / NH);
    const size_t smem = (3 * (size_t)ATT_TILE * HSP + (size_t)ATT_TILE * ATT_PS) * sizeof(float);
    const unsigned blocks = (unsigned)(B * NH * ((T + ATT_TILE - 1) / ATT_TILE));
    set_smem(attention_forward_kernel<HSMAX>, smem, "attention_forward_kernel");
    attention_forward_kernel<HSMAX><<<blocks, ATT_THREADS, smem, cuda_stream_t()>>>(out, lse, qkv,
                                                                                   B, T, C, NH, drop);
    CUDA_LAUNCH_CHECK("attention_forward_kernel");
}

template <int HSMAX>
static void backward_launch(float *dqkv, const float *dout, const float *qkv, const float *lse,
                            const float *D, int B, int T, int C, int NH, Dropout drop)
{
    const int HSP = att_stride(C / NH);
    const unsigned blocks = (unsigned)(B * NH * ((T + ATT_TILE - 1) / ATT_TILE));
    const size_t smem_q = (4 * (size_t)ATT_TILE * HSP + (size_t)ATT_TILE * ATT_PS) * sizeof(float);
    const size_t smem_kv =
        (4 * (size_t)ATT_TILE * HSP + 2 * (size_t)ATT_TILE * ATT_PSB) * sizeof(float);
    set_smem(attention_dq_kernel<HSMAX>, smem_q, "attention_dq_kernel");
    attention_dq_kernel<HSMAX><<<blocks, ATT_THREADS, smem_q, cuda_stream_t()>>>(
        dqkv, dout, qkv, lse, D, B, T, C, NH, drop);
    CUDA_LAUNCH_CHECK("attention_dq_kernel");
    set_smem(attention_dkv_kernel<HSMAX>, smem_kv, "attention_dkv_kernel");
    attention_dkv_kernel<HSMAX><<<blocks, ATT_THREADS, smem_kv, cuda_stream_t()>>>(
        dqkv, dout, qkv, lse, D, B, T, C, NH, drop);
    CUDA_LAUNCH_CHECK("attention_dkv_kernel");
}

// The kernels' dropout argument: threshold 0 (none) without drop.
static Dropout drop_arg(const Dropout *drop)
{
    Dropout d = {0, 0, 0, 0, 0u, 1.0f};
    return drop ? *drop : d;
}

// out = softmax(scale Q K^T + causal mask) V per (b, head); lse = log-sum-exp per query.
void cuda_attention_forward(float *out,         // (B, T, C)
                            float *lse,         // (B, NH, T)
                            const float *qkv,   // (B, T, 3C)
                            int B, int T, int C, int NH,
                            const Dropout *drop)// host pointer, or NULL
{
    check_shape(B, T, C, NH);
    const int HS = C / NH;
    const Dropout d = drop_arg(drop);
    if (HS <= 32) forward_launch<32>(out, lse, qkv, B, T, C, NH, d);
    else if (HS <= 64) forward_launch<64>(out, lse, qkv, B, T, C, NH, d);
    else forward_launch<128>(out, lse, qkv, B, T, C, NH, d);
}

// Flash-attention backward: scores recomputed per tile from qkv and lse.
void cuda_attention_backward(float *dqkv,       // (B, T, 3C) overwritten
                             const float *dout, // (B, T, C)
                             const float *qkv,  // (B, T, 3C)
                             const float *out,  // (B, T, C)
                             const float *lse,  // (B, NH, T)
                             int B, int T, int C, int NH,
                             const Dropout *drop)// host pointer, or NULL
{
    check_shape(B, T, C, NH);
    const size_t rows = (size_t)B * T * NH;
    float *D = (float *)cuda_scratch(SCRATCH_ATTN, rows * sizeof(float));
    attention_rowdot_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, cuda_stream_t()>>>(
        D, dout, out, B, T, C, NH);
    CUDA_LAUNCH_CHECK("attention_rowdot_kernel");
    const int HS = C / NH;
    const Dropout d = drop_arg(drop);
    if (HS <= 32) backward_launch<32>(dqkv, dout, qkv, lse, D, B, T, C, NH, d);
    else if (HS <= 64) backward_launch<64>(dqkv, dout, qkv, lse, D, B, T, C, NH, d);
    else backward_launch<128>(dqkv, dout, qkv, lse, D, B, T, C, NH, d);
}
