// h5io.h: the few HDF5 patterns Partita repeats, each call checked.
//
// Files here are written by one rank (serial I/O through the parallel library);
// the collective, hyperslab-per-rank checkpoints build on these in ckpt.c.
//
// Errors: HDF5's own printing of its error stack is switched off (h5_quiet)
// wherever a file is opened here; a failure is reported by us, naming the
// file, the innermost message of HDF5's error stack and errno's reason
// (h5_reason), e.g. "cannot create HDF5 file 'x.h5': No space left on device".
//
// Attributes read from files are outside input: the readers below check that
// an attribute is one value (a scalar) of the expected class, and that a
// string fits the caller's buffer; they never write past what they are given.
#ifndef PARTITA_H5IO_H
#define PARTITA_H5IO_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

// Turns off HDF5's automatic printing of error stacks (idempotent).
void h5_quiet(void);
// Why the last HDF5 call failed, in one line: errno's reason (err, as saved
// right after the call; 0 = none) and the innermost entry of HDF5's error
// stack. Clears the stack.
void h5_reason(int err, char *buf, size_t n);

// Files are written in the HDF5 1.8+ format (superblock v2, object headers
// v2, ...), whose metadata carry checksums: a flipped byte in HDF5's own
// structures is then found by the library instead of being parsed (the
// 1.10 library here is not robust against damaged metadata of the older
// format: seen, reads out of bounds). Readable by HDF5 1.8 and later, h5py.
void h5_checksummed_format(hid_t fapl);
hid_t h5_create(const char *path);              // truncates; fatal naming the path and reason
hid_t h5_open_read(const char *path);           // fatal naming the path and reason on failure
void h5_close(hid_t f);                         // flushes and closes; fatal naming the file and reason

void h5_attr_str(hid_t obj, const char *name, const char *value);
void h5_attr_i64(hid_t obj, const char *name, int64_t value);
void h5_attr_f64(hid_t obj, const char *name, double value);

// Readers: H5A_OK and the value, H5A_MISSING, or H5A_BAD when the attribute
// is not one value of the class asked for, does not fit (an unsigned value
// above INT64_MAX; a string of n bytes or more), or cannot be read.
enum { H5A_OK = 0, H5A_MISSING = -1, H5A_BAD = -2 };
int h5_read_attr_i64(hid_t obj, const char *name, int64_t *value);    // an integer
int h5_read_attr_u64(hid_t obj, const char *name, uint64_t *value);   // a non-negative integer
int h5_read_attr_f64(hid_t obj, const char *name, double *value);     // a float or an integer
int h5_read_attr_str(hid_t obj, const char *name, char *buf, size_t n);
// A string attribute of any length below max, in memory from malloc (*out,
// the caller frees it).
int h5_read_attr_strdup(hid_t obj, const char *name, size_t max, char **out);
// The kind of a one-value attribute: 'i' (signed integer of up to 8 bytes),
// 'u' (unsigned integer), 'f' (float of up to 8 bytes), 's' (string); 0 for
// anything else (an array, another class, missing).
int h5_attr_kind(hid_t obj, const char *name);
// What attribute `name` of obj is, for a message: "missing", "an integer",
// "a 1-D array of 3 integers", "a string of 70000 bytes", "a float"...
void h5_attr_describe(hid_t obj, const char *name, char *buf, size_t n);

// "(320, 32)", "()" for a scalar: a dataset's shape for a message.
void h5_shape_text(const hsize_t *dims, int nd, char *buf, size_t n);

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
