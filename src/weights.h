// weights.h: model weights as an HDF5 file with the GPT-2 tensor names.
//
// Layout: /params/<name> (fp32, the shape of the parameter table: wte.weight is
// (Vp, C), linear weights (in, out) as Hugging Face's Conv1D), root attributes
// vocab_size, padded_vocab_size, n_layer, n_embd, n_head, n_positions, mlp_hidden,
// step, and the deck that produced them.
#ifndef PARTITA_WEIGHTS_H
#define PARTITA_WEIGHTS_H

#include <hdf5.h>
#include <stdint.h>

#include "model.h"

// Writes the model's parameters to path, unit by unit through the store (so a
// ZeRO-3 run never holds the whole model). Collective: every rank of the store's
// group calls it; the writer alone touches the file.
void weights_write(const Model *m, const ParamStore *ps, int writer, const char *path, int64_t step,
                   const char *deck_text);
// The model-shape attributes (n_layer, n_embd, n_head, vocab_size,
// padded_vocab_size, n_positions, mlp_hidden) on obj: weights files and
// checkpoints' /meta carry the same ones.
void weights_write_shape(hid_t obj, const Model *m);
// Writes params or grads (the same table) into group g of an open file.
void weights_write_group(const Model *m, hid_t f, const char *group, const float *buf);
// Reads a weights file into full (m->nparams floats); fatal if a tensor is
// missing or its shape differs.
void weights_read(const Model *m, const char *path, float *full);

#endif
