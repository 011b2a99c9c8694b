// device.c: backend selection, start-up, and the clear error when it cannot be had.
#include "device.h"
#include "comm.h"
#include "comm_nccl.h"
#include "log.h"
#include "peak.h"

#include <mpi.h>
#include <stdio.h>
#include <string.h>

#ifdef PARTITA_CUDA
#include "cuda/cuda_kernels.h"

// A CUDA error on one rank must end the whole job, not leave the others waiting.
static void abort_job(void) { MPI_Abort(MPI_COMM_WORLD, 1); }
#endif

int device_select(const Deck *d, int cuda_ok, DeviceInfo *info, char *err, size_t n) {
    char where[600];
    const char *probe = "";
    memset(info, 0, sizeof *info);
    info->backend = BACKEND_CPU;
#ifdef PARTITA_CUDA
    info->cuda_built = 1;
    info->cuda_devices = cuda_device_count();
    probe = cuda_probe_error();
#endif
    int want = d->cfg.run.backend;
    deck_where(d, "run.backend", where, sizeof where);
    if (want == BACKEND_CUDA && !info->cuda_built) {
        snprintf(err, n, "error: %s: [run] backend = cuda, but this binary was built without the cuda backend\n"
                 "  hint: rebuild where nvcc exists (make CUDA=1), or use backend = auto or cpu", where);
        return -1;
    }
    if (want == BACKEND_CUDA && info->cuda_devices == 0) {
        snprintf(err, n, "error: %s: [run] backend = cuda, but no CUDA device is usable here%s%s\n"
                 "  hint: run on a GPU node, or use backend = auto (cpu here) or cpu", where,
                 probe[0] ? ": " : "", probe);
        return -1;
    }
    if (want == BACKEND_CUDA && !cuda_ok) {
        snprintf(err, n, "error: %s: [run] backend = cuda: generation runs on cuda with one rank (tp = 1) and "
                 "without [generate] naive\n  hint: use backend = auto or cpu, or launch one rank", where);
        return -1;
    }
    if (want == BACKEND_CUDA || (want == BACKEND_AUTO && cuda_ok && info->cuda_devices > 0))
        info->backend = BACKEND_CUDA;
    int prec = d->cfg.train.precision;
    if (prec == PRECISION_BF16 && info->backend != BACKEND_CUDA) {
        snprintf(err, n, "error: %s: [train] precision = bf16 needs the cuda backend\n"
                 "  hint: use precision = fp32 (or auto) on the cpu backend",
                 deck_where(d, "train.precision", where, sizeof where));
        return -1;
    }
    info->bf16 = info->backend == BACKEND_CUDA && prec != PRECISION_FP32;
    if (info->backend == BACKEND_CUDA)
        snprintf(info->note, sizeof info->note, "backend %s -> cuda (%d device(s)), precision %s",
                 want == BACKEND_AUTO ? "auto" : "cuda", info->cuda_devices, info->bf16 ? "bf16" : "fp32");
    else if (want == BACKEND_AUTO)
        snprintf(info->note, sizeof info->note, "backend auto -> cpu (%s)",
                 !info->cuda_built ? "built without cuda"
                 : info->cuda_devices ? "this command runs on cpu" : "no CUDA device");
    else
        snprintf(info->note, sizeof info->note, "backend cpu");
    return 0;
}

const Backend *device_start(DeviceInfo *info, int local_rank, size_t arena_bytes) {
    if (info->backend != BACKEND_CUDA) return backend_cpu();
#ifdef PARTITA_CUDA
    cuda_set_fatal_handler(abort_job);
    info->device = local_rank % info->cuda_devices;
    cuda_init(info->device, info->bf16);
    cuda_arena_reserve(arena_bytes);
    log_info("cuda: %s; device arena %.1f MiB (model states, working buffers, activations)\n",
             cuda_device_name(), (double)arena_bytes / 1048576.0);
    return backend_cuda();
#else
    (void)local_rank;
    (void)arena_bytes;
    FATAL(NULL, "the cuda backend is not in this build");
#endif
}

size_t device_arena_used(void) {
#ifdef PARTITA_CUDA
    return cuda_arena_used();
#else
    return 0;
#endif
}

void device_stop(const DeviceInfo *info) {
#ifdef PARTITA_CUDA
    if (info->backend == BACKEND_CUDA) cuda_shutdown();
#else
    (void)info;
#endif
}

void device_describe(const DeviceInfo *info, char *buf, size_t n) {
#ifdef PARTITA_CUDA
    if (info->backend == BACKEND_CUDA) {
        snprintf(buf, n, "cuda: %s, device %d, %s matrix products", cuda_device_name(), info->device,
                 info->bf16 ? "bf16 (fp32 accumulate)" : "fp32");
        return;
    }
#endif
    (void)info;
    snprintf(buf, n, "cpu");
}

double device_gemm_peak_gflops(const DeviceInfo *info, int share, PeakInfo *how) {
#ifdef PARTITA_CUDA
    if (info->backend == BACKEND_CUDA) {
        // The GPU is not shared with other work the way cores are: one size, best of 10 after 3 warm-ups.
        int sh = share > 0 ? share : 1;
        memset(how, 0, sizeof *how);
        how->gflops = cuda_gemm_peak_tflops(4096, info->bf16) * 1000.0 / sh;
        how->nsizes = 1;
        how->sizes[0] = 4096;
        how->size_gflops[0] = how->gflops;
        how->reps = 10;
        snprintf(how->method, sizeof how->method, "cuBLAS %s GEMM, side 4096, 3 warm-ups then 10 timed repetitions, "
                 "best rate, divided by the %d rank(s) sharing the GPU", info->bf16 ? "bf16" : "fp32", sh);
        return how->gflops;
    }
#endif
    (void)info;
    (void)share;
    peak_sgemm_measure(how, 1.5);
    return how->gflops;
}

int device_comm_path(const Deck *d, const DeviceInfo *info, int local_size, char *err, size_t n) {
    char where[600];
    int want = d->cfg.comm.device_path;
    if (info->backend != BACKEND_CUDA) return COMM_PATH_HOST;
    int shared = local_size > info->cuda_devices;
    deck_where(d, "comm.device_path", where, sizeof where);
    if (want == DEVPATH_NCCL && !nccl_available()) {
        snprintf(err, n, "error: %s: [comm] device_path = nccl, but this binary was built without NCCL\n"
                 "  hint: use device_path = staged or auto", where);
        return -1;
    }
    if (want == DEVPATH_NCCL && shared) {
        snprintf(err, n, "error: %s: [comm] device_path = nccl, but %d ranks share %d GPU(s) on this node "
                 "and NCCL needs one GPU per rank\n  hint: use device_path = staged (or auto), or one rank per GPU",
                 where, local_size, info->cuda_devices);
        return -1;
    }
    if (want == DEVPATH_STAGED || (want == DEVPATH_AUTO && (shared || !nccl_available()))) return COMM_PATH_STAGED;
    return COMM_PATH_NCCL;
}
