// device.h: which backend a run computes on.
//
// `[run] backend = auto` takes cpu unless the cuda backend can run the
// command; `cuda` asks for it and is a clear error where there is no device
// (or no cuda backend in this build). The cuda kernels are built whenever nvcc
// exists (kernels/cuda, tested by tests/gpu/check.sh); the trainer and the
// generator do not run on them yet, which device_select says plainly.
#ifndef PARTITA_DEVICE_H
#define PARTITA_DEVICE_H

#include <stddef.h>

#include "deck.h"

typedef struct DeviceInfo {
    int backend;            // BACKEND_CPU or BACKEND_CUDA
    int cuda_built;         // this binary carries the cuda backend
    int cuda_devices;       // devices found (0 without a driver)
    char note[512];         // why auto chose what it chose, for the log
} DeviceInfo;

// Fills info; returns 0, or -1 with a user-facing message (file:line of
// run.backend, hint) in err.
int device_select(const Deck *d, DeviceInfo *info, char *err, size_t n);

#endif
