// ulysses.h: DeepSpeed-Ulysses sequence parallelism around attention.
//
// A sequence group of sp ranks holds one row's T tokens split along T: rank s
// holds tokens [s Tl, (s+1) Tl), Tl = T / sp. Every op local in T runs on the
// rank's Tl tokens; attention needs the whole sequence, so one all-to-all turns
// the (B, Tl, 3, NH, hs) projections into (B, T, 3, NH_s, hs) for this rank's
// NH_s heads, the attention kernel runs on those heads alone, and a second
// all-to-all turns its (B, T, NH_s, hs) output back into (B, Tl, C). Backward
// runs the two inverse all-to-alls on the gradients. What a rank sends per
// all-to-all is (sp-1)/sp of its own (B, Tl, parts*C) activation: constant when
// T and sp grow together.
//
// Heads are split as evenly as possible: rank k gets NH/sp heads, one more for
// the first NH % sp ranks (so NH = 6 runs at sp = 4 as 2, 2, 1, 1 heads; the
// all-to-all is an all-to-allv). Layout permutations are strided copies on the
// backend (copy2d), so the same code runs on cpu and cuda.
#ifndef PARTITA_ULYSSES_H
#define PARTITA_ULYSSES_H

#include <stddef.h>

#include "backend.h"
#include "comm.h"

typedef struct Ulysses {
    Comm *comm;             // the sequence group (sp ranks)
    const Backend *bk;
    int sp, rank;
    int C, NH, hs;
    int *h0, *nh;           // (sp) first head and head count of rank k
    int NHl, Cl;            // this rank's heads and their channels NHl * hs
    int B, Tl;              // the largest micro-batch the buffers hold
    float *send, *recv;     // all-to-all buffers (backend memory lent by the caller, registered with comm)
    size_t nbuf;            // floats in each: ulysses_buffer_floats
    size_t *counts, *rcounts;   // (sp)
} Ulysses;

// Rank k's heads of NH split over sp ranks: first head *h0, *nh heads.
void ulysses_split_heads(int NH, int sp, int k, int *h0, int *nh);
// For micro-batches of up to B x Tl local tokens, exchanging through send and
// recv (backend memory of ulysses_buffer_floats each, lent by the caller, who
// may use them for anything between exchanges: the model lends part of its
// backward scratch). Registers them with comm, so every rank must call it in
// the same order.
void ulysses_create(Ulysses *u, Comm *comm, const Backend *bk, int B, int Tl, int C, int NH,
                    float *send, float *recv);
void ulysses_free(Ulysses *u);
// Floats of each of the two buffers: B Tl 3 max(C, sp Cl0), Cl0 the channels of
// rank 0 (which has the most heads). Enough for a (B, Tl, 3, C) sequence slice
// and for a (B, Tl sp, 3, Cl) head slice of any rank.
size_t ulysses_buffer_floats(int B, int Tl, int C, int NH, int sp);

// Sequence slices to head slices: src (B, Tl, parts, C) on every rank of the
// group -> dst (B, Tl*sp, parts, Cl) of this rank's heads. parts = 3 for
// q, k, v (forward), 1 for the attention output's gradient (backward).
// Both calls pack src into u->send before the exchange and unpack u->recv into
// dst after it, so src may be u->recv and dst may be u->send: a caller can
// build its input in u->recv and keep its output in u->send, needing no
// buffer of its own for either.
void ulysses_seq_to_heads(Ulysses *u, float *dst, const float *src, int B, int Tl, int parts, const char *tag);
// The inverse: src (B, Tl*sp, parts, Cl) -> dst (B, Tl, parts, C). parts = 1 for
// the attention output (forward), 3 for the q, k, v gradients (backward).
// The same aliasing holds: src may be u->recv, dst u->send.
void ulysses_heads_to_seq(Ulysses *u, float *dst, const float *src, int B, int Tl, int parts, const char *tag);

// Bytes rank `rank` sends in one all-to-all (what stays on the rank is not
// counted): to_heads, B Tl parts (C - Cl); back, B Tl parts (sp-1) Cl, which
// are both (sp-1)/sp B Tl parts C when sp divides NH. The figure comm counts
// and `partita estimate` plans with.
double ulysses_sent_bytes(int B, int Tl, int C, int NH, int sp, int rank, int parts, int to_heads);

#endif
