// metrics.h: run.h5, the per-step record of a training run.
//
// /metrics/<name> are extendible datasets with one row per optimizer step,
// keyed by the `step` column: 1-D for job-wide figures, and peak_rss_mb as
// (steps, ranks), extendible in both dimensions: its width is the most ranks
// any job of the run had, and a row of a job with fewer ranks is NaN past its
// `ranks` column. One run keeps one run.h5 across resumes at any layout: a
// resume keeps the rows with step <= the checkpoint's step (found by reading
// the step column) and appends from there.
//
// Live reading: rank 0 writes the file without HDF5's file lock and only in
// bursts at flush time (rows are buffered in memory between log intervals),
// so h5py and h5dump open it while the run goes on and see every flushed row.
// HDF5's SWMR mode was tried and not used: its files cannot be opened by
// h5dump, nor by h5py without swmr=True. Root attributes hold the resolved
// deck, the machine, how the MFU peak was measured and a line per job.
#ifndef PARTITA_METRICS_H
#define PARTITA_METRICS_H

#include <hdf5.h>
#include <stdint.h>

#include "peak.h"

// Job-wide columns, in this order in MetricsRow.v.
// comm_bytes_<op>: bytes this rank sent in the step, per collective (comm.h);
// comm_wait: seconds blocked in collectives (communication not hidden by compute);
// gflops: achieved model GFLOP/s of the job; skipped: 1 where a non-finite
// loss or gradient norm skipped the update (train.on_nan = skip); ranks: the
// job's ranks (the meaningful columns of peak_rss_mb); data_rows: global
// token rows consumed after the step (the data cursor).
// offload_read_bytes / offload_write_bytes: bytes rank 0 moved between memory
// and its offload file in the step; io_wait: seconds rank 0's step waited on
// that I/O; update_time: seconds of rank 0's optimizer update (the offloaded
// pipeline's whole update, or the in-memory AdamW).
enum { M_STEP, M_LOSS, M_VAL_LOSS, M_LR, M_GRAD_NORM, M_TOKENS_PER_S, M_MFU, M_STEP_TIME,
       M_TOKENS, M_COMM_ALL_REDUCE, M_COMM_REDUCE_SCATTER, M_COMM_ALL_GATHER, M_COMM_WAIT,
       M_GFLOPS, M_SKIPPED, M_RANKS, M_DATA_ROWS, M_COMM_ALL_TO_ALL,
       M_OFFLOAD_READ_BYTES, M_OFFLOAD_WRITE_BYTES, M_IO_WAIT, M_UPDATE_TIME, M_NCOLS };

typedef struct MetricsRow {
    double v[M_NCOLS];
    const double *peak_rss_mb;   // (ranks) per-rank peak resident memory, MiB
} MetricsRow;

typedef struct Metrics {
    hid_t file;
    hid_t ds[M_NCOLS];
    hid_t ds_rss;
    int ranks;              // this job's
    uint64_t rows;          // rows in the file
    int cap, pending;       // rows buffered since the last flush
    double *buf;            // (cap, M_NCOLS)
    double *rss;            // (cap, ranks)
    double *col;            // (cap) one column, for the write
} Metrics;

const char *metrics_name(int col);
// Opens path for a run of `ranks` ranks (rank 0 only), buffering up to
// buffer_rows rows between flushes. resume_step > 0: continues the file if
// it opens (keeping the rows with step <= resume_step) and returns 1; else
// (or if it does not open: it is kept as run-unreadable-<time>.h5) creates
// it and returns 0.
int metrics_open(Metrics *mt, const char *path, int ranks, int64_t resume_step, int buffer_rows);
// Root attributes of this job: deck, machine, ranks, threads, the MFU peak and
// how it was measured (per-rank figures in per_rank, ranks entries), and one
// more line in `jobs`.
void metrics_describe(Metrics *mt, const char *deck_text, const char *machine, double peak_gflops,
                      const PeakInfo *how, const double *per_rank, int threads, int64_t start_step);
void metrics_append(Metrics *mt, const MetricsRow *row);
// Writes the buffered rows and flushes the file (readers see them from now).
void metrics_flush(Metrics *mt);
void metrics_close(Metrics *mt);

#endif
