// prep.c: tokenizes text files into /tokens of an HDF5 file, in parallel over
// the ranks of the job with the same output whatever their number.
//
// Rank 0 lists the documents (files in name order; a .jsonl file holds one
// document per line, its "text" member) and every rank gets the list. The
// bytes of all files are cut into one contiguous range per rank; a cut inside
// a file moves forward to the next point where GPT-2's pre-tokenisation
// restarts whatever came before (split_ok: after a newline that follows a
// printable ASCII character and precedes one; in a .jsonl file, after any
// newline), so each rank's tokens are exactly the tokens of its range in a
// serial run. Rank 0 writes the file: its own tokens, then each other rank's,
// received in bounded chunks.
#include "prep.h"
#include "deck.h"
#include "h5io.h"
#include "json.h"
#include "log.h"
#include "tokenizer.h"

#include <dirent.h>
#include <errno.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

enum { PREP_MAX_FILES = 1 << 24, PREP_MAX_JSONL_LINE = 64 << 20, PREP_CHUNK = 1 << 24 };
#define PREP_MAX_PATH 4096

typedef struct FileList {
    char **path;
    uint64_t *size;
    size_t n, cap;
} FileList;

typedef struct Tokens {
    uint32_t *tok;
    size_t n, cap;
    uint64_t docs;
} Tokens;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int is_jsonl(const char *path) {
    size_t n = strlen(path);
    return n > 6 && strcmp(path + n - 6, ".jsonl") == 0;
}

// ---------------------------------------------------------------------------
// Listing (rank 0)

static void list_add(FileList *fl, const char *path, uint64_t size) {
    SYS_CHECK(fl->n < PREP_MAX_FILES, "more than %d input files", PREP_MAX_FILES);
    if (fl->n == fl->cap) {
        fl->cap = fl->cap ? 2 * fl->cap : 64;
        fl->path = realloc(fl->path, fl->cap * sizeof *fl->path);
        fl->size = realloc(fl->size, fl->cap * sizeof *fl->size);
        SYS_CHECK(fl->path && fl->size, "out of memory listing files");
    }
    fl->path[fl->n] = strdup(path);
    SYS_CHECK(fl->path[fl->n], "out of memory listing files");
    fl->size[fl->n++] = size;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void list_path(FileList *fl, const char *path, int depth) {
    struct stat st;
    SYS_CHECK(stat(path, &st) == 0, "cannot read '%s': %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if (S_ISREG(st.st_mode)) list_add(fl, path, (uint64_t)st.st_size);
        return;
    }
    SYS_CHECK(depth < 64, "'%s': directories nested more than 64 deep", path);
    DIR *d = opendir(path);
    SYS_CHECK(d, "cannot list '%s': %s", path, strerror(errno));
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)); ) {
        if (e->d_name[0] == '.') continue;
        names = realloc(names, (n + 1) * sizeof *names);
        SYS_CHECK(names, "out of memory listing '%s'", path);
        names[n] = strdup(e->d_name);
        SYS_CHECK(names[n], "out of memory listing '%s'", path);
        n++;
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_str);   // name order: the same tokens on every machine
    for (size_t i = 0; i < n; i++) {
        char child[PREP_MAX_PATH];
        SYS_CHECK((size_t)snprintf(child, sizeof child, "%s/%s", path, names[i]) < sizeof child,
                  "a path under '%s' is longer than %d bytes", path, PREP_MAX_PATH - 1);
        list_path(fl, child, depth + 1);
        free(names[i]);
    }
    free(names);
}

// `-`: rank 0 copies standard input to tmp (beside the output, where every rank
// can read it), with a progress line every 2 s. The copy is bounded by the disk.
static void copy_stdin(const char *tmp) {
    FILE *out = fopen(tmp, "wb");
    SYS_CHECK(out, "cannot write '%s' (standard input is copied there first): %s", tmp, strerror(errno));
    static char buf[1 << 16];   // rank 0's one copy buffer, used once
    uint64_t total = 0;
    double t0 = now(), last = t0;
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, stdin)) > 0) {
        SYS_CHECK(fwrite(buf, 1, got, out) == got, "cannot write '%s': %s", tmp, strerror(errno));
        total += got;
        if (now() - last >= 2.0) {
            last = now();
            log_info("prep: reading standard input: %.1f MB, %.1f MB/s\n", (double)total / 1e6,
                     (double)total / 1e6 / (last - t0));
        }
    }
    SYS_CHECK(!ferror(stdin), "cannot read standard input: %s", strerror(errno));
    SYS_CHECK(fclose(out) == 0, "cannot write '%s': %s", tmp, strerror(errno));
    log_info("prep: standard input: %.1f MB\n", (double)total / 1e6);
}

// Rank 0 lists, every rank receives: paths as one buffer of NUL-terminated strings.
static void share_list(FileList *fl, int rank) {
    uint64_t hdr[2] = {fl->n, 0};
    if (rank == 0)
        for (size_t i = 0; i < fl->n; i++) hdr[1] += strlen(fl->path[i]) + 1;
    MPI_CHECK(MPI_Bcast(hdr, 2, MPI_UINT64_T, 0, MPI_COMM_WORLD));
    SYS_CHECK(hdr[1] < ((uint64_t)1 << 31), "the list of input paths is too long (%llu bytes)", (unsigned long long)hdr[1]);
    char *buf = xmalloc(hdr[1] + 1, "paths");
    if (rank == 0) {
        size_t k = 0;
        for (size_t i = 0; i < fl->n; i++) {
            size_t l = strlen(fl->path[i]) + 1;
            memcpy(buf + k, fl->path[i], l);
            k += l;
        }
    } else {
        fl->n = fl->cap = hdr[0];
        fl->path = xmalloc(fl->n * sizeof *fl->path + 1, "paths");
        fl->size = xmalloc(fl->n * sizeof *fl->size + 1, "sizes");
    }
    MPI_CHECK(MPI_Bcast(buf, (int)hdr[1], MPI_CHAR, 0, MPI_COMM_WORLD));
    MPI_CHECK(MPI_Bcast(fl->size, (int)fl->n, MPI_UINT64_T, 0, MPI_COMM_WORLD));
    if (rank != 0) {
        size_t k = 0;
        for (size_t i = 0; i < fl->n; i++) {
            fl->path[i] = strdup(buf + k);
            SYS_CHECK(fl->path[i], "out of memory");
            k += strlen(buf + k) + 1;
        }
    }
    free(buf);
}

// ---------------------------------------------------------------------------
// Cutting the bytes into per-rank ranges

static int printable(uint8_t c) { return c > 0x20 && c < 0x7F; }

// A cut before byte p (0 < p < n) leaves the tokens of both sides unchanged.
static int split_ok(const uint8_t *s, size_t n, size_t p, int jsonl) {
    if (s[p - 1] != '\n') return 0;
    return jsonl || (p >= 2 && p < n && printable(s[p - 2]) && printable(s[p]));
}

static uint8_t *read_range(const char *path, uint64_t a, uint64_t b) {
    FILE *f = fopen(path, "rb");
    SYS_CHECK(f, "cannot read '%s': %s", path, strerror(errno));
    uint8_t *buf = xmalloc(b - a + 1, "text");
    SYS_CHECK(fseeko(f, (off_t)a, SEEK_SET) == 0, "cannot seek '%s': %s", path, strerror(errno));
    size_t got = fread(buf, 1, b - a, f);
    SYS_CHECK(got == b - a, "short read of '%s' (%zu of %llu bytes; did it change during prep?)", path, got,
              (unsigned long long)(b - a));
    fclose(f);
    buf[b - a] = 0;
    return buf;
}

// The cut for global byte g: (file, offset), moved forward to a split point.
static void cut_at(const FileList *fl, uint64_t g, size_t *file, uint64_t *off) {
    size_t i = 0;
    while (i < fl->n && g >= fl->size[i]) g -= fl->size[i++];
    *file = i;
    *off = g;
    if (i == fl->n || g == 0) return;
    // Scan forward from g for a split point, a window at a time.
    uint64_t size = fl->size[i];
    for (uint64_t a = g; a < size;) {
        uint64_t b = a + (1 << 20) < size ? a + (1 << 20) : size;
        uint64_t lo = a >= 2 ? a - 2 : 0, hi = b + 1 < size ? b + 1 : size;
        uint8_t *w = read_range(fl->path[i], lo, hi);
        for (uint64_t p = a; p < b; p++)
            if (p > 0 && split_ok(w, hi - lo, p - lo, is_jsonl(fl->path[i]))) {
                free(w);
                *off = p;
                return;
            }
        free(w);
        a = b;
    }
    *file = i + 1;   // no split point after g: the whole file goes to the rank before
    *off = 0;
}

// ---------------------------------------------------------------------------
// Encoding

static void grow(Tokens *t, size_t more) {
    if (t->n + more <= t->cap) return;
    size_t cap = (t->n + more) + (t->n + more) / 2;
    t->tok = realloc(t->tok, cap * sizeof *t->tok);
    SYS_CHECK(t->tok, "out of memory for %zu tokens", cap);
    t->cap = cap;
}

static void encode_text(Tokens *t, const Tokenizer *tk, const uint8_t *s, size_t n) {
    grow(t, n + 1);
    t->n += tokenizer_encode(tk, s, n, t->tok + t->n);
}

static void end_doc(Tokens *t, const Tokenizer *tk) {
    grow(t, 1);
    t->tok[t->n++] = (uint32_t)tk->eot;
    t->docs++;
}

// The lines of a .jsonl range: each a JSON object with a string "text".
static void encode_jsonl(Tokens *t, const Tokenizer *tk, const char *path, const uint8_t *s, size_t n,
                         uint64_t first_byte) {
    char err[256];
    for (size_t i = 0; i < n;) {
        const uint8_t *nl = memchr(s + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - s) : n;
        size_t len = end - i;
        int blank = 1;
        for (size_t k = i; k < end && blank; k++) blank = s[k] == ' ' || s[k] == '\t' || s[k] == '\r';
        if (!blank) {
            if (len > PREP_MAX_JSONL_LINE || memchr(s + i, 0, len))
                FATAL_ALL("one JSON object per line, at most 64 MiB, no NUL bytes",
                          "'%s': the line at byte %llu is %s", path, (unsigned long long)(first_byte + i),
                          len > PREP_MAX_JSONL_LINE ? "too long" : "holding a NUL byte");
            char *line = xmalloc(len + 1, "line");
            memcpy(line, s + i, len);
            line[len] = 0;
            JsonObject o;
            if (json_parse_object(line, &o, err, sizeof err) != 0)
                FATAL_ALL("each line of a .jsonl file is one JSON object with a \"text\" string",
                          "'%s': the line at byte %llu: %s", path, (unsigned long long)(first_byte + i), err);
            const JsonValue *v = json_get(&o, "text");
            if (!v || v->type != JSON_STRING)
                FATAL_ALL("each line of a .jsonl file is one JSON object with a \"text\" string",
                          "'%s': the line at byte %llu has no \"text\" string", path, (unsigned long long)(first_byte + i));
            encode_text(t, tk, (const uint8_t *)v->str, strlen(v->str));
            end_doc(t, tk);
            json_free(&o);
            free(line);
        }
        i = end + 1;
    }
}

// Encodes files [f0, f1] from (f0, o0) to (f1, o1) (o1 = 0: up to file f1 exclusive).
static void encode_range(Tokens *t, const Tokenizer *tk, const FileList *fl, size_t f0, uint64_t o0, size_t f1,
                         uint64_t o1, uint64_t my_bytes, int rank) {
    double t0 = now(), last = t0;
    uint64_t done = 0;
    for (size_t f = f0; f <= f1 && f < fl->n; f++) {
        uint64_t a = f == f0 ? o0 : 0, b = f == f1 ? o1 : fl->size[f];
        if (b <= a && !(a == 0 && b == 0 && f != f1)) continue;
        int jsonl = is_jsonl(fl->path[f]);
        // Pieces of at most 64 MiB, each ended at a split point.
        for (uint64_t p = a; p < b || (a == 0 && b == 0);) {
            uint64_t q = b - p > (64u << 20) ? p + (64u << 20) : b;
            uint8_t *s = read_range(fl->path[f], p, q);
            size_t n = (size_t)(q - p);
            if (q < b) {   // back up to a split point inside the piece (or keep it whole)
                size_t c = n;
                while (c > 1 && !split_ok(s, n, c, jsonl)) c--;
                if (c > 1) {
                    n = c;
                } else {   // no split point in the piece: take the rest of the range whole
                    free(s);
                    s = read_range(fl->path[f], p, b);
                    n = (size_t)(b - p);
                }
                q = p + n;
            }
            if (jsonl) encode_jsonl(t, tk, fl->path[f], s, n, p);
            else encode_text(t, tk, s, n);
            free(s);
            done += n;
            p = q;
            if (rank == 0 && now() - last > 2.0) {
                last = now();
                log_info("prep: rank 0 at %.0f%% of its %.1f MB, %.1f MB/s, %zu tokens\n",
                         100.0 * (double)done / (double)(my_bytes ? my_bytes : 1), (double)my_bytes / 1e6,
                         (double)done / 1e6 / (last - t0), t->n);
            }
            if (a == 0 && b == 0) break;
        }
        if (!jsonl && b == fl->size[f]) end_doc(t, tk);
    }
}

// ---------------------------------------------------------------------------
// Writing (rank 0 writes; the others send their tokens in chunks)

static void write_part(hid_t ds, hid_t type, const uint32_t *tok, size_t n, uint64_t at, int wide) {
    if (n == 0) return;
    void *data = (void *)tok;
    uint16_t *narrow = NULL;
    if (!wide) {
        narrow = xmalloc(n * sizeof *narrow, "tokens");
        for (size_t i = 0; i < n; i++) narrow[i] = (uint16_t)tok[i];
        data = narrow;
    }
    hid_t fs = H5Dget_space(ds);
    H5_CHECK(fs);
    hsize_t start = at, count = n;
    H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL));
    hid_t ms = H5Screate_simple(1, &count, NULL);
    H5_CHECK(ms);
    H5_CHECK(H5Dwrite(ds, type, ms, fs, H5P_DEFAULT, data));
    H5_CHECK(H5Sclose(ms));
    H5_CHECK(H5Sclose(fs));
    free(narrow);
}

static void write_tokens(const char *out, const Tokenizer *tk, Tokens *t, int rank, int size, uint64_t *total,
                         uint64_t *docs) {
    uint64_t mine[2] = {t->n, t->docs}, *all = xmalloc(2 * sizeof(uint64_t) * (size_t)size, "counts");
    MPI_CHECK(MPI_Gather(mine, 2, MPI_UINT64_T, all, 2, MPI_UINT64_T, 0, MPI_COMM_WORLD));
    int wide = tk->vocab_size > 65536;
    if (rank != 0) {
        for (size_t k = 0; k < t->n; k += PREP_CHUNK) {
            int c = (int)(t->n - k < PREP_CHUNK ? t->n - k : PREP_CHUNK);
            MPI_CHECK(MPI_Send(t->tok + k, c, MPI_UINT32_T, 0, 17, MPI_COMM_WORLD));
        }
        free(all);
        return;
    }
    *total = *docs = 0;
    for (int r = 0; r < size; r++) {
        *total += all[2 * r];
        *docs += all[2 * r + 1];
    }
    SYS_CHECK(*total > 0, "no text found in the paths given");
    hid_t f = h5_create(out);
    hsize_t dims = *total;
    hid_t sp = H5Screate_simple(1, &dims, NULL);
    H5_CHECK(sp);
    hid_t ds = H5Dcreate2(f, "tokens", wide ? H5T_STD_U32LE : H5T_STD_U16LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(ds);
    hid_t mtype = wide ? H5T_NATIVE_UINT32 : H5T_NATIVE_UINT16;
    write_part(ds, mtype, t->tok, t->n, 0, wide);
    uint64_t at = t->n;
    uint32_t *buf = xmalloc(sizeof(uint32_t) * PREP_CHUNK, "receive buffer");
    for (int r = 1; r < size; r++)
        for (uint64_t k = 0; k < all[2 * r]; k += PREP_CHUNK) {
            int c = (int)(all[2 * r] - k < PREP_CHUNK ? all[2 * r] - k : PREP_CHUNK);
            MPI_CHECK(MPI_Recv(buf, c, MPI_UINT32_T, r, 17, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
            write_part(ds, mtype, buf, (size_t)c, at, wide);
            at += (uint64_t)c;
        }
    free(buf);
    h5_attr_i64(ds, "vocab_size", tk->vocab_size);
    h5_attr_i64(ds, "eot", tk->eot);
    h5_attr_str(ds, "tokenizer", tk->name);
    h5_attr_str(ds, "tokenizer_hash", tk->hash);
    h5_attr_i64(ds, "documents", (int64_t)*docs);
    H5_CHECK(H5Dclose(ds));
    H5_CHECK(H5Sclose(sp));
    h5_close(f);
    free(all);
}

// ---------------------------------------------------------------------------

static int usage(int rank) {
    if (rank == 0)
        fprintf(stderr, "usage: [mpiexec -np N] partita prep [--tokenizer byte|gpt2] [--tokenizer-dir DIR] [--jsonl] "
                        "OUT.h5 TEXT_FILE_OR_DIR...\n"
                        "  a file is one document; a .jsonl file holds one per line (its \"text\");\n"
                        "  - reads standard input (JSON lines with --jsonl)\n");
    return 2;
}

int prep_main(int argc, char **argv) {
    int rank = 0, size = 1;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    int kind = TOKENIZER_BYTE, stdin_jsonl = 0;
    const char *dir = "data/gpt2";
    int i = 0;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) {
            i++;
            if (strcmp(argv[i], "gpt2") == 0) kind = TOKENIZER_GPT2;
            else if (strcmp(argv[i], "byte") != 0) {
                if (rank == 0) fprintf(stderr, "error: --tokenizer: unknown tokenizer '%s'\n  hint: byte or gpt2\n", argv[i]);
                return 2;
            }
        } else if (strcmp(argv[i], "--tokenizer-dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--jsonl") == 0) {
            stdin_jsonl = 1;
        } else {
            if (rank == 0) fprintf(stderr, "error: partita prep: unknown option '%s'\n", argv[i]);
            return usage(rank);
        }
    }
    if (argc - i < 2) return usage(rank);
    char why[1024];
    Tokenizer tk;
    if (tokenizer_open(&tk, kind, dir, why, sizeof why) != 0) FATAL_ALL("run `make deps`, or give --tokenizer-dir", "%s", why);
    double t0 = now();
    FileList fl = {0};
    char tmp[PREP_MAX_PATH] = "";
    if (rank == 0)
        for (int k = i + 1; k < argc; k++) {
            if (strcmp(argv[k], "-") != 0) {
                list_path(&fl, argv[k], 0);
                continue;
            }
            SYS_CHECK(!tmp[0], "standard input (-) given twice");
            SYS_CHECK((size_t)snprintf(tmp, sizeof tmp, "%s.stdin%s", argv[i], stdin_jsonl ? ".jsonl" : "") < sizeof tmp,
                      "output path too long");
            copy_stdin(tmp);
            list_path(&fl, tmp, 0);
        }
    share_list(&fl, rank);
    uint64_t bytes = 0;
    for (size_t k = 0; k < fl.n; k++) bytes += fl.size[k];
    size_t f0, f1;
    uint64_t o0, o1;
    cut_at(&fl, bytes / (uint64_t)size * (uint64_t)rank + bytes % (uint64_t)size * (uint64_t)rank / (uint64_t)size, &f0, &o0);
    if (rank == size - 1) { f1 = fl.n; o1 = 0; }
    else cut_at(&fl, bytes / (uint64_t)size * (uint64_t)(rank + 1) + bytes % (uint64_t)size * (uint64_t)(rank + 1) / (uint64_t)size, &f1, &o1);
    if (rank == 0) { f0 = 0; o0 = 0; }
    // Rank 0 alone: empty files are documents too (an EOT each).
    Tokens t = {0};
    uint64_t my_bytes = 0;
    for (size_t f = f0; f < fl.n && (f < f1 || (f == f1 && o1 > 0)); f++)
        my_bytes += (f == f1 ? o1 : fl.size[f]) - (f == f0 ? o0 : 0);
    encode_range(&t, &tk, &fl, f0, o0, f1, o1, my_bytes, rank);
    uint64_t total = 0, docs = 0;
    write_tokens(argv[i], &tk, &t, rank, size, &total, &docs);
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));   // every rank has read the standard input copy
    if (tmp[0]) SYS_CHECK(unlink(tmp) == 0, "cannot remove '%s': %s", tmp, strerror(errno));
    double s = now() - t0;
    log_info("prep: %zu files, %llu documents, %.1f MB -> %llu tokens (%s tokenizer, vocab %d) in %s; "
             "%.2f s, %.1f MB/s on %d rank%s\n", fl.n, (unsigned long long)docs, (double)bytes / 1e6,
             (unsigned long long)total, tk.name, tk.vocab_size, argv[i], s, (double)bytes / 1e6 / s, size,
             size > 1 ? "s" : "");
    for (size_t k = 0; k < fl.n; k++) free(fl.path[k]);
    free(fl.path);
    free(fl.size);
    free(t.tok);
    tokenizer_free(&tk);
    return 0;
}

int prep_check_tokens(const char *path, int kind, const char *dir, int64_t model_vocab, char *why, size_t n) {
    const char *deck_name = kind == TOKENIZER_GPT2 ? "gpt2" : "byte";
    char name[64] = "", hash[64] = "";
    hid_t f = h5_open_read(path);
    hid_t ds;
    H5E_BEGIN_TRY { ds = H5Dopen2(f, "tokens", H5P_DEFAULT); } H5E_END_TRY;
    if (ds < 0) {   // tokenfile_open says what is wrong with it
        h5_close(f);
        return 0;
    }
    int have_name = h5_read_attr_str(ds, "tokenizer", name, sizeof name) == H5A_OK;
    int have_hash = h5_read_attr_str(ds, "tokenizer_hash", hash, sizeof hash) == H5A_OK;
    H5_CHECK(H5Dclose(ds));
    h5_close(f);
    if (!have_name) return 0;
    if (strcmp(name, deck_name) != 0) {
        snprintf(why, n, "the deck's [data] tokenizer = %s, but '%s' was made by the %s tokenizer; hint: remake the "
                 "file with `partita prep --tokenizer %s ...`, or set [data] tokenizer = %s",
                 deck_name, path, name, deck_name, name);
        return -1;
    }
    Tokenizer tk;
    if (tokenizer_open(&tk, kind, dir, why, n) != 0) return -1;
    int rc = 0;
    if (have_hash && strcmp(hash, tk.hash) != 0) {
        snprintf(why, n, "'%s' was made with the %s vocabulary %s, but [data] tokenizer_dir = %s holds vocabulary %s; "
                 "hint: point tokenizer_dir at the files that made it, or remake the token file",
                 path, name, hash, dir, tk.hash);
        rc = -1;
    } else if (kind != TOKENIZER_BYTE && model_vocab < tk.vocab_size) {
        snprintf(why, n, "[model] vocab = %lld is smaller than the %s tokenizer's %d tokens (the vocabulary of '%s'); "
                 "hint: set [model] vocab = %d", (long long)model_vocab, name, tk.vocab_size, path, tk.vocab_size);
        rc = -1;
    }
    tokenizer_free(&tk);
    return rc;
}
