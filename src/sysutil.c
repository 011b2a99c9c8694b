// sysutil.c: the monotonic clock, mkdir -p, threads per rank.
#include "sysutil.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void make_dirs(const char *path, const char *hint) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p != '/' && *p) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            FATAL(hint, "cannot create directory '%s': %s", buf, strerror(errno));
        *p = c;
        if (!c) break;
    }
}

void make_parent_dirs(const char *file, const char *hint) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", file);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf) return;
    *slash = 0;
    make_dirs(buf, hint);
}

int threads_per_rank(int64_t requested, int ranks_on_node) {
    if (requested > 0) return (int)requested;   // the deck bounds it (<= 4096)
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long n = cores / (ranks_on_node > 0 ? ranks_on_node : 1);
    return n > 0 ? (int)n : 1;
}
