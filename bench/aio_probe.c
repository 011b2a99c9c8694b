// aio_probe.c: the I/O engine (src/aio.c) against a raw O_DIRECT probe of the
// same directory: GB/s of writing then reading SIZE MiB in 1 MiB requests at
// queue depth Q: the engine with Q requests in flight, the raw probe with Q
// threads each doing blocking O_DIRECT pwrite/pread of its share.
//   build/aio_probe DIR [SIZE_MIB]
#include "aio.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLK ((size_t)1 << 20)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct Job { int fd, write, q, k; size_t nblk; char *buf; } Job;

static void *raw_worker(void *arg) {
    Job *j = arg;
    for (size_t b = (size_t)j->k; b < j->nblk; b += (size_t)j->q) {
        ssize_t rc = j->write ? pwrite(j->fd, j->buf, BLK, (off_t)(b * BLK)) : pread(j->fd, j->buf, BLK, (off_t)(b * BLK));
        if (rc != (ssize_t)BLK) { perror("raw probe"); exit(1); }
    }
    return NULL;
}

static double raw(const char *path, int write, int q, size_t nblk) {
    int fd = open(path, (write ? O_WRONLY | O_CREAT : O_RDONLY) | O_DIRECT, 0644);
    if (fd < 0) { perror(path); exit(1); }
    pthread_t th[64];
    Job jobs[64];
    double t0 = now();
    for (int k = 0; k < q; k++) {
        jobs[k] = (Job){fd, write, q, k, nblk, aio_buffer(BLK, 4096)};
        pthread_create(&th[k], NULL, raw_worker, &jobs[k]);
    }
    for (int k = 0; k < q; k++) pthread_join(th[k], NULL);
    if (write) fdatasync(fd);
    double dt = now() - t0;
    for (int k = 0; k < q; k++) aio_buffer_free(jobs[k].buf);
    close(fd);
    return (double)nblk * BLK / dt / 1e9;
}

static double engine(const char *path, int write, int q, size_t nblk) {
    Aio a;
    AioFile f;
    char why[800];
    if (aio_init(&a, q, why, sizeof why) || aio_open(&f, path, write ? AIO_WRITE | AIO_CREATE : AIO_READ, why, sizeof why)) {
        fprintf(stderr, "%s\n", why);
        exit(1);
    }
    char *buf = aio_buffer(BLK * (size_t)q, f.align);
    double t0 = now();
    for (size_t b = 0; b < nblk; b++) {
        char *p = buf + (b % (size_t)q) * BLK;
        if (write) aio_write(&a, &f, p, BLK, b * BLK);
        else aio_read(&a, &f, p, BLK, b * BLK);
    }
    if (aio_wait_all(&a, why, sizeof why)) { fprintf(stderr, "%s\n", why); exit(1); }
    if (write) fdatasync(f.fd);
    double dt = now() - t0;
    aio_buffer_free(buf);
    aio_close(&f);
    aio_free(&a);
    return (double)nblk * BLK / dt / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: aio_probe DIR [SIZE_MIB]\n"); return 2; }
    size_t nblk = argc > 2 ? (size_t)atol(argv[2]) : 256;
    char path[1024];
    snprintf(path, sizeof path, "%s/aio_probe.%d", argv[1], (int)getpid());
    int qs[3] = {1, 4, 16};
    printf("  %-6s %12s %12s %12s %12s %8s %8s\n", "depth", "raw write", "aio write", "raw read", "aio read", "w %", "r %");
    for (int i = 0; i < 3; i++) {
        double rw = raw(path, 1, qs[i], nblk), ew = engine(path, 1, qs[i], nblk);
        double rr = raw(path, 0, qs[i], nblk), er = engine(path, 0, qs[i], nblk);
        printf("  %-6d %9.2f GB/s %9.2f GB/s %9.2f GB/s %9.2f GB/s %7.0f%% %7.0f%%\n", qs[i], rw, ew, rr, er,
               100 * ew / rw, 100 * er / rr);
    }
    unlink(path);
    return 0;
}
