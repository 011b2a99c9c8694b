// deck.h: the input deck: parse, validate, derive, echo.
//
// A deck is plain text: `[section]` headers, `key = value` lines, `#` comments.
// Every key is declared once in deck.c's table with its type, default, range and
// a one-line help; the table fills the Config below. Errors name file:line and
// the key, say what was expected, and suggest the nearest known key.
#ifndef PARTITA_DECK_H
#define PARTITA_DECK_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#define DECK_STR 512        // bytes of a string value, with its NUL
#define DECK_LINE_MAX 4096  // bytes of a deck line, with its newline

// Upper bounds of the integer keys (README, "Limits"). With them every size the
// program derives from a deck fits the int arithmetic of the kernels and the
// int64 counters; derive() checks the products (rows, buffers, messages).
#define DECK_MAX_STEPS (INT64_C(1) << 30)  // steps, stop_at, intervals, warmup
#define DECK_MAX_SEQ (INT64_C(1) << 24)    // seq_len, max_new_tokens, kv_blocks
#define DECK_MAX_COUNT (INT64_C(1) << 20)  // micro_batch, grad_accum, eval_batches, token_budget, keep
#define DECK_MAX_BATCH (INT64_C(1) << 40)  // train.batch
#define DECK_MAX_RANKS (INT64_C(1) << 20)  // dp, sp, tp, ep, comm.fault_skip_rank
#define DECK_MAX_VOCAB 10000000            // model.vocab
#define DECK_MAX_ELEMS (INT64_C(1) << 40)  // floats in one tensor or activation buffer (4 TiB)
#define DECK_MAX_PARAMS (INT64_C(1) << 44) // parameters of a model
#define DECK_MAX_TOKENS (INT64_C(1) << 53) // tokens of a run (counted in a double)
#define DECK_MAX_EXPERTS 4096              // moe.experts and each moe.pyramid entry

enum { BACKEND_AUTO = 0, BACKEND_CPU, BACKEND_CUDA };
enum { ORDER_SEQUENTIAL = 0, ORDER_SHUFFLED };
enum { DECAY_COSINE = 0, DECAY_LINEAR, DECAY_NONE };
enum { PRECISION_AUTO = 0, PRECISION_FP32, PRECISION_BF16 };
enum { DEVPATH_AUTO = 0, DEVPATH_NCCL, DEVPATH_STAGED };
enum { TOKENIZER_BYTE = 0, TOKENIZER_GPT2 };
enum { ON_NAN_STOP = 0, ON_NAN_SKIP };
enum { RECOMPUTE_NONE = 0, RECOMPUTE_LAYER };   // [train] recompute (sequence parallelism issue 11)
enum { MOE_GATE_NONE = 0, MOE_GATE_JITTER };    // [moe] noisy_gate

typedef struct RunConfig {
    char name[DECK_STR];      // run name; outputs go to out_dir
    char out_dir[DECK_STR];   // default "runs/<name>"
    int64_t seed;             // init and data-order seed
    int backend;              // BACKEND_*
    int64_t threads;          // kernel threads per rank; 0 = cores / ranks on the node
    double peak_gflops;       // sgemm peak for MFU; 0 = measure at start
    char stop_signals[DECK_STR]; // signals that stop the run with a checkpoint (stop.h parses them)
    char time_limit[DECK_STR];   // wall-time limit: seconds, 90m, 2h, H:MM:SS; "0" = none (stop.h)
    double time_margin;       // seconds kept free before the limit
    int overwrite;            // train may replace an earlier run's outputs that have no checkpoint
} RunConfig;

typedef struct ModelConfig {
    int64_t vocab;            // V
    int64_t vocab_pad;        // Vp = vocab rounded up to a multiple of this
    int64_t layers;           // L
    int64_t d_model;          // C
    int64_t heads;            // NH, divides C
    int64_t seq_len;          // maximum T (wpe rows)
    int64_t mlp_ratio;        // hidden = mlp_ratio * C
    double init_std;          // normal init std (0.02)
    double dropout;           // training dropout probability; 0 = off (kernels/*/dropout*)
} ModelConfig;

typedef struct DataConfig {
    char train[DECK_STR];     // token file (HDF5, from `partita prep`)
    char weights[DECK_STR];   // data mixing: a weight per file of train ("a.h5, b.h5"); "" = equal
    char val[DECK_STR];       // optional; "" = hold out val_fraction of train
    double val_fraction;      // tail of train held out when val is ""
    int order;                // ORDER_*
    int tokenizer;            // TOKENIZER_*
    char tokenizer_dir[DECK_STR]; // gpt2: encoder.json + vocab.bpe (or vocab.json + merges.txt)
} DataConfig;

typedef struct TrainConfig {
    int64_t steps;
    int64_t stop_at;          // this job stops after this step; 0 = steps
    int64_t seq_len;          // T used for training; <= model.seq_len; 0 = model.seq_len
    int64_t micro_batch;      // B, sequences per rank per micro-step
    int64_t grad_accum;       // micro-steps per step (derived from batch if 0)
    int64_t batch;            // global sequences per step = micro_batch*grad_accum*dp (derived if 0)
    double clip;              // global-norm clip; 0 = off
    int64_t log_interval;
    int64_t eval_interval;    // 0 = only at the end
    int64_t eval_batches;     // micro-batches of validation per rank
    int precision;            // PRECISION_*
    int save_weights;         // write init.h5 and final.h5
    int on_nan;               // ON_NAN_*: a non-finite loss or gradient norm stops the run or skips the step
    int64_t fault_nan_step;   // test only: 1-based step whose gradient is poisoned; 0 = none
    int64_t fault_nan_rank;   // test only: ... on this rank
    int recompute;            // RECOMPUTE_*: activation checkpointing per layer
} TrainConfig;

typedef struct OptimConfig {
    double lr, min_lr;
    int64_t warmup;           // linear warmup steps
    int decay;                // DECAY_* from lr to min_lr over the rest of the steps
    double beta1, beta2, eps, weight_decay;
    int offloaded;            // not a key: set by train.c when [offload] holds the moments (none allocated)
} OptimConfig;

typedef struct ParallelConfig {
    int64_t dp, sp, tp, ep;   // dp = 0: derived as world / (sp*tp)
} ParallelConfig;

typedef struct ZeroConfig {
    int64_t stage;            // 0..3
    double bucket_mb;         // gradient bucket size
    int overlap;              // non-blocking collectives overlapped with compute
    int prefetch;             // stage 3: gather the next unit ahead
    int node_shared;          // stages 1-3: shards in a node-shared window where it applies (zero.h)
    int fused_grads;          // stages 2-3, node-shared, two ranks: weight gradients summed by the products (zero.h)
    int fault_postpone;       // test only: fused gradients postpone every product they may, run them only when due
    int shared;               // not a key: set by zero_create where the window is in use (zero_plan counts it)
    int fused;                // not a key: set by zero_create where fused gradients are in use (zero_plan counts it)
    size_t tokens;            // not a key: this rank's token rows per micro-step (B T), set by the trainer on
                              // the cpu backend (0 elsewhere): the early embeddings' exchange (zero.h)
    int64_t accum;            // not a key: micro-steps per step, set by the trainer (0 = 1): stages 2-3
                              // keep a receive buffer for the micro-steps after the first only when > 1
} ZeroConfig;

typedef struct CheckpointConfig {
    char dir[DECK_STR];       // "" = <out_dir>/ckpt
    int64_t interval;         // 0 = no checkpoints
    int64_t keep;             // newest kept; 0 = all
    char resume[DECK_STR];    // auto | none | PATH
    int async;                // write in the background from a host copy (ckpt.h)
    int64_t test_pause_step;  // test only
    double test_pause_s;      // test only
    int64_t fault_stall_rank; // test only: -1 = none
    int64_t fault_stall_step; // test only: the checkpoint (step) during whose write it stalls
    double fault_stall_s;     // test only
} CheckpointConfig;

enum { GEN_SPLITFUSE = 0, GEN_STATIC, GEN_CONTINUOUS };   // = sched.h SCHED_*
enum { GEN_W_FP32 = 0, GEN_W_BF16, GEN_W_INT8 };   // the order of kernels.h WDT_*
enum { GEN_FROM_MEMORY = 0, GEN_FROM_HOST, GEN_FROM_NVME };   // ZeRO-Inference (infer/stream.h)

typedef struct GenerateConfig {
    char weights[DECK_STR];   // a weights file (init/final/export) or a checkpoint
    char requests[DECK_STR];  // JSONL, one request a line
    char out[DECK_STR];       // gen.h5; "" = <out_dir>/gen.h5
    char jsonl[DECK_STR];     // the JSONL mirror; "" = <out_dir>/gen.jsonl
    int mode;                 // GEN_*
    int weights_dtype;        // GEN_W_*: how inference holds the matrices
    int64_t token_budget;     // tokens per forward pass (SplitFuse)
    int64_t kv_block;         // tokens per KV block
    int64_t kv_blocks;        // blocks in the pool
    int64_t max_batch;        // sequences running at once
    int64_t max_new_tokens;   // for requests without max_tokens
    char arrivals[DECK_STR];  // all_at_once | poisson:RATE
    int64_t arrival_seed;
    int naive;                // test reference: recompute everything, no cache
    int weights_from;         // GEN_FROM_*: resident weights, or streamed from a staged file
    char stage[DECK_STR];     // the staged weight file (`partita stage`) host/nvme stream
    int64_t window;           // layers held at once when streaming (>= 2)
    int64_t io_depth;         // nvme: 1 MiB reads in flight; 0 = the window's
    int stream_share;         // segments several ranks need whole: 1/N each + all-gather
    int moe_drop;             // MoE: drop tokens over the eval capacity (false: never drop)
    int kv_alloc;             // GEN_KV_*: blocks as tokens come (lazy, preempting) or reserved up front
    int jsonl_format;         // GEN_JSONL_*: gen.jsonl flat or as OpenAI batch output
} GenerateConfig;

enum { GEN_KV_LAZY = 0, GEN_KV_RESERVE };
enum { GEN_JSONL_FLAT = 0, GEN_JSONL_OPENAI };

// [serve]: `partita serve`, an OpenAI-compatible server over the [generate] scheduler.
typedef struct ServeConfig {
    char host[DECK_STR];      // address rank 0 listens on
    int64_t port;
    int64_t max_queue;        // requests waiting beyond max_batch before 429
    int64_t max_connections;
    int64_t max_body_bytes;   // a larger request body is a 413
    double client_timeout_s;  // a body late by this long gets a 408; a client not reading for 2x this is cut off
    double drain_s;           // SIGTERM: running requests get this long to finish
    double sla_prompt_tok_s;  // FastGen SLA: TTFT within prompt_len / this
    char log[DECK_STR];       // served-requests JSONL; "" = <run.out_dir>/served.jsonl
    char model[DECK_STR];     // the model's name in the API; "" = run.name
    double test_pass_delay_s; // test only: rank 0 sleeps this long after each pass
    int64_t sndbuf_bytes;     // a completion connection's kernel send buffer; 0 = the kernel's autotuning
} ServeConfig;

typedef struct CommConfig {
    int debug;                // signature check before every collective
    double timeout_s;         // 0 = none
    int64_t fault_skip_rank;  // test only: -1 = none
    int64_t fault_skip_step;  // test only: 1-based step
    double fault_hang_s;      // test only: stall instead of skipping
    int device_path;          // DEVPATH_*: how collectives move device buffers (cuda)
    int progress;             // COMM_PROGRESS_* (comm.h): poll | thread | none
    double progress_us;       // progress = thread: pause between the thread's probes
    int compute_only;         // COMM_COMPUTE_* (comm.h): benchmark baseline, collectives move nothing
} CommConfig;

enum { OFFLOAD_NONE = 0, OFFLOAD_HOST, OFFLOAD_NVME };   // [offload] optimizer / params

typedef struct OffloadConfig {   // [offload]: ZeRO-Infinity tiers and Deep Optimizer States (offload.h)
    int optimizer;            // OFFLOAD_*: where the AdamW moments live
    int params;               // OFFLOAD_*: where the fp32 parameters live (ZeRO-3)
    char nvme_dir[DECK_STR];  // "" = <run.out_dir>/offload
    double subgroup_mb;       // the optimizer works on the flat state in subgroups of this size
    int64_t queue_depth;      // I/O requests in flight per rank
    int64_t buffers;          // staging buffers (subgroups held in memory at once)
    int prefetch;             // read subgroup i+1 (and the next unit's shard) ahead
    double host_cap_mb;       // most MiB of offloaded states held in memory per rank; 0 = no cap
    int dos;                  // Deep Optimizer States on cuda: GPU/CPU subgroup placement
    int64_t dos_stride;       // -1: the performance model chooses; 0: all on the CPU; k: every k-th on the GPU
} OffloadConfig;

// [moe] Mixture of Experts (issue 13; the decisions are in docs/architecture.md, "Mixture of
// Experts"). Layer l (0-based) is an MoE layer when l % every == every - 1 and experts > 0;
// deck_moe_experts() gives each layer's expert count (the pyramid's entry, else experts).
typedef struct MoeConfig {
    int64_t experts;          // E; 0 = no MoE (derived from pyramid when only that is given)
    int64_t every;            // an MoE layer replaces the MLP of every k-th layer
    int64_t top_k;            // 1 or 2
    double capacity_factor;   // training capacity factor
    double eval_capacity_factor; // eval and generate
    int64_t min_capacity;     // lower bound of the capacity per expert and row
    int drop_tokens;          // false: capacity = the row's tokens, nothing dropped
    double aux_loss;          // weight of the load-balancing loss
    int noisy_gate;           // MOE_GATE_*
    int residual;             // PR-MoE: dense MLP + top-1 expert mixed by a learned coefficient
    char pyramid[DECK_STR];   // "" or experts per MoE layer, e.g. "4,4,8"; overrides experts
} MoeConfig;

typedef struct Config {
    RunConfig run;
    ModelConfig model;
    DataConfig data;
    TrainConfig train;
    OptimConfig optim;        // section [optimizer]
    ParallelConfig parallel;
    ZeroConfig zero;
    CheckpointConfig checkpoint;
    GenerateConfig generate;
    ServeConfig serve;
    CommConfig comm;
    OffloadConfig offload;
    MoeConfig moe;
} Config;

#define DECK_MAX_KEYS 256

// Where each key's value came from: a line of the deck file (> 0) or one of these.
enum { DECK_FROM_DEFAULT = 0, DECK_FROM_SET = -1, DECK_FROM_DERIVED = -2 };

typedef struct Deck {
    Config cfg;
    char path[DECK_STR];
    int from[DECK_MAX_KEYS];  // per key of the table, in table order
} Deck;

// Parses path, applies the `section.key=value` overrides in sets, validates
// ranges, derives the keys left out (world_size = ranks in the job) and checks
// the ones that must agree. Returns 0, or -1 with a complete user-facing
// message in err ("error: FILE:LINE: ...\n  hint: ...").
int deck_load(Deck *d, const char *path, int nsets, char *const *sets,
              int world_size, char *err, size_t errlen);

// Fills d with every default, as if from an empty deck (for tools and tests).
void deck_defaults(Deck *d);

// The resolved configuration as deck text (every key, defaults included),
// parseable again by deck_load; a trailing comment marks defaults and derived
// keys. Returns the length written (truncated to n-1).
size_t deck_format(const Deck *d, char *buf, size_t n);

// "FILE:LINE", "--set", "default" or "derived" for key "section.key";
// used to point at the deck in errors found after loading.
const char *deck_where(const Deck *d, const char *key, char *buf, size_t n);

// Prints every key of section (NULL or "": all sections) with its default, help
// and accepted values: the reference `partita check --keys` shows. Returns the
// keys printed (0: no such section).
int deck_print_keys(FILE *out, const char *section);

// MoE layout of a validated config. deck_moe_layer: whether layer l (0-based) is an MoE
// layer; deck_moe_experts: its expert count (0 for a dense layer); deck_moe_layers: how
// many of the model's layers are MoE layers (0 without MoE).
int deck_moe_layer(const Config *c, int64_t l);
int64_t deck_moe_experts(const Config *c, int64_t l);
int64_t deck_moe_layers(const Config *c);

#endif
