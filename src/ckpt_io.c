// ckpt_io.c: checkpoint segments by O_DIRECT where they are block-aligned (see ckpt_io.h).
#include "ckpt_io.h"
#include "aio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { NBOUNCE = 4, DEPTH = 16 };
#define BOUNCE_BYTES ((size_t)8 << 20)
#define SYSCALL_CHUNK ((size_t)1 << 28)

static void say(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
}

static int pwrite_all(int fd, const char *p, size_t n, uint64_t at) {
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n < SYSCALL_CHUNK ? n : SYSCALL_CHUNK, (off_t)at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            return -1;
        }
        p += w;
        at += (uint64_t)w;
        n -= (size_t)w;
    }
    return 0;
}

static int pread_all(int fd, char *p, size_t n, uint64_t at) {
    while (n > 0) {
        ssize_t r = pread(fd, p, n < SYSCALL_CHUNK ? n : SYSCALL_CHUNK, (off_t)at);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = ENODATA;    // end of file: truncated
            return -1;
        }
        p += r;
        at += (uint64_t)r;
        n -= (size_t)r;
    }
    return 0;
}

size_t ckpt_io_place(size_t at, uint64_t off) {
    size_t want = (size_t)(off % CKPT_IO_ALIGN), have = at % CKPT_IO_ALIGN;
    return at + (want >= have ? want - have : CKPT_IO_ALIGN - have + want);
}

// One transfer: the direct file (io_uring), a buffered descriptor of the same
// file for the unaligned ends, the bounce buffers and what each one carries.
typedef struct Xfer {
    int write;
    Aio aio;
    AioFile f;
    int bfd;                // buffered descriptor
    size_t block;           // O_DIRECT granule: max(device alignment, page)
    char *bounce;           // (NBOUNCE, BOUNCE_BYTES)
    uint64_t ticket[NBOUNCE];
    char *dst[NBOUNCE];     // reads: where a bounce buffer's bytes go once they arrive
    size_t len[NBOUNCE];
    int next;               // the bounce buffer to use next (round robin)
    CkptIoStats st;
    char *why;
    size_t wn;
} Xfer;

static int xfer_open(Xfer *x, const char *path, int write, char *why, size_t wn) {
    memset(x, 0, sizeof *x);
    x->write = write;
    x->bfd = -1;
    x->f.fd = -1;
    x->why = why;
    x->wn = wn;
    if (aio_init(&x->aio, DEPTH, why, wn) != 0) return -1;
    if (aio_open(&x->f, path, write ? AIO_WRITE : AIO_READ, why, wn) != 0) return -1;
    x->bfd = open(path, (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
    if (x->bfd < 0) {
        say(why, wn, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    long page = sysconf(_SC_PAGESIZE);
    x->block = x->f.align > (size_t)page ? x->f.align : (size_t)(page > 0 ? page : 4096);
    if (x->f.direct) {
        void *p = NULL;     // not aio_buffer: no need to zero what is always overwritten before use
        x->bounce = posix_memalign(&p, x->block, NBOUNCE * BOUNCE_BYTES) == 0 ? p : NULL;
        if (!x->bounce) {
            say(why, wn, "%s: out of memory for %d bounce buffers of %zu MiB", path, NBOUNCE, BOUNCE_BYTES >> 20);
            return -1;
        }
    }
    return 0;
}

// Waits for bounce buffer b's transfer; a read's bytes then go to their place.
static int settle(Xfer *x, int b) {
    if (!x->ticket[b]) return 0;
    uint64_t t = x->ticket[b];
    x->ticket[b] = 0;
    if (aio_wait(&x->aio, t, x->why, x->wn) != 0) return -1;
    if (!x->write) memcpy(x->dst[b], x->bounce + (size_t)b * BOUNCE_BYTES, x->len[b]);
    return 0;
}

static int xfer_close(Xfer *x, int rc) {
    for (int b = 0; b < NBOUNCE; b++)
        if (settle(x, b) != 0) rc = -1;
    char why[600];
    if (aio_wait_all(&x->aio, why, sizeof why) != 0 && rc == 0) {
        say(x->why, x->wn, "%s", why);
        rc = -1;
    }
    if (rc == 0 && x->write && fsync(x->bfd) != 0) {
        say(x->why, x->wn, "%s: fsync failed: %s", x->f.path, strerror(errno));
        rc = -1;
    }
    if (x->bfd >= 0 && close(x->bfd) != 0 && rc == 0) {
        say(x->why, x->wn, "%s: close failed: %s", x->f.path, strerror(errno));
        rc = -1;
    }
    aio_close(&x->f);
    aio_free(&x->aio);
    free(x->bounce);
    return rc;
}

static int buffered(Xfer *x, char *mem, size_t n, uint64_t off) {
    if (n == 0) return 0;
    int rc = x->write ? pwrite_all(x->bfd, mem, n, off) : pread_all(x->bfd, mem, n, off);
    if (rc != 0) {
        say(x->why, x->wn, "%s: %s of %zu bytes at %llu failed: %s", x->f.path, x->write ? "write" : "read", n,
            (unsigned long long)off, errno == ENODATA ? "short read (the file is truncated)" : strerror(errno));
        return -1;
    }
    x->st.buffered_bytes += n;
    return 0;
}

// The aligned interior [off, off + n) of a segment: block-aligned offset and size.
static int direct(Xfer *x, char *mem, size_t n, uint64_t off) {
    x->st.direct_bytes += n;
    if ((uintptr_t)mem % x->block == 0) {      // in place: the memory stays put until xfer_close
        if (x->write) aio_write(&x->aio, &x->f, mem, n, off);
        else aio_read(&x->aio, &x->f, mem, n, off);
        return 0;
    }
    x->st.bounced_bytes += n;
    for (size_t at = 0; at < n;) {
        int b = x->next;
        x->next = (x->next + 1) % NBOUNCE;
        if (settle(x, b) != 0) return -1;
        size_t len = n - at < BOUNCE_BYTES ? n - at : BOUNCE_BYTES;
        char *buf = x->bounce + (size_t)b * BOUNCE_BYTES;
        x->dst[b] = mem + at;
        x->len[b] = len;
        if (x->write) {
            memcpy(buf, mem + at, len);
            x->ticket[b] = aio_write(&x->aio, &x->f, buf, len, off + at);
        } else {
            x->ticket[b] = aio_read(&x->aio, &x->f, buf, len, off + at);
        }
        at += len;
    }
    return 0;
}

static int segment(Xfer *x, const CkptSeg *s) {
    uint64_t end = s->off + s->bytes;
    if (!x->f.direct) return buffered(x, s->mem, s->bytes, s->off);
    uint64_t a0 = aio_align_up(s->off, x->block), a1 = aio_align_down(end, x->block);
    if (a1 <= a0) return buffered(x, s->mem, s->bytes, s->off);
    if (buffered(x, s->mem, (size_t)(a0 - s->off), s->off) != 0) return -1;
    if (buffered(x, s->mem + (a1 - s->off), (size_t)(end - a1), a1) != 0) return -1;
    return direct(x, s->mem + (a0 - s->off), (size_t)(a1 - a0), a0);
}

struct CkptIo {
    Xfer x;
    uint64_t size;          // reads: the file's size at open (segments past it are a short read)
};

CkptIo *ckpt_io_open(const char *path, int write, char *why, size_t wn) {
    CkptIo *io = calloc(1, sizeof *io);
    if (!io) {
        say(why, wn, "%s: out of memory for a transfer", path);
        return NULL;
    }
    if (xfer_open(&io->x, path, write, why, wn) != 0) {
        xfer_close(&io->x, -1);
        free(io);
        return NULL;
    }
    struct stat st;
    if (!write) {   // aio zero-fills reads past the end: a truncated file must fail in ckpt_io_queue instead
        if (fstat(io->x.bfd, &st) != 0) {
            say(why, wn, "%s: cannot stat: %s", path, strerror(errno));
            xfer_close(&io->x, -1);
            free(io);
            return NULL;
        }
        io->size = (uint64_t)st.st_size;
    }
    return io;
}

int ckpt_io_queue(CkptIo *io, const CkptSeg *segs, int n, uint64_t *mark) {
    Xfer *x = &io->x;
    if (!x->write)
        for (int i = 0; i < n; i++)     // (offsets come from the file: no overflow on the way)
            if (segs[i].off > io->size || segs[i].bytes > io->size - segs[i].off) {
                say(x->why, x->wn, "%s: short read: %zu bytes at %llu run past the end of the file (%llu bytes; truncated)",
                    x->f.path, segs[i].bytes, (unsigned long long)segs[i].off, (unsigned long long)io->size);
                return -1;
            }
    for (int i = 0; i < n; i++)
        if (segment(x, &segs[i]) != 0) return -1;
    if (mark) *mark = x->aio.next_ticket;
    return 0;
}

// Every ticket below mark: the bounce buffers' (whose bytes then go to their
// place) and the in-place requests' (live ones only: retired ones are done).
int ckpt_io_wait(CkptIo *io, uint64_t mark) {
    Xfer *x = &io->x;
    for (int b = 0; b < NBOUNCE; b++)
        if (x->ticket[b] && x->ticket[b] < mark && settle(x, b) != 0) return -1;
    for (uint64_t t = mark > AIO_MAX_OPS ? mark - AIO_MAX_OPS : 1; t < mark; t++)
        if (x->aio.ops[t % AIO_MAX_OPS].ticket == t && aio_wait(&x->aio, t, x->why, x->wn) != 0) return -1;
    return 0;
}

int ckpt_io_close(CkptIo *io, int rc, CkptIoStats *stats) {
    if (!io) return -1;
    rc = xfer_close(&io->x, rc);
    if (stats) *stats = io->x.st;
    free(io);
    return rc;
}

static int run(const char *path, int write, const CkptSeg *segs, int n, CkptIoStats *stats, char *why, size_t wn) {
    CkptIo *io = ckpt_io_open(path, write, why, wn);
    if (!io) return -1;
    return ckpt_io_close(io, ckpt_io_queue(io, segs, n, NULL), stats);
}

int ckpt_io_write(const char *path, const CkptSeg *segs, int n, CkptIoStats *stats, char *why, size_t wn) {
    return run(path, 1, segs, n, stats, why, wn);
}

int ckpt_io_read(const char *path, const CkptSeg *segs, int n, CkptIoStats *stats, char *why, size_t wn) {
    return run(path, 0, segs, n, stats, why, wn);
}
