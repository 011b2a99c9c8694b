// weights.c: parameter table <-> /params/<name> datasets.
#include "weights.h"
#include "h5io.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

void weights_write_group(const Model *m, hid_t f, const char *group, const float *buf) {
    hid_t g = h5_group(f, group);
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        uint64_t dims[2] = {(uint64_t)t->shape[0], (uint64_t)t->shape[1]};
        h5_write_f32(g, t->name, buf + t->offset, t->ndim, dims);
    }
    H5_CHECK(H5Gclose(g));
}

void weights_write_shape(hid_t f, const Model *m) {
    const GPTShape *s = &m->s;
    h5_attr_i64(f, "vocab_size", s->V);
    h5_attr_i64(f, "padded_vocab_size", s->Vp);
    h5_attr_i64(f, "n_layer", s->L);
    h5_attr_i64(f, "n_embd", s->C);
    h5_attr_i64(f, "n_head", s->NH);
    h5_attr_i64(f, "n_positions", s->maxT);
    h5_attr_i64(f, "mlp_hidden", s->H);
}

void weights_write(const Model *m, const ParamStore *ps, int writer, const char *path, int64_t step,
                   const char *deck_text) {
    hid_t f = 0, g = 0;
    if (writer) {
        f = h5_create(path);
        weights_write_shape(f, m);
        h5_attr_i64(f, "step", step);
        h5_attr_str(f, "deck", deck_text);
        h5_attr_str(f, "layout", "GPT-2 names; linear weights (in, out) as HF Conv1D; wte tied to the LM head");
        g = h5_group(f, "params");
    }
    // Device parameters come to the host one unit at a time.
    float *host = NULL;
    if (m->bk && m->bk->device_memory) {
        size_t most = 0;
        for (int u = 0; u < m->nunits; u++)
            if (m->unit_end[u] - m->unit_begin[u] > most) most = m->unit_end[u] - m->unit_begin[u];
        host = xmalloc(most * sizeof(float), "host copy of a unit");
    }
    int t = 0;
    for (int u = 0; u < m->nunits; u++) {
        const float *base = ps->params(ps->ctx, u, PHASE_FWD);
        if (host) {
            m->bk->to_host(host, base, m->unit_end[u] - m->unit_begin[u]);
            base = host;
        }
        for (; t < m->ntensors && m->tensors[t].offset < m->unit_end[u]; t++) {
            const ParamTensor *pt = &m->tensors[t];
            uint64_t dims[2] = {(uint64_t)pt->shape[0], (uint64_t)pt->shape[1]};
            if (writer) h5_write_f32(g, pt->name, base + (pt->offset - m->unit_begin[u]), pt->ndim, dims);
        }
        ps->release(ps->ctx, u, PHASE_FWD);
    }
    free(host);
    if (writer) {
        H5_CHECK(H5Gclose(g));
        h5_close(f);
    }
}

void weights_read(const Model *m, const char *path, float *full) {
    hid_t f = h5_open_read(path);
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        char name[96];
        snprintf(name, sizeof name, "params/%s", t->name);
        if (H5Lexists(f, "params", H5P_DEFAULT) <= 0 || H5Lexists(f, name, H5P_DEFAULT) <= 0)
            FATAL("the file must match the deck's [model] shape", "'%s' has no dataset /%s", path, name);
        hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
        H5_CHECK(ds);
        hid_t sp = H5Dget_space(ds);
        hsize_t dims[2] = {0, 0};
        int nd = H5Sget_simple_extent_ndims(sp);
        H5_CHECK(H5Sget_simple_extent_dims(sp, dims, NULL));
        if (nd != t->ndim || dims[0] != (hsize_t)t->shape[0] || (nd == 2 && dims[1] != (hsize_t)t->shape[1]))
            FATAL("the file must match the deck's [model] shape",
                  "'%s': /%s has shape (%llu, %llu), the model expects (%d, %d)", path, name,
                  (unsigned long long)dims[0], (unsigned long long)(nd == 2 ? dims[1] : 0),
                  t->shape[0], t->ndim == 2 ? t->shape[1] : 0);
        H5_CHECK(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, full + t->offset));
        H5_CHECK(H5Sclose(sp));
        H5_CHECK(H5Dclose(ds));
    }
    h5_close(f);
}
