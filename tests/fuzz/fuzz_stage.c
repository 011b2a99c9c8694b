// fuzz_stage.c: libFuzzer harness for the staged weight file's header reader
// (src/infer/stage_format.c), built by `make fuzz-build`.
//
// Input: 8 bytes of file size (little-endian), then the file's first bytes.
// Asserts, beyond "no sanitizer report, no hang":
//   - stage_header_parse returns 0 or -1; on -1 the reason is non-empty and
//     any `need` it asks for is more than it was given;
//   - on 0: the shape is in range, nseg = 1 + L*shards, every segment lies
//     inside the file, aligned, in order, not overlapping, and each layer
//     segment holds the layer layout's bytes; encoding the header again gives
//     the same bytes.
#include "stage.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what) {
    fprintf(stderr, "fuzz_stage: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 8) return 0;
    uint64_t file_size = 0;
    for (int i = 7; i >= 0; i--) file_size = file_size << 8 | data[i];
    const uint8_t *b = data + 8;
    size_t len = size - 8;
    StageHeader h;
    uint64_t need = 0;
    char why[600] = "";
    if (stage_header_parse(&h, b, len, file_size, &need, why, sizeof why) != 0) {
        if (!why[0]) die("refused without a reason");
        if (need && need <= len) die("asks for bytes it was given");
        if (h.seg) die("refused but kept its segment table");
        return 0;
    }
    if (h.nseg != 1 + (uint64_t)h.L * (uint64_t)h.shards) die("segment count differs from the shape");
    if (h.C % h.NH || h.V > h.Vp || h.NH % h.shards || h.H % h.shards) die("shape out of its rules");
    StageLayer ly;
    if (stage_layer_layout(&h, &ly, why, sizeof why) != 0) die("accepted a shape whose layout overflows");
    uint64_t end = h.header_bytes;
    for (uint32_t s = 0; s < h.nseg; s++) {
        const StageSeg *g = &h.seg[s];
        if (g->offset % h.align || g->offset < end || g->bytes > h.file_size || g->offset > h.file_size - g->bytes)
            die("a segment outside the file, misaligned or overlapping");
        if (s > 0 && g->bytes != ly.bytes) die("a layer segment of the wrong size");
        end = g->offset + g->bytes;
    }
    if (h.file_size != file_size) die("accepted a file of another size");
    uint8_t *again = calloc(1, h.header_bytes);
    if (!again) die("no memory");
    stage_header_encode(&h, again);
    if (memcmp(again, b, stage_header_size(h.nseg)) != 0) die("encoding the header again differs");
    free(again);
    stage_header_free(&h);
    return 0;
}
