// h5io.c: checked HDF5 helpers.
#include "h5io.h"
#include "log.h"

#include <string.h>

hid_t h5_create(const char *path) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) FATAL("check that the directory exists and is writable", "cannot create HDF5 file '%s'", path);
    return f;
}

hid_t h5_open_read(const char *path) {
    hid_t f = -1;
    // Keep HDF5's own stack quiet: the message below says what matters.
    H5E_BEGIN_TRY { f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); } H5E_END_TRY;
    if (f < 0) FATAL_ALL("check the path; token files are made by `partita prep`",
                     "cannot open HDF5 file '%s' (missing, unreadable or not HDF5)", path);
    return f;
}

void h5_close(hid_t f) { H5_CHECK(H5Fclose(f)); }

static void attr_write(hid_t obj, const char *name, hid_t type, const void *value) {
    hid_t sp = H5Screate(H5S_SCALAR);
    H5_CHECK(sp);
    if (H5Aexists(obj, name) > 0) H5_CHECK(H5Adelete(obj, name));
    hid_t a = H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(a);
    H5_CHECK(H5Awrite(a, type, value));
    H5_CHECK(H5Aclose(a));
    H5_CHECK(H5Sclose(sp));
}

void h5_attr_str(hid_t obj, const char *name, const char *value) {
    // Variable-length UTF-8, so that h5py hands readers a str, not bytes.
    hid_t t = H5Tcopy(H5T_C_S1);
    H5_CHECK(t);
    H5_CHECK(H5Tset_size(t, H5T_VARIABLE));
    H5_CHECK(H5Tset_cset(t, H5T_CSET_UTF8));
    attr_write(obj, name, t, &value);
    H5_CHECK(H5Tclose(t));
}

void h5_attr_i64(hid_t obj, const char *name, int64_t value) { attr_write(obj, name, H5T_NATIVE_INT64, &value); }
void h5_attr_f64(hid_t obj, const char *name, double value) { attr_write(obj, name, H5T_NATIVE_DOUBLE, &value); }

int h5_read_attr_i64(hid_t obj, const char *name, int64_t *value) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    H5_CHECK(a);
    H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, value));
    H5_CHECK(H5Aclose(a));
    return 0;
}

int h5_read_attr_str(hid_t obj, const char *name, char *buf, size_t n) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    H5_CHECK(a);
    hid_t ft = H5Aget_type(a);
    H5_CHECK(ft);
    int rc = -1;
    if (H5Tget_class(ft) == H5T_STRING) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5_CHECK(mt);
        H5_CHECK(H5Tset_cset(mt, H5Tget_cset(ft)));
        if (H5Tis_variable_str(ft) > 0) {
            char *s = NULL;
            H5_CHECK(H5Tset_size(mt, H5T_VARIABLE));
            H5_CHECK(H5Aread(a, mt, &s));
            snprintf(buf, n, "%s", s ? s : "");
            H5free_memory(s);
            rc = 0;
        } else if (H5Tget_size(ft) < n) {
            H5_CHECK(H5Tset_size(mt, H5Tget_size(ft) + 1));
            H5_CHECK(H5Aread(a, mt, buf));
            rc = 0;
        }
        H5_CHECK(H5Tclose(mt));
    }
    H5_CHECK(H5Tclose(ft));
    H5_CHECK(H5Aclose(a));
    return rc;
}

hid_t h5_group(hid_t f, const char *path) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5_CHECK(lcpl);
    H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
    hid_t g;
    htri_t there;
    // H5Lexists fails (noisily) when an intermediate group is missing: that is a "no".
    H5E_BEGIN_TRY { there = H5Lexists(f, path, H5P_DEFAULT); } H5E_END_TRY;
    if (there > 0) g = H5Gopen2(f, path, H5P_DEFAULT);
    else g = H5Gcreate2(f, path, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(g);
    H5_CHECK(H5Pclose(lcpl));
    return g;
}

static void write_array(hid_t loc, const char *name, hid_t type, const void *data, int ndim,
                        const uint64_t *dims) {
    hsize_t d[8];
    for (int i = 0; i < ndim; i++) d[i] = dims[i];
    hid_t sp = H5Screate_simple(ndim, d, NULL);
    H5_CHECK(sp);
    hid_t ds = H5Dcreate2(loc, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(ds);
    H5_CHECK(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
    H5_CHECK(H5Dclose(ds));
    H5_CHECK(H5Sclose(sp));
}

void h5_write_f32(hid_t loc, const char *name, const float *data, int ndim, const uint64_t *dims) {
    write_array(loc, name, H5T_NATIVE_FLOAT, data, ndim, dims);
}

void h5_write_i32(hid_t loc, const char *name, const int32_t *data, int ndim, const uint64_t *dims) {
    write_array(loc, name, H5T_NATIVE_INT32, data, ndim, dims);
}

void h5_write_i64(hid_t loc, const char *name, const int64_t *data, uint64_t n) {
    write_array(loc, name, H5T_NATIVE_INT64, data, 1, &n);
}

void h5_write_f64(hid_t loc, const char *name, const double *data, uint64_t n) {
    write_array(loc, name, H5T_NATIVE_DOUBLE, data, 1, &n);
}

void h5_write_strings(hid_t loc, const char *name, const char *const *strs, uint64_t n) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5_CHECK(t);
    H5_CHECK(H5Tset_size(t, H5T_VARIABLE));
    H5_CHECK(H5Tset_cset(t, H5T_CSET_UTF8));
    hsize_t d = n;
    hid_t sp = H5Screate_simple(1, &d, NULL);
    H5_CHECK(sp);
    hid_t ds = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(ds);
    if (n) H5_CHECK(H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, strs));
    H5_CHECK(H5Dclose(ds));
    H5_CHECK(H5Sclose(sp));
    H5_CHECK(H5Tclose(t));
}
