// metrics.c: extendible per-step datasets in run.h5.
#include "metrics.h"
#include "h5io.h"
#include "log.h"

#include <string.h>

static const char *names[M_NCOLS] = {
    "step", "loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time",
    "tokens", "comm_bytes_all_reduce", "comm_bytes_reduce_scatter", "comm_bytes_all_gather", "comm_wait",
    "comm_bytes_all_to_all"};

const char *metrics_name(int col) { return col >= 0 && col < M_NCOLS ? names[col] : "?"; }

static hid_t create_series(hid_t g, const char *name, int width) {
    hsize_t dims[2] = {0, (hsize_t)width}, maxd[2] = {H5S_UNLIMITED, (hsize_t)width};
    hsize_t chunk[2] = {256, (hsize_t)width};
    int ndim = width > 1 ? 2 : 1;
    hid_t sp = H5Screate_simple(ndim, dims, maxd);
    H5_CHECK(sp);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5_CHECK(dcpl);
    H5_CHECK(H5Pset_chunk(dcpl, ndim, chunk));
    hid_t ds = H5Dcreate2(g, name, H5T_IEEE_F64LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5_CHECK(ds);
    H5_CHECK(H5Pclose(dcpl));
    H5_CHECK(H5Sclose(sp));
    return ds;
}

void metrics_create(Metrics *mt, const char *path, int ranks, const char *deck_text,
                    const char *machine, double peak_gflops, int threads) {
    memset(mt, 0, sizeof *mt);
    mt->ranks = ranks;
    mt->file = h5_create(path);
    h5_attr_str(mt->file, "deck", deck_text);
    h5_attr_str(mt->file, "machine", machine);
    h5_attr_i64(mt->file, "ranks", ranks);
    h5_attr_i64(mt->file, "threads_per_rank", threads);
    h5_attr_f64(mt->file, "sgemm_peak_gflops", peak_gflops);
    hid_t g = h5_group(mt->file, "metrics");
    for (int c = 0; c < M_NCOLS; c++) mt->ds[c] = create_series(g, names[c], 1);
    mt->ds_rss = create_series(g, "peak_rss_mb", ranks);
    h5_attr_str(mt->ds_rss, "layout", "(steps, ranks)");
    H5_CHECK(H5Gclose(g));
}

int metrics_reopen(Metrics *mt, const char *path, int ranks, uint64_t rows) {
    memset(mt, 0, sizeof *mt);
    hid_t f;
    H5E_BEGIN_TRY { f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT); } H5E_END_TRY;
    if (f < 0) return -1;
    int64_t r = 0;
    if (h5_read_attr_i64(f, "ranks", &r) < 0 || r != ranks) {
        H5_CHECK(H5Fclose(f));
        return -1;
    }
    mt->file = f;
    mt->ranks = ranks;
    hsize_t keep[2] = {rows, (hsize_t)ranks};
    for (int c = 0; c < M_NCOLS; c++) {
        char name[64];
        snprintf(name, sizeof name, "metrics/%s", names[c]);
        mt->ds[c] = H5Dopen2(f, name, H5P_DEFAULT);
        H5_CHECK(mt->ds[c]);
        H5_CHECK(H5Dset_extent(mt->ds[c], keep));
    }
    mt->ds_rss = H5Dopen2(f, "metrics/peak_rss_mb", H5P_DEFAULT);
    H5_CHECK(mt->ds_rss);
    H5_CHECK(H5Dset_extent(mt->ds_rss, keep));
    mt->rows = rows;
    return 0;
}

static void append_to(hid_t ds, uint64_t row, int width, const double *v) {
    hsize_t size[2] = {row + 1, (hsize_t)width}, start[2] = {row, 0}, count[2] = {1, (hsize_t)width};
    int ndim = width > 1 ? 2 : 1;
    H5_CHECK(H5Dset_extent(ds, size));
    hid_t fs = H5Dget_space(ds);
    H5_CHECK(fs);
    H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
    hid_t ms = H5Screate_simple(ndim, count, NULL);
    H5_CHECK(ms);
    H5_CHECK(H5Dwrite(ds, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, v));
    H5_CHECK(H5Sclose(ms));
    H5_CHECK(H5Sclose(fs));
}

void metrics_append(Metrics *mt, const MetricsRow *row) {
    for (int c = 0; c < M_NCOLS; c++) append_to(mt->ds[c], mt->rows, 1, &row->v[c]);
    append_to(mt->ds_rss, mt->rows, mt->ranks, row->peak_rss_mb);
    mt->rows++;
}

void metrics_flush(Metrics *mt) { H5_CHECK(H5Fflush(mt->file, H5F_SCOPE_GLOBAL)); }

void metrics_close(Metrics *mt) {
    for (int c = 0; c < M_NCOLS; c++) H5_CHECK(H5Dclose(mt->ds[c]));
    H5_CHECK(H5Dclose(mt->ds_rss));
    h5_close(mt->file);
    mt->file = 0;
}
