// weights.c: parameter table <-> /params/<name> datasets.
#include "weights.h"
#include "ckpt.h"
#include "h5io.h"
#include "log.h"

#include <errno.h>
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
    float *host = NULL, *all = NULL, *all_host = NULL;
    size_t most = 0, *counts = NULL;
    for (int u = 0; u < m->nunits; u++)
        if (m->unit_end[u] - m->unit_begin[u] > most) most = m->unit_end[u] - m->unit_begin[u];
    if (m->bk && m->bk->device_memory) host = xmalloc((most ? most : 1) * sizeof(float), "host copy of a unit");
    if (m->ep) {    // expert parallelism: the ep group's held experts, gathered unit by unit
        size_t n = most * (size_t)m->ep_size;
        all = m->bk->alloc((n ? n : 1) * sizeof(float), "gathered experts");
        comm_register(m->ep, all, n ? n : 1, "gathered experts");
        all_host = m->bk->device_memory ? xmalloc((n ? n : 1) * sizeof(float), "host copy of gathered experts") : all;
        counts = xcalloc(sizeof(size_t) * (size_t)m->ep_size, "gather counts");
    }
    for (int u = 0; u < m->nunits; u++) {
        const float *base = ps->params(ps->ctx, u, PHASE_FWD);
        size_t un = m->unit_end[u] - m->unit_begin[u];
        const float *hb = base;
        if (host) {
            m->bk->to_host(host, base, un);
            hb = host;
        }
        for (int t = 0; t < m->ntensors; t++) {
            const ParamTensor *pt = &m->tensors[t];
            uint64_t dims[2] = {(uint64_t)pt->shape[0], (uint64_t)pt->shape[1]};
            if (writer && pt->unit == u && pt->held)
                h5_write_f32(g, pt->name, hb + (pt->offset - m->unit_begin[u]), pt->ndim, dims);
        }
        int l = -1;
        for (int k = 0; k < m->s.L && m->ep; k++)
            if (m->xunit[k] == u && u > m->s.L + 1) l = k;
        if (l >= 0) {   // the experts held by the other ranks of the ep group (each holds the same unit shape)
            m->bk->copy(all + (size_t)m->ep_rank * un, base, un);
            for (int j = 0; j < m->ep_size; j++) counts[j] = un;
            char tag[40];
            snprintf(tag, sizeof tag, "weights experts h.%d", l);
            CommReq r;
            comm_iallgather(m->ep, all, counts, tag, &r);
            comm_wait(m->ep, &r);
            if (all_host != all) m->bk->to_host(all_host, all, un * (size_t)m->ep_size);
            const int El = m->moe.experts[l] / m->ep_size, e0 = m->ep_rank * El;
            for (int t = 0; t < m->ntensors && writer; t++) {
                const ParamTensor *pt = &m->tensors[t];
                if (pt->layer != l || pt->expert < 0 || pt->held) continue;
                int j = pt->expert / El, mine = model_tensor(m, l, pt->kind, e0 + pt->expert % El);
                uint64_t dims[2] = {(uint64_t)pt->shape[0], (uint64_t)pt->shape[1]};
                h5_write_f32(g, pt->name, all_host + (size_t)j * un + (m->tensors[mine].offset - m->unit_begin[u]),
                             pt->ndim, dims);
            }
        }
        ps->release(ps->ctx, u, PHASE_FWD);
    }
    free(host);
    if (all) m->bk->release(all);
    if (all_host != all) free(all_host);
    free(counts);
    if (writer) {
        H5_CHECK(H5Gclose(g));
        h5_close(f);
    }
}

// ---------------------------------------------------------------------------
// Reading: every number taken from the file is checked before it sizes or
// indexes anything.

int weights_read_shape(hid_t obj, GPTShape *s, char *why, size_t n) {
    struct { const char *attr; int *dst; int64_t lo, hi; } want[] = {
        {"n_layer", &s->L, 1, WEIGHTS_MAX_LAYERS}, {"n_embd", &s->C, 1, WEIGHTS_MAX_EMBD},
        {"n_head", &s->NH, 1, WEIGHTS_MAX_EMBD}, {"vocab_size", &s->V, 1, WEIGHTS_MAX_VOCAB},
        {"padded_vocab_size", &s->Vp, 1, WEIGHTS_MAX_VOCAB}, {"n_positions", &s->maxT, 1, WEIGHTS_MAX_POSITIONS},
        {"mlp_hidden", &s->H, 1, WEIGHTS_MAX_HIDDEN}};
    memset(s, 0, sizeof *s);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int64_t v = 0;
        int rc = h5_read_attr_i64(obj, want[i].attr, &v);
        if (rc == H5A_MISSING) {
            snprintf(why, n, "the attribute %s is missing", want[i].attr);
            return -1;
        }
        if (rc != H5A_OK) {
            char what[128];
            h5_attr_describe(obj, want[i].attr, what, sizeof what);
            snprintf(why, n, "the attribute %s is %s, not one integer", want[i].attr, what);
            return -1;
        }
        if (v < want[i].lo || v > want[i].hi) {
            snprintf(why, n, "the attribute %s = %lld is outside [%lld, %lld]", want[i].attr, (long long)v,
                     (long long)want[i].lo, (long long)want[i].hi);
            return -1;
        }
        *want[i].dst = (int)v;
    }
    if (s->C % s->NH != 0)
        snprintf(why, n, "n_head = %d does not divide n_embd = %d", s->NH, s->C);
    else if (s->V > s->Vp)
        snprintf(why, n, "vocab_size = %d exceeds padded_vocab_size = %d", s->V, s->Vp);
    else if (s->H % s->C != 0)
        snprintf(why, n, "n_embd = %d does not divide mlp_hidden = %d", s->C, s->H);
    else
        return 0;
    return -1;
}

// Checks the file's shape attributes against the model the deck builds.
static void check_against(const GPTShape *f, const GPTShape *m, const char *path, const char *where) {
    struct { const char *attr, *key; int file, model; } pairs[] = {
        {"n_layer", "model.layers", f->L, m->L}, {"n_embd", "model.d_model", f->C, m->C},
        {"n_head", "model.heads", f->NH, m->NH}, {"vocab_size", "model.vocab", f->V, m->V},
        {"padded_vocab_size", "model.vocab_pad", f->Vp, m->Vp}, {"n_positions", "model.seq_len", f->maxT, m->maxT},
        {"mlp_hidden", "model.mlp_ratio x model.d_model", f->H, m->H}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if (pairs[i].file != pairs[i].model)
            FATAL_ALL("set the deck's [model] to the shape the weights were trained with",
                      "'%s': %s%s = %d, but the deck's %s gives %d", path, where, pairs[i].attr, pairs[i].file,
                      pairs[i].key, pairs[i].model);
}

// A checkpoint stores "checksum:/params/<name>" in /meta; a weights file none.
static int stored_checksum(hid_t meta, const char *name, uint64_t *sum) {
    if (meta < 0) return 0;
    char key[160];
    snprintf(key, sizeof key, "checksum:/params/%s", name);
    return h5_read_attr_u64(meta, key, sum) == H5A_OK;
}

int weights_open_tensor(hid_t f, const char *name, const ParamTensor *t, hid_t *ds, char *got, char *want, size_t n) {
    *ds = -1;
    htri_t there;
    H5E_BEGIN_TRY { there = H5Lexists(f, name, H5P_DEFAULT); } H5E_END_TRY;   // < 0 when a group on the path is missing
    if (there <= 0) return WEIGHTS_TENSOR_MISSING;
    hid_t d;
    H5E_BEGIN_TRY { d = H5Dopen2(f, name, H5P_DEFAULT); } H5E_END_TRY;
    if (d < 0) return WEIGHTS_TENSOR_NOT_DATASET;
    hid_t sp = H5Dget_space(d), ty = H5Dget_type(d);
    hsize_t dims[H5S_MAX_RANK] = {0};
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    if (nd > 0 && H5Sget_simple_extent_dims(sp, dims, NULL) < 0) nd = -1;
    int is_float = ty >= 0 && H5Tget_class(ty) == H5T_FLOAT;
    if (ty >= 0) H5Tclose(ty);
    if (sp >= 0) H5Sclose(sp);
    int rc = WEIGHTS_TENSOR_OK;
    if (!is_float) rc = WEIGHTS_TENSOR_NOT_FLOAT;
    else if (nd != t->ndim || dims[0] != (hsize_t)t->shape[0] || (nd == 2 && dims[1] != (hsize_t)t->shape[1])) {
        h5_shape_text(dims, nd, got, n);
        h5_shape_text((hsize_t[]){(hsize_t)t->shape[0], (hsize_t)t->shape[1]}, t->ndim, want, n);
        rc = WEIGHTS_TENSOR_BAD_SHAPE;
    }
    if (rc != WEIGHTS_TENSOR_OK) H5Dclose(d);
    else *ds = d;
    return rc;
}

static void read_tensor(hid_t f, hid_t meta, const ParamTensor *t, const char *path, float *dst) {
    char name[96], got[160], want[160];
    snprintf(name, sizeof name, "params/%s", t->name);
    hid_t ds;
    switch (weights_open_tensor(f, name, t, &ds, got, want, sizeof got)) {
    case WEIGHTS_TENSOR_MISSING:
        FATAL_ALL("the file must match the deck's [model] shape", "'%s' has no dataset /%s", path, name);
    case WEIGHTS_TENSOR_NOT_DATASET:
        FATAL_ALL("the file is damaged", "'%s': /%s is not a dataset", path, name);
    case WEIGHTS_TENSOR_NOT_FLOAT:
        FATAL_ALL("weights are float32 datasets", "'%s': /%s is not a float dataset", path, name);
    case WEIGHTS_TENSOR_BAD_SHAPE:
        FATAL_ALL("the file must match the deck's [model] shape", "'%s': /%s has shape %s, the model expects %s",
                  path, name, got, want);
    default:
        break;
    }
    herr_t rc;
    errno = 0;
    H5E_BEGIN_TRY { rc = H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst); } H5E_END_TRY;
    if (rc < 0) {
        char why[600];
        h5_reason(errno, why, sizeof why);
        FATAL_ALL("the file is truncated or damaged", "'%s': cannot read /%s: %s", path, name, why);
    }
    uint64_t stored;
    if (stored_checksum(meta, t->name, &stored) && ckpt_checksum(dst, t->numel, 0) != stored)
        FATAL_ALL("the checkpoint is damaged: use an older one", "'%s': /%s fails its checksum (stored %016llx, read %016llx)",
                  path, name, (unsigned long long)stored, (unsigned long long)ckpt_checksum(dst, t->numel, 0));
    H5_CHECK(H5Dclose(ds));
}

void weights_read(const Model *m, const char *path, float *full) {
    weights_read_tensors(m, path, 0, m->ntensors, full);
}

void weights_read_tensors(const Model *m, const char *path, int t0, int t1, float *dst) {
    hid_t f = h5_open_read(path);
    // A checkpoint keeps the shape in /meta, a weights file at the root.
    htri_t is_ckpt;
    H5E_BEGIN_TRY { is_ckpt = H5Lexists(f, "meta", H5P_DEFAULT); } H5E_END_TRY;
    hid_t meta = -1;
    if (is_ckpt > 0) {
        H5E_BEGIN_TRY { meta = H5Gopen2(f, "meta", H5P_DEFAULT); } H5E_END_TRY;
        if (meta < 0) FATAL_ALL("the file is damaged", "'%s': /meta is not a group", path);
    }
    GPTShape s;
    char why[300];
    if (weights_read_shape(meta >= 0 ? meta : f, &s, why, sizeof why) != 0)
        FATAL_ALL("use a weights file from `partita train` (final.h5), `partita ckpt export`, or a checkpoint",
                  "'%s': %s%s", path, meta >= 0 ? "/meta: " : "", why);
    check_against(&s, &m->s, path, meta >= 0 ? "/meta " : "");
    for (int i = t0; i < t1; i++) read_tensor(f, meta, &m->tensors[i], path, dst + (m->tensors[i].offset - m->tensors[t0].offset));
    if (meta >= 0) H5_CHECK(H5Gclose(meta));
    H5_CHECK(H5Fclose(f));
}
