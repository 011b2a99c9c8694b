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
//
// For tools: every column has `units` and `description` attributes; `step`
// is an HDF5 dimension scale (and `rank`, 0..width-1, for peak_rss_mb's
// second dimension) attached to every column, so netCDF readers (xarray with
// h5netcdf) see named dimensions (step, rank) rather than phony ones.
#ifndef PARTITA_METRICS_H
#define PARTITA_METRICS_H

#include <hdf5.h>
#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "peak.h"

// Job-wide columns, in this order in MetricsRow.v. One line per column: its
// enum id, dataset name, unit (UDUNITS spelling; "1" = dimensionless), whether
// it is stored as int64 (else float64) and a description; run.h5 carries unit
// and description as the attributes `units` and `description` of each dataset.
// To add a column, append one line (helpers of other features do).
#define METRICS_COLUMNS(X) \
    X(M_STEP, "step", "1", 1, "optimizer step, 1-based: the step this row describes (the dimension scale of every column)") \
    X(M_LOSS, "loss", "nat", 0, "mean training cross-entropy of the step over every token of the job, nats per token") \
    X(M_VAL_LOSS, "val_loss", "nat", 0, "mean validation cross-entropy, nats per token; NaN where not evaluated") \
    X(M_LR, "lr", "1", 0, "learning rate applied at the step") \
    X(M_GRAD_NORM, "grad_norm", "1", 0, "global L2 norm of the gradient before clipping") \
    X(M_TOKENS_PER_S, "tokens_per_s", "token/s", 0, "tokens of the whole job per second of step time") \
    X(M_MFU, "mfu", "1", 0, "model FLOPs utilisation as a fraction (0.21 = 21%): achieved model FLOP/s over the job's measured GEMM peak (sgemm_peak_gflops)") \
    X(M_STEP_TIME, "step_time", "s", 0, "wall seconds of the step (forward, backward, communication, update)") \
    X(M_TOKENS, "tokens", "token", 1, "training tokens consumed by the run after the step (data_rows x seq_len)") \
    X(M_COMM_ALL_REDUCE, "comm_bytes_all_reduce", "byte", 0, "bytes rank 0 sent in all-reduces during the step") \
    X(M_COMM_REDUCE_SCATTER, "comm_bytes_reduce_scatter", "byte", 0, "bytes rank 0 sent in reduce-scatters during the step") \
    X(M_COMM_ALL_GATHER, "comm_bytes_all_gather", "byte", 0, "bytes rank 0 sent in all-gathers during the step") \
    X(M_COMM_WAIT, "comm_wait", "s", 0, "seconds rank 0 was blocked waiting for collectives (communication not hidden by compute)") \
    X(M_GFLOPS, "gflops", "GFLOP/s", 0, "achieved model GFLOP/s of the job (6N + 12LCT FLOPs per token x tokens_per_s)") \
    X(M_SKIPPED, "skipped", "1", 1, "1 where a non-finite loss or gradient norm skipped the update (train.on_nan = skip), else 0") \
    X(M_RANKS, "ranks", "1", 1, "ranks of the job that wrote the row (the meaningful columns of peak_rss_mb)") \
    X(M_DATA_ROWS, "data_rows", "1", 1, "global token rows consumed after the step (the data cursor)") \
    X(M_COMM_ALL_TO_ALL, "comm_bytes_all_to_all", "byte", 0, "bytes rank 0 sent in all-to-alls during the step (sequence parallelism, MoE expert parallelism)") \
    X(M_CHECKPOINT_TIME, "checkpoint_time", "s", 0, "wall seconds of the checkpoint written after the step (0: none); its gathers are in the step's comm_bytes_*") \
    X(M_AUX_LOSS, "aux_loss", "1", 0, "MoE load-balancing term: unweighted sum over MoE layers, mean over micro-steps and ranks; NaN without MoE") \
    X(M_MOE_DROPPED, "moe_dropped", "1", 0, "fraction of MoE routing choices dropped by expert capacity; NaN without MoE") \
    X(M_COMM_INFLIGHT, "comm_inflight", "s", 0, "seconds rank 0 had a dp collective in flight during the step (issue to observed completion)") \
    X(M_OFFLOAD_READ_BYTES, "offload_read_bytes", "byte", 0, "bytes rank 0 read from its offload files (every ZeRO group) during the step; 0 without offload") \
    X(M_OFFLOAD_WRITE_BYTES, "offload_write_bytes", "byte", 0, "bytes rank 0 wrote to its offload files (every ZeRO group) during the step; 0 without offload") \
    X(M_IO_WAIT, "io_wait", "s", 0, "seconds rank 0's step waited on offload I/O") \
    X(M_UPDATE_TIME, "update_time", "s", 0, "seconds of rank 0's optimizer update (the offloaded pipeline's whole update, or the in-memory AdamW), less its time blocked in collectives (comm_wait's)") \
    X(M_COMM_WAIT_SYNC, "comm_wait_sync", "s", 0, "the part of comm_wait spent at the node-shared parameters' barriers: waiting for the slowest rank, no bytes moved") \
    X(M_COMM_BUSY, "comm_busy", "s", 0, "seconds rank 0 spent inside MPI outside waits during the step: issuing and polling the dp collectives, where MPI copies and reduces on the computing thread") \
    X(M_GRAD_POSTPONED, "grad_postponed", "1", 1, "matrix gradient products rank 0 postponed in the step rather than wait for the other rank's half (ZeRO's fused gradients); 0 without them") \
    X(M_COMM_WAIT_MAX, "comm_wait_max", "s", 0, "the largest comm_wait of any rank in the step: the rank that waited longest for the others") \
    X(M_GRAD_POSTPONED_MAX, "grad_postponed_max", "1", 1, "the most matrix gradient products any rank postponed in the step (grad_postponed's largest over ranks)")

#define METRICS_ENUM_(id, name, unit, integer, description) id,
enum { METRICS_COLUMNS(METRICS_ENUM_) M_NCOLS };
#undef METRICS_ENUM_

typedef struct MetricsColumn {
    const char *name, *unit;
    int integer;                // stored as int64 (else float64)
    const char *description;
} MetricsColumn;

typedef struct MetricsRow {
    double v[M_NCOLS];
    const double *peak_rss_mb;   // (ranks) per-rank peak resident memory, MiB
} MetricsRow;

typedef struct Metrics {
    hid_t file;
    hid_t ds[M_NCOLS];
    hid_t ds_rss;
    hid_t ds_rank;          // (width) 0..width-1: the dimension scale of peak_rss_mb's ranks
    int ranks;              // this job's
    uint64_t rows;          // rows in the file
    int cap, pending;       // rows buffered since the last flush
    double *buf;            // (cap, M_NCOLS)
    double *rss;            // (cap, ranks)
    double *col;            // (cap) one column, for the write
} Metrics;

const char *metrics_name(int col);
const MetricsColumn *metrics_column(int col);
// Collective over comm: the distinct host names of its ranks, comma-separated, into buf (every rank).
void metrics_hosts(MPI_Comm comm, char *buf, size_t n);
// Opens path for a run of `ranks` ranks (rank 0 only), buffering up to
// buffer_rows rows between flushes. resume_step > 0: continues the file if
// it opens (keeping the rows with step <= resume_step) and returns 1; else
// (or if it does not open: it is kept as run-unreadable-<time>.h5) creates
// it and returns 0.
int metrics_open(Metrics *mt, const char *path, int ranks, int64_t resume_step, int buffer_rows);
// Root attributes of this job: deck, machine, ranks, threads, the MFU peak and
// how it was measured (per-rank figures in per_rank, ranks entries), the start
// time, the Partita version, the hosts (from metrics_hosts), the Slurm job id
// where there is one, and one more line in `jobs`.
void metrics_describe(Metrics *mt, const char *deck_text, const char *machine, double peak_gflops,
                      const PeakInfo *how, const double *per_rank, int threads, int64_t start_step);
void metrics_describe_job(Metrics *mt, const char *hosts);
void metrics_append(Metrics *mt, const MetricsRow *row);
// Writes the buffered rows and flushes the file (readers see them from now).
void metrics_flush(Metrics *mt);
// A (steps, width) series of the caller's at path (outside /metrics, e.g. the
// MoE loads), its rows aligned with the columns' rows: created, or in a
// continued file reopened and cut to the rows kept (mt->rows). The caller
// writes it with metrics_series_write before metrics_flush and closes it.
hid_t metrics_series(Metrics *mt, const char *path, int width);
void metrics_series_write(hid_t ds, uint64_t at, uint64_t n, int width, const double *rows);
void metrics_close(Metrics *mt);

#endif
