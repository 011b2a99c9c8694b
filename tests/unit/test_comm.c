// test_comm.c: every collective of comm.h against what it must compute, on
// uneven counts, and its byte counter against the ring formula; once on the
// host path and once on the staged path that the cuda backend uses for
// device buffers (here with a stand-in "device" of plain host memory, so the
// copies to and from the host mirrors are what is checked: a result that is
// not copied back from its mirror never reaches the buffer).
// Run: mpiexec.mpich -np 3 build/test_comm
#include "backend.h"
#include "comm.h"
#include "log.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
static const char *label = "";

static void check(Comm *c, int ok, const char *what) {
    int all = ok;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, c->comm);
    if (c->rank == 0) printf("%s %s%s\n", all ? "ok  " : "FAIL", label, what);
    failures += !all;
}

static void copy_floats(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }
static const Backend stand_in_device = {.name = "stand-in device", .device_memory = 1,
                                        .to_host = copy_floats, .from_host = copy_floats};

static void suite(int path);
static void many_in_flight(int path);

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    log_init(rank);
    suite(COMM_PATH_HOST);
    suite(COMM_PATH_STAGED);
    many_in_flight(COMM_PATH_HOST);
    many_in_flight(COMM_PATH_STAGED);
    if (rank == 0) printf("summary: %d failed checks\n", failures);
    MPI_Finalize();
    return failures ? 1 : 0;
}

static void suite(int path) {
    CommOptions opt = {.fault_skip_rank = -1, .timeout_s = 60, .path = path, .bk = &stand_in_device};
    label = path == COMM_PATH_STAGED ? "staged: " : "";
    Comm c;
    comm_init(&c, MPI_COMM_WORLD, "world", &opt);
    const int p = c.size, r = c.rank;
    CommReq req;
    size_t counts[64], rcounts[64], total = 0;
    for (int k = 0; k < p; k++) total += counts[k] = (size_t)(3 + 2 * k);   // uneven parts

    // all-reduce: sum of (rank + 1) * i
    float *a = malloc(sizeof(float) * 1001);
    comm_register(&c, a, 1001, "a");
    for (int i = 0; i < 1001; i++) a[i] = (float)((r + 1) * i);
    comm_allreduce_sum(&c, a, 1001, "t");
    int ok = 1;
    for (int i = 0; i < 1001; i++) ok &= a[i] == (float)(p * (p + 1) / 2 * i);
    check(&c, ok, "all_reduce sums");
    check(&c, c.bytes[COMM_ALLREDUCE] == 2 * (size_t)(p - 1) * 1001 * 4 / (size_t)p, "all_reduce bytes = 2(p-1)/p n");

    // reduce-scatter: rank k gets the sum of part k
    float *s = malloc(sizeof(float) * total), *out = malloc(sizeof(float) * total);
    comm_register(&c, s, total, "s");
    comm_register(&c, out, total, "out");
    check(&c, path != COMM_PATH_STAGED || c.nmirrors == 3, "each registered buffer has a host mirror");
    for (size_t i = 0; i < total; i++) s[i] = (float)(i + 100 * r);
    comm_ireduce_scatter_sum(&c, s, out, counts, "t", &req);
    comm_wait(&c, &req);
    size_t off = 0;
    for (int k = 0; k < r; k++) off += counts[k];
    ok = 1;
    for (size_t i = 0; i < counts[r]; i++) ok &= out[i] == (float)(p * (off + i) + 100 * p * (p - 1) / 2);
    check(&c, ok, "reduce_scatter on uneven parts");
    check(&c, c.bytes[COMM_REDUCE_SCATTER] == (total - counts[r]) * 4, "reduce_scatter bytes = total - own part");

    // all-gather in place
    for (size_t i = 0; i < total; i++) s[i] = -1.0f;
    for (size_t i = 0; i < counts[r]; i++) s[off + i] = (float)(1000 * r + (int)i);
    comm_iallgather(&c, s, counts, "t", &req);
    comm_wait(&c, &req);
    ok = 1;
    size_t o = 0;
    for (int k = 0; k < p; k++)
        for (size_t i = 0; i < counts[k]; i++, o++) ok &= s[o] == (float)(1000 * k + (int)i);
    check(&c, ok, "all_gather in place on uneven parts");

    // all-to-all(v): rank r sends (r + k + 1) floats to rank k, valued 10r + k
    size_t sent = 0, got = 0;
    for (int k = 0; k < p; k++) {
        counts[k] = (size_t)(r + k + 1);
        rcounts[k] = (size_t)(k + r + 1);
        sent += counts[k];
        got += rcounts[k];
    }
    o = 0;
    for (int k = 0; k < p; k++)
        for (size_t i = 0; i < counts[k]; i++) s[o++] = (float)(10 * r + k);
    comm_ialltoallv(&c, s, counts, out, rcounts, "t", &req);
    comm_wait(&c, &req);
    ok = 1;
    o = 0;
    for (int k = 0; k < p; k++)
        for (size_t i = 0; i < rcounts[k]; i++) ok &= out[o++] == (float)(10 * k + r);
    check(&c, ok && got <= total, "all_to_all(v) delivers each rank's part");
    check(&c, c.bytes[COMM_ALLTOALL] == (sent - counts[r]) * 4, "all_to_all bytes = what leaves the rank");

    // broadcast
    double v[3] = {r == 1 ? 1.5 : 0, r == 1 ? 2.5 : 0, r == 1 ? -3 : 0};
    comm_bcast(&c, v, sizeof v, p > 1 ? 1 : 0, "t");
    check(&c, p == 1 || (v[0] == 1.5 && v[1] == 2.5 && v[2] == -3), "broadcast from rank 1");

    // comm_test completes a request too (and, staged, lands its result)
    for (int i = 0; i < 1001; i++) a[i] = 1.0f;
    comm_iallreduce_sum(&c, a, 1001, "t", &req);
    while (!comm_test(&c, &req)) {}
    ok = 1;
    for (int i = 0; i < 1001; i++) ok &= a[i] == (float)p;
    check(&c, ok && !req.active, "comm_test completes an all_reduce and delivers it");

    // the table of host mirrors grows: 70 more buffers (e.g. many MoE layers), the last one used
    enum { NMORE = 70 };
    float *more[NMORE];
    for (int i = 0; i < NMORE; i++) {
        more[i] = malloc(sizeof(float) * 8);
        for (int j = 0; j < 8; j++) more[i][j] = (float)(i + j);
        comm_register(&c, more[i], 8, "more");
    }
    comm_allreduce_sum(&c, more[NMORE - 1], 8, "t");
    ok = path != COMM_PATH_STAGED || c.nmirrors == 3 + NMORE;
    for (int j = 0; j < 8; j++) ok &= more[NMORE - 1][j] == (float)(p * (NMORE - 1 + j));
    check(&c, ok, "73 registered buffers: the last one's all_reduce sums");
    for (int i = 0; i < NMORE; i++) free(more[i]);
    free(a); free(s); free(out);
    comm_free(&c);
}

// Several collectives of every kind in flight at once on one communicator,
// each issued from ONE counts array that the caller overwrites before the
// next call (comm must have copied them), completed in a mixed order.
enum { NFLY = 3 };

static size_t part(int j, int k) { return (size_t)(2 + 3 * j + k); }     // collective j, rank k

static void many_in_flight(int path) {
    CommOptions opt = {.fault_skip_rank = -1, .timeout_s = 60, .path = path, .bk = &stand_in_device};
    label = path == COMM_PATH_STAGED ? "staged: " : "";
    Comm c;
    comm_init(&c, MPI_COMM_WORLD, "world", &opt);
    const int p = c.size, r = c.rank;
    size_t counts[64], rcounts[64], tot[NFLY], off[NFLY];
    float *rs_send[NFLY], *rs_recv[NFLY], *ag[NFLY], *a2s[NFLY], *a2r[NFLY], *ar[NFLY];
    CommReq req[4 * NFLY];
    for (int j = 0; j < NFLY; j++) {
        tot[j] = off[j] = 0;
        for (int k = 0; k < p; k++) {
            if (k < r) off[j] += part(j, k);
            tot[j] += part(j, k);
        }
        size_t big = tot[j] + (size_t)(p * (p + 2 * NFLY + 2));
        rs_send[j] = calloc(big, sizeof(float));
        rs_recv[j] = calloc(big, sizeof(float));
        ag[j] = calloc(big, sizeof(float));
        a2s[j] = calloc(big, sizeof(float));
        a2r[j] = calloc(big, sizeof(float));
        ar[j] = calloc(big, sizeof(float));
        comm_register(&c, rs_send[j], big, "rs send");
        comm_register(&c, rs_recv[j], big, "rs recv");
        comm_register(&c, ag[j], big, "ag");
        comm_register(&c, a2s[j], big, "a2a send");
        comm_register(&c, a2r[j], big, "a2a recv");
        comm_register(&c, ar[j], big, "ar");
    }
    for (int j = 0; j < NFLY; j++) {
        for (int k = 0; k < p; k++) counts[k] = part(j, k);
        for (size_t i = 0; i < tot[j]; i++) rs_send[j][i] = (float)(i + 10 * j + 100 * r);
        comm_ireduce_scatter_sum(&c, rs_send[j], rs_recv[j], counts, "rs", &req[4 * j]);
        for (int k = 0; k < p; k++) counts[k] = 999999;        // the caller reuses its array at once
        for (int k = 0; k < p; k++) counts[k] = part(j, k);
        for (size_t i = 0; i < part(j, r); i++) ag[j][off[j] + i] = (float)(1000 * r + 7 * j + (int)i);
        comm_iallgather(&c, ag[j], counts, "ag", &req[4 * j + 1]);
        size_t o = 0;
        for (int k = 0; k < p; k++) {
            counts[k] = (size_t)(r + k + 1 + j);
            rcounts[k] = (size_t)(k + r + 1 + j);
            for (size_t i = 0; i < counts[k]; i++) a2s[j][o++] = (float)(10 * r + k + 100 * j);
        }
        comm_ialltoallv(&c, a2s[j], counts, a2r[j], rcounts, "a2a", &req[4 * j + 2]);
        for (int k = 0; k < p; k++) counts[k] = rcounts[k] = 0;
        for (int i = 0; i < 17; i++) ar[j][i] = (float)(r + j * i);
        comm_iallreduce_sum(&c, ar[j], 17, "ar", &req[4 * j + 3]);
    }
    int busy = __builtin_popcountll(c.busy);
    // complete in a mixed order: odd indices backwards, then the rest by comm_test
    for (int i = 4 * NFLY - 1; i >= 0; i -= 2) comm_wait(&c, &req[i]);
    for (int left = 1; left; ) {
        left = 0;
        for (int i = 0; i < 4 * NFLY; i += 2) left |= !comm_test(&c, &req[i]);
    }
    int ok_rs = 1, ok_ag = 1, ok_a2a = 1, ok_ar = 1;
    for (int j = 0; j < NFLY; j++) {
        for (size_t i = 0; i < part(j, r); i++)
            ok_rs &= rs_recv[j][i] == (float)(p * (off[j] + i + 10 * j) + 100 * p * (p - 1) / 2);
        size_t o = 0;
        for (int k = 0; k < p; k++)
            for (size_t i = 0; i < part(j, k); i++, o++) ok_ag &= ag[j][o] == (float)(1000 * k + 7 * j + (int)i);
        o = 0;
        for (int k = 0; k < p; k++)
            for (size_t i = 0; i < (size_t)(k + r + 1 + j); i++) ok_a2a &= a2r[j][o++] == (float)(10 * k + r + 100 * j);
        for (int i = 0; i < 17; i++) ok_ar &= ar[j][i] == (float)(p * (p - 1) / 2 + p * j * i);
    }
    if (r == 0) printf("     %d collectives in flight at once held %d count slots\n", 4 * NFLY, busy);
    check(&c, busy == 3 * NFLY, "every v-collective in flight owns a slot of counts (3 kinds x 3)");
    check(&c, ok_rs, "3 reduce_scatters in flight, counts array reused: each rank's sums");
    check(&c, ok_ag, "3 all_gathers in flight, counts array reused: every part in place");
    check(&c, ok_a2a, "3 all_to_alls in flight, counts array reused: each rank's part");
    check(&c, ok_ar, "3 all_reduces in flight among them: sums");
    check(&c, c.busy == 0, "every slot is free once all are complete");
    for (int j = 0; j < NFLY; j++) {
        free(rs_send[j]); free(rs_recv[j]); free(ag[j]); free(a2s[j]); free(a2r[j]); free(ar[j]);
    }
    comm_free(&c);
}
