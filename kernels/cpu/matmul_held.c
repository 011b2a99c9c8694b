// matmul_held.c: inference products against weights held as (OC, IC) rows in
// fp32, bf16 or int8 (matmul_held_forward in kernels.h).
//
// Few rows (decode, N <= MH_SMALL_M): the output columns are split over the
// threads in contiguous ranges, so each thread streams its own rows of W once,
// front to back, and takes the dot products of every input row with them
// (the inputs stay in cache). Nothing is repacked per call. Each (n, j) is one
// dot product summed in a fixed order (vector lanes, then the lanes added in
// a fixed tree), so the bits do not depend on the thread count.
//
// Many rows (prefill): fp32 goes to the tiled sgemm of matmul.c; bf16 and
// int8 convert a block of rows of W to fp32 in a per-task buffer and run one
// single-threaded sgemm on it, on a grid of tasks fixed by the shape.
// Products here may be fused multiply-adds (ISO C mode leaves contraction off):
// inference, tested against float64, not against the training kernels' bits.
#pragma GCC optimize("fp-contract=fast")

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "fastmath.h"
#include "kernels.h"

#define MH_SMALL_M 8        // rows at most for the streaming dot-product path
#define MH_BLOCK_ROWS 128   // rows of W converted per task on the prefill path

#ifdef __AVX512F__
#define VL 16                       // floats per vector: one zmm register
#else
#define VL 8                        // one ymm register
#endif
typedef float vf __attribute__((vector_size(4 * VL)));
typedef int32_t vi __attribute__((vector_size(4 * VL)));
typedef uint32_t vu __attribute__((vector_size(4 * VL)));
typedef uint16_t vh __attribute__((vector_size(2 * VL)));
typedef int8_t vb __attribute__((vector_size(VL)));

static inline vf load_f(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
// VL weights from element i as floats. The widening loads use intrinsics where
// there are some: GCC turns a generic int8 -> int32 conversion into scalar code.
static inline vf load_w(const void *w, int dt, size_t i) {
    if (dt == WDT_F32) return load_f((const float *)w + i);
#if defined(__AVX512F__)
    if (dt == WDT_BF16) {
        __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
        return (vf)_mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    }
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)w + i))));
#elif defined(__AVX2__)
    if (dt == WDT_BF16) {
        __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
        return (vf)_mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    }
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)w + i))));
#else
    if (dt == WDT_BF16) {
        vh h;
        memcpy(&h, (const uint16_t *)w + i, sizeof h);
        vu u = __builtin_convertvector(h, vu) << 16;
        return (vf)u;
    }
    vb b;
    memcpy(&b, (const int8_t *)w + i, sizeof b);
    return __builtin_convertvector(__builtin_convertvector(b, vi), vf);
#endif
}
static inline float scalar_w(const void *w, int dt, size_t i) {
    if (dt == WDT_F32) return ((const float *)w)[i];
    if (dt == WDT_BF16) return bits2f((int32_t)((uint32_t)((const uint16_t *)w)[i] << 16));
    return (float)((const int8_t *)w)[i];
}
// The lanes added in a fixed tree.
static inline float hsum(vf v) {
    float t[VL];
    memcpy(t, &v, sizeof t);
    for (int w = VL / 2; w > 0; w /= 2)
        for (int k = 0; k < w; k++) t[k] += t[k + w];
    return t[0];
}

static inline float gelu1(float x) {
    float z = -2.0f * 0.7978845608028654f * fmaf(0.044715f * x, x * x, x);
    z = z > 80.0f ? 80.0f : z;
    return x / (1.0f + exp_fast(z));
}

static inline void store(float *o, float v, int epi) {
    if (epi == EPI_GELU) *o = gelu1(v);
    else if (epi == EPI_RESIDUAL) *o += v;
    else *o = v;
}

// Rows [j0, j1) of W against the NR input rows; out (NR, OC). Two rows of W at a time.
static inline __attribute__((always_inline)) void dots(float *out, const float *inp, const void *w, int dt,
                                                       const float *scale, const float *bias, int NR, int IC,
                                                       int OC, int j0, int j1, int epi) {
    const int ICv = IC / VL * VL;
    int j = j0;
    for (; j + 1 < j1; j += 2) {
        vf a0[MH_SMALL_M], a1[MH_SMALL_M];
        for (int n = 0; n < NR; n++) a0[n] = a1[n] = (vf){0};
        const size_t r0 = (size_t)j * IC, r1 = r0 + (size_t)IC;
        for (int i = 0; i < ICv; i += VL) {
            vf w0 = load_w(w, dt, r0 + i), w1 = load_w(w, dt, r1 + i);
            for (int n = 0; n < NR; n++) {
                vf x = load_f(inp + (size_t)n * IC + i);
                a0[n] += x * w0;
                a1[n] += x * w1;
            }
        }
        for (int n = 0; n < NR; n++) {
            float s0 = hsum(a0[n]), s1 = hsum(a1[n]);
            for (int i = ICv; i < IC; i++) {
                float x = inp[(size_t)n * IC + i];
                s0 += x * scalar_w(w, dt, r0 + i);
                s1 += x * scalar_w(w, dt, r1 + i);
            }
            if (scale) { s0 *= scale[j]; s1 *= scale[j + 1]; }
            if (bias) { s0 += bias[j]; s1 += bias[j + 1]; }
            store(out + (size_t)n * OC + j, s0, epi);
            store(out + (size_t)n * OC + j + 1, s1, epi);
        }
    }
    for (; j < j1; j++) {
        const size_t r0 = (size_t)j * IC;
        for (int n = 0; n < NR; n++) {
            vf a = (vf){0};
            for (int i = 0; i < ICv; i += VL) a += load_f(inp + (size_t)n * IC + i) * load_w(w, dt, r0 + i);
            float s = hsum(a);
            for (int i = ICv; i < IC; i++) s += inp[(size_t)n * IC + i] * scalar_w(w, dt, r0 + i);
            if (scale) s *= scale[j];
            if (bias) s += bias[j];
            store(out + (size_t)n * OC + j, s, epi);
        }
    }
}

// One instance per (row count, weight dtype), so the accumulators live in
// registers and the dtype is not tested inside the loop.
#define DOTS_N(NR, DT) \
    static void dots_##NR##_##DT(float *out, const float *inp, const void *w, const float *scale, \
                                 const float *bias, int IC, int OC, int j0, int j1, int epi) { \
        dots(out, inp, w, DT, scale, bias, NR, IC, OC, j0, j1, epi); \
    }
#define DOTS_DT(DT) DOTS_N(1, DT) DOTS_N(2, DT) DOTS_N(3, DT) DOTS_N(4, DT) \
                    DOTS_N(5, DT) DOTS_N(6, DT) DOTS_N(7, DT) DOTS_N(8, DT)
DOTS_DT(0) DOTS_DT(1) DOTS_DT(2)
typedef void (*DotsFn)(float *, const float *, const void *, const float *, const float *, int, int, int, int, int);
#define DOTS_ROW(DT) {NULL, dots_1_##DT, dots_2_##DT, dots_3_##DT, dots_4_##DT, dots_5_##DT, dots_6_##DT, \
                      dots_7_##DT, dots_8_##DT}
static const DotsFn dots_of[3][MH_SMALL_M + 1] = {DOTS_ROW(0), DOTS_ROW(1), DOTS_ROW(2)};

static void small_m(float *out, const float *inp, const void *w, int dt, const float *scale, const float *bias,
                    int N, int IC, int OC, int epi) {
    DotsFn f = dots_of[dt][N];
    #pragma omp parallel
    {
        // Contiguous even-sized ranges of output columns, one per thread.
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int per = ((OC + nt - 1) / nt + 1) & ~1;
        int j0 = t * per < OC ? t * per : OC, j1 = j0 + per < OC ? j0 + per : OC;
        if (j0 < j1) f(out, inp, w, scale, bias, IC, OC, j0, j1, epi);
    }
}

// Rows [r0, r0 + nr) of W as fp32, scaled, into buf (nr, IC).
static void convert_rows(float *buf, const void *w, int dt, const float *scale, int r0, int nr, int IC) {
    const int ICv = IC / VL * VL;
    for (int r = 0; r < nr; r++) {
        const size_t base = (size_t)(r0 + r) * IC;
        const float s = scale ? scale[r0 + r] : 1.0f;
        float *d = buf + (size_t)r * IC;
        for (int i = 0; i < ICv; i += VL) {
            vf v = load_w(w, dt, base + i) * s;
            memcpy(d + i, &v, sizeof v);
        }
        for (int i = ICv; i < IC; i++) d[i] = scalar_w(w, dt, base + i) * s;
    }
}

static void epilogue_rows(float *out, const float *tmp, const float *bias, size_t N, int OC, int epi) {
    #pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++)
        for (int c = 0; c < OC; c++) store(out + n * OC + c, tmp[n * OC + c] + (bias ? bias[c] : 0.0f), epi);
}

void matmul_held_forward(float *out, const float *inp, const void *weight, int wdtype, const float *scale,
                         const float *bias, size_t N, int IC, int OC, int epilogue, float *tmp) {
    if (N == 0) return;
    if (N <= MH_SMALL_M) {
        small_m(out, inp, weight, wdtype, scale, bias, (int)N, IC, OC, epilogue);
        return;
    }
    float *dst = epilogue == EPI_NONE ? out : tmp;
    if (wdtype == WDT_F32) {
        matmul_forward(dst, inp, weight, epilogue == EPI_NONE ? bias : NULL, N, IC, OC, 1);
        if (epilogue != EPI_NONE) epilogue_rows(out, tmp, bias, N, OC, epilogue);
        return;
    }
    const int nb = (OC + MH_BLOCK_ROWS - 1) / MH_BLOCK_ROWS;
    #pragma omp parallel
    {
        float *buf = malloc(sizeof(float) * (size_t)MH_BLOCK_ROWS * (size_t)IC);
        if (!buf) abort();
        #pragma omp for schedule(dynamic, 1)
        for (int b = 0; b < nb; b++) {
            int r0 = b * MH_BLOCK_ROWS, nr = OC - r0 < MH_BLOCK_ROWS ? OC - r0 : MH_BLOCK_ROWS;
            convert_rows(buf, weight, wdtype, scale, r0, nr, IC);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, nr, IC, 1.0f, inp, IC, buf, IC, 0.0f,
                        dst + r0, OC);
        }
        free(buf);
    }
    if (bias || epilogue != EPI_NONE) epilogue_rows(out, dst, bias, N, OC, epilogue);
}
