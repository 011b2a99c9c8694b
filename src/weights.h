// weights.h: model weights as an HDF5 file with the GPT-2 tensor names.
//
// Layout: /params/<name> (fp32, the shape of the parameter table: wte.weight is
// (Vp, C), linear weights (in, out) as Hugging Face's Conv1D), root attributes
// vocab_size, padded_vocab_size, n_layer, n_embd, n_head, n_positions, mlp_hidden,
// step, and the deck that produced them.
#ifndef PARTITA_WEIGHTS_H
#define PARTITA_WEIGHTS_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

// Writes the model's parameters to path, unit by unit through the store (so a
// ZeRO-3 run never holds the whole model). Collective: every rank of the store's
// group calls it; the writer alone touches the file. With expert parallelism
// each MoE layer's held experts are all-gathered over the ep group, so the
// file holds every expert under its global name.
void weights_write(const Model *m, const ParamStore *ps, int writer, const char *path, int64_t step,
                   const char *deck_text);
// The model-shape attributes (n_layer, n_embd, n_head, vocab_size,
// padded_vocab_size, n_positions, mlp_hidden) on obj: weights files and
// checkpoints' /meta carry the same ones.
void weights_write_shape(hid_t obj, const Model *m);
// Writes params or grads (the same table) into group g of an open file.
void weights_write_group(const Model *m, hid_t f, const char *group, const float *buf);
// Reads and range-checks the model-shape attributes of obj (each a scalar
// integer; 1 <= n_layer <= WEIGHTS_MAX_LAYERS, n_head divides n_embd,
// vocab_size <= padded_vocab_size, n_embd divides mlp_hidden, ...), so that
// a model table built from them cannot overflow. Returns 0, or -1 with why
// naming the attribute, what it is and what was expected.
int weights_read_shape(hid_t obj, GPTShape *s, char *why, size_t n);
// The largest dimensions a file may declare (far above any deck).
enum { WEIGHTS_MAX_LAYERS = 1 << 16, WEIGHTS_MAX_EMBD = 1 << 20, WEIGHTS_MAX_VOCAB = 1 << 30,
       WEIGHTS_MAX_POSITIONS = 1 << 24, WEIGHTS_MAX_HIDDEN = 1 << 24 };

// Opens dataset `name` of f (quietly) and checks it is a float dataset of t's
// shape: WEIGHTS_TENSOR_OK with *ds open (the caller closes it), or why not
// with *ds = -1 (for a wrong shape, got and want hold the two shapes as text).
// Weights files and checkpoints read their tensors through it.
enum { WEIGHTS_TENSOR_OK = 0, WEIGHTS_TENSOR_MISSING, WEIGHTS_TENSOR_NOT_DATASET, WEIGHTS_TENSOR_NOT_FLOAT,
       WEIGHTS_TENSOR_BAD_SHAPE };
int weights_open_tensor(hid_t f, const char *name, const ParamTensor *t, hid_t *ds, char *got, char *want, size_t n);

// Reads a weights file, or a checkpoint's /params, into full (m->nparams
// floats). Collective in the sense that every rank calls it alike: a file
// whose shape attributes differ from m (naming the attribute, both values and
// the file), a missing, non-float or misshapen dataset, or (checkpoints) a
// dataset that fails its stored checksum is fatal.
void weights_read(const Model *m, const char *path, float *full);
// The same for tensors [t0, t1) of m's table alone (consecutive in the flat
// layout): dst receives them back to back from tensors[t0].offset, so a reader
// can go layer by layer without holding the whole model (partita stage).
void weights_read_tensors(const Model *m, const char *path, int t0, int t1, float *dst);

#endif
