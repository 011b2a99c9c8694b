// stage.h: the staged weight file of ZeRO-Inference (docs/architecture.md,
// "ZeRO-Inference"): a model's weights laid out once for streaming, layer by
// layer, each piece aligned for O_DIRECT reads.
//
// File layout (little-endian):
//   header   STAGE_HEADER_BYTES at offset 0 (the fixed fields below, then
//            the segment table: per segment offset, bytes, checksum), padded
//            with zeros to `align`;
//   segment 0: the resident part, fp32 in the training table's order: wte,
//            wpe, each layer's eight vectors (ln_1 w/b, c_attn b, attn c_proj
//            b, ln_2 w/b, c_fc b, mlp c_proj b), ln_f w/b;
//   segment 1 + l*shards + r: layer l's four matrices as tensor-parallel
//            rank r of `shards` holds them (engine.h: (out, in) rows, in the
//            file's dtype; int8 followed by its per-row fp32 scales), c_attn,
//            attn c_proj, c_fc, mlp c_proj, each piece at a 64-byte boundary.
// Every segment starts at a multiple of `align` and is padded to one, so a
// layer is one aligned read. Each segment carries a 64-bit checksum
// (stage_checksum of its bytes, padding excluded); the header its own.
//
// The reader (stage_header_parse) bounds every number before it sizes or
// indexes anything, recomputes the layout from the shape and compares it
// with the table, and refuses a file shorter than its header says.
#ifndef PARTITA_STAGE_H
#define PARTITA_STAGE_H

#include <stddef.h>
#include <stdint.h>

#define STAGE_MAGIC "PTSTAGE1"
enum { STAGE_VERSION = 1, STAGE_FIXED_BYTES = 128, STAGE_SEG_BYTES = 24, STAGE_ALIGN = 4096,
       STAGE_PIECE_ALIGN = 64, STAGE_MAX_SHARDS = 256 };
enum { STAGE_F32 = 0, STAGE_BF16, STAGE_INT8 };   // = GEN_W_* = kernels.h WDT_*
// The four matrices of a layer segment, in file order.
enum { STAGE_QKV = 0, STAGE_ATTP, STAGE_FC, STAGE_FCP, STAGE_NMAT };

typedef struct StageSeg {
    uint64_t offset, bytes, checksum;
} StageSeg;

typedef struct StageHeader {
    uint32_t version, dtype;
    int L, C, NH, V, Vp, maxT, H;   // the model shape (weights.h's attributes)
    int shards;                     // tensor-parallel ranks the matrices are cut for
    uint32_t align;
    uint32_t nseg;                  // 1 + L * shards
    uint64_t file_size;             // bytes the whole file has
    uint64_t header_bytes;          // where segment 0 begins (multiple of align)
    StageSeg *seg;                  // (nseg), owned (stage_header_free)
} StageHeader;

// Where the pieces of a layer segment lie for this shape (the held slice of
// one rank of `shards`): the matrix and (int8) its scales, byte offsets
// within the segment, and the segment's bytes before padding. rows/cols:
// the held (out, in) shape of each matrix.
typedef struct StageLayer {
    uint64_t mat[STAGE_NMAT], scale[STAGE_NMAT];
    int rows[STAGE_NMAT], cols[STAGE_NMAT];
    uint64_t bytes;
} StageLayer;

// The layout of a layer segment; 0, or -1 (sizes overflow) with why.
int stage_layer_layout(const StageHeader *h, StageLayer *ly, char *why, size_t n);
// Floats of the resident segment (wte, wpe, layer vectors, ln_f); 0 or -1.
int stage_resident_floats(const StageHeader *h, uint64_t *floats, char *why, size_t n);
// Fills h->seg's offsets and bytes, header_bytes, nseg, file_size from the
// shape (checksums left for the writer); 0 or -1 with why.
int stage_plan(StageHeader *h, char *why, size_t n);
// The header's encoded size (fixed fields and the segment table, unpadded).
uint64_t stage_header_size(uint32_t nseg);
// Encodes h into buf (header_bytes, zero padded) with its checksum.
void stage_header_encode(const StageHeader *h, uint8_t *buf);
// Decodes and checks a header from the first `len` bytes of a file of
// `file_size` bytes: magic, version, dtype, shape ranges, segment table (each
// offset and size exactly where the layout puts it), header checksum, and
// that the file is as long as its header says. 0, or -1 with why (h->seg
// freed). need: when -1 because len was too short, the bytes it needs (else 0).
int stage_header_parse(StageHeader *h, const uint8_t *buf, size_t len, uint64_t file_size, uint64_t *need,
                       char *why, size_t n);
void stage_header_free(StageHeader *h);
// The checksum of bytes (64-bit, four interleaved multiply-xor lanes).
uint64_t stage_checksum(const void *p, size_t bytes);

// The int8 quantization of one held row (the engine's: scale = max|x|/127,
// q = lrintf(x/scale), scale 1 for a zero row); returns the scale.
float stage_quantize_row(const float *x, int cols, int8_t *q);

// The matrix (STAGE_*) a tensor of kind `kind` (model.h K_*) is in a layer
// segment, or -1: the layer's vectors, wte, wpe and ln_f are resident.
int stage_matrix_of(int kind);

// `partita stage DECK --out FILE [--from WEIGHTS|--random SEED] [--dtype
// fp32|bf16|int8] [--shards N]` (serial; rank 0 of the job runs it).
int stage_main(int argc, char **argv);

#endif
