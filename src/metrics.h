// metrics.h: run.h5, the per-step record of a training run.
//
// /metrics/<name> are extendible datasets with one row per step: 1-D for
// job-wide figures, (steps, ranks) for per-rank ones. Written by rank 0 and
// flushed at every log interval so a live run can be read (h5py, plot_run.py).
// Root attributes hold the resolved deck and the machine.
#ifndef PARTITA_METRICS_H
#define PARTITA_METRICS_H

#include <hdf5.h>
#include <stdint.h>

// Job-wide columns, in this order in MetricsRow.v.
// comm_bytes_<op>: bytes this rank sent in the step, per collective (comm.h);
// comm_wait: seconds blocked in collectives (communication not hidden by compute).
enum { M_STEP, M_LOSS, M_VAL_LOSS, M_LR, M_GRAD_NORM, M_TOKENS_PER_S, M_MFU, M_STEP_TIME,
       M_TOKENS, M_COMM_ALL_REDUCE, M_COMM_REDUCE_SCATTER, M_COMM_ALL_GATHER, M_COMM_WAIT,
       M_COMM_ALL_TO_ALL, M_NCOLS };

typedef struct MetricsRow {
    double v[M_NCOLS];
    const double *peak_rss_mb;   // (ranks) per-rank peak resident memory, MiB
} MetricsRow;

typedef struct Metrics {
    hid_t file;
    hid_t ds[M_NCOLS];
    hid_t ds_rss;
    int ranks;
    uint64_t rows;
} Metrics;

const char *metrics_name(int col);
// Creates path (rank 0 only), with the deck text and machine description as attributes.
void metrics_create(Metrics *mt, const char *path, int ranks, const char *deck_text,
                    const char *machine, double peak_gflops, int threads);
// Reopens path to continue a resumed run: keeps the first `rows` rows (the
// steps the checkpoint holds) and drops the rest. Returns -1 (and does
// nothing) if the file is missing or was written by another number of ranks.
int metrics_reopen(Metrics *mt, const char *path, int ranks, uint64_t rows);
void metrics_append(Metrics *mt, const MetricsRow *row);
void metrics_flush(Metrics *mt);
void metrics_close(Metrics *mt);

#endif
