// cuda_kernels.h: the cuda backend of Partita, the whole public surface.
//
// cuda_<op> implements <op> of kernels.h with the same parameters and the same
// math; every float* / int32_t* argument is a DEVICE pointer (from cuda_malloc).
// Plain C: no CUDA header is needed to include this (streams travel as void *).
//
// Conventions the trainer relies on:
// - One device, one stream, one cuBLAS handle per process (cuda_init). Every
//   kernel and copy is issued on that stream (cuda_stream), in call order, so
//   kernels need no synchronization between them. cuda_copy_h2d / cuda_copy_d2h
//   return once the copy is done (the host buffer is free to reuse / to read);
//   cuda_sumsq returns its value, so it synchronizes too. Nothing else blocks.
// - Device memory comes from one arena (cuda_arena_reserve once, then
//   cuda_malloc bumps inside it; nothing is freed until cuda_shutdown). Kernel
//   scratch (bf16 copies of GEMM operands, reduction partials, sort buffers)
//   is private, grows to its high-water mark during the first step and is
//   then reused: no allocation happens in later steps.
// - precision_bf16 = 1 makes the matrix products take bfloat16 inputs (rounded
//   on the fly from the fp32 operands) with fp32 accumulation and fp32 output;
//   everything else stays fp32 in both modes.
// - Deterministic: no atomics in any reduction; the same inputs on the same
//   device model give the same bits, run after run.
// - Any CUDA / cuBLAS error prints file:line, the call and the error, a hint,
//   then calls the fatal handler (default: abort()). Set
//   PARTITA_CUDA_SYNC=1 to synchronize after every kernel so that an
//   asynchronous fault is reported at the kernel that caused it.
#ifndef PARTITA_CUDA_KERNELS_H
#define PARTITA_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"   // Dropout

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------- backend plumbing

// Number of CUDA devices; 0 when there is no driver or no device (never aborts).
int cuda_device_count(void);
// Why cuda_device_count returned 0 ("" when it did not): the runtime's message.
const char *cuda_probe_error(void);
// Whether cuBLAS, which is opened when a device starts rather than linked, can
// be opened here; else 0 with the reason in err (never aborts). Costs the load.
int cuda_blas_probe(char *err, size_t n);
// Selects the device, creates the stream, the cuBLAS handle and its workspace.
// Aborts (with a hint) on a device of compute capability below 8.0.
void cuda_init(int device, int precision_bf16);
// Frees everything cuda_init and the arena allocated; cuda_init may follow again.
void cuda_shutdown(void);
// Called (after the message is printed) instead of abort() on a fatal error,
// e.g. a function that calls MPI_Abort. It must not return; if it does, abort().
void cuda_set_fatal_handler(void (*handler)(void));
// 1 when cuda_init was given precision_bf16 = 1.
int cuda_precision_bf16(void);
// "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)"; "" before cuda_init.
const char *cuda_device_name(void);

// The one device allocation of the trainer: call once after cuda_init.
void cuda_arena_reserve(size_t bytes);
// bytes from the arena, 256-byte aligned; aborts with a hint when it is full.
void *cuda_malloc(size_t bytes);
size_t cuda_arena_used(void);
// Bytes of private kernel scratch currently held (for the memory report).
size_t cuda_scratch_bytes(void);

// n floats; all on the backend stream.
void cuda_memset_zero(float *x, size_t n);
void cuda_copy_h2d(float *dst, const float *src, size_t n);   // returns when done
void cuda_copy_d2h(float *dst, const float *src, size_t n);   // returns when done
void cuda_copy_d2d(float *dst, const float *src, size_t n);   // asynchronous
// rows x cols: dst[r * dst_stride + c] = src[r * src_stride + c]; asynchronous
void cuda_copy2d(float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t rows, size_t cols);
void cuda_copy_h2d_i32(int32_t *dst, const int32_t *src, size_t n);   // returns when done
// y += a x
void cuda_axpy(float *y, const float *x, float a, size_t n);
// Waits for everything issued on the backend stream.
void cuda_synchronize(void);
// Host memory and the copy stream (offload). cuda_host_alloc: zeroed pinned
// host memory (cudaHostAlloc, page-aligned); cuda_host_free frees it. Events
// (cuda_event_create) order the copy stream and the backend stream:
// cuda_copy_d2h_async / cuda_copy_h2d_async copy n floats on the copy stream
// after all work issued on the backend stream before the call, then record ev
// (may be NULL); cuda_copy_fence records ev after every copy issued so far;
// cuda_event_sync blocks the host until ev; cuda_compute_wait makes later
// backend-stream work wait for ev. host must be pinned memory.
void *cuda_host_alloc(size_t bytes);
void cuda_host_free(void *p);
void *cuda_event_create(void);
void cuda_event_destroy(void *ev);
void cuda_copy_d2h_async(float *host, const float *src, size_t n, void *ev);
void cuda_copy_h2d_async(float *dst, const float *host, size_t n, void *ev);
void cuda_copy_fence(void *ev);
void cuda_event_sync(void *ev);
void cuda_compute_wait(void *ev);
// The backend stream as a cudaStream_t (for NCCL: issue collectives on it).
void *cuda_stream(void);
// Times n x n x n GEMMs (fp32 sgemm, or bf16 inputs with fp32 accumulation and
// output) and returns the best TFLOP/s; uses its own temporary buffers.
double cuda_gemm_peak_tflops(int n, int bf16);

// ---------------------------------------------------------------- kernels.h, on the device

void cuda_encoder_forward(float *out, const int32_t *tok, const float *wte, const float *wpe,
                          int B, int T, int C);
void cuda_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tok,
                           int B, int T, int C);

void cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                            const float *weight, const float *bias, size_t N, int C);
void cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                             const float *inp, const float *weight, const float *mean,
                             const float *rstd, size_t N, int C);

void cuda_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                         size_t N, int IC, int OC, int trans_w);
void cuda_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const float *weight, size_t N, int IC, int OC,
                          int trans_w);
void cuda_matmul_dweight_rows(float *dweight, const float *dout, const float *inp, size_t N, int IC, int OC,
                              int trans_w, int r0, int r1, float beta);

void cuda_gelu_forward(float *out, const float *inp, size_t n);
void cuda_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

void cuda_residual_forward(float *out, const float *a, const float *b, size_t n);

void cuda_attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C, int NH,
                            const Dropout *drop);
void cuda_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *out,
                             const float *lse, int B, int T, int C, int NH, const Dropout *drop);
// drop is a host pointer (its struct is passed to the kernels by value).
void cuda_dropout_forward(float *out, const float *inp, const Dropout *d, int B, int T, int C);
void cuda_dropout_backward(float *dinp, const float *dout, const Dropout *d, int B, int T, int C);

void cuda_paged_attention_forward(float *out, const float *q, int q_stride, const float *kv,
                                  size_t block_stride, size_t v_offset, const int32_t *tables,
                                  int max_blocks, const int32_t *pos, int N, int C, int NH, int bs);

// Inference (kernels.h: embed_rows, kv_store, matmul_held_forward).
void cuda_embed_rows(float *out, const int32_t *tok, const int32_t *pos, const float *wte, const float *wpe,
                     int N, int C);
void cuda_kv_store(float *kv, size_t block_stride, size_t v_offset, const float *qkv, const int32_t *tables,
                   int max_blocks, const int32_t *pos, int N, int C, int bs);
// weight: (OC, IC) fp32, bf16 or int8 (scale per row), device memory; tmp may be
// NULL (the backend's own scratch is used).
void cuda_matmul_held_forward(float *out, const float *inp, const void *weight, int wdtype, const float *scale,
                              const float *bias, size_t N, int IC, int OC, int epilogue, float *tmp);

void cuda_crossentropy_forward(float *losses, float *lse, const float *logits,
                               const int32_t *targets, size_t N, int V, int Vp);
void cuda_crossentropy_backward(float *dlogits, const float *logits, const float *lse,
                                const int32_t *targets, float dloss, size_t N, int V, int Vp);

void cuda_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                       float beta1, float beta2, float eps, float wd, int t);

void cuda_scale_inplace(float *x, float s, size_t n);
// Returns once the value is known (synchronizes the stream).
double cuda_sumsq(const float *x, size_t n);

// Mixture of Experts row moves (kernels.h moe_*; kernels/cuda/moe.cu): the same
// math and summation order as the cpu ones, no atomics. pos and w are device arrays.
void cuda_moe_dispatch(float *dst, const float *src, const int32_t *pos, const float *w, size_t N, int K, int C);
void cuda_moe_combine(float *out, const float *y, const int32_t *pos, const float *w, size_t N, int K, int C,
                      int accumulate);
void cuda_moe_rowdot(float *dots, const float *a, const float *y, const int32_t *pos, size_t N, int K, int C);

// No-ops on the GPU (kept so the backend mirrors kernels.h); get returns 1.
void cuda_kernels_set_threads(int n);
int cuda_kernels_get_threads(void);

#ifdef __cplusplus
}
#endif

#endif
