// log.h: rank-aware logging, checked calls and fatal errors.
//
// Rank 0 speaks for the job. A fatal error prints one message (file:line of the
// failing call, what failed, a hint) and ends every rank with one MPI_Abort.
// A rank other than 0 prefixes its messages with "[rank R]", so that an error
// only one rank meets (a bad token in its shard, a disk error on its write) is
// printed by that rank, attributed, and flushed before the abort.
#ifndef PARTITA_LOG_H
#define PARTITA_LOG_H

#include <errno.h>
#include <stdio.h>
#include <stdarg.h>

// Records the caller's rank so that log_info prints on rank 0 only.
void log_init(int rank);
int log_rank(void);

// printf to stdout on rank 0 only (flushed, so progress lines show under batch systems).
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// printf to stderr from any rank, prefixed "[rank R] warning: ".
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Prints "error: <msg>" ("[rank R] error: <msg>" on ranks other than 0; then
// "  hint: <hint>" when hint is not NULL), flushes stderr and aborts the job.
// Called by one rank that alone knows of the error: the message appears once.
_Noreturn void log_fatal_at(const char *file, int line, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define FATAL(hint, ...) log_fatal_at(__FILE__, __LINE__, hint, __VA_ARGS__)
// For an error every rank finds alike (bad data, a file that does not fit the
// deck): rank 0 prints it and aborts the job; the others wait for that abort,
// and should it not come within a few seconds (rank 0 did not meet the error
// after all), print their own message and abort themselves.
_Noreturn void log_fatal_all_at(const char *file, int line, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define FATAL_ALL(hint, ...) log_fatal_all_at(__FILE__, __LINE__, hint, __VA_ARGS__)

// Checks for the calls the project makes. Each names the call and its file:line.
#define MPI_CHECK(call) do { int rc_ = (call); if (rc_ != MPI_SUCCESS) { \
    char s_[MPI_MAX_ERROR_STRING]; int n_ = 0; MPI_Error_string(rc_, s_, &n_); \
    log_fatal_at(__FILE__, __LINE__, NULL, "MPI call failed: %s: %s", #call, s_); } } while (0)
// A failed HDF5 call: the message names the call, the innermost entry of
// HDF5's error stack (which names the file for file-level errors) and errno's
// reason where the failing system call left one. Defined in h5io.c.
_Noreturn void h5_fatal_at(const char *file, int line, const char *call, int err);
#define H5_CHECK(call) do { errno = 0; if ((long)(call) < 0) \
    h5_fatal_at(__FILE__, __LINE__, #call, errno); } while (0)
#define SYS_CHECK(cond, ...) do { if (!(cond)) \
    log_fatal_at(__FILE__, __LINE__, NULL, __VA_ARGS__); } while (0)

// malloc/calloc that abort with the size on failure; for start-up allocation only.
void *xmalloc(size_t n, const char *what);
void *xcalloc(size_t n, const char *what);

#endif
