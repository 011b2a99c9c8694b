// h5io.c: checked HDF5 helpers.
#include "h5io.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

// The innermost entry of the stack, and the innermost one of a file driver
// (H5FD*: the layer that makes the system calls, whose errno is meaningful).
typedef struct Walk {
    char inner[240], driver[240];
} Walk;

static herr_t walk_entry(unsigned k, const H5E_error2_t *e, void *data) {
    Walk *w = data;
    const char *fn = e->func_name ? e->func_name : "?", *desc = e->desc ? e->desc : "?";
    if (k == 0) snprintf(w->inner, sizeof w->inner, "%s: %s", fn, desc);
    if (!w->driver[0] && strncmp(fn, "H5FD", 4) == 0) snprintf(w->driver, sizeof w->driver, "%s: %s", fn, desc);
    return 0;
}

void h5_reason(int err, char *buf, size_t n) {
    Walk w = {"", ""};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_entry, &w);
    H5Eclear2(H5E_DEFAULT);
    // One line: HDF5's messages carry newlines and sometimes the time of day.
    for (char *p = w.inner; *p; p++)
        if ((unsigned char)*p < ' ') *p = ' ';
    for (char *p = w.driver; *p; p++)
        if ((unsigned char)*p < ' ') *p = ' ';
    // errno speaks only for a failed system call, i.e. when a file driver
    // failed; elsewhere (a truncated file, a bad header) it is stale.
    if (w.driver[0] && err) snprintf(buf, n, "%s [HDF5 %s]", strerror(err), w.driver);
    else if (w.driver[0]) snprintf(buf, n, "HDF5 %s", w.driver);
    else if (w.inner[0]) snprintf(buf, n, "HDF5 %s", w.inner);
    else if (err) snprintf(buf, n, "%s", strerror(err));
    else snprintf(buf, n, "unknown reason");
}

_Noreturn void h5_fatal_at(const char *file, int line, const char *call, int err) {
    char why[600];
    h5_reason(err, why, sizeof why);
    log_fatal_at(file, line, NULL, "HDF5 call failed: %s: %s", call, why);
}

void h5_checksummed_format(hid_t fapl) { H5_CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST)); }

hid_t h5_create(const char *path) {
    h5_quiet();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5_CHECK(fapl);
    h5_checksummed_format(fapl);
    errno = 0;
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    int err = errno;
    H5_CHECK(H5Pclose(fapl));
    errno = err;
    if (f < 0) {
        char why[600];
        h5_reason(errno, why, sizeof why);
        FATAL("check that the directory exists, is writable and has space", "cannot create HDF5 file '%s': %s",
              path, why);
    }
    return f;
}

hid_t h5_open_read(const char *path) {
    h5_quiet();
    errno = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char why[600];
        h5_reason(errno, why, sizeof why);
        FATAL_ALL("check the path; token files are made by `partita prep`",
                  "cannot open HDF5 file '%s' (missing, unreadable, truncated or not HDF5): %s", path, why);
    }
    return f;
}

void h5_close(hid_t f) {
    char name[512] = "?";
    H5Fget_name(f, name, sizeof name);
    errno = 0;
    if (H5Fflush(f, H5F_SCOPE_LOCAL) < 0 || H5Fclose(f) < 0) {
        char why[600];
        h5_reason(errno, why, sizeof why);
        FATAL("check the file system's space and permissions", "cannot write HDF5 file '%s': %s", name, why);
    }
}

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

// ---------------------------------------------------------------------------
// Reading attributes: the attribute is opened, its space must hold exactly
// one element and its type must be of the class asked for, before anything
// is read into the caller's memory.

typedef struct Attr {
    hid_t a, type;
    H5T_class_t cls;
    hssize_t npoints;
} Attr;

static int attr_open(hid_t obj, const char *name, Attr *at) {
    htri_t there;
    H5E_BEGIN_TRY { there = H5Aexists(obj, name); } H5E_END_TRY;
    if (there <= 0) return H5A_MISSING;
    H5E_BEGIN_TRY { at->a = H5Aopen(obj, name, H5P_DEFAULT); } H5E_END_TRY;
    if (at->a < 0) return H5A_BAD;
    at->type = H5Aget_type(at->a);
    hid_t sp = H5Aget_space(at->a);
    at->npoints = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    if (sp >= 0) H5Sclose(sp);
    at->cls = at->type < 0 ? H5T_NO_CLASS : H5Tget_class(at->type);
    if (at->type < 0 || at->npoints != 1) {
        if (at->type >= 0) H5Tclose(at->type);
        H5Aclose(at->a);
        return H5A_BAD;
    }
    return H5A_OK;
}

static int attr_done(Attr *at, int rc) {
    H5Tclose(at->type);
    H5Aclose(at->a);
    return rc;
}

// One integer attribute of either sign, as its sign and magnitude: the
// signed and unsigned readers below then take only what fits them.
static int read_attr_int(hid_t obj, const char *name, int *negative, uint64_t *magnitude) {
    Attr at;
    int rc = attr_open(obj, name, &at);
    if (rc != H5A_OK) return rc;
    if (at.cls != H5T_INTEGER || H5Tget_size(at.type) > 8) return attr_done(&at, H5A_BAD);
    herr_t r;
    *negative = 0;
    if (H5Tget_sign(at.type) == H5T_SGN_NONE) {
        H5E_BEGIN_TRY { r = H5Aread(at.a, H5T_NATIVE_UINT64, magnitude); } H5E_END_TRY;
        return attr_done(&at, r < 0 ? H5A_BAD : H5A_OK);
    }
    int64_t v;
    H5E_BEGIN_TRY { r = H5Aread(at.a, H5T_NATIVE_INT64, &v); } H5E_END_TRY;
    if (r < 0) return attr_done(&at, H5A_BAD);
    *negative = v < 0;
    *magnitude = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    return attr_done(&at, H5A_OK);
}

int h5_read_attr_u64(hid_t obj, const char *name, uint64_t *value) {
    int neg;
    uint64_t mag;
    int rc = read_attr_int(obj, name, &neg, &mag);
    if (rc != H5A_OK) return rc;
    if (neg) return H5A_BAD;
    *value = mag;
    return H5A_OK;
}

int h5_read_attr_i64(hid_t obj, const char *name, int64_t *value) {
    int neg;
    uint64_t mag;
    int rc = read_attr_int(obj, name, &neg, &mag);
    if (rc != H5A_OK) return rc;
    if (mag > (uint64_t)INT64_MAX + (neg ? 1u : 0u)) return H5A_BAD;
    *value = neg ? (mag == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
    return H5A_OK;
}

int h5_read_attr_f64(hid_t obj, const char *name, double *value) {
    Attr at;
    int rc = attr_open(obj, name, &at);
    if (rc != H5A_OK) return rc;
    if ((at.cls != H5T_FLOAT && at.cls != H5T_INTEGER) || H5Tget_size(at.type) > 8) return attr_done(&at, H5A_BAD);
    herr_t r;
    H5E_BEGIN_TRY { r = H5Aread(at.a, H5T_NATIVE_DOUBLE, value); } H5E_END_TRY;
    return attr_done(&at, r < 0 ? H5A_BAD : H5A_OK);
}

int h5_read_attr_str(hid_t obj, const char *name, char *buf, size_t n) {
    Attr at;
    int rc = attr_open(obj, name, &at);
    if (rc != H5A_OK) return rc;
    if (at.cls != H5T_STRING || n == 0) return attr_done(&at, H5A_BAD);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5_CHECK(mt);
    H5_CHECK(H5Tset_cset(mt, H5Tget_cset(at.type)));
    herr_t r = -1;
    if (H5Tis_variable_str(at.type) > 0) {
        char *s = NULL;
        H5_CHECK(H5Tset_size(mt, H5T_VARIABLE));
        H5E_BEGIN_TRY { r = H5Aread(at.a, mt, &s); } H5E_END_TRY;
        if (r >= 0 && s && strlen(s) >= n) r = -1;     // does not fit: refused, not cut
        if (r >= 0) snprintf(buf, n, "%s", s ? s : "");
        if (s) H5free_memory(s);
    } else {
        size_t size = H5Tget_size(at.type);
        if (size > 0 && size < n) {
            // A fixed-length string of `size` bytes, NUL-terminated here.
            H5_CHECK(H5Tset_size(mt, size + 1));
            H5E_BEGIN_TRY { r = H5Aread(at.a, mt, buf); } H5E_END_TRY;
            buf[size] = 0;
        }
    }
    H5_CHECK(H5Tclose(mt));
    return attr_done(&at, r < 0 ? H5A_BAD : H5A_OK);
}

int h5_read_attr_strdup(hid_t obj, const char *name, size_t max, char **out) {
    *out = NULL;
    Attr at;
    int rc = attr_open(obj, name, &at);
    if (rc != H5A_OK) return rc;
    if (at.cls != H5T_STRING) return attr_done(&at, H5A_BAD);
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5_CHECK(mt);
    H5_CHECK(H5Tset_cset(mt, H5Tget_cset(at.type)));
    char *buf = NULL;
    herr_t r = -1;
    if (H5Tis_variable_str(at.type) > 0) {
        char *s = NULL;
        H5_CHECK(H5Tset_size(mt, H5T_VARIABLE));
        H5E_BEGIN_TRY { r = H5Aread(at.a, mt, &s); } H5E_END_TRY;
        size_t len = r >= 0 && s ? strlen(s) : 0;
        if (r >= 0 && len < max && (buf = malloc(len + 1))) memcpy(buf, s ? s : "", len + 1);
        if (s) H5free_memory(s);
    } else {
        size_t size = H5Tget_size(at.type);
        if (size > 0 && size < max && (buf = malloc(size + 1))) {
            H5_CHECK(H5Tset_size(mt, size + 1));
            H5E_BEGIN_TRY { r = H5Aread(at.a, mt, buf); } H5E_END_TRY;
            buf[size] = 0;
        }
    }
    H5_CHECK(H5Tclose(mt));
    if (r < 0 || !buf) {
        free(buf);
        return attr_done(&at, H5A_BAD);
    }
    *out = buf;
    return attr_done(&at, H5A_OK);
}

int h5_attr_kind(hid_t obj, const char *name) {
    Attr at;
    if (attr_open(obj, name, &at) != H5A_OK) return 0;
    size_t size = H5Tget_size(at.type);
    int kind = 0;
    if (at.cls == H5T_INTEGER && size <= 8) kind = H5Tget_sign(at.type) == H5T_SGN_NONE ? 'u' : 'i';
    else if (at.cls == H5T_FLOAT && size <= 8) kind = 'f';
    else if (at.cls == H5T_STRING) kind = 's';
    return attr_done(&at, kind);
}

static const char *class_name(H5T_class_t c, hid_t t) {
    switch (c) {
    case H5T_INTEGER: return H5Tget_sign(t) == H5T_SGN_NONE ? "unsigned integer" : "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ARRAY: return "array-typed value";
    case H5T_ENUM: return "enum";
    case H5T_VLEN: return "variable-length sequence";
    case H5T_OPAQUE: return "opaque value";
    case H5T_REFERENCE: return "reference";
    case H5T_BITFIELD: return "bitfield";
    default: return "value of an unknown class";
    }
}

void h5_attr_describe(hid_t obj, const char *name, char *buf, size_t n) {
    htri_t there;
    H5E_BEGIN_TRY { there = H5Aexists(obj, name); } H5E_END_TRY;
    if (there <= 0) {
        snprintf(buf, n, "missing");
        return;
    }
    hid_t a;
    H5E_BEGIN_TRY { a = H5Aopen(obj, name, H5P_DEFAULT); } H5E_END_TRY;
    if (a < 0) {
        snprintf(buf, n, "unreadable");
        return;
    }
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    H5T_class_t c = t < 0 ? H5T_NO_CLASS : H5Tget_class(t);
    size_t size = t < 0 ? 0 : H5Tget_size(t);
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    hssize_t np = sp < 0 ? -1 : H5Sget_simple_extent_npoints(sp);
    const char *cn = class_name(c, t);
    int vlen = c == H5T_STRING && H5Tis_variable_str(t) > 0;
    if (np != 1) snprintf(buf, n, "a %d-D array of %lld %ss", nd, (long long)np, cn);
    else if (c == H5T_STRING && !vlen) snprintf(buf, n, "a string of %zu bytes", size);
    else if (c == H5T_STRING) snprintf(buf, n, "a string");
    else snprintf(buf, n, "%s %s of %zu bytes", strchr("aeiou", cn[0]) ? "an" : "a", cn, size);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    H5Aclose(a);
}

void h5_shape_text(const hsize_t *dims, int nd, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < nd && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    if (k < n) snprintf(buf + k, n - k, ")");
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
