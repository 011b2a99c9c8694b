// ulysses.c: the all-to-all pair around attention (see ulysses.h).
#include "ulysses.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

void ulysses_split_heads(int NH, int sp, int k, int *h0, int *nh) {
    int base = NH / sp, extra = NH % sp;
    *nh = base + (k < extra);
    *h0 = k * base + (k < extra ? k : extra);
}

size_t ulysses_buffer_floats(int B, int Tl, int C, int NH, int sp) {
    int h0, nh;
    ulysses_split_heads(NH, sp, 0, &h0, &nh);   // rank 0 has the most heads
    size_t Cl = (size_t)nh * (size_t)(C / NH), wide = (size_t)sp * Cl > (size_t)C ? (size_t)sp * Cl : (size_t)C;
    return (size_t)B * (size_t)Tl * 3 * wide;
}

void ulysses_create(Ulysses *u, Comm *comm, const Backend *bk, int B, int Tl, int C, int NH,
                    float *send, float *recv) {
    memset(u, 0, sizeof *u);
    u->comm = comm;
    u->bk = bk;
    u->sp = comm->size;
    u->rank = comm->rank;
    u->C = C;
    u->NH = NH;
    u->hs = C / NH;
    u->B = B;
    u->Tl = Tl;
    SYS_CHECK(NH >= u->sp, "sequence parallelism needs at least one head per rank: NH = %d < sp = %d", NH, u->sp);
    u->h0 = xcalloc(sizeof(int) * (size_t)u->sp, "ulysses heads");
    u->nh = xcalloc(sizeof(int) * (size_t)u->sp, "ulysses heads");
    for (int k = 0; k < u->sp; k++) ulysses_split_heads(NH, u->sp, k, &u->h0[k], &u->nh[k]);
    u->NHl = u->nh[u->rank];
    u->Cl = u->NHl * u->hs;
    u->counts = xcalloc(sizeof(size_t) * (size_t)u->sp, "ulysses counts");
    u->rcounts = xcalloc(sizeof(size_t) * (size_t)u->sp, "ulysses counts");
    u->nbuf = ulysses_buffer_floats(B, Tl, C, NH, u->sp);
    u->send = send;
    u->recv = recv;
    comm_register(comm, u->send, u->nbuf, "all-to-all send buffer");
    comm_register(comm, u->recv, u->nbuf, "all-to-all receive buffer");
}

void ulysses_free(Ulysses *u) {
    free(u->h0);
    free(u->nh);
    free(u->counts);
    free(u->rcounts);
    memset(u, 0, sizeof *u);
}

static void exchange(Ulysses *u, const char *tag) {
    CommReq r;
    comm_ialltoallv(u->comm, u->send, u->counts, u->recv, u->rcounts, tag, &r);
    comm_wait(u->comm, &r);
}

// Both directions move the same blocks: rank j's part of this rank's tokens is
// (B, Tl, parts, Cj) of its heads; rank i's part for this rank is (B, Tl, parts, Cl).
static void set_counts(Ulysses *u, int B, int Tl, int parts, int to_heads) {
    SYS_CHECK(B <= u->B && Tl <= u->Tl, "ulysses: batch %dx%d exceeds the allocated %dx%d", B, Tl, u->B, u->Tl);
    size_t rows = (size_t)B * (size_t)Tl * (size_t)parts;
    for (int k = 0; k < u->sp; k++) {
        size_t theirs = rows * (size_t)(u->nh[k] * u->hs), mine = rows * (size_t)u->Cl;
        u->counts[k] = to_heads ? theirs : mine;
        u->rcounts[k] = to_heads ? mine : theirs;
    }
}

void ulysses_seq_to_heads(Ulysses *u, float *dst, const float *src, int B, int Tl, int parts, const char *tag) {
    const Backend *k = u->bk;
    const size_t C = (size_t)u->C, Cl = (size_t)u->Cl, T = (size_t)Tl * (size_t)u->sp;
    const size_t rows = (size_t)B * (size_t)Tl, P = (size_t)parts;
    set_counts(u, B, Tl, parts, 1);
    // Pack: chunk j = (B*Tl, parts, Cj) <- src[:, part p, heads of j].
    float *out = u->send;
    for (int j = 0; j < u->sp; j++) {
        size_t Cj = (size_t)(u->nh[j] * u->hs), off = (size_t)(u->h0[j] * u->hs);
        for (size_t p = 0; p < P; p++) k->copy2d(out + p * Cj, P * Cj, src + p * C + off, P * C, rows, Cj);
        out += rows * P * Cj;
    }
    exchange(u, tag);
    // Unpack: chunk i = (B, Tl, parts, Cl) holds tokens [i Tl, (i+1) Tl) of each row b.
    const size_t blk = (size_t)Tl * P * Cl;
    for (int i = 0; i < u->sp; i++)
        k->copy2d(dst + (size_t)i * blk, T * P * Cl, u->recv + (size_t)i * (size_t)B * blk, blk, (size_t)B, blk);
}

void ulysses_heads_to_seq(Ulysses *u, float *dst, const float *src, int B, int Tl, int parts, const char *tag) {
    const Backend *k = u->bk;
    const size_t C = (size_t)u->C, Cl = (size_t)u->Cl, T = (size_t)Tl * (size_t)u->sp;
    const size_t rows = (size_t)B * (size_t)Tl, P = (size_t)parts;
    set_counts(u, B, Tl, parts, 0);
    // Pack: chunk i = (B, Tl, parts, Cl) <- tokens [i Tl, (i+1) Tl) of src.
    const size_t blk = (size_t)Tl * P * Cl;
    for (int i = 0; i < u->sp; i++)
        k->copy2d(u->send + (size_t)i * (size_t)B * blk, blk, src + (size_t)i * blk, T * P * Cl, (size_t)B, blk);
    exchange(u, tag);
    // Unpack: chunk j = (B*Tl, parts, Cj) -> dst[:, part p, heads of j].
    const float *in = u->recv;
    for (int j = 0; j < u->sp; j++) {
        size_t Cj = (size_t)(u->nh[j] * u->hs), off = (size_t)(u->h0[j] * u->hs);
        for (size_t p = 0; p < P; p++) k->copy2d(dst + p * C + off, P * C, in + p * Cj, P * Cj, rows, Cj);
        in += rows * P * Cj;
    }
}

double ulysses_sent_bytes(int B, int Tl, int C, int NH, int sp, int rank, int parts, int to_heads) {
    int h0, nh;
    ulysses_split_heads(NH, sp, rank, &h0, &nh);
    double rows = (double)B * (double)Tl * (double)parts, Cl = (double)nh * (double)(C / NH);
    // to heads: all of its tokens' channels but its own heads'; back: its heads' channels of the other ranks' tokens
    return rows * (to_heads ? (double)C - Cl : (double)(sp - 1) * Cl) * (double)sizeof(float);
}
