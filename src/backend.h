// backend.h: the compute backend of a run, as one table of functions.
//
// Everything above the kernels (model, ZeRO, optimizer, comm, checkpoints)
// computes through a Backend and never touches a buffer it allocated except
// through it: on cpu the buffers are host memory and the entries are the
// kernels of kernels/cpu; on cuda they are device memory from one arena and
// the entries are kernels/cuda's. Host code reads device data only by
// to_host, so the same code runs on either backend.
#ifndef PARTITA_BACKEND_H
#define PARTITA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct Dropout Dropout;     // kernels.h (moe.c and others name kernels of their own)

typedef struct Backend {
    int kind;               // BACKEND_CPU or BACKEND_CUDA (deck.h)
    int device_memory;      // 1: buffers from alloc are not host-addressable
    const char *name;       // "cpu", "cuda"

    // Memory: alloc returns zeroed memory, freed by release (a no-op for the
    // arena, which is freed whole at shutdown). Copies of n elements;
    // to_host / from_host return when the host side may be read / reused.
    void *(*alloc)(size_t bytes, const char *what);
    void (*release)(void *p);
    void (*zero)(float *x, size_t n);
    void (*copy)(float *dst, const float *src, size_t n);
    void (*to_host)(float *host, const float *src, size_t n);
    void (*from_host)(float *dst, const float *host, size_t n);
    void (*from_host_i32)(int32_t *dst, const int32_t *host, size_t n);
    void (*axpy)(float *y, const float *x, float a, size_t n);     // y += a x
    // rows x cols floats: dst[r * dst_stride + c] = src[r * src_stride + c] (no overlap)
    void (*copy2d)(float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t rows, size_t cols);
    void (*sync)(void);                                             // all issued work done

    // Host memory and asynchronous copies (offload, Deep Optimizer States).
    // host_alloc: zeroed host memory the device copies at full speed (pinned on
    // cuda), 4096-byte aligned, freed by host_free. d2h_async / h2d_async copy n
    // floats on the copy stream (a second stream), after all work issued on the
    // compute stream before the call; ev (from event_create; may be NULL) is
    // recorded when the copy is done. copy_fence records ev after every copy
    // issued so far; event_sync blocks the host until ev; compute_wait makes
    // compute work issued later wait for ev. On cpu the copies are done when
    // they return and events are NULL.
    void *(*host_alloc)(size_t bytes, const char *what);
    void (*host_free)(void *p);
    void *(*event_create)(void);
    void (*event_destroy)(void *ev);
    void (*d2h_async)(float *host, const float *src, size_t n, void *ev);
    void (*h2d_async)(float *dst, const float *host, size_t n, void *ev);
    void (*copy_fence)(void *ev);
    void (*event_sync)(void *ev);
    void (*compute_wait)(void *ev);

    // Between the tiles of long kernels, fn(ctx) on the calling thread
    // (kernels_set_tile_hook; cuda: a no-op, NCCL needs no host progress).
    void (*set_tile_hook)(void (*fn)(void *ctx), void *ctx);

    // kernels.h, entry for entry.
    void (*encoder_forward)(float *out, const int32_t *tok, const float *wte, const float *wpe,
                            int B, int T, int C);
    void (*encoder_backward)(float *dwte, float *dwpe, const float *dout, const int32_t *tok,
                             int B, int T, int C);
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t N, int C);
    void (*layernorm_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t N, int C);
    void (*matmul_forward)(float *out, const float *inp, const float *weight, const float *bias,
                           size_t N, int IC, int OC, int trans_w);
    void (*matmul_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, size_t N, int IC, int OC, int trans_w);
    void (*matmul_dweight_rows)(float *dweight, const float *dout, const float *inp, size_t N, int IC, int OC,
                                int trans_w, int r0, int r1, float beta);
    void (*gelu_forward)(float *out, const float *inp, size_t n);
    void (*gelu_backward)(float *dinp, const float *inp, const float *dout, size_t n);
    void (*residual_forward)(float *out, const float *a, const float *b, size_t n);
    void (*attention_forward)(float *out, float *lse, const float *qkv, int B, int T, int C, int NH,
                              const Dropout *drop);
    void (*attention_backward)(float *dqkv, const float *dout, const float *qkv, const float *out,
                               const float *lse, int B, int T, int C, int NH, const Dropout *drop);
    void (*dropout_forward)(float *out, const float *inp, const Dropout *d, int B, int T, int C);
    void (*dropout_backward)(float *dinp, const float *dout, const Dropout *d, int B, int T, int C);
    void (*crossentropy_forward)(float *losses, float *lse, const float *logits, const int32_t *targets,
                                 size_t N, int V, int Vp);
    void (*crossentropy_backward)(float *dlogits, const float *logits, const float *lse,
                                  const int32_t *targets, float dloss, size_t N, int V, int Vp);
    // Inference (a ragged batch over the paged KV cache); NULL where a backend lacks them.
    void (*embed_rows)(float *out, const int32_t *tok, const int32_t *pos, const float *wte, const float *wpe,
                       int N, int C);
    void (*kv_store)(float *kv, size_t block_stride, size_t v_offset, const float *qkv, const int32_t *tables,
                     int max_blocks, const int32_t *pos, int N, int C, int bs);
    void (*paged_attention_forward)(float *out, const float *q, int q_stride, const float *kv, size_t block_stride,
                                    size_t v_offset, const int32_t *tables, int max_blocks, const int32_t *pos,
                                    int N, int C, int NH, int bs);
    void (*matmul_held_forward)(float *out, const float *inp, const void *weight, int wdtype, const float *scale,
                                const float *bias, size_t N, int IC, int OC, int epilogue, float *tmp);
    void (*adamw_update)(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                         float beta1, float beta2, float eps, float wd, int t);
    void (*scale_inplace)(float *x, float s, size_t n);
    double (*sumsq)(const float *x, size_t n);
    // Mixture of Experts row moves (kernels.h moe_*); NULL where a backend lacks them.
    void (*moe_dispatch)(float *dst, const float *src, const int32_t *pos, const float *w, size_t N, int K, int C);
    void (*moe_combine)(float *out, const float *y, const int32_t *pos, const float *w, size_t N, int K, int C,
                        int accumulate);
    void (*moe_rowdot)(float *dots, const float *a, const float *y, const int32_t *pos, size_t N, int K, int C);
} Backend;

// The cpu backend: always there.
const Backend *backend_cpu(void);
// The cuda backend's table, or NULL in a build without it. The device must
// have been started (device_start) before its alloc is called.
const Backend *backend_cuda(void);

#endif
