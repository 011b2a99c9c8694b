// test_aio.c: the I/O engine (src/aio.c): round trips at several queue depths,
// on io_uring and on the pread/pwrite fallback; the alignment contract; reads
// of a file's tail; short reads; a full disk (a tiny tmpfs where mount works)
// and a file size limit (RLIMIT_FSIZE) turning into clear errors. Checkpoint
// segments (src/ckpt_io.c): unaligned ends, bounced and in-place interiors,
// neighbours sharing a block, the bytes around them untouched, a truncated file
// refused, on O_DIRECT, on the fallback and on tmpfs (no O_DIRECT).
//   build/test_aio [dir]     (dir: where scratch files go; default $TMPDIR or /tmp)
#include "aio.h"
#include "ckpt_io.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL: "); printf(__VA_ARGS__); printf("\n"); } } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void fill_random(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(next_u64() >> 32);
}

// Writes random data in pieces (some larger than a chunk) and reads it back in other pieces.
static void round_trip(const char *dir, int depth, int sync) {
    char path[600], why[700];
    snprintf(path, sizeof path, "%s/rt-%d-%d.bin", dir, depth, sync);
    if (sync) setenv("PARTITA_AIO", "sync", 1);
    else unsetenv("PARTITA_AIO");
    Aio a;
    CHECK(aio_init(&a, depth, why, sizeof why) == 0, "aio_init: %s", why);
    AioFile f;
    CHECK(aio_open(&f, path, AIO_READ | AIO_WRITE | AIO_CREATE | AIO_TRUNC, why, sizeof why) == 0, "open: %s", why);
    size_t al = f.align, total = 5 * AIO_CHUNK + 7 * al;
    unsigned char *src = aio_buffer(total, al), *dst = aio_buffer(total, al);
    fill_random(src, total);
    size_t cuts[] = {0, al, 3 * al, AIO_CHUNK + 3 * al, 4 * AIO_CHUNK + 5 * al, total};
    for (int k = 0; k + 1 < 6; k++) aio_write(&a, &f, src + cuts[k], cuts[k + 1] - cuts[k], cuts[k]);
    int rc = aio_wait_all(&a, why, sizeof why);
    CHECK(rc == 0, "writes: %s", why);
    uint64_t t[8];
    size_t rcuts[] = {0, 2 * AIO_CHUNK + al, 2 * AIO_CHUNK + 2 * al, total};
    for (int k = 0; k + 1 < 4; k++) t[k] = aio_read(&a, &f, dst + rcuts[k], rcuts[k + 1] - rcuts[k], rcuts[k]);
    for (int k = 2; k >= 0; k--) {
        rc = aio_wait(&a, t[k], why, sizeof why);
        CHECK(rc == 0, "read %d: %s", k, why);
    }
    int same = memcmp(src, dst, total) == 0;
    CHECK(same, "depth %d %s: data read back differs", depth, sync ? "sync" : "io_uring");
    CHECK(a.bytes_written == total && a.bytes_read == total, "counters: wrote %llu read %llu, expected %zu",
          (unsigned long long)a.bytes_written, (unsigned long long)a.bytes_read, total);
    printf("round trip depth %2d (%s, %s, align %zu): %zu bytes, identical %d, blocked %.4f s\n", depth,
           a.fallback ? "pread/pwrite" : "io_uring", f.direct ? "O_DIRECT" : "buffered", al, total, same, a.wait_s);
    aio_close(&f);
    aio_free(&a);
    aio_buffer_free(src);
    aio_buffer_free(dst);
    unlink(path);
    unsetenv("PARTITA_AIO");
}

// Unaligned requests on an O_DIRECT file are refused; a padded read of the tail is fine.
static void alignment_and_tail(const char *dir) {
    char path[600], why[700];
    snprintf(path, sizeof path, "%s/tail.bin", dir);
    FILE *fp = fopen(path, "wb");
    unsigned char data[5000];
    fill_random(data, sizeof data);
    fwrite(data, 1, sizeof data, fp);
    fclose(fp);
    Aio a;
    aio_init(&a, 4, why, sizeof why);
    AioFile f;
    CHECK(aio_open(&f, path, AIO_READ, why, sizeof why) == 0, "open: %s", why);
    size_t al = f.align;
    unsigned char *buf = aio_buffer(aio_align_up(sizeof data, al), al);
    memset(buf, 0xAB, aio_align_up(sizeof data, al));
    uint64_t t = aio_read(&a, &f, buf, aio_align_up(sizeof data, al), 0);
    int rc = aio_wait(&a, t, why, sizeof why);
    int ok = rc == 0 && memcmp(buf, data, sizeof data) == 0;
    for (size_t i = sizeof data; i < aio_align_up(sizeof data, al); i++) ok = ok && buf[i] == 0;
    CHECK(ok, "tail read: rc %d (%s)", rc, rc ? why : "data or zero fill wrong");
    printf("tail read of a %zu-byte file with a %llu-byte request: ok %d\n", sizeof data,
           (unsigned long long)aio_align_up(sizeof data, al), ok);
    if (f.direct) {
        t = aio_read(&a, &f, buf, 1000, 0);
        rc = aio_wait(&a, t, why, sizeof why);
        CHECK(rc == -1 && strstr(why, "not aligned") && strstr(why, path), "unaligned size: rc %d: %s", rc, why);
        printf("unaligned 1000-byte read on O_DIRECT: refused: %s\n", why);
        t = aio_read(&a, &f, buf + 8, al, 0);
        rc = aio_wait(&a, t, why, sizeof why);
        CHECK(rc == -1 && strstr(why, "not aligned"), "unaligned buffer accepted: %s", why);
    } else {
        printf("(%s is not on an O_DIRECT file system: the alignment contract is not exercised)\n", dir);
    }
    // The file shrinks behind our back: a read inside the old size is short.
    CHECK(truncate(path, 1000) == 0, "truncate");
    t = aio_read(&a, &f, buf, aio_align_up(sizeof data, al), 0);
    rc = aio_wait(&a, t, why, sizeof why);
    CHECK(rc == -1 && strstr(why, "short read") && strstr(why, path), "short read not reported: rc %d %s", rc, why);
    printf("file truncated under the reader: %s\n", why);
    aio_close(&f);
    aio_free(&a);
    aio_buffer_free(buf);
    unlink(path);
}

// Writes 4 MiB into path; returns aio_wait_all's result with the reason in why.
static int write_big(const char *path, char *why, size_t n) {
    Aio a;
    aio_init(&a, 8, why, n);
    AioFile f;
    if (aio_open(&f, path, AIO_WRITE | AIO_CREATE | AIO_TRUNC, why, n) != 0) return -1;
    size_t bytes = 4 << 20;
    void *buf = aio_buffer(bytes, f.align);
    for (int k = 0; k < 4; k++) aio_write(&a, &f, (char *)buf + k * (bytes / 4), bytes / 4, (uint64_t)k * (bytes / 4));
    int rc = aio_wait_all(&a, why, n);
    aio_close(&f);
    aio_free(&a);
    aio_buffer_free(buf);
    return rc;
}

static void disk_full(const char *dir) {
    char mnt[640], path[700], why[800];
    snprintf(mnt, sizeof mnt, "%s/tiny-tmpfs", dir);
    mkdir(mnt, 0755);
    if (mount("none", mnt, "tmpfs", 0, "size=256k") == 0) {
        snprintf(path, sizeof path, "%s/full.bin", mnt);
        int rc = write_big(path, why, sizeof why);
        CHECK(rc == -1 && strstr(why, "disk full") && strstr(why, path), "ENOSPC not reported: rc %d %s", rc, why);
        printf("4 MiB into a 256 KiB tmpfs: %s\n", why);
        umount(mnt);
    } else {
        printf("(mount of a tmpfs not permitted here: %s; the size-limit case stands in)\n", strerror(errno));
    }
    rmdir(mnt);
    // A file size limit (ulimit -f) of 1 MiB, in a child so the limit stays there.
    snprintf(path, sizeof path, "%s/limited.bin", dir);
    int pipefd[2];
    CHECK(pipe(pipefd) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {1 << 20, 1 << 20};
        setrlimit(RLIMIT_FSIZE, &rl);
        int rc = write_big(path, why, sizeof why);
        dprintf(pipefd[1], "%d %s", rc, why);
        _exit(0);
    }
    close(pipefd[1]);
    char msg[900] = {0};
    ssize_t got = read(pipefd[0], msg, sizeof msg - 1);
    (void)got;
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(strncmp(msg, "-1 ", 3) == 0 && strstr(msg, "file too large") && strstr(msg, path),
          "size limit not reported: %s", msg);
    printf("4 MiB under a 1 MiB file size limit: %s\n", msg + 3);
    unlink(path);
}

// A file of background bytes (another rank's data, HDF5's metadata) with
// segments written into it, read back, and every byte compared.
#define SEG_FILE ((size_t)40 << 20)
#define BACKGROUND 0xAB

// Whether dir's file system takes O_DIRECT (as aio_open finds).
static int takes_direct(const char *dir) {
    char probe[700], why[700];
    snprintf(probe, sizeof probe, "%s/probe", dir);
    AioFile pf;
    int direct = aio_open(&pf, probe, AIO_WRITE | AIO_CREATE, why, sizeof why) == 0 && pf.direct;
    aio_close(&pf);
    unlink(probe);
    return direct;
}

static void ckpt_segments(const char *dir, const char *label) {
    char path[600], why[700];
    int expect_direct = takes_direct(dir);
    snprintf(path, sizeof path, "%s/segs-%s.bin", dir, label);
    unsigned char *file = malloc(SEG_FILE);
    memset(file, BACKGROUND, SEG_FILE);
    FILE *fp = fopen(path, "wb");
    CHECK(fp && fwrite(file, 1, SEG_FILE, fp) == SEG_FILE && fclose(fp) == 0, "%s: cannot create %s", label, path);
    size_t src_n = (size_t)24 << 20;
    unsigned char *src = malloc(src_n);
    fill_random(src, src_n);
    unsigned char *aligned = aio_buffer((size_t)6 << 20, CKPT_IO_ALIGN);  // in place: memory and file aligned
    fill_random(aligned, (size_t)6 << 20);
    unsigned char *snap = aio_buffer((size_t)4 << 20, CKPT_IO_ALIGN);     // placed as async snapshots are
    size_t at = ckpt_io_place(7, (24u << 20) + 1000);
    CHECK(at % CKPT_IO_ALIGN == 1000, "%s: ckpt_io_place gave %zu", label, at);
    fill_random(snap + at, (size_t)2 << 20);
    CkptSeg segs[] = {
        {100, (char *)src + 1, 300},                                          // inside one block
        {(3u << 12) + 17, (char *)src + 1000, ((size_t)9 << 20) + 333},       // unaligned: bounced interior
        {16u << 20, (char *)aligned, (size_t)5 << 20},                       // aligned: in place
        {(24u << 20) + 1000, (char *)snap + at, (size_t)2 << 20},            // placed: in place
        {(30u << 20) + 10, (char *)src + (11u << 20), 70001},                // two ranks' parts meeting
        {(30u << 20) + 10 + 70001, (char *)src + (12u << 20), (size_t)3 << 20},  //   inside a block
    };
    int n = (int)(sizeof segs / sizeof segs[0]);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        memcpy(file + segs[i].off, segs[i].mem, segs[i].bytes);
        total += segs[i].bytes;
    }
    CkptIoStats st;
    CHECK(ckpt_io_write(path, segs, n, &st, why, sizeof why) == 0, "%s: ckpt_io_write: %s", label, why);
    CHECK(st.direct_bytes + st.buffered_bytes == total, "%s: %llu + %llu bytes moved, not %llu", label,
          (unsigned long long)st.direct_bytes, (unsigned long long)st.buffered_bytes, (unsigned long long)total);
    CHECK(expect_direct ? st.direct_bytes > total * 9 / 10 && st.bounced_bytes < st.direct_bytes : st.direct_bytes == 0,
          "%s: %llu bytes by O_DIRECT (%llu bounced) of %llu", label, (unsigned long long)st.direct_bytes,
          (unsigned long long)st.bounced_bytes, (unsigned long long)total);
    unsigned char *back = malloc(SEG_FILE);
    fp = fopen(path, "rb");
    CHECK(fp && fread(back, 1, SEG_FILE, fp) == SEG_FILE, "%s: cannot read %s back", label, path);
    if (fp) fclose(fp);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < SEG_FILE; i++)
        if (back[i] != file[i] && bad++ == 0) first = i;
    CHECK(bad == 0, "%s: %zu bytes differ from what the segments and the background make (first at %zu)", label, bad,
          first);
    // Read back into other (unaligned) memory.
    unsigned char *dst = malloc(src_n + 64);
    CkptSeg rsegs[6];
    size_t off = 3;
    for (int i = 0; i < n; i++) {
        rsegs[i] = segs[i];
        rsegs[i].mem = (char *)dst + off;
        off += segs[i].bytes + 5;
    }
    memset(dst, 0, src_n + 64);
    CHECK(ckpt_io_read(path, rsegs, n, &st, why, sizeof why) == 0, "%s: ckpt_io_read: %s", label, why);
    for (int i = 0; i < n; i++)
        CHECK(memcmp(rsegs[i].mem, segs[i].mem, segs[i].bytes) == 0, "%s: segment %d reads back different", label, i);
    // The same in batches through one open transfer, as a load reads: batch
    // k + 1 queued before batch k is waited for; after its wait batch k is
    // whole while k + 1 may still be on the way.
    memset(dst, 0, src_n + 64);
    CkptIo *io = ckpt_io_open(path, 0, why, sizeof why);
    CHECK(io != NULL, "%s: ckpt_io_open: %s", label, why);
    if (io) {
        int cut[] = {0, 2, 3, 6};
        uint64_t mark[3] = {0};
        CHECK(ckpt_io_queue(io, rsegs, cut[1], &mark[0]) == 0, "%s: queue batch 0: %s", label, why);
        for (int k = 0; k < 3; k++) {
            if (k + 1 < 3)
                CHECK(ckpt_io_queue(io, rsegs + cut[k + 1], cut[k + 2] - cut[k + 1], &mark[k + 1]) == 0,
                      "%s: queue batch %d: %s", label, k + 1, why);
            CHECK(ckpt_io_wait(io, mark[k]) == 0, "%s: wait for batch %d: %s", label, k, why);
            for (int i = cut[k]; i < cut[k + 1]; i++)
                CHECK(memcmp(rsegs[i].mem, segs[i].mem, segs[i].bytes) == 0,
                      "%s: batch %d: segment %d not whole after its wait", label, k, i);
        }
        CHECK(ckpt_io_close(io, 0, NULL) == 0, "%s: ckpt_io_close: %s", label, why);
    }
    // A truncated file: the last segments are missing.
    CHECK(truncate(path, (30 << 20) + 500) == 0, "%s: truncate: %s", label, strerror(errno));
    CHECK(ckpt_io_read(path, rsegs, n, NULL, why, sizeof why) != 0 && strstr(why, "short read"),
          "%s: a truncated file read without the short-read error (%s)", label, why);
    unlink(path);
    free(file);
    free(src);
    free(back);
    free(dst);
    aio_buffer_free(aligned);
    aio_buffer_free(snap);
}

int main(int argc, char **argv) {
    const char *base = argc > 1 ? argv[1] : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    char dir[600];
    snprintf(dir, sizeof dir, "%s/test_aio.XXXXXX", base);
    if (!mkdtemp(dir)) {
        printf("FAIL: mkdtemp %s: %s\n", dir, strerror(errno));
        return 1;
    }
    int depths[] = {1, 4, 16};
    for (int k = 0; k < 3; k++) round_trip(dir, depths[k], 0);
    round_trip(dir, 4, 1);
    alignment_and_tail(dir);
    disk_full(dir);
    // O_DIRECT where the file system takes it (aio_open says), else all buffered.
    unsetenv("PARTITA_AIO");
    ckpt_segments(dir, "uring");
    setenv("PARTITA_AIO", "sync", 1);
    ckpt_segments(dir, "fallback");
    setenv("PARTITA_AIO", "buffered", 1);
    ckpt_segments(dir, "buffered");
    unsetenv("PARTITA_AIO");
    char shm[] = "/dev/shm/test_aio.XXXXXX";
    if (mkdtemp(shm)) {     // tmpfs: O_DIRECT since Linux 6.6, buffered before
        ckpt_segments(shm, "tmpfs");
        rmdir(shm);
    }
    rmdir(dir);
    if (failures) {
        printf("FAIL: %d checks failed\n", failures);
        return 1;
    }
    printf("ok: aio round trips, alignment, tail and short reads, full disk and size limit; checkpoint segments\n");
    return 0;
}
