// stop.c: stop signals, the wall-time limit, and the per-step agreement to stop.
#include "stop.h"
#include "log.h"

#include <ctype.h>
#include <sched.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

// The one piece of global mutable state in Partita: a signal handler can reach
// nothing else. It holds the first stop signal received (0 = none).
static volatile sig_atomic_t g_stop_signal = 0;

static void on_stop_signal(int signo) {
    if (!g_stop_signal) g_stop_signal = signo;
}

static const struct { const char *name; int signo; } catchable[] = {
    {"TERM", SIGTERM}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"INT", SIGINT},
    {"HUP", SIGHUP}, {"XCPU", SIGXCPU}, {"QUIT", SIGQUIT}, {"ALRM", SIGALRM},
};
#define NCATCHABLE ((int)(sizeof catchable / sizeof catchable[0]))

static const char *signal_name(int signo) {
    for (int i = 0; i < NCATCHABLE; i++)
        if (catchable[i].signo == signo) return catchable[i].name;
    return "?";
}

int stop_parse_signals(const char *text, int *sigs, int max, char *err, size_t n) {
    char buf[DECK_STR];
    snprintf(buf, sizeof buf, "%s", text);
    int count = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        if (strcasecmp(tok, "none") == 0) continue;
        const char *name = strncasecmp(tok, "SIG", 3) == 0 ? tok + 3 : tok;
        int signo = 0;
        for (int i = 0; i < NCATCHABLE; i++)
            if (strcasecmp(name, catchable[i].name) == 0) signo = catchable[i].signo;
        if (!signo) {
            snprintf(err, n, "'%s' is not a signal a run can stop on (one of TERM, USR1, USR2, INT, HUP, XCPU, QUIT, ALRM)", tok);
            return -1;
        }
        int dup = 0;
        for (int i = 0; i < count; i++) dup |= sigs[i] == signo;
        if (dup) continue;
        if (count == max) {
            snprintf(err, n, "more than %d signals", max);
            return -1;
        }
        sigs[count++] = signo;
    }
    return count;
}

// A non-negative decimal number at *p (digits with an optional fraction); advances *p.
static int read_number(const char **p, double *v) {
    const char *s = *p;
    if (!isdigit((unsigned char)*s) && *s != '.') return -1;
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    if (end == s || errno || !isfinite(*v) || *v < 0) return -1;
    *p = end;
    return 0;
}

static int parse_clock(const char *s, double *seconds) {
    double days = 0, part[3];
    int np = 0;
    const char *dash = strchr(s, '-');
    if (dash) {
        if (read_number(&s, &days) != 0 || s != dash || days != floor(days)) return -1;
        s = dash + 1;
    }
    for (;;) {
        if (np == 3 || read_number(&s, &part[np]) != 0) return -1;
        np++;
        if (*s == 0) break;
        if (*s++ != ':') return -1;
    }
    // Slurm's forms: MM:SS, H:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
    double h = 0, m = 0, sec = 0;
    if (dash) {
        h = part[0];
        if (np > 1) m = part[1];
        if (np > 2) sec = part[2];
    } else if (np == 2) {
        m = part[0];
        sec = part[1];
    } else {
        h = part[0];
        m = part[1];
        sec = part[2];
    }
    if ((np > 1 && m >= 60 && (dash || np == 3)) || (np > 1 && sec >= 60)) return -1;
    *seconds = days * 86400 + h * 3600 + m * 60 + sec;
    return 0;
}

int stop_parse_duration(const char *text, double *seconds, char *err, size_t n) {
    const char *s = text;
    while (isspace((unsigned char)*s)) s++;
    char buf[64];
    size_t len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1])) len--;
    int ok = len > 0 && len < sizeof buf;
    if (ok) {
        memcpy(buf, s, len);
        buf[len] = 0;
        if (strchr(buf, ':') || strchr(buf, '-')) {
            ok = parse_clock(buf, seconds) == 0;
        } else {
            const char *p = buf;
            double v = 0, unit = 1;
            ok = read_number(&p, &v) == 0;
            if (ok && *p) {
                switch (tolower((unsigned char)*p)) {
                case 's': unit = 1; break;
                case 'm': unit = 60; break;
                case 'h': unit = 3600; break;
                case 'd': unit = 86400; break;
                default: ok = 0;
                }
                ok = ok && p[1] == 0;
            }
            *seconds = v * unit;
        }
    }
    if (ok && *seconds > 1e9) ok = 0;
    if (!ok) snprintf(err, n, "'%s' is not a duration: expected seconds (3600), 90s, 90m, 2h, 1d, H:MM:SS or D-HH:MM:SS", text);
    return ok ? 0 : -1;
}

double stop_process_age(void) {
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return 0.0;
    char line[1024];
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    char *p = got ? strrchr(line, ')') : NULL;   // the command name may hold spaces and parentheses
    unsigned long long start = 0;
    // After ") " come fields 3..; starttime is field 22.
    for (int field = 3; p && field <= 22; field++) {
        p = strchr(p + 1, ' ');
        if (p && field == 22) start = strtoull(p + 1, NULL, 10);
    }
    double up = 0;
    f = fopen("/proc/uptime", "r");
    if (!f) return 0.0;
    if (fscanf(f, "%lf", &up) != 1) up = 0;
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    double age = start && hz > 0 ? up - (double)start / (double)hz : 0.0;
    return age > 0 ? age : 0.0;
}

static double realtime_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int key_error(const Deck *d, const char *key, const char *why, const char *hint, char *err, size_t n) {
    char where[600];
    snprintf(err, n, "error: %s: [%.*s] %s: %s\n  hint: %s", deck_where(d, key, where, sizeof where),
             (int)(strchr(key, '.') - key), key, strchr(key, '.') + 1, why, hint);
    return -1;
}

// The deadline: the earlier of run.time_limit (from this process's start) and SLURM_JOB_END_TIME.
static int set_deadline(Stop *s, const Deck *d, char *err, size_t n) {
    char why[300];
    double limit = 0;
    if (stop_parse_duration(d->cfg.run.time_limit, &limit, why, sizeof why) != 0)
        return key_error(d, "run.time_limit", why, "write e.g. time_limit = 2h, 90m, 3600 or 1:30:00 (0 = none)", err, n);
    double now = realtime_now();
    if (limit > 0) {
        s->deadline = now - stop_process_age() + limit;
        snprintf(s->deadline_from, sizeof s->deadline_from, "run.time_limit");
    }
    const char *end = getenv("SLURM_JOB_END_TIME");
    if (end && end[0]) {
        char *e;
        errno = 0;
        double t = strtod(end, &e);
        if (*e == 0 && !errno && t > 0 && (s->deadline == 0 || t < s->deadline)) {
            s->deadline = t;
            snprintf(s->deadline_from, sizeof s->deadline_from, "SLURM_JOB_END_TIME");
        }
    }
    return 0;
}

int stop_init(Stop *s, const Deck *d, int rank, char *err, size_t n) {
    memset(s, 0, sizeof *s);
    char why[300];
    s->nsig = stop_parse_signals(d->cfg.run.stop_signals, s->sigs, STOP_MAX_SIGNALS, why, sizeof why);
    if (s->nsig < 0)
        return key_error(d, "run.stop_signals", why, "list signal names, e.g. stop_signals = TERM, USR1 (or none)", err, n);
    if (set_deadline(s, d, err, n) != 0) return -1;
    s->margin = d->cfg.run.time_margin;
    s->timeout_s = d->cfg.comm.timeout_s;
    if (rank != 0) s->deadline = 0;     // rank 0 decides on time for everyone
    g_stop_signal = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    SYS_CHECK(sigemptyset(&sa.sa_mask) == 0, "sigemptyset failed");
    for (int i = 0; i < s->nsig; i++)
        SYS_CHECK(sigaction(s->sigs[i], &sa, NULL) == 0, "cannot install a handler for SIG%s: %s",
                  signal_name(s->sigs[i]), strerror(errno));
    return 0;
}

void stop_free(Stop *s) {
    for (int i = 0; i < s->nsig; i++)
        SYS_CHECK(signal(s->sigs[i], SIG_DFL) != SIG_ERR, "cannot restore SIG%s: %s", signal_name(s->sigs[i]), strerror(errno));
    s->nsig = 0;
}

double stop_seconds_left(const Stop *s) {
    if (s->deadline <= 0) return INFINITY;
    return s->deadline - s->margin - realtime_now();
}

int stop_check(Stop *s, MPI_Comm comm, double next_s, double ckpt_s) {
    int mine[2] = {(int)g_stop_signal, 0}, all[2] = {0, 0};
    if (s->deadline > 0 && next_s + ckpt_s > stop_seconds_left(s)) mine[1] = 1;
    // Non-blocking, polled with yields: ranks that outnumber cores must not spin
    // against the rank that still computes (MPICH's blocking wait busy-polls).
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(mine, all, 2, MPI_INT, MPI_MAX, comm, &req));
    double t0 = MPI_Wtime();
    struct timespec nap = {0, 50000};
    for (long spins = 0;; spins++) {
        int done = 0;
        MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
        if (done) break;
        if (spins > 20000) nanosleep(&nap, NULL);
        else sched_yield();
        if (s->timeout_s > 0 && (spins & 255) == 0 && MPI_Wtime() - t0 > s->timeout_s)
            FATAL("another rank never reached the next step: it is stuck or died ([comm] timeout_s)",
                  "waited %.0f s in the stop check before a step", MPI_Wtime() - t0);
    }
    if (all[0]) {
        s->reason = STOP_SIGNAL;
        s->signo = all[0];
    } else if (all[1]) {
        s->reason = STOP_TIME;
    }
    return s->reason != STOP_NONE;
}

const char *stop_reason(const Stop *s, char *buf, size_t n) {
    if (s->reason == STOP_SIGNAL) snprintf(buf, n, "SIG%s", signal_name(s->signo));
    else if (s->reason == STOP_TIME) snprintf(buf, n, "the time limit (%s)", s->deadline_from[0] ? s->deadline_from : "run.time_limit");
    else snprintf(buf, n, "request");
    return buf;
}
