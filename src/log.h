// log.h: rank-aware logging, checked calls and fatal errors.
//
// Rank 0 speaks for the job. A fatal error prints one message (file:line of the
// failing call, what failed, a hint) and ends every rank with one MPI_Abort.
#ifndef PARTITA_LOG_H
#define PARTITA_LOG_H

#include <stdio.h>
#include <stdarg.h>

// Records the caller's rank so that log_info prints on rank 0 only.
void log_init(int rank);
int log_rank(void);

// printf to stdout on rank 0 only (flushed, so progress lines show under batch systems).
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// printf to stderr from any rank, prefixed "[rank R] warning: ".
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Prints "error: <msg>" (+ "  hint: <hint>" when hint is not NULL) and aborts the job.
// Called by one rank that alone knows of the error: the message appears once.
_Noreturn void log_fatal_at(const char *file, int line, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define FATAL(hint, ...) log_fatal_at(__FILE__, __LINE__, hint, __VA_ARGS__)
// For an error every rank finds alike (bad data, a file that does not fit the
// deck): rank 0 prints it and aborts the job; the others wait for that abort.
_Noreturn void log_fatal_all_at(const char *file, int line, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define FATAL_ALL(hint, ...) log_fatal_all_at(__FILE__, __LINE__, hint, __VA_ARGS__)

// Checks for the calls the project makes. Each names the call and its file:line.
#define MPI_CHECK(call) do { int rc_ = (call); if (rc_ != MPI_SUCCESS) { \
    char s_[MPI_MAX_ERROR_STRING]; int n_ = 0; MPI_Error_string(rc_, s_, &n_); \
    log_fatal_at(__FILE__, __LINE__, NULL, "MPI call failed: %s: %s", #call, s_); } } while (0)
#define H5_CHECK(call) do { if ((long)(call) < 0) \
    log_fatal_at(__FILE__, __LINE__, "the HDF5 error stack above says why", \
                 "HDF5 call failed: %s", #call); } while (0)
#define SYS_CHECK(cond, ...) do { if (!(cond)) \
    log_fatal_at(__FILE__, __LINE__, NULL, __VA_ARGS__); } while (0)

// malloc/calloc that abort with the size on failure; for start-up allocation only.
void *xmalloc(size_t n, const char *what);
void *xcalloc(size_t n, const char *what);

#endif
