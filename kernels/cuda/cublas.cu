// cublas.cu: cuBLAS opened at run time (cuda_common.cuh, CublasApi). The
// trainer is not linked against it: libcublasLt's constructors alone take
// ~0.5 s of CPU in every process that loads it, cpu runs included.
#include <cstdio>
#include <cstring>

#include "cuda_common.cuh"

CublasApi cuda_blas;

#ifdef PARTITA_CUDA_EMU
// The emulation (tests/gpu/emu) defines the entries itself: nothing to open.
static int load(char *err, size_t n)
{
    (void)err;
    (void)n;
    cuda_blas = CublasApi{cublasCreate, cublasDestroy, cublasSetStream, cublasSetWorkspace, cublasSetMathMode,
                          cublasSgemm, cublasGemmEx, cublasGetStatusString};
    return 1;
}
#else
#include <dlfcn.h>

// The exported names: cublas_v2.h maps the plain names to them (cublasCreate -> cublasCreate_v2).
#define CUBLAS_SYMBOL_(f) #f
#define CUBLAS_SYMBOL(f) CUBLAS_SYMBOL_(f)
#define CUBLAS_SONAME_(v) "libcublas.so." #v
#define CUBLAS_SONAME(v) CUBLAS_SONAME_(v)

#ifndef PARTITA_CUBLAS_DIR
#define PARTITA_CUBLAS_DIR "/usr/local/cuda/lib64"
#endif

// The soname the headers were built for, by the loader's search (LD_LIBRARY_PATH,
// the binary's run path, the cache); then in the toolkit the build used.
static void *open_library(char *err, size_t n)
{
    const char *name = CUBLAS_SONAME(CUBLAS_VER_MAJOR);
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
    snprintf(err, n, "%s", dlerror());
    char path[512];
    snprintf(path, sizeof path, "%s/%s", PARTITA_CUBLAS_DIR, name);
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) snprintf(err + strlen(err), n - strlen(err), "; %s", dlerror());
    return h;
}

template <typename F> static int bind(void *lib, F *slot, const char *name, char *err, size_t n)
{
    void *f = dlsym(lib, name);
    if (!f) snprintf(err, n, "%s (not the cuBLAS Partita was built with)", dlerror());
    *slot = reinterpret_cast<F>(f);
    return f != NULL;
}

static int load(char *err, size_t n)
{
    void *lib = open_library(err, n);
    if (!lib) return 0;
    CublasApi t;
    int ok = bind(lib, &t.create, CUBLAS_SYMBOL(cublasCreate), err, n) &&
             bind(lib, &t.destroy, CUBLAS_SYMBOL(cublasDestroy), err, n) &&
             bind(lib, &t.set_stream, CUBLAS_SYMBOL(cublasSetStream), err, n) &&
             bind(lib, &t.set_workspace, CUBLAS_SYMBOL(cublasSetWorkspace), err, n) &&
             bind(lib, &t.set_math_mode, CUBLAS_SYMBOL(cublasSetMathMode), err, n) &&
             bind(lib, &t.sgemm, CUBLAS_SYMBOL(cublasSgemm), err, n) &&
             bind(lib, &t.gemm_ex, CUBLAS_SYMBOL(cublasGemmEx), err, n) &&
             bind(lib, &t.status_string, CUBLAS_SYMBOL(cublasGetStatusString), err, n);
    if (!ok) {
        dlclose(lib);
        return 0;
    }
    cuda_blas = t;
    return 1;
}
#endif

const CublasApi *cuda_blas_open(void)
{
    char err[768] = "";
    if (!cuda_blas.create && !load(err, sizeof err))
        cuda_fatal(__FILE__, __LINE__, "opening cuBLAS", err,
                   "install the CUDA toolkit's cuBLAS or put its lib64 on LD_LIBRARY_PATH");
    return &cuda_blas;
}

int cuda_blas_probe(char *err, size_t n)
{
    if (n) err[0] = '\0';
    return cuda_blas.create || load(err, n);
}
