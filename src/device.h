// device.h: which backend a run computes on, and starting it.
//
// `[run] backend = auto` takes cuda where a device is present (and the
// command runs on cuda) and cpu otherwise; `cuda` asks for it and is a clear
// error where there is no device or no cuda backend in this build. It also
// resolves `[train] precision = auto` (bf16 on cuda, fp32 on cpu).
#ifndef PARTITA_DEVICE_H
#define PARTITA_DEVICE_H

#include <stddef.h>

#include "backend.h"
#include "deck.h"
#include "peak.h"

typedef struct DeviceInfo {
    int backend;            // BACKEND_CPU or BACKEND_CUDA
    int bf16;               // matrix products in bf16 (cuda only)
    int cuda_built;         // this binary carries the cuda backend
    int cuda_devices;       // devices found (0 without a driver)
    int device;             // the device this rank uses (cuda)
    char note[512];         // what was chosen and why, for the log
} DeviceInfo;

// Fills info; returns 0, or -1 with a user-facing message (file:line of the
// key, hint) in err. cuda_ok = 0 for commands that run on cpu only (generate).
int device_select(const Deck *d, int cuda_ok, DeviceInfo *info, char *err, size_t n);

// Starts the chosen backend on this rank: for cuda, device local_rank mod
// devices, its stream and cuBLAS handle, and one arena of arena_bytes.
// Returns the backend's table.
const Backend *device_start(DeviceInfo *info, int local_rank, size_t arena_bytes);
void device_stop(const DeviceInfo *info);
// Bytes of the device arena taken so far (cuda; 0 on cpu).
size_t device_arena_used(void);

// "cpu" or "cuda: NVIDIA H200 (sm_90, ...), device 0, bf16"
void device_describe(const DeviceInfo *info, char *buf, size_t n);

// The matrix-product rate this rank's share of the device reaches, GFLOP/s:
// cuBLAS n^3 GEMMs in the run's precision (cuda), sgemm (cpu). share: ranks
// that use the same device. how: the figures and the method, for run.h5.
double device_gemm_peak_gflops(const DeviceInfo *info, int share, PeakInfo *how);

// How collectives move device buffers, from [comm] device_path: COMM_PATH_*
// (comm.h). cpu: host MPI. Returns -1 with a message when the deck asks for
// nccl where it cannot work (no NCCL in this build, ranks sharing a GPU).
int device_comm_path(const Deck *d, const DeviceInfo *info, int local_size, char *err, size_t n);

#endif
