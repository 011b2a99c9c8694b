// emu_cuda.h: a CPU emulation of the CUDA subset that kernels/cuda uses, so
// that the real kernel sources, tests/gpu/test_kernels_gpu.cu (run_emu.sh) and
// the whole trainer (build_partita_emu.sh) run on a machine without a GPU.
// Not a general emulator:
// - the threads of a block are fibers (stackful coroutines) on the launching
//   thread: each runs until it reaches a barrier or returns, then the next;
//   __syncthreads is a block barrier, __syncwarp and __shfl_xor_sync a barrier
//   of the 32 lanes of the warp, and threads that return drop out of both. The
//   fibers of even blocks run in thread order, of odd blocks in reverse, so a
//   missing barrier shows from either side; a barrier that can never complete
//   (threads of one warp split between __syncwarp and __syncthreads) is
//   reported as a deadlock instead of hanging. Blocks run one after another.
//   Fibers and their stacks are made once and reused by every launch.
//   Under ThreadSanitizer (SANITIZE=thread), or with -DEMU_OS_THREADS, or off
//   x86-64, the threads are std::threads instead, so TSan sees the races;
// - __shared__ is a function-level static (fine, since blocks run in turn),
//   dynamic shared memory a heap buffer of exactly the launch's size (so
//   AddressSanitizer catches overruns) and launches above 48 KiB must have
//   raised cudaFuncAttributeMaxDynamicSharedMemorySize first;
// - device memory is host memory that host code cannot touch: every cudaMalloc
//   block is mapped PROT_NONE except while a kernel, copy, memset, cuBLAS or
//   cub call that was handed a pointer into it runs, so a host read or write of device memory (a missed staging
//   copy, MPI or HDF5 given a device pointer) faults at once with a message
//   naming the block; a guard page after each block catches kernels that run
//   past its end (to 256 bytes), and freed blocks stay unmapped (use after
//   free faults). EMU_PROTECT=0 in the environment turns this off. A new
//   block reads 0xa5 bytes (fresh device memory is garbage), from copy-on-write
//   pages of one shared chunk, so a block costs memory and mprotect time only
//   for the pages used (a 3 GiB arena is cheap).
//   cudaMemcpy checks its kind against where the pointers live;
// - streams and events are trivial (cudaStreamWaitEvent, cudaEventQuery... succeed
//   at once): all work is done when its call returns;
// - cuBLAS sgemm / GemmEx are naive loops that reject leading dimensions the
//   real cuBLAS rejects; GemmEx reads bf16;
// - cub::DeviceRadixSort::SortPairs is std::stable_sort.
#ifndef PARTITA_EMU_CUDA_H
#define PARTITA_EMU_CUDA_H

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include <execinfo.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(EMU_OS_THREADS) && (!defined(__x86_64__) || defined(__SANITIZE_THREAD__))
#define EMU_OS_THREADS 1
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) && !defined(EMU_OS_THREADS)
#define EMU_OS_THREADS 1
#endif
#if __has_feature(address_sanitizer) && !defined(__SANITIZE_ADDRESS__)
#define __SANITIZE_ADDRESS__ 1
#endif
#endif
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/common_interface_defs.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

// ---------------------------------------------------------------- thread model

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned int x, y, z;
};

namespace emu {
struct Block {
    std::vector<uint64_t> xch;      // 32 slots per warp for shuffles
    std::vector<char> smem;
#ifdef EMU_OS_THREADS
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
#endif
};
inline thread_local Block *cur;
inline thread_local unsigned int tid;
}   // namespace emu

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

#ifndef EMU_OS_THREADS
// ---------------------------------------------------------------- fibers (x86-64)

// emu_fiber_switch(&save, to): saves the callee-saved registers, the SSE and x87
// control words and the stack pointer into *save, and resumes the context whose
// stack pointer is `to`. A new fiber's stack starts with a frame that "returns"
// into emu_fiber_entry, which calls r13(r12). Weak: every object that includes
// this header defines them; the linker keeps one.
extern "C" void emu_fiber_switch(void **save, void *to);
extern "C" void emu_fiber_entry(void);
asm(R"(
    .pushsection .text
    .weak emu_fiber_switch
    .type emu_fiber_switch, @function
emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_fiber_switch, .-emu_fiber_switch
    .weak emu_fiber_entry
    .type emu_fiber_entry, @function
emu_fiber_entry:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_entry, .-emu_fiber_entry
    .popsection
)");

namespace emu {
enum : unsigned char { F_READY, F_BLOCK, F_WARP, F_DONE };
#ifdef __SANITIZE_ADDRESS__
inline constexpr size_t fiber_stack_bytes = (size_t)1 << 20;
#else
inline constexpr size_t fiber_stack_bytes = (size_t)256 << 10;
#endif

struct Fiber {
    void *sp = nullptr;         // saved stack pointer while switched out
    char *stack = nullptr;      // lowest usable address (a guard page lies below)
    void *fake = nullptr;       // AddressSanitizer's fake stack while switched out
};

// The fibers of one OS thread (the one that launches) and the state of the
// block they are running. Made on first use, kept for the life of the process.
struct Sched {
    std::vector<std::unique_ptr<Fiber>> fib;    // fiber t plays thread t of every block
    void *main_sp = nullptr;
    const void *main_bottom = nullptr;          // the launching thread's stack (ASan)
    size_t main_size = 0;
    void (*body)(void *) = nullptr;             // runs the kernel once, as threadIdx
    void *arg = nullptr;
    unsigned int run = 0;                       // the fiber running now
    std::vector<unsigned char> state;           // F_* per thread of the block
    unsigned int live = 0, arrived = 0;         // threads not returned; at __syncthreads
    std::vector<unsigned int> wlive, warrived;  // per warp: lanes not returned; at __syncwarp
};
inline thread_local Sched *sched;

[[noreturn]] inline void fiber_main(Fiber *f);

inline void fiber_make(Fiber &f)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *m = mmap(nullptr, fiber_stack_bytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) {
        perror("emu: mmap of a fiber stack");
        abort();
    }
    mprotect(m, page, PROT_NONE);   // a kernel that overflows its stack faults here
    f.stack = (char *)m + page;
    // The first switch pops: control words, r15, r14, r13 = fiber_main,
    // r12 = &f, rbx, rbp = 0 (ends frame-pointer walks), then returns into
    // emu_fiber_entry with a 16-byte aligned stack.
    uint64_t *sp = (uint64_t *)(f.stack + fiber_stack_bytes) - 8;
    uint32_t csr;
    uint16_t cw;
    asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr), "=m"(cw));
    memset(sp, 0, 8 * sizeof *sp);
    memcpy(&sp[0], &csr, 4);
    memcpy((char *)&sp[0] + 4, &cw, 2);
    sp[3] = (uint64_t)(uintptr_t)&fiber_main;
    sp[4] = (uint64_t)(uintptr_t)&f;
    sp[7] = (uint64_t)(uintptr_t)&emu_fiber_entry;
    f.sp = sp;
}

inline Sched *sched_get(unsigned int nt)
{
    if (!sched) sched = new Sched;
    Sched *s = sched;
    while (s->fib.size() < nt) {
        s->fib.emplace_back(new Fiber);
        fiber_make(*s->fib.back());
    }
    return s;
}

// Scheduler -> fiber t, back when it waits at a barrier or has returned.
inline void fiber_resume(Sched *s, unsigned int t)
{
    Fiber *f = s->fib[t].get();
    s->run = t;
#ifdef __SANITIZE_ADDRESS__
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack, fiber_stack_bytes);
    emu_fiber_switch(&s->main_sp, f->sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    emu_fiber_switch(&s->main_sp, f->sp);
#endif
}

// Fiber -> scheduler, leaving this thread in state st; returns when resumed.
inline void fiber_park(unsigned char st)
{
    Sched *s = sched;
    Fiber *f = s->fib[s->run].get();
    s->state[s->run] = st;
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_start_switch_fiber(&f->fake, s->main_bottom, s->main_size);
    emu_fiber_switch(&f->sp, s->main_sp);
    __sanitizer_finish_switch_fiber(f->fake, &s->main_bottom, &s->main_size);
#else
    emu_fiber_switch(&f->sp, s->main_sp);
#endif
}

[[noreturn]] inline void fiber_main(Fiber *)
{
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_finish_switch_fiber(nullptr, &sched->main_bottom, &sched->main_size);
#endif
    for (;;) {
        sched->body(sched->arg);        // one thread of one block
        Sched *s = sched;               // it returned: drop out of the barriers
        s->live--;
        s->wlive[s->run / 32]--;
        fiber_park(F_DONE);             // resumed again for the next block
    }
}

inline void block_sync()
{
    sched->arrived++;
    fiber_park(F_BLOCK);
}
inline void warp_sync()
{
    sched->warrived[sched->run / 32]++;
    fiber_park(F_WARP);
}
}   // namespace emu

inline void __syncthreads() { emu::block_sync(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { emu::warp_sync(); }

#else
// ---------------------------------------------------------------- OS threads

namespace emu {
inline void warp_sync() { cur->warp_bar[tid / 32]->arrive_and_wait(); }
}   // namespace emu
inline void __syncthreads() { emu::cur->bar->arrive_and_wait(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { emu::warp_sync(); }
#endif

template <class T>
inline T __shfl_xor_sync(unsigned int, T v, int o)
{
    static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
    const unsigned int w = emu::tid / 32, lane = emu::tid % 32;
    uint64_t *x = emu::cur->xch.data() + 32 * w;
    memcpy(&x[lane], &v, sizeof(T));
    emu::warp_sync();
    T r;
    memcpy(&r, &x[lane ^ (unsigned)o], sizeof(T));
    emu::warp_sync();
    return r;
}

// ---------------------------------------------------------------- runtime

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorMisalignedAddress = 716,
    cudaErrorLaunchFailure = 719,
} cudaError_t;
typedef struct emu_stream *cudaStream_t;
typedef struct emu_event { double t; } *cudaEvent_t;
typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
} cudaMemcpyKind;
typedef enum { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 } cudaDeviceAttr;
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01
#define cudaHostRegisterDefault 0x00
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem;
};

namespace emu {
inline cudaError_t last_error = cudaSuccess;
inline std::map<const void *, size_t> smem_limit;   // per kernel, raised by cudaFuncSetAttribute
// The A100's opt-in limit: the tighter of the two targets.
inline size_t smem_optin = 166912;
inline constexpr size_t device_total = (size_t)16 << 30;
inline constexpr size_t garbage_chunk = (size_t)16 << 20;

// A memfd holding garbage_chunk bytes of 0xa5, made once; -1 where memfd_create fails.
inline int garbage_fd()
{
    static const int fd = [] {
        int f = memfd_create("emu-device-garbage", MFD_CLOEXEC);
        if (f < 0) return -1;
        std::vector<char> buf((size_t)1 << 20, (char)0xa5);
        for (size_t off = 0; off < garbage_chunk; off += buf.size())
            if (pwrite(f, buf.data(), buf.size(), (off_t)off) != (ssize_t)buf.size()) {
                close(f);
                return -1;
            }
        return f;
    }();
    return fd;
}
inline cudaError_t fail(cudaError_t e)
{
    last_error = e;
    return e;
}

// ---------------------------------------------------------------- device memory
// Each cudaMalloc block is its own mapping: [guard page][data pages][guard page],
// the block ending at most 255 bytes before the upper guard (256-byte aligned,
// as cudaMalloc's). The data pages are PROT_NONE except inside a DeviceScope.

struct DevBlock {
    char *map;                  // the mapping, guard pages included
    size_t map_len, data_len;   // data pages: map + page .. + data_len
    char *p;                    // what cudaMalloc returned
    size_t n;                   // bytes asked
    bool freed;
    bool open;                  // readable and writable now (inside a DeviceScope)
};
struct DevMem {
    std::recursive_mutex mu;
    std::map<uintptr_t, DevBlock> blocks;   // by mapping start; freed blocks stay (unmapped)
    size_t used = 0, page = 4096;
    int depth = 0;                          // open DeviceScopes
    bool protect = true;
    bool handler = false;
    struct sigaction old_segv, old_bus;
};
inline DevMem &devmem()
{
    static DevMem *m = [] {   // never destroyed: the fault handler may run at exit
        DevMem *d = new DevMem;
        const char *e = getenv("EMU_PROTECT");
        d->protect = !(e && strcmp(e, "0") == 0);
        d->page = (size_t)sysconf(_SC_PAGESIZE);
        return d;
    }();
    return *m;
}

// The block whose mapping holds address a, or nullptr.
inline const DevBlock *dev_find(const DevMem &m, uintptr_t a)
{
    auto it = m.blocks.upper_bound(a);
    if (it == m.blocks.begin()) return nullptr;
    --it;
    const DevBlock &b = it->second;
    return a < (uintptr_t)b.map + b.map_len ? &b : nullptr;
}

inline void dev_protect(const DevBlock &b, int prot)
{
    if (mprotect(b.map + devmem().page, b.data_len, prot) != 0) {
        perror("emu: mprotect of device memory");
        abort();
    }
}

inline void dev_fault(int sig, siginfo_t *si, void *uc)
{
    DevMem &m = devmem();
    const uintptr_t a = (uintptr_t)si->si_addr;
    const DevBlock *b = dev_find(m, a);
    if (b) {
        char msg[1024];
        const uintptr_t p = (uintptr_t)b->p;
        if (b->freed)
            snprintf(msg, sizeof msg,
                     "emu: %s touched FREED device memory at %p (a cudaMalloc block of %zu bytes "
                     "at %p, since cudaFree'd)\n",
                     m.depth ? "device work" : "host code", (void *)a, b->n, b->p);
        else if (a >= p + b->n)
            snprintf(msg, sizeof msg,
                     "emu: %s ran past the end of a device block: address %p is %zu bytes after "
                     "the %zu-byte cudaMalloc block at %p\n",
                     m.depth ? "a kernel, copy or cuBLAS call" : "host code", (void *)a,
                     (size_t)(a - p - b->n), b->n, b->p);
        else if (a < p)
            snprintf(msg, sizeof msg,
                     "emu: %s touched %p, %zu bytes before the %zu-byte cudaMalloc block at %p\n",
                     m.depth ? "a kernel, copy or cuBLAS call" : "host code", (void *)a,
                     (size_t)(p - a), b->n, b->p);
        else if (m.depth)
            snprintf(msg, sizeof msg,
                     "emu: device work touched %p (byte %zu of the %zu-byte cudaMalloc block at "
                     "%p), a block none of its pointer arguments points into\n",
                     (void *)a, (size_t)(a - p), b->n, b->p);
        else
            snprintf(msg, sizeof msg,
                     "emu: host code touched DEVICE memory at %p (byte %zu of the %zu-byte "
                     "cudaMalloc block at %p).\n"
                     "  On a GPU this is not host memory: read and write it through cudaMemcpy "
                     "(cuda_copy_d2h / cuda_copy_h2d) or a kernel; MPI, HDF5 and host loops need "
                     "a host staging buffer. (EMU_PROTECT=0 turns this check off.)\n",
                     (void *)a, (size_t)(a - p), b->n, b->p);
        ssize_t r = write(2, msg, strlen(msg));
        (void)r;
        void *frames[64];
        int nf = backtrace(frames, 64);
        backtrace_symbols_fd(frames, nf, 2);
    }
    // Hand the fault to whoever handled it before (AddressSanitizer, the default):
    // returning retries the access, which faults again.
    sigaction(sig, sig == SIGBUS ? &m.old_bus : &m.old_segv, nullptr);
    (void)uc;
}

inline void dev_install_handler(DevMem &m)
{
    if (m.handler) return;
    m.handler = true;
    void *warm[2];
    (void)backtrace(warm, 2);   // loads the unwinder now, not inside the handler
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = dev_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &m.old_segv);
    sigaction(SIGBUS, &sa, &m.old_bus);
}

// While one of these lives, the device blocks holding the pointers it was given
// are readable and writable: a kernel launch opens the blocks of its pointer
// arguments (all blocks when an argument is a struct, which might carry
// pointers), a copy its source and destination, cuBLAS its matrices, cub its
// buffers. Opening only those keeps the cost to the blocks in use (mprotect
// costs in proportion to the pages it changes).
struct DeviceScope {
    std::vector<DevBlock *> opened;
    explicit DeviceScope(std::initializer_list<const void *> ptrs) { open(ptrs.begin(), ptrs.size(), false); }
    DeviceScope(const std::vector<const void *> &ptrs, bool all) { open(ptrs.data(), ptrs.size(), all); }
    ~DeviceScope()
    {
        DevMem &m = devmem();
        std::lock_guard<std::recursive_mutex> l(m.mu);
        for (DevBlock *b : opened) {
            if (m.protect && !b->freed) dev_protect(*b, PROT_NONE);
            b->open = false;
        }
        m.depth--;
    }
    DeviceScope(const DeviceScope &) = delete;
    DeviceScope &operator=(const DeviceScope &) = delete;

  private:
    void open_block(DevMem &m, DevBlock &b)
    {
        if (b.freed || b.open) return;
        if (m.protect) dev_protect(b, PROT_READ | PROT_WRITE);
        b.open = true;
        opened.push_back(&b);
    }
    void open(const void *const *p, size_t n, bool all)
    {
        DevMem &m = devmem();
        std::lock_guard<std::recursive_mutex> l(m.mu);
        m.depth++;
        if (all) {
            for (auto &kv : m.blocks) open_block(m, kv.second);
            return;
        }
        for (size_t i = 0; i < n; i++)
            if (p[i])
                if (const DevBlock *b = dev_find(m, (uintptr_t)p[i])) open_block(m, const_cast<DevBlock &>(*b));
    }
};

// 1: [p, p+n) lies inside one live device block; 0: it touches no device block
// (host memory); -1: partly device, or freed device memory.
inline int dev_where(const void *ptr, size_t n)
{
    DevMem &m = devmem();
    std::lock_guard<std::recursive_mutex> l(m.mu);
    const uintptr_t a = (uintptr_t)ptr;
    const DevBlock *b = dev_find(m, a);
    if (!b) {
        auto it = m.blocks.upper_bound(a);   // a host range must not run into a block either
        return (it == m.blocks.end() || a + n <= it->first) ? 0 : -1;
    }
    if (b->freed) return -1;
    return a >= (uintptr_t)b->p && a + n <= (uintptr_t)b->p + b->n ? 1 : -1;
}

inline const char *memcpy_kind_name(cudaMemcpyKind k)
{
    switch (k) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    default: return "Default";
    }
}

// cudaMemcpy's contract: the kind says where dst and src live.
inline cudaError_t copy(void *d, const void *s, size_t n, cudaMemcpyKind k)
{
    if (n == 0) return cudaSuccess;
    const int wd = dev_where(d, n), ws = dev_where(s, n);
    bool ok = wd >= 0 && ws >= 0;
    if (ok && k != cudaMemcpyDefault)
        ok = wd == (k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice) &&
             ws == (k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice);
    if (!ok) {
        fprintf(stderr,
                "emu: cudaMemcpy%s of %zu bytes: dst %p is %s, src %p is %s\n", memcpy_kind_name(k),
                n, d, wd == 1 ? "device memory" : wd == 0 ? "host memory" : "not a valid device range",
                s, ws == 1 ? "device memory" : ws == 0 ? "host memory" : "not a valid device range");
        return fail(cudaErrorInvalidValue);
    }
    DeviceScope scope{d, s};
    memmove(d, s, n);
    return cudaSuccess;
}

inline double now_ms()
{
    return std::chrono::duration<double, std::milli>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}
}   // namespace emu

inline const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorNotReady: return "device not ready (emulated)";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch (emulated)";
    default: return "emulated error";
    }
}
inline const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    default: return "cudaErrorUnknown";
    }
}
inline cudaError_t cudaGetLastError()
{
    cudaError_t e = emu::last_error;
    emu::last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaPeekAtLastError() { return emu::last_error; }
inline cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : emu::fail(cudaErrorInvalidValue); }
inline cudaError_t cudaGetDevice(int *d)
{
    *d = 0;
    return cudaSuccess;
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CPU emulation (A100 shared-memory limits)");
    p->major = 8;
    p->minor = 0;
    p->multiProcessorCount = 4;
    p->totalGlobalMem = emu::device_total;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int)
{
    *v = a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? (int)emu::smem_optin : 0;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// Streams and events: the emulation is synchronous, so every wait is already satisfied.
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int)
{
    *s = (cudaStream_t)malloc(1);
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    free(s);
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned int = 0)
{
    return e ? cudaSuccess : emu::fail(cudaErrorInvalidValue);
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int)
{
    *e = new emu_event{0.0};
    return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = 0)
{
    if (!e) return emu::fail(cudaErrorInvalidValue);
    e->t = emu::now_ms();
    return cudaSuccess;
}
inline cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    *ms = (float)(b->t - a->t);
    return cudaSuccess;
}

// Device memory (see DevMem above).
inline cudaError_t cudaMalloc(void **p, size_t n)
{
    emu::DevMem &m = emu::devmem();
    std::lock_guard<std::recursive_mutex> l(m.mu);
    *p = nullptr;
    const size_t pg = m.page, want = n ? n : 1;
    if (want > emu::device_total - m.used) return emu::fail(cudaErrorMemoryAllocation);
    const size_t data = (want + pg - 1) / pg * pg, len = data + 2 * pg;
    void *map = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) return emu::fail(cudaErrorMemoryAllocation);
    char *base = (char *)map;
    emu::DevBlock b{base, len, data, base + pg + data - (want + 255) / 256 * 256, want, false, false};
    // Garbage, as fresh device memory is: private copies of the 0xa5 chunk, so
    // that a page costs memory (and mprotect time) only once it is used.
    const int prot = m.protect ? PROT_NONE : PROT_READ | PROT_WRITE, fd = emu::garbage_fd();
    for (size_t off = 0; off < data; off += emu::garbage_chunk) {
        const size_t n1 = std::min(emu::garbage_chunk, data - off);
        void *q = fd >= 0 ? mmap(base + pg + off, n1, prot, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, 0)
                          : mmap(base + pg + off, n1, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (q == MAP_FAILED) {
            munmap(map, len);
            return emu::fail(cudaErrorMemoryAllocation);
        }
        if (fd < 0) {   // no memfd: fill what there is, then protect
            memset(q, 0xa5, n1);
            mprotect(q, n1, prot);
        }
    }
    m.blocks[(uintptr_t)base] = b;
    m.used += want;
    emu::dev_install_handler(m);
    *p = b.p;
    return cudaSuccess;
}
template <class T> inline cudaError_t cudaMalloc(T **p, size_t n) { return cudaMalloc((void **)p, n); }
inline cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    emu::DevMem &m = emu::devmem();
    std::lock_guard<std::recursive_mutex> l(m.mu);
    emu::DevBlock *b = const_cast<emu::DevBlock *>(emu::dev_find(m, (uintptr_t)p));
    if (!b || b->freed || b->p != p) {
        fprintf(stderr, "emu: cudaFree(%p): %s\n", p,
                !b ? "not a device pointer" : b->freed ? "freed twice" : "not the start of a block");
        return emu::fail(cudaErrorInvalidValue);
    }
    // The addresses stay reserved and inaccessible: a use after free faults.
    emu::dev_protect(*b, PROT_NONE);
    madvise(b->map, b->map_len, MADV_DONTNEED);
    b->freed = true;
    m.used -= b->n;
    return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t *f, size_t *t)
{
    *t = emu::device_total;
    *f = emu::device_total - emu::devmem().used;
    return cudaSuccess;
}
// Pinned host memory is host memory, page-aligned as cudaHostAlloc's is.
inline cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int)
{
    *p = aligned_alloc(4096, (n + 4095) / 4096 * 4096 + (n ? 0 : 4096));
    return *p ? cudaSuccess : emu::fail(cudaErrorMemoryAllocation);
}
inline cudaError_t cudaMallocHost(void **p, size_t n) { return cudaHostAlloc(p, n, cudaHostAllocDefault); }
template <class T> inline cudaError_t cudaMallocHost(T **p, size_t n) { return cudaMallocHost((void **)p, n); }
inline cudaError_t cudaFreeHost(void *p)
{
    if (p && emu::dev_where(p, 1) != 0) return emu::fail(cudaErrorInvalidValue);
    free(p);
    return cudaSuccess;
}
inline cudaError_t cudaHostRegister(void *, size_t, unsigned int) { return cudaSuccess; }
inline cudaError_t cudaHostUnregister(void *) { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t = 0)
{
    if (n == 0) return cudaSuccess;
    if (emu::dev_where(p, n) != 1) {
        fprintf(stderr, "emu: cudaMemset of %zu bytes at %p: not inside one device block\n", n, p);
        return emu::fail(cudaErrorInvalidValue);
    }
    emu::DeviceScope scope{p};
    memset(p, v, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void *p, int v, size_t n) { return cudaMemsetAsync(p, v, n); }
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t = 0)
{
    return emu::copy(d, s, n, k);
}
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k) { return emu::copy(d, s, n, k); }
template <class K> inline cudaError_t cudaFuncSetAttribute(K kernel, cudaFuncAttribute, int v)
{
    if ((size_t)v > emu::smem_optin) return emu::fail(cudaErrorInvalidValue);
    emu::smem_limit[(const void *)kernel] = (size_t)v;
    return cudaSuccess;
}

// ---------------------------------------------------------------- launch

namespace emu {
#ifndef EMU_OS_THREADS
template <class F> void thunk(void *p) { (*(F *)p)(); }

[[noreturn]] inline void deadlock(const Sched *s, unsigned int nt, dim3 g, dim3 b)
{
    unsigned int at_block = 0, at_warp = 0;
    for (unsigned int t = 0; t < nt; t++) {
        at_block += s->state[t] == F_BLOCK;
        at_warp += s->state[t] == F_WARP;
    }
    fprintf(stderr,
            "emu: deadlock in a launch of grid (%u,%u,%u) block (%u,%u,%u), block (%u,%u,%u): "
            "%u threads wait at __syncthreads, %u at __syncwarp/__shfl_xor_sync, %u returned; "
            "no barrier can complete (threads of one warp or block wait at different barriers)\n",
            g.x, g.y, g.z, b.x, b.y, b.z, blockIdx.x, blockIdx.y, blockIdx.z, at_block, at_warp,
            nt - s->live);
    abort();
}
#endif

template <class T> void note_arg(std::vector<const void *> &ptrs, bool &structs, const T &a)
{
    if constexpr (std::is_pointer_v<T>) ptrs.push_back((const void *)a);
    else if constexpr (std::is_class_v<T> || std::is_union_v<T>) structs = true;
}

struct Launch {
    dim3 g, b;
    size_t smem;
    Launch(dim3 g_, dim3 b_, size_t smem_ = 0, cudaStream_t = 0) : g(g_), b(b_), smem(smem_) {}
    template <class... P, class... A>
    void operator()(void (*k)(P...), A... args)
    {
        const unsigned int nt = b.x * b.y * b.z;
        if (nt == 0 || nt > 1024 || g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 || g.z > 65535) {
            fprintf(stderr, "emu: bad launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n",
                    g.x, g.y, g.z, b.x, b.y, b.z);
            fail(cudaErrorInvalidValue);
            return;
        }
        size_t limit = 48 * 1024;
        auto it = smem_limit.find((const void *)k);
        if (it != smem_limit.end()) limit = it->second > limit ? it->second : limit;
        if (smem > limit) {
            fprintf(stderr, "emu: launch asks %zu bytes of dynamic shared memory, limit %zu\n", smem,
                    limit);
            fail(cudaErrorInvalidValue);
            return;
        }
        std::vector<const void *> ptrs;
        bool structs = false;
        (note_arg(ptrs, structs, args), ...);
        DeviceScope scope(ptrs, structs);
        const size_t nblocks = (size_t)g.x * g.y * g.z;
        const unsigned int nw = (nt + 31) / 32;
        Block blk;
        blk.xch.assign(32 * nw, 0);
#ifndef EMU_OS_THREADS
        // Fiber t plays thread t. Each round resumes every ready thread in turn
        // (it runs until it waits at a barrier or returns), then releases the
        // barriers that all their live threads have reached.
        Sched *s = sched_get(nt);
        auto body = [&]() { k(static_cast<P>(args)...); };
        s->body = &thunk<decltype(body)>;
        s->arg = &body;
        s->state.assign(nt, F_READY);
        s->wlive.assign(nw, 0);
        s->warrived.assign(nw, 0);
        cur = &blk;
        blockDim = b;
        gridDim = g;
        for (size_t id = 0; id < nblocks; id++) {
            blockIdx = uint3{(unsigned)(id % g.x), (unsigned)((id / g.x) % g.y),
                             (unsigned)(id / ((size_t)g.x * g.y))};
            blk.smem.assign(smem, (char)0xa5);
            std::fill(s->state.begin(), s->state.end(), F_READY);
            s->live = nt;
            s->arrived = 0;
            for (unsigned int w = 0; w < nw; w++) {
                s->wlive[w] = std::min(32u, nt - 32 * w);
                s->warrived[w] = 0;
            }
            const bool reverse = id & 1;
            for (;;) {
                for (unsigned int i = 0; i < nt; i++) {
                    const unsigned int t = reverse ? nt - 1 - i : i;
                    if (s->state[t] != F_READY) continue;
                    tid = t;
                    threadIdx = uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
                    fiber_resume(s, t);
                }
                if (s->live == 0) break;
                bool released = false;
                if (s->arrived && s->arrived == s->live) {
                    for (unsigned int t = 0; t < nt; t++)
                        if (s->state[t] == F_BLOCK) s->state[t] = F_READY;
                    s->arrived = 0;
                    released = true;
                }
                for (unsigned int w = 0; w < nw; w++)
                    if (s->warrived[w] && s->warrived[w] == s->wlive[w]) {
                        for (unsigned int t = 32 * w; t < std::min(nt, 32 * w + 32); t++)
                            if (s->state[t] == F_WARP) s->state[t] = F_READY;
                        s->warrived[w] = 0;
                        released = true;
                    }
                if (!released) deadlock(s, nt, g, b);
            }
        }
        cur = nullptr;
#else
        // nt OS threads for the whole launch; between blocks they meet at an
        // outer barrier whose completion step sets up the next block.
        size_t next = 0;
        auto setup = [&]() noexcept {
            blk.bar.reset(new std::barrier<>(nt));
            blk.warp_bar.clear();
            for (unsigned int w = 0; w < nw; w++)
                blk.warp_bar.emplace_back(new std::barrier<>(std::min(32u, nt - 32 * w)));
            blk.smem.assign(smem, (char)0xa5);
            next++;
        };
        std::barrier<decltype(setup)> outer(nt, setup);
        std::vector<std::thread> th;
        th.reserve(nt);
        for (unsigned int t = 0; t < nt; t++)
            th.emplace_back([&, t]() {
                cur = &blk;
                tid = t;
                threadIdx = uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
                blockDim = b;
                gridDim = g;
                for (;;) {
                    outer.arrive_and_wait();
                    const size_t id = next - 1;
                    if (id >= nblocks) break;
                    blockIdx = uint3{(unsigned)(id % g.x), (unsigned)((id / g.x) % g.y),
                                     (unsigned)(id / ((size_t)g.x * g.y))};
                    k(static_cast<P>(args)...);
                    blk.warp_bar[t / 32]->arrive_and_drop();
                    blk.bar->arrive_and_drop();
                }
            });
        for (auto &x : th) x.join();
#endif
    }
};
inline void *dyn_smem() { return cur->smem.empty() ? nullptr : cur->smem.data(); }
}   // namespace emu

// ---------------------------------------------------------------- bit casts

inline float __uint_as_float(unsigned int u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---------------------------------------------------------------- bf16

struct __nv_bfloat16 {
    uint16_t x;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) r.x = 0x7fc0;          // NaN
    else r.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); // round to nearest even
    return r;
}
inline float emu_bf16_to_float(__nv_bfloat16 h)
{
    uint32_t u = (uint32_t)h.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---------------------------------------------------------------- cuBLAS

typedef struct emu_cublas *cublasHandle_t;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;

inline const char *cublasGetStatusString(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS"
           : s == CUBLAS_STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE (emulated)"
                                              : "CUBLAS_STATUS_NOT_SUPPORTED (emulated)";
}
inline cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = (cublasHandle_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

namespace emu {
// Column-major C = alpha op(A) op(B) + beta C with cuBLAS's argument checks.
template <class GA, class GB>
cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                    GA a, int lda, GB bget, int ldb, float beta, float *C, int ldc)
{
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k)) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldb < std::max(1, tb == CUBLAS_OP_N ? k : n)) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldc < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int p = 0; p < k; p++) {
                double av = ta == CUBLAS_OP_N ? a((size_t)p * lda + i) : a((size_t)i * lda + p);
                double bv = tb == CUBLAS_OP_N ? bget((size_t)j * ldb + p) : bget((size_t)p * ldb + j);
                s += av * bv;
            }
            float *c = C + (size_t)j * ldc + i;
            *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
    return CUBLAS_STATUS_SUCCESS;
}
}   // namespace emu

inline cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                  int n, int k, const float *alpha, const float *A, int lda,
                                  const float *B, int ldb, const float *beta, float *C, int ldc)
{
    emu::DeviceScope scope{A, B, C};
    return emu::gemm(ta, tb, m, n, k, *alpha, [A](size_t i) { return (double)A[i]; }, lda,
                     [B](size_t i) { return (double)B[i]; }, ldb, *beta, C, ldc);
}
inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                   int n, int k, const void *alpha, const void *A, cudaDataType at,
                                   int lda, const void *B, cudaDataType bt, int ldb,
                                   const void *beta, void *C, cudaDataType ct, int ldc,
                                   cublasComputeType_t, cublasGemmAlgo_t)
{
    if (at != CUDA_R_16BF || bt != CUDA_R_16BF || ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    const __nv_bfloat16 *a = (const __nv_bfloat16 *)A, *b = (const __nv_bfloat16 *)B;
    emu::DeviceScope scope{A, B, C};
    return emu::gemm(ta, tb, m, n, k, *(const float *)alpha,
                     [a](size_t i) { return (double)emu_bf16_to_float(a[i]); }, lda,
                     [b](size_t i) { return (double)emu_bf16_to_float(b[i]); }, ldb,
                     *(const float *)beta, (float *)C, ldc);
}

// ---------------------------------------------------------------- cub

namespace cub {
struct DeviceRadixSort {
    template <class K, class V>
    static cudaError_t SortPairs(void *temp, size_t &bytes, const K *kin, K *kout, const V *vin,
                                 V *vout, int n, int = 0, int = (int)sizeof(K) * 8,
                                 cudaStream_t = 0)
    {
        if (!temp) {
            bytes = 64;
            return cudaSuccess;
        }
        emu::DeviceScope scope{temp, kin, kout, vin, vout};
        std::vector<std::pair<K, V>> v((size_t)n);
        for (int i = 0; i < n; i++) v[i] = {kin[i], vin[i]};
        std::stable_sort(v.begin(), v.end(),
                         [](const std::pair<K, V> &x, const std::pair<K, V> &y) { return x.first < y.first; });
        for (int i = 0; i < n; i++) {
            kout[i] = v[i].first;
            vout[i] = v[i].second;
        }
        return cudaSuccess;
    }
};
}   // namespace cub

#endif
