// watchdog.c: a deadline thread; see watchdog.h.
#include "watchdog.h"
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void *watch(void *arg) {
    Watchdog *w = arg;
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    double whole = (double)(time_t)w->timeout_s;
    dl.tv_sec += (time_t)w->timeout_s;
    dl.tv_nsec += (long)((w->timeout_s - whole) * 1e9);
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    while (!w->done && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&w->cv, &w->mu, &dl);
    if (w->done) {
        pthread_mutex_unlock(&w->mu);
        return NULL;
    }
    // Past the deadline. No MPI here (no thread support): print and leave;
    // mpiexec ends the other ranks when this one dies.
    int r = log_rank();
    char msg[2048], prefix[32] = "";
    if (r != 0) snprintf(prefix, sizeof prefix, "[rank %d] ", r);
    snprintf(msg, sizeof msg, "%serror: %s did not finish within %s%g s on rank %d (%s)\n%s%s%s", prefix,
             w->what, w->limit, w->timeout_s, r, w->phase ? w->phase : "?", w->hint[0] ? "  hint: " : "", w->hint,
             w->hint[0] ? "\n" : "");
    fflush(stdout);
    fputs(msg, stderr);     // one write, so that it stays whole beside other ranks' messages
    fflush(stderr);
    usleep(300000);     // let mpiexec forward the message before the job is torn down
    _exit(1);
}

void watchdog_start(Watchdog *w, double timeout_s, const char *hint, const char *fmt, ...) {
    memset(w, 0, sizeof *w);
    if (timeout_s <= 0) return;
    w->timeout_s = timeout_s;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->what, sizeof w->what, fmt, ap);
    va_end(ap);
    snprintf(w->hint, sizeof w->hint, "%s", hint ? hint : "");
    w->phase = "starting";
    w->limit = "timeout_s = ";
    pthread_condattr_t ca;
    SYS_CHECK(pthread_condattr_init(&ca) == 0 && pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
              pthread_cond_init(&w->cv, &ca) == 0 && pthread_mutex_init(&w->mu, NULL) == 0,
              "watchdog: cannot set up its condition variable");
    pthread_condattr_destroy(&ca);
    int rc = pthread_create(&w->thread, NULL, watch, w);
    SYS_CHECK(rc == 0, "watchdog: cannot start a thread: %s", strerror(rc));
    w->active = 1;
}

void watchdog_fixed_limit(Watchdog *w) {
    if (!w->active) return;
    pthread_mutex_lock(&w->mu);
    w->limit = "";
    pthread_mutex_unlock(&w->mu);
}

void watchdog_phase(Watchdog *w, const char *phase) {
    if (!w->active) return;
    pthread_mutex_lock(&w->mu);
    w->phase = phase;
    pthread_mutex_unlock(&w->mu);
}

void watchdog_stop(Watchdog *w) {
    if (!w->active) return;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    w->active = 0;
}
