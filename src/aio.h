// aio.h: the one asynchronous file I/O engine (offload, ZeRO-Inference, checkpoints).
//
// io_uring (liburing) with O_DIRECT files and buffers aligned to the device's
// logical block, several requests in flight. One Aio (one ring) per thread that
// uses it; an AioFile may be shared by several Aio.
//
// Requests: aio_read / aio_write queue a transfer and return a ticket (> 0);
// a transfer larger than AIO_CHUNK is split into chunks that run in parallel;
// the call blocks only while the ring is full. aio_wait(ticket) blocks until
// that transfer is complete and reports its outcome; aio_wait_all drains all.
//
// Alignment (documented contract): on a file opened with O_DIRECT (f->direct),
// the buffer address, the offset and the byte count must be multiples of
// f->align; a request that is not is refused: its aio_wait fails with
// "not aligned" (nothing is transferred). aio_align_up rounds a size up. A
// read that runs past the end of the file (f->size) is not an error as long as
// every byte up to the end arrived: the rest of the buffer is zero-filled (so
// the tail of a file can be read with an aligned, padded request). A read that
// stops short of f->size is an error ("short read").
//
// Where io_uring_queue_init fails (a container whose seccomp policy forbids
// io_uring), aio_init falls back to synchronous pread/pwrite, prints a one-line
// warning and sets a->fallback; the interface is unchanged. The environment
// variable PARTITA_AIO=sync forces the fallback, PARTITA_AIO=buffered opens
// every file without O_DIRECT (for tests and comparisons).
#ifndef PARTITA_AIO_H
#define PARTITA_AIO_H

#include <stddef.h>
#include <stdint.h>

enum { AIO_READ = 1, AIO_WRITE = 2, AIO_CREATE = 4, AIO_TRUNC = 8, AIO_BUFFERED = 16 };

// Largest piece one submission moves; bigger requests are split.
#define AIO_CHUNK ((size_t)1 << 20)
// Most tickets not yet waited for (older ones are retired as new ones come).
#define AIO_MAX_OPS 1024

typedef struct AioFile {
    int fd;
    int direct;             // 1: opened with O_DIRECT; 0: buffered (the file system refused it)
    size_t align;           // offset/size/buffer alignment O_DIRECT needs (4096 where unknown)
    uint64_t size;          // bytes: at open, grown by writes through the engine
    char path[512];
} AioFile;

typedef struct AioOp {          // one queued transfer (a ticket)
    uint64_t ticket;            // 0: slot free
    AioFile *f;
    int write;
    char *buf;
    size_t bytes;
    uint64_t off;
    int chunks_left;            // submitted chunks not yet complete
    int err;                    // first errno met (0: fine); EFAULT-like internal codes below
    int reason;                 // AIO_R_*: what kind of failure
} AioOp;

typedef struct AioChunk {       // one submission in flight
    AioOp *op;
    uint64_t ticket;
    size_t at, len;             // offset inside the op and length still to move
    int busy;
} AioChunk;

typedef struct Aio {
    void *ring;                 // struct io_uring * (NULL in fallback)
    int fallback;               // 1: synchronous pread/pwrite
    int depth;                  // queue depth (chunks in flight at most)
    int inflight;
    uint64_t next_ticket;
    AioOp ops[AIO_MAX_OPS];
    AioChunk *chunks;           // (depth)
    int late_err;               // an error of a ticket retired without a wait
    char late_why[600];
    // counters
    uint64_t bytes_read, bytes_written;
    uint64_t nread, nwrite;
    double wait_s;              // seconds blocked: in aio_wait*, and submitting into a full ring
} Aio;

int aio_init(Aio *a, int queue_depth, char *why, size_t n);
void aio_free(Aio *a);

// mode: AIO_READ and/or AIO_WRITE, optionally AIO_CREATE, AIO_TRUNC, AIO_BUFFERED
// (no O_DIRECT). O_DIRECT where the file system takes it, else buffered
// (f->direct = 0). Returns 0, or -1 with the reason (naming the file) in why.
int aio_open(AioFile *f, const char *path, int mode, char *why, size_t n);
void aio_close(AioFile *f);

// Aligned, zeroed memory (align a power of two, at least sizeof(void *)); NULL on failure.
void *aio_buffer(size_t bytes, size_t align);
void aio_buffer_free(void *p);
static inline uint64_t aio_align_up(uint64_t x, size_t a) { return (x + a - 1) / a * a; }
static inline uint64_t aio_align_down(uint64_t x, size_t a) { return x / a * a; }

uint64_t aio_read(Aio *a, AioFile *f, void *buf, size_t bytes, uint64_t off);
uint64_t aio_write(Aio *a, AioFile *f, const void *buf, size_t bytes, uint64_t off);
// 0, or -1 with the reason (short read, disk full, I/O error, file gone...) naming the file.
int aio_wait(Aio *a, uint64_t ticket, char *why, size_t n);
int aio_wait_all(Aio *a, char *why, size_t n);
// 1 when the ticket's transfer has finished (successfully or not); never blocks.
int aio_done(Aio *a, uint64_t ticket);

#endif
