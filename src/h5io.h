// h5io.h: the few HDF5 patterns Partita repeats, each call checked.
//
// Files here are written by one rank (serial I/O through the parallel library);
// the collective, hyperslab-per-rank checkpoints build on these in ckpt.c.
#ifndef PARTITA_H5IO_H
#define PARTITA_H5IO_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

hid_t h5_create(const char *path);              // truncates
hid_t h5_open_read(const char *path);           // NULL-safe: fatal with the path on failure
void h5_close(hid_t f);

void h5_attr_str(hid_t obj, const char *name, const char *value);
void h5_attr_i64(hid_t obj, const char *name, int64_t value);
void h5_attr_f64(hid_t obj, const char *name, double value);
// Returns 0 and fills value if the attribute exists, -1 if it does not.
int h5_read_attr_i64(hid_t obj, const char *name, int64_t *value);
int h5_read_attr_str(hid_t obj, const char *name, char *buf, size_t n);

// Creates intermediate groups as needed ("a/b/c").
hid_t h5_group(hid_t f, const char *path);

// Whole-dataset writes of a contiguous array with dims[0..ndim-1].
void h5_write_f32(hid_t loc, const char *name, const float *data, int ndim, const uint64_t *dims);
void h5_write_i32(hid_t loc, const char *name, const int32_t *data, int ndim, const uint64_t *dims);
void h5_write_i64(hid_t loc, const char *name, const int64_t *data, uint64_t n);
void h5_write_f64(hid_t loc, const char *name, const double *data, uint64_t n);
// A 1-D dataset of n variable-length UTF-8 strings.
void h5_write_strings(hid_t loc, const char *name, const char *const *strs, uint64_t n);

#endif
