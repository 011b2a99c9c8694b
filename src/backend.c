// backend.c: the two tables. The cpu one wraps kernels/cpu and libc memory;
// the cuda one kernels/cuda and its arena.
#include "backend.h"
#include "deck.h"
#include "kernels.h"
#include "log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef PARTITA_CUDA
#include "cuda/cuda_kernels.h"
#endif

// calloc, not xcalloc's memset: large blocks come as untouched zero pages, so
// memory released before use (moments handed to the offload engine) never
// enters the resident set. Blocks of a page or more start on a page (model.h:
// checkpoint loads read into them by O_DIRECT, in place), others on a cache
// line; the word before the block keeps calloc's pointer for release.
static void *cpu_alloc(size_t bytes, const char *what) {
    size_t align = bytes >= 4096 ? 4096 : 64, total;
    SYS_CHECK(!__builtin_add_overflow(bytes, align + sizeof(void *), &total), "out of memory: %zu bytes for %s",
              bytes, what);
    char *p = calloc(1, total);
    SYS_CHECK(p, "out of memory: %zu bytes for %s", bytes, what);
    uintptr_t at = ((uintptr_t)p + sizeof(void *) + align - 1) / align * align;
    void **a = (void **)at;
    a[-1] = p;
    return a;
}
static void cpu_release(void *p) {
    if (p) free(((void **)p)[-1]);
}
static void cpu_zero(float *x, size_t n) { memset(x, 0, n * sizeof(float)); }
static void cpu_copy(float *dst, const float *src, size_t n) { memmove(dst, src, n * sizeof(float)); }
static void cpu_copy_i32(int32_t *dst, const int32_t *src, size_t n) { memcpy(dst, src, n * sizeof(int32_t)); }
static void cpu_sync(void) {}

static void *cpu_host_alloc(size_t bytes, const char *what) {
    size_t n = (bytes + 4095) / 4096 * 4096;
    void *p = aligned_alloc(4096, n ? n : 4096);
    SYS_CHECK(p, "out of memory: %zu bytes for %s", bytes, what);
    memset(p, 0, n ? n : 4096);
    return p;
}
static void *cpu_event_create(void) { return NULL; }
static void cpu_event_none(void *ev) { (void)ev; }
static void cpu_copy_async(float *dst, const float *src, size_t n, void *ev) {
    (void)ev;
    memmove(dst, src, n * sizeof(float));
}

static void cpu_axpy(float *y, const float *x, float a, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void cpu_copy2d(float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t rows,
                       size_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (size_t r = 0; r < rows; r++) memcpy(dst + r * dst_stride, src + r * src_stride, cols * sizeof(float));
}

static const Backend cpu_table = {
    .kind = BACKEND_CPU, .device_memory = 0, .name = "cpu",
    .alloc = cpu_alloc, .release = cpu_release, .zero = cpu_zero, .copy = cpu_copy,
    .to_host = cpu_copy, .from_host = cpu_copy, .from_host_i32 = cpu_copy_i32,
    .axpy = cpu_axpy, .copy2d = cpu_copy2d, .sync = cpu_sync,
    .host_alloc = cpu_host_alloc, .host_free = free, .event_create = cpu_event_create,
    .event_destroy = cpu_event_none, .d2h_async = cpu_copy_async, .h2d_async = cpu_copy_async,
    .copy_fence = cpu_event_none, .event_sync = cpu_event_none, .compute_wait = cpu_event_none,
    .set_tile_hook = kernels_set_tile_hook,
    .encoder_forward = encoder_forward, .encoder_backward = encoder_backward,
    .layernorm_forward = layernorm_forward, .layernorm_backward = layernorm_backward,
    .matmul_forward = matmul_forward, .matmul_backward = matmul_backward,
    .matmul_dweight_rows = matmul_dweight_rows,
    .gelu_forward = gelu_forward, .gelu_backward = gelu_backward,
    .residual_forward = residual_forward,
    .attention_forward = attention_forward, .attention_backward = attention_backward,
    .dropout_forward = dropout_forward, .dropout_backward = dropout_backward,
    .crossentropy_forward = crossentropy_forward, .crossentropy_backward = crossentropy_backward,
    .adamw_update = adamw_update, .scale_inplace = scale_inplace, .sumsq = sumsq,
    .embed_rows = embed_rows, .kv_store = kv_store, .paged_attention_forward = paged_attention_forward,
    .matmul_held_forward = matmul_held_forward,
    .moe_dispatch = moe_dispatch, .moe_combine = moe_combine, .moe_rowdot = moe_rowdot,
};

const Backend *backend_cpu(void) { return &cpu_table; }

#ifdef PARTITA_CUDA
static void *cuda_alloc(size_t bytes, const char *what) {
    (void)what;     // cuda_malloc names the arena's fill level when it is full
    void *p = cuda_malloc(bytes ? bytes : 1);
    cuda_memset_zero(p, (bytes + sizeof(float) - 1) / sizeof(float));
    return p;
}
static void cuda_release(void *p) { (void)p; }
static void *cuda_host_alloc_b(size_t bytes, const char *what) {
    (void)what;     // cuda_host_alloc names the size when it fails
    return cuda_host_alloc(bytes);
}

static void cuda_no_tile_hook(void (*fn)(void *), void *ctx) {
    (void)fn;
    (void)ctx;
}

static const Backend cuda_table = {
    .kind = BACKEND_CUDA, .device_memory = 1, .name = "cuda",
    .alloc = cuda_alloc, .release = cuda_release, .zero = cuda_memset_zero, .copy = cuda_copy_d2d,
    .to_host = cuda_copy_d2h, .from_host = cuda_copy_h2d, .from_host_i32 = cuda_copy_h2d_i32,
    .axpy = cuda_axpy, .copy2d = cuda_copy2d, .sync = cuda_synchronize,
    .host_alloc = cuda_host_alloc_b, .host_free = cuda_host_free, .event_create = cuda_event_create,
    .event_destroy = cuda_event_destroy, .d2h_async = cuda_copy_d2h_async, .h2d_async = cuda_copy_h2d_async,
    .copy_fence = cuda_copy_fence, .event_sync = cuda_event_sync, .compute_wait = cuda_compute_wait,
    .set_tile_hook = cuda_no_tile_hook,
    .encoder_forward = cuda_encoder_forward, .encoder_backward = cuda_encoder_backward,
    .layernorm_forward = cuda_layernorm_forward, .layernorm_backward = cuda_layernorm_backward,
    .matmul_forward = cuda_matmul_forward, .matmul_backward = cuda_matmul_backward,
    .matmul_dweight_rows = cuda_matmul_dweight_rows,
    .gelu_forward = cuda_gelu_forward, .gelu_backward = cuda_gelu_backward,
    .residual_forward = cuda_residual_forward,
    .attention_forward = cuda_attention_forward, .attention_backward = cuda_attention_backward,
    .dropout_forward = cuda_dropout_forward, .dropout_backward = cuda_dropout_backward,
    .crossentropy_forward = cuda_crossentropy_forward, .crossentropy_backward = cuda_crossentropy_backward,
    .adamw_update = cuda_adamw_update, .scale_inplace = cuda_scale_inplace, .sumsq = cuda_sumsq,
    .embed_rows = cuda_embed_rows, .kv_store = cuda_kv_store, .paged_attention_forward = cuda_paged_attention_forward,
    .matmul_held_forward = cuda_matmul_held_forward,
    .moe_dispatch = cuda_moe_dispatch, .moe_combine = cuda_moe_combine, .moe_rowdot = cuda_moe_rowdot,
};
#endif

const Backend *backend_cuda(void) {
#ifdef PARTITA_CUDA
    return &cuda_table;
#else
    return NULL;
#endif
}
