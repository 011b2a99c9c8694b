// fastmath.h: private math helpers of the cpu kernels (not part of kernels.h).
//
// glibc's expf and sqrtf do not vectorize without -ffast-math (errno), so the
// hot loops use these instead: plain C that GCC turns into AVX2/FMA code.
// They are branch-free on purpose: under the default -ftrapping-math GCC will
// not if-convert a conditionally computed float, so special cases are handled
// by clamping the input (a pure select) rather than by selecting the output.
#ifndef PARTITA_CPU_FASTMATH_H
#define PARTITA_CPU_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline int32_t f2bits(float x) { int32_t i; memcpy(&i, &x, sizeof i); return i; }
static inline float bits2f(int32_t i) { float x; memcpy(&x, &i, sizeof x); return x; }

// e^x for x <= 170 (every caller passes x <= 80): relative error < 2e-7 for
// x in [-87.3, 88.72]; below that the result goes through the subnormals to 0
// (x < -104, -inf included, gives exactly 0); above 88.72 it is +inf; NaN stays
// NaN. Larger x is outside the contract (only the low side is clamped: each
// clamp costs a compare and a blend, the hot loops need only this one).
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, the Cephes degree-7
// polynomial for e^r, then 2^n applied as 2^n1 * 2^n2 with n1 + n2 = n, so
// each factor stays a normal float and the product under/overflows correctly.
static inline float exp_fast(float x)
{
    const float lo = -105.0f, magic = 12582912.0f;  // magic = 1.5 * 2^23
    float xc = x < lo ? lo : x;             // a pure select: NaN passes through
    float t = fmaf(xc, 1.44269504088896341f, magic);   // round(x / ln2) in the low bits
    float nf = t - magic;
    float t1 = fmaf(nf, 0.5f, magic);       // round(n / 2)
    // Integer parts in unsigned (two's complement) arithmetic: no overflow even for NaN.
    uint32_t n = (uint32_t)f2bits(t) - (uint32_t)f2bits(magic);   // n in [-151, 246]
    uint32_t n1 = (uint32_t)f2bits(t1) - (uint32_t)f2bits(magic);
    uint32_t n2 = n - n1;                   // n1, n2 in [-76, 123]
    float r = fmaf(nf, -0.693359375f, xc);  // ln2 split in an exact high part
    r = fmaf(nf, 2.12194440e-4f, r);        // and the low remainder
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r + 1.0f);
    float s1 = bits2f((int32_t)((n1 + 127u) << 23));      // 2^n1
    float s2 = bits2f((int32_t)((n2 + 127u) << 23));      // 2^n2
    return (p * s1) * s2;
}

// sqrt(x) for x >= 0, branch-free: bit-trick 1/sqrt, three Newton steps, one
// Newton step on sqrt itself. Within 1 ulp of sqrtf for x >= 1e-22, exact at 0,
// absolute error < 1e-15 in between.
static inline float sqrt_fast(float x)
{
    float xs = x + 1e-30f;                  // keeps the 1/sqrt estimate finite at 0
    float y = bits2f(0x5f375a86 - (f2bits(xs) >> 1));
    float h = 0.5f * xs;
    y = y * (1.5f - h * y * y);
    y = y * (1.5f - h * y * y);
    y = y * (1.5f - h * y * y);
    float s = x * y;
    return fmaf(0.5f * y, fmaf(-s, s, x), s);
}

#endif
