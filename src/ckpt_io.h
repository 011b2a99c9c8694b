// ckpt_io.h: a rank's share of a checkpoint to and from disk at the disk's speed.
//
// A checkpoint rank moves a list of segments, each a run of bytes in memory and
// its place in the file (a tensor's part of a dataset's raw data). Through the
// page cache (pwrite, then fsync) a 124M checkpoint wrote at half of what the
// same disk takes by O_DIRECT, and a write + fsync ran at 40-60% of `dd`'s.
// So the block-aligned interior of every segment moves by O_DIRECT through the
// I/O engine (aio.h: io_uring, several requests in flight): straight from the
// caller's memory where it sits at the same offset within a block as its file
// position does (the state buffers do, model.h; ckpt_io_place lays out an async
// snapshot so that every segment does), else through a few aligned bounce
// buffers, copied while earlier ones are on the way. The unaligned head and
// tail of a segment (less than a block each: bytes that share a block with
// another dataset, another rank's part or HDF5's metadata, which O_DIRECT would
// overwrite) go by pwrite/pread, as does everything where the file system
// refuses O_DIRECT. A write ends with fsync.
//
// The block is the larger of the device's direct-I/O alignment and the page
// size, so that no page holds both bytes written through the page cache and
// bytes written around it.
#ifndef PARTITA_CKPT_IO_H
#define PARTITA_CKPT_IO_H

#include <stddef.h>
#include <stdint.h>

typedef struct CkptSeg {
    uint64_t off;           // file offset
    char *mem;              // the bytes (the destination of a read)
    size_t bytes;
} CkptSeg;

typedef struct CkptIoStats {
    uint64_t direct_bytes;  // moved by O_DIRECT
    uint64_t bounced_bytes; //   ... of which through a bounce buffer
    uint64_t buffered_bytes;// moved through the page cache
} CkptIoStats;

// The alignment a snapshot must respect for ckpt_io_place (a power of two).
#define CKPT_IO_ALIGN ((size_t)1 << 16)

// Writes segs[0..n) into the existing file path, then fsyncs it. 0, or -1 with
// the reason (naming the file) in why. stats may be NULL.
int ckpt_io_write(const char *path, const CkptSeg *segs, int n, CkptIoStats *stats, char *why, size_t wn);
// Reads segs[0..n) from path. 0, or -1 with the reason in why (a file shorter
// than a segment's end is a short read).
int ckpt_io_read(const char *path, const CkptSeg *segs, int n, CkptIoStats *stats, char *why, size_t wn);
// A transfer kept open across several batches of segments (a load reads in
// batches, each checksummed while the next arrives): one ring, one set of
// bounce buffers, and requests in flight across batch boundaries.
typedef struct CkptIo CkptIo;
// NULL with the reason in why (kept by the transfer for its later failures too).
CkptIo *ckpt_io_open(const char *path, int write, char *why, size_t wn);
// Queues segs[0..n) (they may start moving at once; buffered ends move now);
// *mark (may be NULL) is what ckpt_io_wait takes to wait for exactly these and
// earlier ones. 0, or -1 with the reason in the open's why.
int ckpt_io_queue(CkptIo *io, const CkptSeg *segs, int n, uint64_t *mark);
// Returns once every segment queued before mark was taken has arrived. 0 or -1.
int ckpt_io_wait(CkptIo *io, uint64_t mark);
// Waits for the rest, fsyncs a write, frees io. rc: the caller's outcome so far
// (non-zero is kept); returns the final one. stats may be NULL.
int ckpt_io_close(CkptIo *io, int rc, CkptIoStats *stats);
// Where to put a segment of file offset off in a snapshot buffer aligned to
// CKPT_IO_ALIGN whose first `at` bytes are used: the smallest position >= at
// with the same offset within a block as off (so the write needs no bounce).
size_t ckpt_io_place(size_t at, uint64_t off);

#endif
