// prep.c: tokenizes text files into /tokens of an HDF5 file.
#include "prep.h"
#include "deck.h"
#include "h5io.h"
#include "log.h"
#include "tokenizer.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct TokenBuf {
    uint32_t *tok;
    size_t n, cap;
    int files;
} TokenBuf;

static void push_file(TokenBuf *tb, const Tokenizer *tk, const char *path) {
    FILE *fp = fopen(path, "rb");
    SYS_CHECK(fp, "cannot read '%s': %s", path, strerror(errno));
    SYS_CHECK(fseek(fp, 0, SEEK_END) == 0, "cannot seek '%s': %s", path, strerror(errno));
    long len = ftell(fp);
    SYS_CHECK(len >= 0, "cannot size '%s': %s", path, strerror(errno));
    rewind(fp);
    uint8_t *text = xmalloc((size_t)len + 1, "text");
    SYS_CHECK(fread(text, 1, (size_t)len, fp) == (size_t)len, "short read of '%s'", path);
    fclose(fp);
    if (tb->n + (size_t)len + 1 > tb->cap) {
        tb->cap = (tb->n + (size_t)len + 1) * 2;
        tb->tok = realloc(tb->tok, tb->cap * sizeof(uint32_t));
        SYS_CHECK(tb->tok, "out of memory for %zu tokens", tb->cap);
    }
    tb->n += tokenizer_encode(tk, text, (size_t)len, tb->tok + tb->n);
    tb->tok[tb->n++] = (uint32_t)tk->eot;
    tb->files++;
    free(text);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void push_path(TokenBuf *tb, const Tokenizer *tk, const char *path) {
    struct stat st;
    SYS_CHECK(stat(path, &st) == 0, "cannot read '%s': %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if (S_ISREG(st.st_mode)) push_file(tb, tk, path);
        return;
    }
    DIR *d = opendir(path);
    SYS_CHECK(d, "cannot list '%s': %s", path, strerror(errno));
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)); ) {
        if (e->d_name[0] == '.') continue;
        names = realloc(names, (n + 1) * sizeof *names);
        SYS_CHECK(names, "out of memory listing '%s'", path);
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);   // name order: the same tokens on every machine
    for (size_t i = 0; i < n; i++) {
        char child[4096];
        snprintf(child, sizeof child, "%s/%s", path, names[i]);
        push_path(tb, tk, child);
        free(names[i]);
    }
    free(names);
}

int prep_main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: partita prep OUT.h5 TEXT_FILE_OR_DIR...\n");
        return 2;
    }
    Tokenizer tk;
    tokenizer_init(&tk, TOKENIZER_BYTE);
    TokenBuf tb = {0};
    for (int i = 1; i < argc; i++) push_path(&tb, &tk, argv[i]);
    SYS_CHECK(tb.n > 0, "no text found in the paths given");

    int wide = tk.vocab_size > 65536;
    void *data = tb.tok;
    uint16_t *narrow = NULL;
    if (!wide) {
        narrow = xmalloc(tb.n * sizeof(uint16_t), "tokens");
        for (size_t i = 0; i < tb.n; i++) narrow[i] = (uint16_t)tb.tok[i];
        data = narrow;
    }
    hid_t f = h5_create(argv[0]);
    hsize_t dims = tb.n;
    hid_t sp = H5Screate_simple(1, &dims, NULL);
    H5_CHECK(sp);
    hid_t type = wide ? H5T_STD_U32LE : H5T_STD_U16LE;
    hid_t ds = H5Dcreate2(f, "tokens", type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(ds);
    H5_CHECK(H5Dwrite(ds, wide ? H5T_NATIVE_UINT32 : H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
    h5_attr_i64(ds, "vocab_size", tk.vocab_size);
    h5_attr_i64(ds, "eot", tk.eot);
    h5_attr_str(ds, "tokenizer", tk.name);
    H5_CHECK(H5Dclose(ds));
    H5_CHECK(H5Sclose(sp));
    h5_close(f);
    printf("prep: %d files -> %zu tokens (%s tokenizer, vocab %d) in %s\n", tb.files, tb.n, tk.name,
           tk.vocab_size, argv[0]);
    free(narrow);
    free(tb.tok);
    return 0;
}
