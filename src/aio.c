// aio.c: io_uring + O_DIRECT file I/O with a pread/pwrite fallback (see aio.h).
#include "aio.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

enum { AIO_R_NONE, AIO_R_ERRNO, AIO_R_SHORT, AIO_R_ALIGN, AIO_R_ZERO };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void say(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t n, const char *fmt, ...) {
    if (!why || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
}

// ---------------------------------------------------------------------------
// Files

// The device's logical block: statx's direct-I/O alignment where the kernel
// reports it, else the block device's logical_block_size from sysfs, else 4096.
static size_t dio_align(int fd) {
#ifdef STATX_DIOALIGN
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
        sx.stx_dio_offset_align > 0) {
        size_t a = sx.stx_dio_offset_align > sx.stx_dio_mem_align ? sx.stx_dio_offset_align
                                                                   : sx.stx_dio_mem_align;
        return a;
    }
#endif
    struct stat st;
    if (fstat(fd, &st) == 0) {
        const char *fmt[2] = {"/sys/dev/block/%u:%u/queue/logical_block_size",
                              "/sys/dev/block/%u:%u/../queue/logical_block_size"};
        for (int k = 0; k < 2; k++) {
            char p[128];
            snprintf(p, sizeof p, fmt[k], major(st.st_dev), minor(st.st_dev));
            FILE *fp = fopen(p, "r");
            if (!fp) continue;
            unsigned long v = 0;
            int ok = fscanf(fp, "%lu", &v) == 1;
            fclose(fp);
            if (ok && v >= 512 && v <= 65536 && !(v & (v - 1))) return v;
        }
    }
    return 4096;
}

int aio_open(AioFile *f, const char *path, int mode, char *why, size_t n) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (strlen(path) >= sizeof f->path) {
        say(why, n, "%s: path longer than %zu bytes", path, sizeof f->path - 1);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s", path);
    int flags = O_CLOEXEC;
    if ((mode & AIO_READ) && (mode & AIO_WRITE)) flags |= O_RDWR;
    else if (mode & AIO_WRITE) flags |= O_WRONLY;
    else flags |= O_RDONLY;
    if (mode & AIO_CREATE) flags |= O_CREAT;
    if (mode & AIO_TRUNC) flags |= O_TRUNC;
    int fd = -1;
    const char *env = getenv("PARTITA_AIO");
    if (env && strcmp(env, "buffered") == 0) mode |= AIO_BUFFERED;
    if (!(mode & AIO_BUFFERED)) {
        fd = open(path, flags | O_DIRECT, 0644);
        if (fd >= 0) f->direct = 1;
        else if (errno != EINVAL && errno != EOPNOTSUPP) {
            say(why, n, "%s: cannot open: %s", path, strerror(errno));
            return -1;
        }
    }
    if (fd < 0) fd = open(path, flags, 0644);   // the file system takes no O_DIRECT: buffered
    if (fd < 0) {
        say(why, n, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        say(why, n, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    f->fd = fd;
    f->size = (uint64_t)st.st_size;
    f->align = dio_align(fd);
    if (f->align < 512) f->align = 512;
    return 0;
}

void aio_close(AioFile *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
}

void *aio_buffer(size_t bytes, size_t align) {
    if (align < sizeof(void *)) align = sizeof(void *);
    size_t n = aio_align_up(bytes ? bytes : 1, align);
    void *p = NULL;
    if (posix_memalign(&p, align, n) != 0) return NULL;
    memset(p, 0, n);
    return p;
}

void aio_buffer_free(void *p) { free(p); }

// ---------------------------------------------------------------------------
// Ring

int aio_init(Aio *a, int queue_depth, char *why, size_t n) {
    memset(a, 0, sizeof *a);
    if (queue_depth < 1) queue_depth = 1;
    if (queue_depth > 4096) queue_depth = 4096;
    a->depth = queue_depth;
    a->next_ticket = 1;
    a->chunks = calloc((size_t)queue_depth, sizeof(AioChunk));
    if (!a->chunks) {
        say(why, n, "aio: out of memory for %d requests", queue_depth);
        return -1;
    }
    const char *env = getenv("PARTITA_AIO");
    if (env && strcmp(env, "sync") == 0) {
        a->fallback = 1;
        return 0;
    }
    struct io_uring *r = calloc(1, sizeof *r);
    int rc = r ? io_uring_queue_init((unsigned)queue_depth, r, 0) : -ENOMEM;
    if (rc < 0) {
        free(r);
        a->fallback = 1;
        fprintf(stderr, "warning: io_uring unavailable (%s); file I/O falls back to synchronous pread/pwrite\n",
                strerror(-rc));
        return 0;
    }
    a->ring = r;
    return 0;
}

static const char *reason_text(const AioOp *op, char *buf, size_t n) {
    switch (op->reason) {
    case AIO_R_ALIGN:
        snprintf(buf, n, "not aligned to %zu bytes (O_DIRECT needs buffer, offset and size aligned)",
                 op->f->align);
        break;
    case AIO_R_SHORT: {
        struct stat st;
        long long now = fstat(op->f->fd, &st) == 0 ? (long long)st.st_size : -1;
        snprintf(buf, n, "short read: the file holds %lld bytes, %llu expected (truncated or replaced?)", now,
                 (unsigned long long)op->f->size);
        break;
    }
    case AIO_R_ZERO: snprintf(buf, n, "the write moved no bytes"); break;
    default:
        if (op->err == ENOSPC) snprintf(buf, n, "disk full (%s)", strerror(op->err));
        else if (op->err == EFBIG) snprintf(buf, n, "file too large: %s (the size limit, ulimit -f?)", strerror(op->err));
        else if (op->err == EDQUOT) snprintf(buf, n, "disk quota exceeded (%s)", strerror(op->err));
        else if (op->err == EIO) snprintf(buf, n, "I/O error (%s): the device failed", strerror(op->err));
        else if (op->err == ENOENT || op->err == ESTALE || op->err == EBADF || op->err == ENODEV)
            snprintf(buf, n, "the file or its directory vanished (%s)", strerror(op->err));
        else snprintf(buf, n, "%s", strerror(op->err));
    }
    return buf;
}

static void describe(const AioOp *op, char *why, size_t n) {
    char r[200];
    say(why, n, "%s: %s of %zu bytes at offset %llu failed: %s", op->f->path, op->write ? "write" : "read",
        op->bytes, (unsigned long long)op->off, reason_text(op, r, sizeof r));
}

static void fail(AioOp *op, int reason, int err) {
    if (op->reason != AIO_R_NONE) return;   // the first failure speaks
    op->reason = reason;
    op->err = err;
}

static void grow_size(AioFile *f, uint64_t end) {
    uint64_t cur = __atomic_load_n(&f->size, __ATOMIC_RELAXED);
    while (cur < end && !__atomic_compare_exchange_n(&f->size, &cur, end, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

// A read that reached the end of the file: fine when it got every byte up to f->size.
static int read_at_eof(AioOp *op, size_t at, size_t len) {
    if (op->off + at < op->f->size) return 0;
    memset(op->buf + at, 0, len);
    return 1;
}

static void queue_chunk(Aio *a, AioChunk *c) {
    struct io_uring *r = a->ring;
    struct io_uring_sqe *sqe = io_uring_get_sqe(r);
    if (!sqe) {     // the SQ is full of unsubmitted entries: push them, then retry
        io_uring_submit(r);
        sqe = io_uring_get_sqe(r);
    }
    AioOp *op = c->op;
    if (op->write) io_uring_prep_write(sqe, op->f->fd, op->buf + c->at, (unsigned)c->len, op->off + c->at);
    else io_uring_prep_read(sqe, op->f->fd, op->buf + c->at, (unsigned)c->len, op->off + c->at);
    io_uring_sqe_set_data(sqe, c);
}

static void chunk_done(Aio *a, AioChunk *c) {
    c->busy = 0;
    c->op->chunks_left--;
    a->inflight--;
}

// Takes one completion (waiting for it when block) and accounts it.
static int reap_one(Aio *a, int block) {
    struct io_uring *r = a->ring;
    struct io_uring_cqe *cqe = NULL;
    int rc;
    if (block) {
        io_uring_submit(r);
        double t0 = now_s();
        do rc = io_uring_wait_cqe(r, &cqe); while (rc == -EINTR);
        a->wait_s += now_s() - t0;
    } else {
        rc = io_uring_peek_cqe(r, &cqe);
    }
    if (rc < 0 || !cqe) return 0;
    AioChunk *c = io_uring_cqe_get_data(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(r, cqe);
    AioOp *op = c->op;
    if (res < 0) {
        if (res == -EAGAIN || res == -EINTR) {   // transient: resubmit as is
            queue_chunk(a, c);
            return 1;
        }
        fail(op, AIO_R_ERRNO, -res);
        chunk_done(a, c);
        return 1;
    }
    size_t got = (size_t)res;
    if (op->write) a->bytes_written += got;
    else a->bytes_read += got;
    c->at += got;
    c->len -= got;
    if (c->len == 0) {
        chunk_done(a, c);
    } else if (got == 0) {
        if (op->write) fail(op, AIO_R_ZERO, EIO);
        else if (!read_at_eof(op, c->at, c->len)) fail(op, AIO_R_SHORT, EIO);
        chunk_done(a, c);
    } else if (!op->write && read_at_eof(op, c->at, c->len)) {
        chunk_done(a, c);
    } else {
        queue_chunk(a, c);      // a partial transfer: the rest goes again
    }
    return 1;
}

static AioChunk *free_chunk(Aio *a) {
    while (a->inflight >= a->depth) reap_one(a, 1);
    for (int i = 0; i < a->depth; i++)
        if (!a->chunks[i].busy) return &a->chunks[i];
    return NULL;    // not reached: inflight < depth means one is free
}

// The op slot for a new ticket; a transfer not yet waited for in that slot is
// completed and retired first (its error, if any, is kept for aio_wait_all).
static AioOp *new_op(Aio *a) {
    AioOp *op = &a->ops[a->next_ticket % AIO_MAX_OPS];
    if (op->ticket) {
        while (op->chunks_left > 0) reap_one(a, 1);
        if (op->reason != AIO_R_NONE && !a->late_err) {
            a->late_err = 1;
            describe(op, a->late_why, sizeof a->late_why);
        }
    }
    memset(op, 0, sizeof *op);
    op->ticket = a->next_ticket++;
    return op;
}

static void run_sync(Aio *a, AioOp *op) {
    size_t at = 0;
    while (at < op->bytes) {
        ssize_t rc = op->write ? pwrite(op->f->fd, op->buf + at, op->bytes - at, (off_t)(op->off + at))
                               : pread(op->f->fd, op->buf + at, op->bytes - at, (off_t)(op->off + at));
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0) {
            fail(op, AIO_R_ERRNO, errno);
            return;
        }
        if (op->write) a->bytes_written += (uint64_t)rc;
        else a->bytes_read += (uint64_t)rc;
        at += (size_t)rc;
        if (rc == 0 || (!op->write && at < op->bytes && read_at_eof(op, at, op->bytes - at))) {
            if (rc == 0 && op->write) fail(op, AIO_R_ZERO, EIO);
            else if (rc == 0 && !read_at_eof(op, at, op->bytes - at)) fail(op, AIO_R_SHORT, EIO);
            return;
        }
    }
}

static uint64_t submit(Aio *a, AioFile *f, char *buf, size_t bytes, uint64_t off, int write) {
    AioOp *op = new_op(a);
    op->f = f;
    op->write = write;
    op->buf = buf;
    op->bytes = bytes;
    op->off = off;
    if (write) {
        a->nwrite++;
        grow_size(f, off + bytes);
    } else {
        a->nread++;
    }
    if (f->direct && (((uintptr_t)buf | off | bytes) & (f->align - 1))) {
        fail(op, AIO_R_ALIGN, EINVAL);
    } else if (a->fallback) {
        double t0 = now_s();
        run_sync(a, op);
        a->wait_s += now_s() - t0;     // synchronous: all of it is time the caller waits
    } else {
        for (size_t at = 0; at < bytes; at += AIO_CHUNK) {
            AioChunk *c = free_chunk(a);
            *c = (AioChunk){.op = op, .ticket = op->ticket, .at = at, .busy = 1,
                            .len = bytes - at < AIO_CHUNK ? bytes - at : AIO_CHUNK};
            op->chunks_left++;
            a->inflight++;
            queue_chunk(a, c);
        }
        io_uring_submit(a->ring);
    }
    return op->ticket;
}

uint64_t aio_read(Aio *a, AioFile *f, void *buf, size_t bytes, uint64_t off) {
    return submit(a, f, buf, bytes, off, 0);
}

uint64_t aio_write(Aio *a, AioFile *f, const void *buf, size_t bytes, uint64_t off) {
    return submit(a, f, (char *)buf, bytes, off, 1);
}

int aio_done(Aio *a, uint64_t ticket) {
    AioOp *op = &a->ops[ticket % AIO_MAX_OPS];
    if (op->ticket != ticket) return 1;
    if (a->ring) while (reap_one(a, 0)) {}
    return op->chunks_left == 0;
}

int aio_wait(Aio *a, uint64_t ticket, char *why, size_t n) {
    AioOp *op = &a->ops[ticket % AIO_MAX_OPS];
    if (ticket == 0 || ticket >= a->next_ticket) {
        say(why, n, "aio_wait: no such request (ticket %llu)", (unsigned long long)ticket);
        return -1;
    }
    if (op->ticket != ticket) {     // finished and retired earlier
        if (a->late_err) {
            say(why, n, "%s", a->late_why);
            return -1;
        }
        return 0;
    }
    while (op->chunks_left > 0) reap_one(a, 1);
    int bad = op->reason != AIO_R_NONE;
    if (bad) describe(op, why, n);
    op->ticket = 0;
    return bad ? -1 : 0;
}

int aio_wait_all(Aio *a, char *why, size_t n) {
    int bad = 0;
    for (uint64_t t = a->next_ticket > AIO_MAX_OPS ? a->next_ticket - AIO_MAX_OPS : 1; t < a->next_ticket; t++) {
        AioOp *op = &a->ops[t % AIO_MAX_OPS];
        if (op->ticket != t) continue;
        char w[600];
        if (aio_wait(a, t, w, sizeof w) != 0 && !bad) {
            bad = 1;
            say(why, n, "%s", w);
        }
    }
    if (!bad && a->late_err) {
        bad = 1;
        say(why, n, "%s", a->late_why);
    }
    a->late_err = 0;
    return bad ? -1 : 0;
}

void aio_free(Aio *a) {
    if (a->ring) {
        while (a->inflight > 0) reap_one(a, 1);
        io_uring_queue_exit(a->ring);
        free(a->ring);
    }
    free(a->chunks);
    a->ring = NULL;
    a->chunks = NULL;
}
