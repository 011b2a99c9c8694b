// watchdog.h: a timer thread that ends the process when an operation outlasts
// its time limit.
//
// The collectives' timeout ([comm] timeout_s) covers waits inside comm.c only;
// checkpoint I/O blocks inside HDF5, MPI-IO and system calls, where a stopped
// rank or a hung file system would hold the job forever. A watchdog started
// around such an operation ends the process when it does not finish in time:
// it prints "<what> did not finish within timeout_s = X s on rank R (<phase>)"
// with a hint, and calls _exit. The watchdog thread never calls MPI (a rank
// stuck inside MPI may hold its locks): mpiexec sees a rank die and ends the job.
#ifndef PARTITA_WATCHDOG_H
#define PARTITA_WATCHDOG_H

#include <pthread.h>

typedef struct Watchdog {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int active;             // a thread is running
    int done;               // set by watchdog_stop
    double timeout_s;
    char what[1200];        // "checkpoint write of 'ckpt/step-000010.h5.tmp'"
    char hint[400];
    const char *phase;      // a string literal: what the main thread is doing now
    const char *limit;      // what the limit is called in the message: "timeout_s = " (the deck key) or ""
} Watchdog;

// Starts watching: unless watchdog_stop comes within timeout_s seconds, the
// process ends with the message. timeout_s <= 0 watches nothing.
void watchdog_start(Watchdog *w, double timeout_s, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// The limit is the program's own, not [comm] timeout_s: the message gives the
// seconds alone. Call right after watchdog_start.
void watchdog_fixed_limit(Watchdog *w);
// Records what the main thread does now (a string literal), for the message.
void watchdog_phase(Watchdog *w, const char *phase);
// The operation finished: stops and joins the thread.
void watchdog_stop(Watchdog *w);

#endif
