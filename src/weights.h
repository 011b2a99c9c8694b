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

// Writes the model's parameters (rank 0's copy) to path.
void weights_write(const Model *m, const char *path, int64_t step, const char *deck_text);
// Writes params or grads (the same table) into group g of an open file.
void weights_write_group(const Model *m, hid_t f, const char *group, const float *buf);
// Reads a weights file into m->params; fatal if a tensor is missing or its shape differs.
void weights_read(Model *m, const char *path);

#endif
