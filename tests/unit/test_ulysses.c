// test_ulysses.c: the Ulysses layout changes (ulysses.h) against plain
// reference loops written from their definition, on real all-to-alls.
//
// Every element carries its own coordinates as its value: element (b, t, p, c)
// of a row of T = Tl sp tokens is the integer ((b T + t) P + p) C + c (exact in
// fp32 at these sizes), so a misplaced element can only compare equal by being
// in the right place.
//   seq_to_heads: rank r holds tokens [r Tl, (r+1) Tl) of every row, all C
//     channels; afterwards dst[b, t, p, j] must equal element (b, t, p, h0_r hs + j)
//     for every t < T and every j < Cl_r (its heads' channels).
//   heads_to_seq: rank r holds all T tokens of its heads' channels; afterwards
//     dst[b, t, p, c] must equal element (b, r Tl + t, p, c) for every c < C.
// Both are checked with separate buffers and with the aliasing ulysses.h allows
// (src = u->recv, dst = u->send), for parts 1 and 3, B = 2, an odd Tl, head
// counts sp divides and does not (NH = 6 at sp = 4: 2,2,1,1 heads; NH = 3 at
// sp = 2: 2,1; NH = 4 at sp = 3: 2,1,1), on the host path and on the staged path
// (a stand-in "device" of host memory, so the mirror copies are exercised); and
// the byte counter against ulysses_sent_bytes. Last, comm's all-to-alls in
// flight together: two on one communicator with different counts, waited in
// reverse order, each keeps the counts MPI reads (its own slot) and delivers.
// Run: mpiexec.mpich -np 4 build/test_ulysses
#include "backend.h"
#include "comm.h"
#include "log.h"
#include "ulysses.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

static void check(MPI_Comm world, int ok, const char *what, double got) {
    int all = ok, rank;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, world);
    MPI_Comm_rank(world, &rank);
    if (rank == 0) printf("%s %s  [%g]\n", all ? "ok  " : "FAIL", what, got);
    failures += !all;
}

static void copy_floats(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }
static void copy2d(float *dst, size_t ds, const float *src, size_t ss, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++) memcpy(dst + r * ds, src + r * ss, cols * sizeof(float));
}
static const Backend stand_in = {.name = "stand-in device", .device_memory = 1, .to_host = copy_floats,
                                 .from_host = copy_floats, .copy2d = copy2d};

// The value of element (b, t, p, c) of full rows (B, T, P, C).
static float elem(int b, int t, int p, int c, int T, int P, int C) {
    return (float)((((size_t)b * (size_t)T + (size_t)t) * (size_t)P + (size_t)p) * (size_t)C + (size_t)c);
}

// One layout case on the group g; counts mismatches into *bad (local to the rank).
static void run_case(Comm *g, int B, int Tl, int hs, int NH, int P, int alias, int *bad, double *sent, double *want) {
    const int sp = g->size, r = g->rank, C = NH * hs, T = Tl * sp;
    int h0, nh;
    ulysses_split_heads(NH, sp, r, &h0, &nh);
    const int Cl = nh * hs;
    size_t nbuf = ulysses_buffer_floats(B, Tl, C, NH, sp);
    float *send = calloc(nbuf, sizeof(float)), *recv = calloc(nbuf, sizeof(float));
    size_t nseq = (size_t)B * Tl * P * C, nhead = (size_t)B * T * P * Cl;
    float *seq = calloc(nseq, sizeof(float)), *head = calloc(nhead, sizeof(float));
    Ulysses u;
    ulysses_create(&u, g, &stand_in, B, Tl, C, NH, send, recv);
    uint64_t before = g->bytes[COMM_ALLTOALL];

    // seq_to_heads: this rank's slice of every row, all channels.
    float *src = alias ? u.recv : seq, *dst = alias ? u.send : head;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tl; t++)
            for (int p = 0; p < P; p++)
                for (int c = 0; c < C; c++)
                    src[(((size_t)b * Tl + t) * P + p) * C + c] = elem(b, r * Tl + t, p, c, T, P, C);
    ulysses_seq_to_heads(&u, dst, src, B, Tl, P, "test to heads");
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int p = 0; p < P; p++)
                for (int j = 0; j < Cl; j++)
                    *bad += dst[(((size_t)b * T + t) * P + p) * Cl + j] != elem(b, t, p, h0 * hs + j, T, P, C);

    // heads_to_seq: all tokens of this rank's heads.
    src = alias ? u.recv : head;
    dst = alias ? u.send : seq;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int p = 0; p < P; p++)
                for (int j = 0; j < Cl; j++)
                    src[(((size_t)b * T + t) * P + p) * Cl + j] = elem(b, t, p, h0 * hs + j, T, P, C);
    ulysses_heads_to_seq(&u, dst, src, B, Tl, P, "test to rows");
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tl; t++)
            for (int p = 0; p < P; p++)
                for (int c = 0; c < C; c++)
                    *bad += dst[(((size_t)b * Tl + t) * P + p) * C + c] != elem(b, r * Tl + t, p, c, T, P, C);

    *sent = (double)(g->bytes[COMM_ALLTOALL] - before);
    *want = ulysses_sent_bytes(B, Tl, C, NH, sp, r, P, 1) + ulysses_sent_bytes(B, Tl, C, NH, sp, r, P, 0);
    ulysses_free(&u);
    free(send);
    free(recv);
    free(seq);
    free(head);
}

// Every case on groups of sp consecutive ranks of world (ranks past the last
// whole group sit out but still take part in the checks).
static void suite(MPI_Comm world, int sp, int NH, int path) {
    int rank, size;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &size);
    const int member = rank < size / sp * sp;
    MPI_Comm sub;
    MPI_CHECK(MPI_Comm_split(world, member ? rank / sp : MPI_UNDEFINED, rank, &sub));
    CommOptions opt = {.fault_skip_rank = -1, .timeout_s = 60, .path = path, .bk = &stand_in};
    for (int P = 1; P <= 3; P += 2) {
        for (int alias = 0; alias <= 1; alias++) {
            int bad = 0;
            double sent = 0, want = 0;
            if (member) {
                Comm g;
                comm_init(&g, sub, "sp", &opt);
                run_case(&g, 2, 5, 3, NH, P, alias, &bad, &sent, &want);
                comm_free(&g);
            }
            char what[200];
            int h0, nh0, h1, nh1;
            ulysses_split_heads(NH, sp, 0, &h0, &nh0);
            ulysses_split_heads(NH, sp, sp - 1, &h1, &nh1);
            snprintf(what, sizeof what, "%ssp=%d NH=%d (heads %d..%d per rank) parts=%d%s: both layouts equal the reference "
                     "loops (mismatches)", path == COMM_PATH_STAGED ? "staged: " : "", sp, NH, nh1, nh0, P,
                     alias ? ", src = recv and dst = send" : "");
            check(world, bad == 0, what, bad);
            snprintf(what, sizeof what, "%ssp=%d NH=%d parts=%d: all-to-all bytes sent equal ulysses_sent_bytes (bytes)",
                     path == COMM_PATH_STAGED ? "staged: " : "", sp, NH, P);
            check(world, sent == want, what, sent);
        }
    }
    if (member) MPI_CHECK(MPI_Comm_free(&sub));
}

// Rank r sends (k + 1) * (r + 1) * m floats to rank k, valued 1000 m + 100 r + k.
static void fill_a2a(int r, int p, int m, size_t *counts, size_t *rcounts, float *send) {
    size_t o = 0;
    for (int k = 0; k < p; k++) {
        counts[k] = (size_t)((k + 1) * (r + 1) * m);
        rcounts[k] = (size_t)((r + 1) * (k + 1) * m);
        for (size_t i = 0; i < counts[k]; i++) send[o++] = (float)(1000 * m + 100 * r + k);
    }
}

static int check_a2a(int r, int p, int m, const float *recv) {
    size_t o = 0;
    int bad = 0;
    for (int k = 0; k < p; k++)
        for (int i = 0; i < (r + 1) * (k + 1) * m; i++) bad += recv[o++] != (float)(1000 * m + 100 * k + r);
    return bad;
}

static void two_in_flight(MPI_Comm world) {
    CommOptions opt = {.fault_skip_rank = -1, .timeout_s = 60, .path = COMM_PATH_HOST, .bk = &stand_in};
    Comm c;
    comm_init(&c, world, "world", &opt);
    const int p = c.size, r = c.rank;
    size_t counts[2][16], rcounts[2][16];
    float *send[2], *recv[2];
    CommReq req[2];
    int kept = 1, bad = 0;
    for (int j = 0; j < 2; j++) {
        send[j] = calloc((size_t)((j + 1) * p * p * (p + 1)), sizeof(float));
        recv[j] = calloc((size_t)((j + 1) * p * p * (p + 1)), sizeof(float));
        fill_a2a(r, p, j + 1, counts[j], rcounts[j], send[j]);
        comm_ialltoallv(&c, send[j], counts[j], recv[j], rcounts[j], "in flight", &req[j]);
    }
    // the first request's counts, as MPI holds them, after the second was issued
    const int *sc = c.vargs + (size_t)req[0].slot * 4 * (size_t)p, *rc = sc + 2 * p;
    kept &= req[0].slot >= 0 && req[1].slot >= 0 && req[0].slot != req[1].slot;
    for (int k = 0; k < p && kept; k++) kept &= sc[k] == (int)counts[0][k] && rc[k] == (int)rcounts[0][k];
    comm_wait(&c, &req[1]);
    comm_wait(&c, &req[0]);
    for (int j = 0; j < 2; j++) bad += check_a2a(r, p, j + 1, recv[j]);
    check(world, kept, "two all-to-alls in flight on one communicator hold their own counts (slots differ, "
          "the first's unchanged by the second)", kept);
    check(world, bad == 0 && c.busy == 0, "both deliver, waited in reverse order, and free their slots "
          "(mismatches)", bad);
    for (int j = 0; j < 2; j++) {
        free(send[j]);
        free(recv[j]);
    }
    comm_free(&c);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    log_init(rank);
    static const int cases[][2] = {{4, 4}, {4, 6}, {4, 7}, {2, 3}, {2, 2}, {3, 4}};   // sp, NH
    for (int path = COMM_PATH_HOST; path <= COMM_PATH_STAGED; path++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            if (cases[i][0] <= size) suite(MPI_COMM_WORLD, cases[i][0], cases[i][1], path);
    two_in_flight(MPI_COMM_WORLD);
    if (rank == 0) printf("summary: %d failed checks\n", failures);
    MPI_Finalize();
    return failures ? 1 : 0;
}
