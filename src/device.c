// device.c: backend selection and the clear error when it cannot be had.
#include "device.h"

#include <stdio.h>
#include <string.h>

#ifdef PARTITA_CUDA
#include "cuda/cuda_kernels.h"
#endif

int device_select(const Deck *d, DeviceInfo *info, char *err, size_t n) {
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
    if (want == BACKEND_CUDA) {
        snprintf(err, n, "error: %s: [run] backend = cuda: %d device(s) found, but the trainer and the generator do "
                 "not run on the cuda backend yet (its kernels are built and checked by tests/gpu/check.sh)\n"
                 "  hint: use backend = auto or cpu", where, info->cuda_devices);
        return -1;
    }
    if (want == BACKEND_AUTO)
        snprintf(info->note, sizeof info->note, "backend auto -> cpu (%s)",
                 !info->cuda_built ? "built without cuda"
                 : info->cuda_devices ? "a CUDA device is present, but the cuda path is not integrated yet"
                 : "no CUDA device");
    else
        snprintf(info->note, sizeof info->note, "backend cpu");
    return 0;
}
