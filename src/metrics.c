// metrics.c: extendible per-step datasets in run.h5, keyed by step, readable live.
#include "metrics.h"
#include "h5io.h"
#include "log.h"
#include "version.h"

#include <hdf5_hl.h>
#include <unistd.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define METRICS_ROW_(id, name, unit, integer, description) [id] = {name, unit, integer, description},
static const MetricsColumn columns[M_NCOLS] = {METRICS_COLUMNS(METRICS_ROW_)};
#undef METRICS_ROW_

const char *metrics_name(int col) { return col >= 0 && col < M_NCOLS ? columns[col].name : "?"; }
const MetricsColumn *metrics_column(int col) { return col >= 0 && col < M_NCOLS ? &columns[col] : NULL; }

#define RSS_UNITS "MiB"
#define RSS_DESCRIPTION "peak resident memory of each rank since its start, (steps, ranks); NaN past the row's `ranks`"

// Without HDF5's file lock, so that readers (h5py, h5dump) can open the file
// while this process holds it open for writing.
static hid_t access_plist(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5_CHECK(fapl);
    H5_CHECK(H5Pset_file_locking(fapl, 0, 1));
    return fapl;
}

// A (rows) or (rows, width) series of doubles, unlimited in rows (and width), NaN where unwritten.
// int64 series (integer) are filled with -1 where unwritten.
static hid_t create_series_typed(hid_t g, const char *name, int width, int integer, const char *unit,
                                 const char *description) {
    hsize_t dims[2] = {0, (hsize_t)width}, maxd[2] = {H5S_UNLIMITED, H5S_UNLIMITED};
    hsize_t chunk[2] = {256, 16};
    int ndim = width > 0 ? 2 : 1;
    double nan = NAN;
    long long none = -1;
    hid_t sp = H5Screate_simple(ndim, dims, maxd);
    H5_CHECK(sp);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5_CHECK(dcpl);
    H5_CHECK(H5Pset_chunk(dcpl, ndim, chunk));
    if (integer) H5_CHECK(H5Pset_fill_value(dcpl, H5T_NATIVE_LLONG, &none));
    else H5_CHECK(H5Pset_fill_value(dcpl, H5T_NATIVE_DOUBLE, &nan));
    H5_CHECK(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_INCR));
    hid_t ds = H5Dcreate2(g, name, integer ? H5T_STD_I64LE : H5T_IEEE_F64LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5_CHECK(ds);
    H5_CHECK(H5Pclose(dcpl));
    H5_CHECK(H5Sclose(sp));
    if (unit) h5_attr_str(ds, "units", unit);
    if (description) h5_attr_str(ds, "description", description);
    return ds;
}

static hid_t create_series(hid_t g, const char *name, int width) {
    return create_series_typed(g, name, width, 0, RSS_UNITS, RSS_DESCRIPTION);
}

static hid_t create_column(hid_t g, int c) {
    return create_series_typed(g, columns[c].name, 0, columns[c].integer, columns[c].unit, columns[c].description);
}

// Units and descriptions on a column of a file written before they existed.
static void describe_column(hid_t ds, const char *unit, const char *description) {
    if (H5Aexists(ds, "units") <= 0) h5_attr_str(ds, "units", unit);
    if (H5Aexists(ds, "description") <= 0) h5_attr_str(ds, "description", description);
}

// `step` is the dimension scale of every column's rows and `rank` (0..width-1)
// of peak_rss_mb's columns, so netCDF readers see named dimensions.
static void attach_scales(Metrics *mt) {
    hid_t step = mt->ds[M_STEP];
    if (H5DSis_scale(step) <= 0) H5_CHECK(H5DSset_scale(step, "step"));
    for (int c = 1; c < M_NCOLS; c++)
        if (H5DSis_attached(mt->ds[c], step, 0) <= 0) H5_CHECK(H5DSattach_scale(mt->ds[c], step, 0));
    if (H5DSis_attached(mt->ds_rss, step, 0) <= 0) H5_CHECK(H5DSattach_scale(mt->ds_rss, step, 0));
    hid_t sp = H5Dget_space(mt->ds_rss);
    H5_CHECK(sp);
    hsize_t dims[2] = {0, 0};
    H5_CHECK(H5Sget_simple_extent_dims(sp, dims, NULL));
    H5_CHECK(H5Sclose(sp));
    if (mt->ds_rank <= 0) {
        htri_t there = H5Lexists(mt->file, "metrics/rank", H5P_DEFAULT);
        H5_CHECK(there);
        if (there) mt->ds_rank = H5Dopen2(mt->file, "metrics/rank", H5P_DEFAULT);
        else {
            hid_t g = H5Gopen2(mt->file, "metrics", H5P_DEFAULT);
            H5_CHECK(g);
            mt->ds_rank = create_series_typed(g, "rank", 0, 1, "1", "rank index: the dimension scale of peak_rss_mb's columns");
            H5_CHECK(H5Gclose(g));
        }
        H5_CHECK(mt->ds_rank);
        if (H5DSis_scale(mt->ds_rank) <= 0) H5_CHECK(H5DSset_scale(mt->ds_rank, "rank"));
    }
    long long *idx = xmalloc(sizeof(long long) * (dims[1] ? dims[1] : 1), "run.h5 rank scale");
    for (hsize_t r = 0; r < dims[1]; r++) idx[r] = (long long)r;
    hsize_t size[1] = {dims[1]};
    H5_CHECK(H5Dset_extent(mt->ds_rank, size));
    if (dims[1]) H5_CHECK(H5Dwrite(mt->ds_rank, H5T_NATIVE_LLONG, H5S_ALL, H5S_ALL, H5P_DEFAULT, idx));
    free(idx);
    if (H5DSis_attached(mt->ds_rss, mt->ds_rank, 1) <= 0) H5_CHECK(H5DSattach_scale(mt->ds_rss, mt->ds_rank, 1));
}

static void buffers(Metrics *mt, int ranks, int buffer_rows) {
    mt->ranks = ranks;
    mt->cap = buffer_rows < 1 ? 1 : buffer_rows > 4096 ? 4096 : buffer_rows;
    mt->buf = xmalloc(sizeof(double) * (size_t)mt->cap * M_NCOLS, "run.h5 row buffer");
    mt->rss = xmalloc(sizeof(double) * (size_t)mt->cap * (size_t)ranks, "run.h5 row buffer");
    mt->col = xmalloc(sizeof(double) * (size_t)mt->cap, "run.h5 row buffer");
}

static void create(Metrics *mt, const char *path) {
    hid_t fapl = access_plist();
    mt->file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5_CHECK(H5Pclose(fapl));
    if (mt->file < 0) FATAL("check that [run] out_dir is a writable directory", "cannot create '%s'", path);
    hid_t g = h5_group(mt->file, "metrics");
    for (int c = 0; c < M_NCOLS; c++) mt->ds[c] = create_column(g, c);
    mt->ds_rss = create_series(g, "peak_rss_mb", mt->ranks);
    h5_attr_str(mt->ds_rss, "layout", "(steps, ranks): columns past the row's `ranks` are NaN");
    H5_CHECK(H5Gclose(g));
}

static uint64_t extent0(hid_t ds, hsize_t *width) {
    hid_t sp = H5Dget_space(ds);
    H5_CHECK(sp);
    hsize_t dims[2] = {0, 0}, maxd[2] = {0, 0};
    int nd = H5Sget_simple_extent_dims(sp, dims, maxd);
    H5_CHECK(nd);
    H5_CHECK(H5Sclose(sp));
    if (width) *width = nd == 2 ? (maxd[1] == H5S_UNLIMITED ? H5S_UNLIMITED : dims[1]) : 0;
    return dims[0];
}

// The rows to keep: the leading rows with 0 < step <= resume_step, steps increasing.
static uint64_t rows_to_keep(hid_t ds_step, int64_t resume_step) {
    uint64_t n = extent0(ds_step, NULL), keep = 0;
    if (n == 0) return 0;
    double *steps = xmalloc(sizeof(double) * n, "run.h5 step column");
    H5_CHECK(H5Dread(ds_step, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, steps));
    double prev = 0;
    while (keep < n && steps[keep] > prev && steps[keep] <= (double)resume_step) prev = steps[keep++];
    free(steps);
    return keep;
}

// peak_rss_mb of a file from before it was extendible in ranks: copied into one that is.
static hid_t widen_rss(hid_t f, hid_t ds, uint64_t rows, int ranks) {
    hsize_t w;
    extent0(ds, &w);
    if (w == H5S_UNLIMITED) return ds;
    double *old = xmalloc(sizeof(double) * (rows ? rows : 1) * (w ? w : 1), "run.h5 peak_rss_mb");
    if (rows && w) {
        hid_t fs = H5Dget_space(ds);
        hsize_t start[2] = {0, 0}, count[2] = {rows, w};
        H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
        hid_t ms = H5Screate_simple(2, count, NULL);
        H5_CHECK(H5Dread(ds, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, old));
        H5_CHECK(H5Sclose(ms));
        H5_CHECK(H5Sclose(fs));
    }
    hid_t step = H5Dopen2(f, "metrics/step", H5P_DEFAULT);
    H5_CHECK(step);
    if (H5DSis_attached(ds, step, 0) > 0) H5_CHECK(H5DSdetach_scale(ds, step, 0));
    H5_CHECK(H5Dclose(step));
    H5_CHECK(H5Dclose(ds));
    H5_CHECK(H5Ldelete(f, "metrics/peak_rss_mb", H5P_DEFAULT));
    hid_t g = H5Gopen2(f, "metrics", H5P_DEFAULT);
    H5_CHECK(g);
    ds = create_series(g, "peak_rss_mb", (int)(w > (hsize_t)ranks ? w : (hsize_t)ranks));
    H5_CHECK(H5Gclose(g));
    h5_attr_str(ds, "layout", "(steps, ranks): columns past the row's `ranks` are NaN");
    if (rows && w) {
        hsize_t size[2] = {rows, w > (hsize_t)ranks ? w : (hsize_t)ranks}, start[2] = {0, 0}, count[2] = {rows, w};
        H5_CHECK(H5Dset_extent(ds, size));
        hid_t fs = H5Dget_space(ds);
        H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
        hid_t ms = H5Screate_simple(2, count, NULL);
        H5_CHECK(H5Dwrite(ds, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, old));
        H5_CHECK(H5Sclose(ms));
        H5_CHECK(H5Sclose(fs));
    }
    free(old);
    return ds;
}

// Continues path: keeps the rows up to resume_step, adds the columns an older
// file lacks (NaN before now), widens peak_rss_mb to this job's ranks.
static int reopen(Metrics *mt, const char *path, int64_t resume_step) {
    hid_t fapl = access_plist(), f;
    H5E_BEGIN_TRY {
        f = H5Fopen(path, H5F_ACC_RDWR, fapl);
        if (f >= 0 && (H5Lexists(f, "metrics/step", H5P_DEFAULT) <= 0 || H5Lexists(f, "metrics/peak_rss_mb", H5P_DEFAULT) <= 0)) {
            H5Fclose(f);
            f = -1;
        }
    } H5E_END_TRY;
    H5_CHECK(H5Pclose(fapl));
    if (f < 0) return -1;
    mt->file = f;
    mt->ds[M_STEP] = H5Dopen2(f, "metrics/step", H5P_DEFAULT);
    H5_CHECK(mt->ds[M_STEP]);
    uint64_t keep = rows_to_keep(mt->ds[M_STEP], resume_step);
    hid_t g = H5Gopen2(f, "metrics", H5P_DEFAULT);
    H5_CHECK(g);
    for (int c = 1; c < M_NCOLS; c++) {
        if (H5Lexists(g, columns[c].name, H5P_DEFAULT) > 0) mt->ds[c] = H5Dopen2(g, columns[c].name, H5P_DEFAULT);
        else mt->ds[c] = create_column(g, c);
        H5_CHECK(mt->ds[c]);
    }
    H5_CHECK(H5Gclose(g));
    hsize_t rows[1] = {keep};
    for (int c = 0; c < M_NCOLS; c++) H5_CHECK(H5Dset_extent(mt->ds[c], rows));
    mt->ds_rss = H5Dopen2(f, "metrics/peak_rss_mb", H5P_DEFAULT);
    H5_CHECK(mt->ds_rss);
    uint64_t rss_rows = extent0(mt->ds_rss, NULL);
    mt->ds_rss = widen_rss(f, mt->ds_rss, keep < rss_rows ? keep : rss_rows, mt->ranks);
    hid_t sp = H5Dget_space(mt->ds_rss);
    hsize_t dims[2];
    H5_CHECK(H5Sget_simple_extent_dims(sp, dims, NULL));
    H5_CHECK(H5Sclose(sp));
    hsize_t size[2] = {keep, dims[1] > (hsize_t)mt->ranks ? dims[1] : (hsize_t)mt->ranks};
    H5_CHECK(H5Dset_extent(mt->ds_rss, size));
    mt->rows = keep;
    for (int c = 0; c < M_NCOLS; c++) describe_column(mt->ds[c], columns[c].unit, columns[c].description);
    describe_column(mt->ds_rss, RSS_UNITS, RSS_DESCRIPTION);
    return 0;
}

int metrics_open(Metrics *mt, const char *path, int ranks, int64_t resume_step, int buffer_rows) {
    memset(mt, 0, sizeof *mt);
    buffers(mt, ranks, buffer_rows);
    if (resume_step > 0) {
        if (reopen(mt, path, resume_step) == 0) {
            attach_scales(mt);
            return 1;
        }
        FILE *probe = fopen(path, "rb");
        if (probe) {
            fclose(probe);
            char old[1200];
            snprintf(old, sizeof old, "%.1100s.unreadable-%lld.h5", path, (long long)time(NULL));
            if (rename(path, old) == 0) log_warn("%s does not open as a run record; kept as %s", path, old);
        }
    }
    create(mt, path);
    attach_scales(mt);
    return 0;
}

static void attr_array(hid_t obj, const char *name, hid_t type, const void *v, int n) {
    hsize_t dims[1] = {(hsize_t)(n > 0 ? n : 1)};
    if (H5Aexists(obj, name) > 0) H5_CHECK(H5Adelete(obj, name));
    hid_t sp = H5Screate_simple(1, dims, NULL);
    H5_CHECK(sp);
    hid_t a = H5Acreate2(obj, name, type == H5T_NATIVE_INT ? H5T_STD_I32LE : H5T_IEEE_F64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(a);
    H5_CHECK(H5Awrite(a, type, v));
    H5_CHECK(H5Aclose(a));
    H5_CHECK(H5Sclose(sp));
}

void metrics_describe(Metrics *mt, const char *deck_text, const char *machine, double peak_gflops,
                      const PeakInfo *how, const double *per_rank, int threads, int64_t start_step) {
    hid_t f = mt->file;
    h5_attr_str(f, "deck", deck_text);
    h5_attr_str(f, "machine", machine);
    h5_attr_i64(f, "ranks", mt->ranks);
    h5_attr_i64(f, "threads_per_rank", threads);
    h5_attr_f64(f, "sgemm_peak_gflops", peak_gflops);
    h5_attr_str(f, "peak_method", how->method);
    attr_array(f, "peak_sizes", H5T_NATIVE_INT, how->sizes, how->nsizes);
    attr_array(f, "peak_size_gflops_rank0", H5T_NATIVE_DOUBLE, how->size_gflops, how->nsizes);
    h5_attr_i64(f, "peak_reps", how->reps);
    attr_array(f, "peak_gflops_per_rank", H5T_NATIVE_DOUBLE, per_rank, mt->ranks);
    // One line per job of this run, so a resumed record says which job wrote which steps.
    enum { JOBS_MAX = 1 << 16 };
    char *jobs = xcalloc(JOBS_MAX, "run.h5 jobs");
    if (h5_read_attr_str(f, "jobs", jobs, JOBS_MAX - 256) != 0) jobs[0] = 0;
    char stamp[64];
    time_t now = time(NULL);
    struct tm tmv;
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
    size_t len = strlen(jobs);
    snprintf(jobs + len, JOBS_MAX - len, "%s: ranks=%d threads_per_rank=%d from step %lld\n", stamp, mt->ranks,
             threads, (long long)start_step);
    h5_attr_str(f, "jobs", jobs);
    free(jobs);
}

void metrics_hosts(MPI_Comm comm, char *buf, size_t n) {
    enum { HOST = 256 };
    int rank, size;
    MPI_CHECK(MPI_Comm_rank(comm, &rank));
    MPI_CHECK(MPI_Comm_size(comm, &size));
    char mine[HOST] = "?";
    if (gethostname(mine, HOST - 1) != 0) snprintf(mine, HOST, "?");
    mine[HOST - 1] = 0;
    char *all = xmalloc((size_t)HOST * (size_t)size, "host names");
    MPI_CHECK(MPI_Allgather(mine, HOST, MPI_CHAR, all, HOST, MPI_CHAR, comm));
    size_t len = 0;
    if (n) buf[0] = 0;
    for (int r = 0; r < size; r++) {
        const char *h = all + (size_t)r * HOST;
        int seen = 0;
        for (int q = 0; q < r && !seen; q++) seen = strcmp(h, all + (size_t)q * HOST) == 0;
        if (seen || len + strlen(h) + 2 >= n) continue;
        len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? "," : "", h);
    }
    free(all);
}

void metrics_describe_job(Metrics *mt, const char *hosts) {
    hid_t f = mt->file;
    char stamp[64];
    time_t now = time(NULL);
    struct tm tmv;
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tmv));
    h5_attr_str(f, "start_time", stamp);
    h5_attr_str(f, "partita_version", partita_version());
    h5_attr_str(f, "hosts", hosts);
    const char *job = getenv("SLURM_JOB_ID");
    if (job && job[0]) h5_attr_str(f, "slurm_job_id", job);
    else if (H5Aexists(f, "slurm_job_id") > 0) H5_CHECK(H5Adelete(f, "slurm_job_id"));
}

// Writes `n` rows of `width` doubles (src, row-major) at row `at`, columns [0, width).
static void write_rows(hid_t ds, uint64_t at, uint64_t n, int width, const double *src) {
    int ndim = width > 0 ? 2 : 1;
    hsize_t w = width > 0 ? (hsize_t)width : 1;
    hid_t sp = H5Dget_space(ds);
    H5_CHECK(sp);
    hsize_t dims[2] = {0, 0};
    H5_CHECK(H5Sget_simple_extent_dims(sp, dims, NULL));
    H5_CHECK(H5Sclose(sp));
    hsize_t size[2] = {at + n, ndim == 2 ? dims[1] : 0}, start[2] = {at, 0}, count[2] = {n, w};
    H5_CHECK(H5Dset_extent(ds, size));
    hid_t fs = H5Dget_space(ds);
    H5_CHECK(fs);
    H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
    hid_t ms = H5Screate_simple(ndim, count, NULL);
    H5_CHECK(ms);
    H5_CHECK(H5Dwrite(ds, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, src));
    H5_CHECK(H5Sclose(ms));
    H5_CHECK(H5Sclose(fs));
}

void metrics_append(Metrics *mt, const MetricsRow *row) {
    if (mt->pending == mt->cap) metrics_flush(mt);
    memcpy(mt->buf + (size_t)mt->pending * M_NCOLS, row->v, sizeof row->v);
    memcpy(mt->rss + (size_t)mt->pending * (size_t)mt->ranks, row->peak_rss_mb, sizeof(double) * (size_t)mt->ranks);
    mt->pending++;
}

void metrics_flush(Metrics *mt) {
    uint64_t n = (uint64_t)mt->pending;
    if (n) {
        double *col = mt->col;
        for (int c = 0; c < M_NCOLS; c++) {
            for (uint64_t i = 0; i < n; i++) col[i] = mt->buf[i * M_NCOLS + (uint64_t)c];
            write_rows(mt->ds[c], mt->rows, n, 0, col);
        }
        write_rows(mt->ds_rss, mt->rows, n, mt->ranks, mt->rss);
        mt->rows += n;
        mt->pending = 0;
    }
    H5_CHECK(H5Fflush(mt->file, H5F_SCOPE_GLOBAL));
}

hid_t metrics_series(Metrics *mt, const char *path, int width) {
    hid_t ds = -1;
    H5E_BEGIN_TRY {
        if (H5Lexists(mt->file, path, H5P_DEFAULT) > 0) ds = H5Dopen2(mt->file, path, H5P_DEFAULT);
    } H5E_END_TRY;
    hsize_t dims[2] = {0, 0};
    if (ds >= 0) {
        hid_t sp = H5Dget_space(ds);
        H5_CHECK(sp);
        if (H5Sget_simple_extent_ndims(sp) == 2) H5_CHECK(H5Sget_simple_extent_dims(sp, dims, NULL));
        H5_CHECK(H5Sclose(sp));
        if (dims[1] == (hsize_t)width) {
            hsize_t size[2] = {mt->rows, (hsize_t)width};
            H5_CHECK(H5Dset_extent(ds, size));
            return ds;
        }
        H5_CHECK(H5Dclose(ds));     // another width: another model wrote it; start afresh
        H5_CHECK(H5Ldelete(mt->file, path, H5P_DEFAULT));
    }
    const char *slash = strrchr(path, '/');
    char dir[256];
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 0, path);
    hid_t g = dir[0] ? h5_group(mt->file, dir) : H5Gopen2(mt->file, "/", H5P_DEFAULT);
    H5_CHECK(g);
    ds = create_series(g, slash ? slash + 1 : path, width);
    H5_CHECK(H5Gclose(g));
    hsize_t size[2] = {mt->rows, (hsize_t)width};     // rows of earlier jobs without it: NaN
    H5_CHECK(H5Dset_extent(ds, size));
    return ds;
}

void metrics_series_write(hid_t ds, uint64_t at, uint64_t n, int width, const double *rows) {
    if (n) write_rows(ds, at, n, width, rows);
}

void metrics_close(Metrics *mt) {
    if (mt->file <= 0) return;
    metrics_flush(mt);
    for (int c = 0; c < M_NCOLS; c++) H5_CHECK(H5Dclose(mt->ds[c]));
    H5_CHECK(H5Dclose(mt->ds_rss));
    if (mt->ds_rank > 0) H5_CHECK(H5Dclose(mt->ds_rank));
    h5_close(mt->file);
    mt->file = 0;
    free(mt->buf);
    free(mt->rss);
    free(mt->col);
    mt->buf = mt->rss = mt->col = NULL;
}
