// safetensors.h: Hugging Face `safetensors` files <-> Partita weights.
//
// The format: 8 bytes (little-endian u64) N, then N bytes of a JSON object
// {"NAME": {"dtype": "F32", "shape": [d0, d1], "data_offsets": [begin, end]},
// ..., "__metadata__": {"k": "v"}}, then the data; offsets are relative to the
// data, which the tensors must cover exactly (no holes, no overlaps). The
// reader here is a hostile-input reader: every size is bounded (ST_MAX_*), the
// JSON is parsed strictly, offsets are checked against the file's size and
// against dtype x shape, and a refusal names the file, the tensor and why.
//
// GPT-2 names (Hugging Face GPT2Model / GPT2LMHeadModel): wte.weight (V, C),
// wpe.weight, h.<l>.ln_1.weight ... ln_f.bias, with or without a
// "transformer." prefix; linear weights (in, out) (Conv1D), as Partita keeps
// them; lm_head.weight (tied to wte) and the attention mask buffers
// (h.<l>.attn.bias, .masked_bias) are accepted and ignored.
#ifndef PARTITA_SAFETENSORS_H
#define PARTITA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

enum {
    ST_MAX_HEADER = 100 << 20,  // bytes of the JSON header (the format's own limit)
    ST_MAX_TENSORS = 1 << 16,
    ST_MAX_NAME = 256,
    ST_MAX_DIMS = 8,
};
enum { ST_F32 = 0, ST_F16, ST_BF16, ST_OTHER };

typedef struct StTensor {
    char name[ST_MAX_NAME];
    int dtype;                  // ST_*
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;        // byte offsets into the data
} StTensor;

typedef struct StFile {
    int n;
    StTensor *t;
    uint64_t data_start;        // 8 + header length
    uint64_t data_size;
} StFile;

// Reads and checks the header of path. Returns 0, or -1 with why.
int st_read_header(const char *path, StFile *sf, char *why, size_t n);
void st_free(StFile *sf);

// `partita import FILE.safetensors OUT.h5 [--heads N]`: a GPT-2 safetensors
// file (fp32, fp16 or bf16) into a Partita weights file. The shape comes from
// the tensors; the head count (not stored in the file) from --heads, else
// d_model / 64 (GPT-2's head size). Returns the exit code.
int st_import_main(int argc, char **argv);

// Writes the model's parameters (buf: m->nparams floats) as an fp32
// safetensors file with Hugging Face GPT-2 names (wte.weight cut to V rows),
// and a config.json for GPT2LMHeadModel beside it when config_path is not NULL.
// Returns 0, or -1 with why.
int st_write(const char *path, const Model *m, const float *buf, const char *config_path, char *why, size_t n);

#endif
