// log.c: rank-aware logging and the one fatal-error path.
#include "log.h"

#include <errno.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The rank is fixed for the life of the process once MPI is up; it is the only
// state here and it never changes after log_init.
static int g_rank = 0;

void log_init(int rank) { g_rank = rank; }
int log_rank(void) { return g_rank; }

void log_info(const char *fmt, ...) {
    if (g_rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fflush(stdout);
}

void log_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[rank %d] warning: ", g_rank);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static _Noreturn void fatal_v(const char *file, int line, const char *hint, const char *fmt, va_list ap) {
    fflush(stdout);
    // One buffer, one write: messages of ranks failing at once stay whole.
    char msg[8192];
    size_t n = 0;
    if (g_rank != 0) n += (size_t)snprintf(msg + n, sizeof msg - n, "[rank %d] ", g_rank);
    n += (size_t)snprintf(msg + n, sizeof msg - n, "error: ");
    if (n < sizeof msg) n += (size_t)vsnprintf(msg + n, sizeof msg - n, fmt, ap);
    if (n < sizeof msg) n += (size_t)snprintf(msg + n, sizeof msg - n, "\n  (rank %d, %s:%d)\n", g_rank, file, line);
    if (hint && n < sizeof msg) n += (size_t)snprintf(msg + n, sizeof msg - n, "  hint: %s\n", hint);
    if (n >= sizeof msg) memcpy(msg + sizeof msg - 5, "...\n", 5);
    fputs(msg, stderr);
    fflush(stderr);
    int up = 0, fin = 0, size = 1;
    MPI_Initialized(&up);
    MPI_Finalized(&fin);
    if (up && !fin) MPI_Comm_size(MPI_COMM_WORLD, &size);
    // A job of one process (prep, check, ckpt, estimate run alone) has no one
    // else to stop: leave without MPI_Abort's own lines after the message.
    if (size == 1) exit(1);
    // mpiexec forwards our stderr through a pipe; an abort right away can kill
    // the job before the message is through (seen: one run in three).
    if (up && !fin) {
        usleep(300000);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    exit(1);
}

_Noreturn void log_fatal_at(const char *file, int line, const char *hint, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fatal_v(file, line, hint, fmt, ap);
}

// How long a rank other than 0 waits for rank 0's abort after an error every
// rank should meet alike, before it reports the error itself.
#define FATAL_ALL_WAIT_S 5

_Noreturn void log_fatal_all_at(const char *file, int line, const char *hint, const char *fmt, ...) {
    if (g_rank != 0) {
        // Rank 0 meets the same error and its MPI_Abort ends this process. If
        // it does not come, rank 0 is elsewhere (the error was this rank's
        // alone, or rank 0 is stuck): say it here rather than die silently.
        sleep(FATAL_ALL_WAIT_S);
        fprintf(stderr, "[rank %d] rank 0 did not end the job within %d s of this error:\n", g_rank,
                FATAL_ALL_WAIT_S);
    }
    va_list ap;
    va_start(ap, fmt);
    fatal_v(file, line, hint, fmt, ap);
}

void *xmalloc(size_t n, const char *what) {
    void *p = NULL;
    // 64-byte alignment keeps AVX loads on one cache line.
    if (posix_memalign(&p, 64, n ? n : 64) != 0)
        log_fatal_at(__FILE__, __LINE__, "reduce the model or batch size",
                     "out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *xcalloc(size_t n, const char *what) {
    void *p = xmalloc(n, what);
    memset(p, 0, n);
    return p;
}
