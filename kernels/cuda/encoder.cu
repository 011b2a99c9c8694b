// encoder.cu: token and position embeddings, forward and backward.
//
// The backward is deterministic without atomics: the token ids are sorted
// stably (cub radix sort of (token, row) pairs, so rows of one token stay in
// row order) and one block per distinct token adds that token's rows in order.
// Each gradient element is therefore summed in the cpu backend's order.
#include <cub/cub.cuh>

#include "cuda_common.cuh"

#define ENC_THREADS 256

// out[n, c] = wte[tok[n], c] + wpe[n % T, c]
__global__ void encoder_forward_kernel(float *out, const int32_t *tok, const float *wte,
                                       const float *wpe, size_t N, int T, int C)
{
    size_t total = N * (size_t)C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / (size_t)C;
        int c = (int)(i % (size_t)C);
        out[i] = wte[(size_t)tok[n] * C + c] + wpe[(n % (size_t)T) * C + c];
    }
}

// dwpe[t, c] += dout[b, t, c] for b = 0, 1, ... in order; one thread per (t, c).
__global__ void encoder_dwpe_kernel(float *dwpe, const float *dout, int B, int T, int C)
{
    size_t total = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float acc = dwpe[i];
        for (int b = 0; b < B; b++) acc += dout[(size_t)b * total + i];
        dwpe[i] = acc;
    }
}

__global__ void iota_kernel(int32_t *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = (int32_t)i;
}

// Block x = position i of the sorted tokens; it works only where a run of equal
// tokens starts, adding the run's dout rows (ascending row order) to dwte[token].
__global__ void encoder_dwte_kernel(float *dwte, const float *dout, const int32_t *key,
                                    const int32_t *row, size_t N, int C)
{
    size_t i = blockIdx.x;
    int32_t v = key[i];
    if (i > 0 && key[i - 1] == v) return;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float *dw = dwte + (size_t)v * C + c;
    float acc = *dw;
    for (size_t j = i; j < N && key[j] == v; j++) acc += dout[(size_t)row[j] * C + c];
    *dw = acc;
}

// out[b,t,:] = wte[tok[b,t],:] + wpe[t,:]; token ids must lie in [0, Vp).
void cuda_encoder_forward(float *out,           // (B, T, C)
                          const int32_t *tok,   // (B, T)
                          const float *wte,     // (Vp, C)
                          const float *wpe,     // (maxT, C)
                          int B, int T, int C)
{
    size_t N = (size_t)B * T;
    if (N == 0 || C <= 0) return;
    encoder_forward_kernel<<<cuda_blocks(N * C, ENC_THREADS), ENC_THREADS, 0, cuda_stream_t()>>>(
        out, tok, wte, wpe, N, T, C);
    CUDA_LAUNCH_CHECK("encoder_forward_kernel");
}

// dwte[tok[b,t],:] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:].
void cuda_encoder_backward(float *dwte,         // (Vp, C) accumulates
                           float *dwpe,         // (maxT, C) accumulates
                           const float *dout,   // (B, T, C)
                           const int32_t *tok,  // (B, T)
                           int B, int T, int C)
{
    size_t N = (size_t)B * T;
    if (N == 0 || C <= 0) return;
    CUDA_REQUIRE(N < ((size_t)1 << 31), "encoder_backward needs B*T < 2^31");
    cudaStream_t st = cuda_stream_t();
    encoder_dwpe_kernel<<<cuda_blocks((size_t)T * C, ENC_THREADS), ENC_THREADS, 0, st>>>(
        dwpe, dout, B, T, C);
    CUDA_LAUNCH_CHECK("encoder_dwpe_kernel");

    // Scratch: sorted keys, row ids, sorted row ids, then cub's temporary storage.
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, (const int32_t *)nullptr,
                                               (int32_t *)nullptr, (const int32_t *)nullptr,
                                               (int32_t *)nullptr, (int)N, 0, 32, st));
    size_t ints = (3 * N + 63) / 64 * 64;   // keeps cub's storage 256-byte aligned
    char *s = (char *)cuda_scratch(SCRATCH_SORT, ints * sizeof(int32_t) + temp_bytes);
    int32_t *key_out = (int32_t *)s, *row_in = key_out + N, *row_out = row_in + N;
    void *temp = s + ints * sizeof(int32_t);
    iota_kernel<<<cuda_blocks(N, ENC_THREADS), ENC_THREADS, 0, st>>>(row_in, N);
    CUDA_LAUNCH_CHECK("iota_kernel");
    // Radix sort is stable: equal tokens keep ascending row ids.
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tok, key_out, row_in, row_out,
                                               (int)N, 0, 32, st));
    int threads = C < ENC_THREADS ? (C + 31) / 32 * 32 : ENC_THREADS;
    dim3 grid((unsigned)N, (unsigned)((C + threads - 1) / threads));
    encoder_dwte_kernel<<<grid, threads, 0, st>>>(dwte, dout, key_out, row_out, N, C);
    CUDA_LAUNCH_CHECK("encoder_dwte_kernel");
}
