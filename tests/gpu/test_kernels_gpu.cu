// test_kernels_gpu.cu: the cuda backend (kernels/cuda) against the cpu backend
// (kernels/cpu), kernel by kernel, on the same random inputs.
//
// Usage: test_kernels_gpu [--quick] [NAME...]
//   --quick: small shapes only and no timings (for compute-sanitizer runs);
//   NAME: run only these groups: encoder layernorm matmul chain elementwise
//   adamw sumsq crossentropy attention moe paged dropout timing.
// Exit status: 0 all passed, 1 a comparison failed, 77 no CUDA device (skipped).
//
// Every comparison prints one line:
//   ok   attention_backward  dqkv         rel 3.1e-06 (tol 1e-04)  B=2 T=130 C=768 NH=12
// rel = ||gpu - cpu|| / ||cpu|| over the whole output; for outputs that
// accumulate (+=) both sides start from the same random values and rel is
// taken over the increments, so the starting values cannot hide an error;
// attention's dq, dk, dv parts are relative to ||dqkv|| (a part can be ~0).
// GPU outputs are poisoned with NaN before each call (a missed element fails).
// The suite runs twice: fp32 mode (tolerance 1e-4 everywhere) and bf16 mode
// (matrix products and what is computed from them: 2e-2; the rest 1e-4).
// Determinism: the backward kernels and the reductions run twice and must
// give the same bits. Timings: 4096^3 GEMMs (fp32 and bf16), GPT-2 124M-shaped
// attention and matmul. Machine-readable lines start with "RESULT ".
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

extern "C" {
#include "kernels.h"
}
#include "cuda_kernels.h"

#define TOL_FP32 1e-4
#define TOL_BF16 2e-2
#define TOL_SUMSQ 1e-12

#define TCHECK(call)                                                                         \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            fprintf(stderr, "test_kernels_gpu: %s:%d: %s failed: %s\n", __FILE__, __LINE__,  \
                    #call, cudaGetErrorString(e_));                                          \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

typedef std::vector<float> Vec;
typedef std::vector<int32_t> IVec;

static int n_pass, n_fail;
static int bf16_mode;
static char **only;     // NAME arguments, NULL-terminated; none: everything
static int n_only;

static int want(const char *group)
{
    if (n_only == 0) return 1;
    for (int i = 0; i < n_only; i++)
        if (strcmp(only[i], group) == 0) return 1;
    return 0;
}

// ---------------------------------------------------------------- helpers

struct Rng {
    uint64_t s;
    uint64_t next()
    {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    double unit() { return (double)(next() >> 11) * 0x1.0p-53; }
    float sym(float a) { return (float)((2.0 * unit() - 1.0) * a); }
    int below(int n) { return (int)(next() % (uint64_t)n); }
};

static Vec rand_vec(Rng &r, size_t n, float a)
{
    Vec v(n);
    for (size_t i = 0; i < n; i++) v[i] = r.sym(a);
    return v;
}

static float *dalloc(size_t n) { return (float *)cuda_malloc((n ? n : 1) * sizeof(float)); }
static float *dput(const Vec &h)
{
    float *d = dalloc(h.size());
    cuda_copy_h2d(d, h.data(), h.size());
    return d;
}
static int32_t *dput_i(const IVec &h)
{
    int32_t *d = (int32_t *)cuda_malloc((h.size() ? h.size() : 1) * sizeof(int32_t));
    cuda_copy_h2d_i32(d, h.data(), h.size());
    return d;
}
static void dset(float *d, const Vec &h) { cuda_copy_h2d(d, h.data(), h.size()); }
// all bytes 0xff: a NaN in every float
static void dpoison(float *d, size_t n)
{
    TCHECK(cudaMemsetAsync(d, 0xff, n * sizeof(float), (cudaStream_t)cuda_stream()));
}
static float *dpoisoned(size_t n)
{
    float *d = dalloc(n);
    dpoison(d, n);
    return d;
}
static Vec dget(const float *d, size_t n)
{
    Vec h(n);
    cuda_copy_d2h(h.data(), d, n);
    return h;
}

// ||a - b|| / ||b - base|| (base may be NULL); NaN anywhere gives NaN.
static double rel(const Vec &a, const Vec &b, const Vec *base = NULL)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < a.size(); i++) {
        double d = (double)a[i] - (double)b[i];
        double r = (double)b[i] - (base ? (double)(*base)[i] : 0.0);
        num += d * d;
        den += r * r;
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

// ||a - b|| (b NULL: ||a||)
static double dist(const Vec &a, const Vec *b)
{
    double s = 0.0;
    for (size_t i = 0; i < a.size(); i++) {
        double d = (double)a[i] - (b ? (double)(*b)[i] : 0.0);
        s += d * d;
    }
    return sqrt(s);
}

static void report(const char *kernel, const char *what, double err, double tol, const char *shape)
{
    bool ok = err <= tol;   // NaN fails
    printf("%-4s %-22s %-10s rel %.1e (tol %.0e)  %s\n", ok ? "ok" : "FAIL", kernel, what, err,
           tol, shape);
    ok ? n_pass++ : n_fail++;
}

static void report_same(const char *kernel, const char *what, const Vec &a, const Vec &b,
                        const char *shape)
{
    bool ok = a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    printf("%-4s %-22s %-10s %s  %s\n", ok ? "ok" : "FAIL", kernel, what,
           ok ? "bitwise identical on rerun" : "DIFFERS on rerun (nondeterministic)", shape);
    ok ? n_pass++ : n_fail++;
}

static double tol_mm(void) { return bf16_mode ? TOL_BF16 : TOL_FP32; }

struct Shape {
    int B, T, C, NH;
};

// ---------------------------------------------------------------- encoder

static void test_encoder(Rng &r, Shape s, int V, int Vp)
{
    char sh[96];
    snprintf(sh, sizeof sh, "B=%d T=%d C=%d Vp=%d", s.B, s.T, s.C, Vp);
    const size_t N = (size_t)s.B * s.T, C = s.C;
    const int maxT = s.T + 5;
    IVec tok(N);
    for (size_t i = 0; i < N; i++) tok[i] = r.below(V);
    for (size_t i = 0; i < N; i += 7) tok[i] = tok[0];  // many repeats of one token
    Vec wte = rand_vec(r, (size_t)Vp * C, 1.0f), wpe = rand_vec(r, (size_t)maxT * C, 1.0f);
    Vec out(N * C);
    encoder_forward(out.data(), tok.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
    int32_t *dtok = dput_i(tok);
    float *dwte = dput(wte), *dwpe = dput(wpe), *dout_ = dpoisoned(N * C);
    cuda_encoder_forward(dout_, dtok, dwte, dwpe, s.B, s.T, s.C);
    report("encoder_forward", "out", rel(dget(dout_, N * C), out), TOL_FP32, sh);

    Vec gout = rand_vec(r, N * C, 1.0f);
    Vec gwte0 = rand_vec(r, (size_t)Vp * C, 1.0f), gwpe0 = rand_vec(r, (size_t)maxT * C, 1.0f);
    Vec gwte = gwte0, gwpe = gwpe0;
    encoder_backward(gwte.data(), gwpe.data(), gout.data(), tok.data(), s.B, s.T, s.C);
    float *dg = dput(gout), *dgwte = dput(gwte0), *dgwpe = dput(gwpe0);
    cuda_encoder_backward(dgwte, dgwpe, dg, dtok, s.B, s.T, s.C);
    Vec g1 = dget(dgwte, gwte.size()), p1 = dget(dgwpe, gwpe.size());
    report("encoder_backward", "dwte", rel(g1, gwte, &gwte0), TOL_FP32, sh);
    report("encoder_backward", "dwpe", rel(p1, gwpe, &gwpe0), TOL_FP32, sh);
    dset(dgwte, gwte0);
    dset(dgwpe, gwpe0);
    cuda_encoder_backward(dgwte, dgwpe, dg, dtok, s.B, s.T, s.C);
    report_same("encoder_backward", "dwte", dget(dgwte, gwte.size()), g1, sh);
}

// ---------------------------------------------------------------- layernorm

static void test_layernorm(Rng &r, size_t N, int C)
{
    char sh[96];
    snprintf(sh, sizeof sh, "N=%zu C=%d", N, C);
    const size_t NC = N * (size_t)C;
    Vec x = rand_vec(r, NC, 2.0f), w = rand_vec(r, C, 1.0f), b = rand_vec(r, C, 1.0f);
    for (size_t i = 0; i < NC; i++) x[i] += 0.5f;   // nonzero mean
    Vec out(NC), mean(N), rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    float *dx = dput(x), *dw = dput(w), *db = dput(b);
    float *dout_ = dpoisoned(NC), *dmean = dpoisoned(N), *drstd = dpoisoned(N);
    cuda_layernorm_forward(dout_, dmean, drstd, dx, dw, db, N, C);
    report("layernorm_forward", "out", rel(dget(dout_, NC), out), TOL_FP32, sh);
    report("layernorm_forward", "mean", rel(dget(dmean, N), mean), TOL_FP32, sh);
    report("layernorm_forward", "rstd", rel(dget(drstd, N), rstd), TOL_FP32, sh);

    // backward from the cpu's mean/rstd, so that only the backward is compared
    Vec g = rand_vec(r, NC, 1.0f);
    Vec dx0 = rand_vec(r, NC, 1.0f), dw0 = rand_vec(r, C, 1.0f), db0 = rand_vec(r, C, 1.0f);
    Vec gx = dx0, gw = dw0, gb = db0;
    layernorm_backward(gx.data(), gw.data(), gb.data(), g.data(), x.data(), w.data(), mean.data(),
                       rstd.data(), N, C);
    dset(dmean, mean);
    dset(drstd, rstd);
    float *dg = dput(g), *dgx = dput(dx0), *dgw = dput(dw0), *dgb = dput(db0);
    cuda_layernorm_backward(dgx, dgw, dgb, dg, dx, dw, dmean, drstd, N, C);
    Vec hx = dget(dgx, NC), hw = dget(dgw, C), hb = dget(dgb, C);
    report("layernorm_backward", "dinp", rel(hx, gx, &dx0), TOL_FP32, sh);
    report("layernorm_backward", "dweight", rel(hw, gw, &dw0), TOL_FP32, sh);
    report("layernorm_backward", "dbias", rel(hb, gb, &db0), TOL_FP32, sh);
    dset(dgx, dx0);
    dset(dgw, dw0);
    dset(dgb, db0);
    cuda_layernorm_backward(dgx, dgw, dgb, dg, dx, dw, dmean, drstd, N, C);
    report_same("layernorm_backward", "dweight", dget(dgw, C), hw, sh);
    report_same("layernorm_backward", "dinp", dget(dgx, NC), hx, sh);
}

// ---------------------------------------------------------------- matmul

static void test_matmul(Rng &r, size_t N, int IC, int OC, int trans_w, int with_bias)
{
    char sh[96];
    snprintf(sh, sizeof sh, "N=%zu IC=%d OC=%d trans_w=%d%s", N, IC, OC, trans_w,
             with_bias ? " bias" : "");
    const size_t NI = N * IC, NO = N * OC, W = (size_t)IC * OC;
    Vec x = rand_vec(r, NI, 1.0f), w = rand_vec(r, W, 0.1f), b = rand_vec(r, OC, 1.0f);
    Vec out(NO);
    matmul_forward(out.data(), x.data(), w.data(), with_bias ? b.data() : NULL, N, IC, OC, trans_w);
    float *dx = dput(x), *dw = dput(w), *db = dput(b), *dout_ = dpoisoned(NO);
    cuda_matmul_forward(dout_, dx, dw, with_bias ? db : NULL, N, IC, OC, trans_w);
    report("matmul_forward", "out", rel(dget(dout_, NO), out), tol_mm(), sh);

    Vec g = rand_vec(r, NO, 1.0f);
    Vec dw0 = rand_vec(r, W, 1.0f), db0 = rand_vec(r, OC, 1.0f);
    Vec gx(NI), gw = dw0, gb = db0;
    matmul_backward(gx.data(), gw.data(), with_bias ? gb.data() : NULL, g.data(), x.data(),
                    w.data(), N, IC, OC, trans_w);
    float *dg = dput(g), *dgx = dpoisoned(NI), *dgw = dput(dw0), *dgb = dput(db0);
    cuda_matmul_backward(dgx, dgw, with_bias ? dgb : NULL, dg, dx, dw, N, IC, OC, trans_w);
    Vec hw = dget(dgw, W), hb = dget(dgb, OC);
    report("matmul_backward", "dinp", rel(dget(dgx, NI), gx), tol_mm(), sh);
    report("matmul_backward", "dweight", rel(hw, gw, &dw0), tol_mm(), sh);
    if (with_bias) {
        report("matmul_backward", "dbias", rel(hb, gb, &db0), TOL_FP32, sh);
        dset(dgw, dw0);
        dset(dgb, db0);
        cuda_matmul_backward(dgx, dgw, dgb, dg, dx, dw, N, IC, OC, trans_w);
        report_same("matmul_backward", "dweight", dget(dgw, W), hw, sh);
        report_same("matmul_backward", "dbias", dget(dgb, OC), hb, sh);
    }
    // The weight's gradient by row ranges (ZeRO's fused two-rank reduction):
    // the middle rows with beta 0 over poison, the rest accumulating onto dw0.
    int rows = trans_w ? OC : IC, r0 = rows / 3, r1 = rows - rows / 4;
    Vec rw = dw0;
    matmul_dweight_rows(rw.data(), g.data(), x.data(), N, IC, OC, trans_w, r0, r1, 0.0f);
    matmul_dweight_rows(rw.data(), g.data(), x.data(), N, IC, OC, trans_w, 0, r0, 1.0f);
    matmul_dweight_rows(rw.data(), g.data(), x.data(), N, IC, OC, trans_w, r1, rows, 1.0f);
    Vec pw = dw0;
    for (size_t i = (size_t)r0 * (W / rows); i < (size_t)r1 * (W / rows); i++) pw[i] = NAN;
    dset(dgw, pw);
    cuda_matmul_dweight_rows(dgw, dg, dx, N, IC, OC, trans_w, r0, r1, 0.0f);
    cuda_matmul_dweight_rows(dgw, dg, dx, N, IC, OC, trans_w, 0, r0, 1.0f);
    cuda_matmul_dweight_rows(dgw, dg, dx, N, IC, OC, trans_w, r1, rows, 1.0f);
    report("matmul_dweight_rows", "dweight", rel(dget(dgw, W), rw), tol_mm(), sh);
}

// ---------------------------------------------------------------- elementwise

static void test_elementwise(Rng &r, size_t n)
{
    char sh[64];
    snprintf(sh, sizeof sh, "n=%zu", n);
    Vec x = rand_vec(r, n, 6.0f), y = rand_vec(r, n, 1.0f), g = rand_vec(r, n, 1.0f);
    float *dx = dput(x), *dy = dput(y), *dg = dput(g), *d = dpoisoned(n);

    Vec out(n);
    gelu_forward(out.data(), x.data(), n);
    cuda_gelu_forward(d, dx, n);
    report("gelu_forward", "out", rel(dget(d, n), out), TOL_FP32, sh);
    gelu_backward(out.data(), x.data(), g.data(), n);
    dpoison(d, n);
    cuda_gelu_backward(d, dx, dg, n);
    report("gelu_backward", "dinp", rel(dget(d, n), out), TOL_FP32, sh);

    residual_forward(out.data(), x.data(), y.data(), n);
    dpoison(d, n);
    cuda_residual_forward(d, dx, dy, n);
    report("residual_forward", "out", rel(dget(d, n), out), TOL_FP32, sh);

    Vec xs = x;
    scale_inplace(xs.data(), 0.37f, n);
    cuda_copy_d2d(d, dx, n);
    cuda_scale_inplace(d, 0.37f, n);
    report("scale_inplace", "x", rel(dget(d, n), xs), TOL_FP32, sh);

    Vec ya = y;
    for (size_t i = 0; i < n; i++) ya[i] = fmaf(-0.25f, x[i], ya[i]);
    cuda_copy_d2d(d, dy, n);
    cuda_axpy(d, dx, -0.25f, n);
    report("axpy", "y", rel(dget(d, n), ya), TOL_FP32, sh);

    cuda_memset_zero(d, n);
    Vec z = dget(d, n);
    size_t nz = 0;
    for (size_t i = 0; i < n; i++) nz += z[i] != 0.0f;
    report("memset_zero", "x", (double)nz, 0.0, sh);
}

static void test_adamw(Rng &r, size_t n)
{
    char sh[64];
    snprintf(sh, sizeof sh, "n=%zu t=3", n);
    Vec p = rand_vec(r, n, 1.0f), g = rand_vec(r, n, 1.0f);
    Vec m = rand_vec(r, n, 0.1f), v(n);
    for (size_t i = 0; i < n; i++) v[i] = (float)r.unit() * 0.01f;
    float *dp = dput(p), *dg = dput(g), *dm = dput(m), *dv = dput(v);
    Vec p0 = p, m0 = m, v0 = v;
    adamw_update(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
    cuda_adamw_update(dp, dg, dm, dv, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
    report("adamw_update", "param", rel(dget(dp, n), p, &p0), TOL_FP32, sh);
    report("adamw_update", "m", rel(dget(dm, n), m), TOL_FP32, sh);
    report("adamw_update", "v", rel(dget(dv, n), v), TOL_FP32, sh);
}

static void test_sumsq(Rng &r, size_t n)
{
    char sh[64];
    snprintf(sh, sizeof sh, "n=%zu", n);
    Vec x = rand_vec(r, n, 3.0f);
    float *dx = dput(x);
    double c = sumsq(x.data(), n), g1 = cuda_sumsq(dx, n), g2 = cuda_sumsq(dx, n);
    report("sumsq", "value", fabs(g1 - c) / c, TOL_SUMSQ, sh);
    bool same = memcmp(&g1, &g2, sizeof g1) == 0;
    printf("%-4s %-22s %-10s %s  %s\n", same ? "ok" : "FAIL", "sumsq", "value",
           same ? "bitwise identical on rerun" : "DIFFERS on rerun (nondeterministic)", sh);
    same ? n_pass++ : n_fail++;
}

// ---------------------------------------------------------------- crossentropy

static void test_crossentropy(Rng &r, size_t N, int V, int Vp)
{
    char sh[96];
    snprintf(sh, sizeof sh, "N=%zu V=%d Vp=%d", N, V, Vp);
    const size_t NV = N * (size_t)Vp;
    Vec logits = rand_vec(r, NV, 4.0f);
    for (size_t n = 0; n < N; n++)
        for (int v = V; v < Vp; v++) logits[n * Vp + v] = 1e4f;   // padding must be ignored
    IVec tgt(N);
    for (size_t n = 0; n < N; n++) tgt[n] = n % 5 == 3 ? -1 : r.below(V);
    tgt[0] = V - 1;
    Vec loss(N), lse(N);
    crossentropy_forward(loss.data(), lse.data(), logits.data(), tgt.data(), N, V, Vp);
    float *dl = dput(logits), *dloss = dpoisoned(N), *dlse = dpoisoned(N);
    int32_t *dt = dput_i(tgt);
    cuda_crossentropy_forward(dloss, dlse, dl, dt, N, V, Vp);
    report("crossentropy_forward", "losses", rel(dget(dloss, N), loss), TOL_FP32, sh);
    report("crossentropy_forward", "lse", rel(dget(dlse, N), lse), TOL_FP32, sh);

    // backward in place on the gpu (as the trainer calls it), from the cpu's lse
    Vec grad(NV);
    const float dl1 = 1.0f / (float)N;
    crossentropy_backward(grad.data(), logits.data(), lse.data(), tgt.data(), dl1, N, V, Vp);
    dset(dlse, lse);
    cuda_crossentropy_backward(dl, dl, dlse, dt, dl1, N, V, Vp);
    report("crossentropy_backward", "dlogits", rel(dget(dl, NV), grad), TOL_FP32, sh);
}

// ---------------------------------------------------------------- attention

static void test_attention(Rng &r, Shape s, const Dropout *drop = NULL)
{
    char sh[96];
    snprintf(sh, sizeof sh, "B=%d T=%d C=%d NH=%d (HS=%d)%s", s.B, s.T, s.C, s.NH, s.C / s.NH,
             drop ? " dropout" : "");
    const size_t N = (size_t)s.B * s.T, C = s.C, L = (size_t)s.B * s.NH * s.T;
    Vec qkv = rand_vec(r, N * 3 * C, 1.5f);
    Vec out(N * C), lse(L);
    attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, drop);
    float *dqkv_in = dput(qkv), *dout_ = dpoisoned(N * C), *dlse = dpoisoned(L);
    cuda_attention_forward(dout_, dlse, dqkv_in, s.B, s.T, s.C, s.NH, drop);
    report("attention_forward", "out", rel(dget(dout_, N * C), out), TOL_FP32, sh);
    report("attention_forward", "lse", rel(dget(dlse, L), lse), TOL_FP32, sh);

    // backward from the cpu's out and lse, so that only the backward is compared
    Vec g = rand_vec(r, N * C, 1.0f), dqkv(N * 3 * C);
    attention_backward(dqkv.data(), g.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.C,
                       s.NH, drop);
    dset(dout_, out);
    dset(dlse, lse);
    float *dg = dput(g), *dd = dpoisoned(N * 3 * C);
    cuda_attention_backward(dd, dg, dqkv_in, dout_, dlse, s.B, s.T, s.C, s.NH, drop);
    Vec h = dget(dd, N * 3 * C);
    report("attention_backward", "dqkv", rel(h, dqkv), TOL_FP32, sh);
    // the three parts separately, so a failure says which
    Vec hq, hk, hv, cq, ck, cv;
    for (size_t n = 0; n < N; n++)
        for (size_t c = 0; c < C; c++) {
            hq.push_back(h[n * 3 * C + c]);
            hk.push_back(h[n * 3 * C + C + c]);
            hv.push_back(h[n * 3 * C + 2 * C + c]);
            cq.push_back(dqkv[n * 3 * C + c]);
            ck.push_back(dqkv[n * 3 * C + C + c]);
            cv.push_back(dqkv[n * 3 * C + 2 * C + c]);
        }
    // relative to ||dqkv||: a part can be ~0 (T = 1: dq = dk = 0 up to rounding)
    const double whole = dist(dqkv, NULL) > 0.0 ? dist(dqkv, NULL) : 1.0;
    report("attention_backward", "dq", dist(hq, &cq) / whole, TOL_FP32, sh);
    report("attention_backward", "dk", dist(hk, &ck) / whole, TOL_FP32, sh);
    report("attention_backward", "dv", dist(hv, &cv) / whole, TOL_FP32, sh);
    dpoison(dd, N * 3 * C);
    cuda_attention_backward(dd, dg, dqkv_in, dout_, dlse, s.B, s.T, s.C, s.NH, drop);
    report_same("attention_backward", "dqkv", dget(dd, N * 3 * C), h, sh);
}

// dropout: the mask is integer arithmetic, so cuda and cpu agree bit for bit.
static void test_dropout(Rng &r, int B, int T, int C)
{
    char sh[64];
    snprintf(sh, sizeof sh, "B=%d T=%d C=%d", B, T, C);
    const size_t n = (size_t)B * T * C;
    Vec x = rand_vec(r, n, 1.0f), out(n), back(n);
    Dropout d = dropout_of(0.1f, dropout_key(3, 5, 1, DROP_ATTN_RESID), 17, 64, 0);
    dropout_forward(out.data(), x.data(), &d, B, T, C);
    dropout_backward(back.data(), x.data(), &d, B, T, C);
    float *dx = dput(x), *dd = dpoisoned(n);
    cuda_dropout_forward(dd, dx, &d, B, T, C);
    report_same("dropout_forward", "out", dget(dd, n), out, sh);
    dpoison(dd, n);
    cuda_dropout_backward(dd, dx, &d, B, T, C);
    report_same("dropout_backward", "dinp", dget(dd, n), back, sh);
    cuda_dropout_forward(dx, dx, &d, B, T, C);   // in place, as the model calls it
    report_same("dropout_forward", "in place", dget(dx, n), out, sh);
}

static void test_paged_attention(Rng &r, int N, int C, int NH)
{
    char sh[96];
    const int bs = 16, max_blocks = 6, pool = 20, q_stride = 3 * C;
    snprintf(sh, sizeof sh, "N=%d C=%d NH=%d bs=%d", N, C, NH, bs);
    const size_t block_stride = 2 * (size_t)bs * C, v_offset = (size_t)bs * C;
    Vec q = rand_vec(r, (size_t)N * q_stride, 1.5f), kv = rand_vec(r, pool * block_stride, 1.5f);
    IVec tables((size_t)N * max_blocks), pos(N);
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < max_blocks; k++) tables[(size_t)i * max_blocks + k] = r.below(pool);
        pos[i] = i == 0 ? 0 : r.below(max_blocks * bs);
    }
    Vec out((size_t)N * C);
    paged_attention_forward(out.data(), q.data(), q_stride, kv.data(), block_stride, v_offset,
                            tables.data(), max_blocks, pos.data(), N, C, NH, bs);
    float *dq = dput(q), *dkv = dput(kv), *dout_ = dpoisoned((size_t)N * C);
    int32_t *dtab = dput_i(tables), *dpos = dput_i(pos);
    cuda_paged_attention_forward(dout_, dq, q_stride, dkv, block_stride, v_offset, dtab,
                                 max_blocks, dpos, N, C, NH, bs);
    report("paged_attention", "out", rel(dget(dout_, (size_t)N * C), out), TOL_FP32, sh);
}

// ---------------------------------------------------------------- moe

// A token -> row table as moe.c builds it: each kept choice of N tokens x K
// gets its own row of a (rows, C) buffer, in a shuffled order; about a quarter
// of the choices are dropped (-1).
static IVec moe_table(Rng &r, size_t N, int K, size_t *rows)
{
    IVec pos(N * (size_t)K);
    size_t kept = 0;
    for (size_t i = 0; i < pos.size(); i++) pos[i] = r.below(4) == 0 ? -1 : (int32_t)kept++;
    IVec perm(kept);
    for (size_t i = 0; i < kept; i++) perm[i] = (int32_t)i;
    for (size_t i = kept; i > 1; i--) std::swap(perm[i - 1], perm[(size_t)r.below((int)i)]);
    for (size_t i = 0; i < pos.size(); i++)
        if (pos[i] >= 0) pos[i] = perm[(size_t)pos[i]];
    *rows = kept + 3;     // rows no choice names: left as they are
    return pos;
}

// moe_dispatch, moe_combine (=, +=; with weights and without), moe_rowdot
// (through the table and row by row) against kernels/cpu/moe.c; reruns bitwise.
static void test_moe(Rng &r, size_t N, int K, int C)
{
    char sh[96];
    snprintf(sh, sizeof sh, "N=%zu K=%d C=%d", N, K, C);
    size_t R;
    IVec pos = moe_table(r, N, K, &R);
    const size_t NC = N * (size_t)C, RC = R * (size_t)C, NK = N * (size_t)K;
    Vec x = rand_vec(r, NC, 1.0f), w = rand_vec(r, NK, 1.0f), y = rand_vec(r, RC, 1.0f);
    Vec base = rand_vec(r, RC, 1.0f), obase = rand_vec(r, NC, 1.0f);
    int32_t *dpos = dput_i(pos);
    float *dx = dput(x), *dw = dput(w), *dy = dput(y);
    float *dd = dalloc(RC), *dout = dalloc(NC), *ddots = dpoisoned(NK);
    for (int weighted = 0; weighted <= 1; weighted++) {
        const float *hw = weighted ? w.data() : NULL;
        const float *gw = weighted ? dw : NULL;
        Vec d = base;
        moe_dispatch(d.data(), x.data(), pos.data(), hw, N, K, C);
        dset(dd, base);
        cuda_moe_dispatch(dd, dx, dpos, gw, N, K, C);
        report("moe_dispatch", weighted ? "dst, w" : "dst", rel(dget(dd, RC), d, &base), TOL_FP32, sh);
        for (int acc = 0; acc <= 1; acc++) {
            Vec o = obase;
            moe_combine(o.data(), y.data(), pos.data(), hw, N, K, C, acc);
            if (acc) dset(dout, obase);
            else dpoison(dout, NC);
            cuda_moe_combine(dout, dy, dpos, gw, N, K, C, acc);
            Vec g = dget(dout, NC);
            report("moe_combine", acc ? (weighted ? "out+=, w" : "out+=") : (weighted ? "out, w" : "out"),
                   rel(g, o, acc ? &obase : NULL), TOL_FP32, sh);
            if (acc) dset(dout, obase);
            cuda_moe_combine(dout, dy, dpos, gw, N, K, C, acc);
            report_same("moe_combine", acc ? "out+=" : "out", dget(dout, NC), g, sh);
        }
    }
    Vec dots(NK);
    moe_rowdot(dots.data(), x.data(), y.data(), pos.data(), N, K, C);
    cuda_moe_rowdot(ddots, dx, dy, dpos, N, K, C);
    Vec g = dget(ddots, NK);
    report("moe_rowdot", "dots", rel(g, dots), TOL_FP32, sh);
    dpoison(ddots, NK);
    cuda_moe_rowdot(ddots, dx, dy, dpos, N, K, C);
    report_same("moe_rowdot", "dots", dget(ddots, NK), g, sh);
    Vec dots1(N), y1 = rand_vec(r, NC, 1.0f);    // row by row (PR-MoE's coefficient gradients)
    float *dy1 = dput(y1);
    moe_rowdot(dots1.data(), x.data(), y1.data(), NULL, N, 1, C);
    dpoison(ddots, N);
    cuda_moe_rowdot(ddots, dx, dy1, NULL, N, 1, C);
    report("moe_rowdot", "dots, rows", rel(dget(ddots, N), dots1), TOL_FP32, sh);
}

// ---------------------------------------------------------------- chain

// ln -> fc (C -> 4C) -> gelu -> proj (4C -> C) -> residual: in bf16 mode the
// error of the matrix products carries through gelu and the residual.
static void test_mlp_chain(Rng &r, size_t N, int C)
{
    char sh[96];
    snprintf(sh, sizeof sh, "N=%zu C=%d", N, C);
    const size_t NC = N * C, N4 = N * 4 * C;
    Vec x = rand_vec(r, NC, 1.0f), lw = rand_vec(r, C, 1.0f), lb = rand_vec(r, C, 0.1f);
    Vec w1 = rand_vec(r, (size_t)C * 4 * C, 0.05f), b1 = rand_vec(r, 4 * C, 0.1f);
    Vec w2 = rand_vec(r, (size_t)4 * C * C, 0.05f), b2 = rand_vec(r, C, 0.1f);
    Vec ln(NC), mean(N), rstd(N), h(N4), a(N4), p(NC), y(NC);
    layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), lw.data(), lb.data(), N, C);
    matmul_forward(h.data(), ln.data(), w1.data(), b1.data(), N, C, 4 * C, 0);
    gelu_forward(a.data(), h.data(), N4);
    matmul_forward(p.data(), a.data(), w2.data(), b2.data(), N, 4 * C, C, 0);
    residual_forward(y.data(), x.data(), p.data(), NC);
    float *dx = dput(x), *dlw = dput(lw), *dlb = dput(lb), *dw1 = dput(w1), *db1 = dput(b1);
    float *dw2 = dput(w2), *db2 = dput(b2);
    float *dln = dpoisoned(NC), *dm = dpoisoned(N), *dr = dpoisoned(N), *dh = dpoisoned(N4);
    float *da = dpoisoned(N4), *dp = dpoisoned(NC), *dy = dpoisoned(NC);
    cuda_layernorm_forward(dln, dm, dr, dx, dlw, dlb, N, C);
    cuda_matmul_forward(dh, dln, dw1, db1, N, C, 4 * C, 0);
    cuda_gelu_forward(da, dh, N4);
    cuda_matmul_forward(dp, da, dw2, db2, N, 4 * C, C, 0);
    cuda_residual_forward(dy, dx, dp, NC);
    report("mlp_chain", "mlp out", rel(dget(dp, NC), p), tol_mm(), sh);
    report("mlp_chain", "residual", rel(dget(dy, NC), y), tol_mm(), sh);
}

// ---------------------------------------------------------------- timings

static double time_ms(void (*fn)(void *), void *arg, int reps)
{
    cudaStream_t st = (cudaStream_t)cuda_stream();
    cudaEvent_t e0, e1;
    TCHECK(cudaEventCreate(&e0));
    TCHECK(cudaEventCreate(&e1));
    fn(arg);    // warm-up (and scratch growth)
    cuda_synchronize();
    TCHECK(cudaEventRecord(e0, st));
    for (int i = 0; i < reps; i++) fn(arg);
    TCHECK(cudaEventRecord(e1, st));
    TCHECK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    TCHECK(cudaEventElapsedTime(&ms, e0, e1));
    TCHECK(cudaEventDestroy(e0));
    TCHECK(cudaEventDestroy(e1));
    return ms / reps;
}

struct AttnBench {
    float *qkv, *out, *lse, *dout, *dqkv;
    int B, T, C, NH;
};
static void attn_fwd(void *p)
{
    AttnBench *a = (AttnBench *)p;
    cuda_attention_forward(a->out, a->lse, a->qkv, a->B, a->T, a->C, a->NH, NULL);
}
static void attn_bwd(void *p)
{
    AttnBench *a = (AttnBench *)p;
    cuda_attention_backward(a->dqkv, a->dout, a->qkv, a->out, a->lse, a->B, a->T, a->C, a->NH, NULL);
}

struct MmBench {
    float *x, *w, *b, *out, *dx, *dw, *db;
    size_t N;
    int IC, OC;
};
static void mm_fwd(void *p)
{
    MmBench *m = (MmBench *)p;
    cuda_matmul_forward(m->out, m->x, m->w, m->b, m->N, m->IC, m->OC, 0);
}
static void mm_bwd(void *p)
{
    MmBench *m = (MmBench *)p;
    cuda_matmul_backward(m->dx, m->dw, m->db, m->out, m->x, m->w, m->N, m->IC, m->OC, 0);
}

static void timings(Rng &r)
{
    const char *mode = bf16_mode ? "bf16" : "fp32";
    double tf = cuda_gemm_peak_tflops(4096, bf16_mode);
    printf("time %s GEMM 4096^3 (cuBLAS, fp32 out): %.1f TFLOP/s\n", mode, tf);
    printf("RESULT gemm_tflops_%s %.1f\n", mode, tf);

    // GPT-2 124M shapes: B=8, T=1024, C=768, NH=12
    AttnBench a = {NULL, NULL, NULL, NULL, NULL, 8, 1024, 768, 12};
    const size_t N = (size_t)a.B * a.T;
    a.qkv = dput(rand_vec(r, N * 3 * a.C, 1.0f));
    a.out = dalloc(N * a.C);
    a.lse = dalloc((size_t)a.B * a.NH * a.T);
    a.dout = dput(rand_vec(r, N * a.C, 1.0f));
    a.dqkv = dalloc(N * 3 * a.C);
    // causal: half of 2 (QK^T) + 2 (PV) flops per (query, key, dim) pair
    const double flops = 2.0 * 2.0 * a.B * a.NH * (double)a.T * a.T * (a.C / a.NH) / 2.0;
    double fms = time_ms(attn_fwd, &a, 5), bms = time_ms(attn_bwd, &a, 5);
    printf("time %s attention B=8 T=1024 C=768 NH=12: forward %.2f ms (%.1f TFLOP/s), backward "
           "%.2f ms (%.1f TFLOP/s, 2.5x forward flops)\n",
           mode, fms, flops / fms / 1e9, bms, 2.5 * flops / bms / 1e9);
    printf("RESULT attention_fwd_ms_%s %.3f\nRESULT attention_bwd_ms_%s %.3f\n", mode, fms, mode,
           bms);

    MmBench m = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, N, 768, 3072};
    m.x = dput(rand_vec(r, N * m.IC, 1.0f));
    m.w = dput(rand_vec(r, (size_t)m.IC * m.OC, 0.05f));
    m.b = dput(rand_vec(r, m.OC, 0.1f));
    m.out = dalloc(N * m.OC);
    m.dx = dalloc(N * m.IC);
    m.dw = dalloc((size_t)m.IC * m.OC);
    m.db = dalloc(m.OC);
    cuda_memset_zero(m.dw, (size_t)m.IC * m.OC);
    cuda_memset_zero(m.db, m.OC);
    const double mflops = 2.0 * N * m.IC * m.OC;
    double mf = time_ms(mm_fwd, &m, 10), mb = time_ms(mm_bwd, &m, 10);
    printf("time %s matmul N=8192 768->3072 (+bias): forward %.3f ms (%.1f TFLOP/s), backward "
           "%.3f ms (%.1f TFLOP/s)\n",
           mode, mf, mflops / mf / 1e9, mb, 2.0 * mflops / mb / 1e9);
}

// ---------------------------------------------------------------- main

static void run_suite(int quick)
{
    Rng r = {0x9e3779b97f4a7c15ull ^ (uint64_t)(bf16_mode + 1)};
    const int V = 257, Vp = 320;
    const Shape small = {3, 67, 36, 3}, gpt = {2, 130, 768, 12};

    if (want("encoder")) {
        test_encoder(r, small, V, Vp);
        if (!quick) test_encoder(r, gpt, V, Vp);
    }
    if (want("layernorm")) {
        test_layernorm(r, (size_t)small.B * small.T, small.C);
        test_layernorm(r, 131, 768);
        if (!quick) test_layernorm(r, (size_t)gpt.B * gpt.T, gpt.C);
    }
    if (want("matmul")) {
        test_matmul(r, 201, 36, 108, 0, 1);     // qkv-like, small
        test_matmul(r, 201, 36, 320, 1, 0);     // tied LM head (Vp), no bias
        test_matmul(r, 201, 144, 36, 0, 1);     // mlp projection
        if (!quick) {
            test_matmul(r, 260, 768, 2304, 0, 1);
            test_matmul(r, 260, 768, 320, 1, 0);
            test_matmul(r, 260, 3072, 768, 0, 1);
        }
    }
    if (want("chain")) {
        test_mlp_chain(r, 201, 36);
        if (!quick) test_mlp_chain(r, 260, 768);
    }
    if (want("elementwise")) test_elementwise(r, 12345);
    if (want("adamw")) test_adamw(r, 10007);
    if (want("sumsq")) test_sumsq(r, quick ? 100003 : ((size_t)1 << 22) + 17);
    if (want("crossentropy")) {
        test_crossentropy(r, 201, V, Vp);
        if (!quick) test_crossentropy(r, 37, 50257, 50304);
    }
    if (want("attention")) {
        test_attention(r, small);                       // HS = 12
        test_attention(r, Shape{2, 64, 64, 2});         // HS = 32, one exact tile
        test_attention(r, Shape{1, 130, 256, 2});       // HS = 128
        if (!quick) {
            test_attention(r, gpt);                     // HS = 64
            test_attention(r, Shape{1, 1, 36, 3});      // T = 1
            test_attention(r, Shape{2, 257, 384, 6});   // HS = 64, 5 tiles
        }
    }
    if (want("dropout")) {
        test_dropout(r, 3, 50, 40);
        Dropout d = dropout_of(0.2f, dropout_key(9, 1, 0, DROP_ATTN), 4, 0, 1);
        test_attention(r, small, &d);
        test_attention(r, Shape{1, 130, 256, 2}, &d);
    }
    if (want("moe")) {
        test_moe(r, 67, 1, 36);
        test_moe(r, 201, 2, 36);
        if (!quick) test_moe(r, 1040, 2, 768);
    }
    if (want("paged")) {
        test_paged_attention(r, 5, 64, 2);
        if (!quick) test_paged_attention(r, 7, 768, 12);
    }
    if (!quick && want("timing")) timings(r);
}

int main(int argc, char **argv)
{
    int quick = 0;
    only = argv + 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) quick = 1;
        else only[n_only++] = argv[i];
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ndev = cuda_device_count();
    if (ndev == 0) {
        printf("no CUDA device: skipped (%s)\n", cuda_probe_error());
        return 77;
    }
    for (bf16_mode = 0; bf16_mode <= 1; bf16_mode++) {
        cuda_init(0, bf16_mode);
        cuda_arena_reserve((size_t)3 << 30);
        printf("== %s mode on %s: tolerance %.0e (matrix products and downstream), %.0e (rest)\n",
               bf16_mode ? "bf16" : "fp32", cuda_device_name(), tol_mm(), TOL_FP32);
        run_suite(quick);
        printf("   arena used %.1f MiB, kernel scratch %.1f MiB\n",
               cuda_arena_used() / 1048576.0, cuda_scratch_bytes() / 1048576.0);
        cuda_shutdown();
    }
    printf("RESULT kernel_tests_passed %d\nRESULT kernel_tests_failed %d\n", n_pass, n_fail);
    printf("%s: %d comparisons passed, %d failed\n", n_fail ? "FAIL" : "PASS", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
