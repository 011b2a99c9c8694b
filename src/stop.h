// stop.h: ending a training run early and cleanly: stop signals and the wall-time limit.
//
// A batch system warns a job before it kills it (Slurm: SIGTERM at the time
// limit or on preemption, or the signal of `sbatch --signal`). Each signal in
// [run] stop_signals gets a handler that only sets a flag; before every step
// the ranks agree on the flags with one small all-reduce (MAX), so a signal
// that reached one rank stops all of them at the same step. The run then
// writes a checkpoint, flushes run.h5 and exits with STOP_EXIT_TEMPFAIL (75).
// A repeat of a stop signal while stopping is ignored: Slurm and mpiexec may
// both deliver the same SIGTERM; SIGKILL (or SIGINT, left to its default)
// ends a stuck stop.
//
// The wall-time limit: the earlier of [run] time_limit, counted from the
// start of this process, and Slurm's SLURM_JOB_END_TIME (epoch seconds; set
// by Slurm 23.02 and later, absent from 22.05, where the jobscript passes
// --set run.time_limit=...). Rank 0 stops before a step whose predicted time
// plus the checkpoint's would end within [run] time_margin of it.
#ifndef PARTITA_STOP_H
#define PARTITA_STOP_H

#include <mpi.h>
#include <stddef.h>

#include "deck.h"

// Exit statuses of `partita train` (README "Exit statuses").
enum { STOP_EXIT_DONE = 0, STOP_EXIT_FATAL = 1, STOP_EXIT_INPUT = 2, STOP_EXIT_NAN = 3, STOP_EXIT_TEMPFAIL = 75 };

enum { STOP_MAX_SIGNALS = 8 };
enum { STOP_NONE = 0, STOP_SIGNAL, STOP_TIME };

typedef struct Stop {
    int nsig, sigs[STOP_MAX_SIGNALS];
    double deadline;        // CLOCK_REALTIME seconds; 0 = no limit (rank 0 only)
    char deadline_from[64]; // "run.time_limit", "SLURM_JOB_END_TIME" or ""
    double margin;
    double timeout_s;       // [comm] timeout_s: the stop check is a collective too
    int reason;             // STOP_*, once stop_check has said stop
    int signo;              // the signal, for STOP_SIGNAL
} Stop;

// "TERM, USR1" -> signal numbers (names with or without SIG, any case, or
// "none"). Returns the count, or -1 with the reason in err.
int stop_parse_signals(const char *text, int *sigs, int max, char *err, size_t n);
// "3600", "90s", "90m", "2h", "1d", "H:MM:SS", "MM:SS", "D-HH:MM:SS" -> seconds.
// Returns 0, or -1 with the reason in err.
int stop_parse_duration(const char *text, double *seconds, char *err, size_t n);

// Reads the keys (every rank; they agree on errors: returns -1 with a complete
// "error: ...\n  hint: ..." in err), installs the handlers and sets the deadline.
int stop_init(Stop *s, const Deck *d, int rank, char *err, size_t n);
// Restores the default actions of the handled signals.
void stop_free(Stop *s);

// Collective over comm, before a step: 1 if the job must stop now. next_s is
// rank 0's prediction of the next step's seconds, ckpt_s of the checkpoint's.
int stop_check(Stop *s, MPI_Comm comm, double next_s, double ckpt_s);
// "SIGTERM", "the time limit (run.time_limit)".
const char *stop_reason(const Stop *s, char *buf, size_t n);
// Seconds left before the deadline less the margin (rank 0); +inf without a limit.
double stop_seconds_left(const Stop *s);

// The seconds this process has run (from /proc/self/stat; 0 if unknown).
double stop_process_age(void);

#endif
