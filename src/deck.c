// deck.c: the input deck: parse, validate, derive, echo.
//
// One static table (keys[] below) declares every key: section, name, type, where it lives in
// Config, its default (as deck text), its range and a one-line help. Parsing, --set overrides,
// defaults, range checks and the resolved echo (deck_format) are all driven by that table; only
// the cross-key derivations and checks (derive()) are written out by hand.
//
// Syntax accepted:
//   [section]              a header; `[ train ]` is fine; a trailing `# comment` is fine
//   key = value            whitespace around key, '=' and value is ignored
//   # comment              full-line, or trailing after a value (not inside a quoted string)
// Values by type:
//   integer  decimal, optional sign, optional binary suffix K/M/G (either case):
//            K = 1024, M = 1024^2, G = 1024^3, so 4K = 4096 and 1M = 1048576
//   number   anything strtod reads, finite: 0.1, 3e-4, 1E-8
//   boolean  true/false, yes/no, on/off, 1/0 (any case)
//   string   bare (up to a '#', trimmed) or "quoted" (may hold '#'; \" and \\ are escapes);
//            at most DECK_STR-1 bytes
//   enum     one of the names listed in the table (any case; quotes allowed)
// A `--set section.key=value` override takes the value literally: no '#' comment stripping.
//
// Errors are one message, "error: WHERE: WHAT\n  hint: WHAT TO DO" (no trailing newline), where
// WHERE is "FILE:LINE", "--set section.key=value" or, for a cross-check that involves only
// defaults and derived keys, "FILE". The first error found ends the load.
#include "deck.h"
#include "kernels.h"
#include "utf8.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

enum { T_INT, T_FLOAT, T_BOOL, T_STR, T_ENUM };

// Range flags. Bounds are held as doubles: exact for every bound in the table (all far below 2^53).
enum {
    R_MIN = 1,        // value >= min
    R_MAX = 2,        // value <= max
    R_MIN_OPEN = 4,   // value > min (with R_MIN)
    R_MAX_OPEN = 8,   // value < max (with R_MAX)
    R_NONEMPTY = 16,  // string must not be ""
};

typedef struct KeyDef {
    const char *section;
    const char *key;
    int type;                  // T_*
    size_t off;                // offset into Config
    const char *def;           // default, as deck text (unquoted for strings)
    double min, max;
    int flags;                 // R_*
    const char *const *names;  // T_ENUM: NULL-terminated, index = stored value
    const char *help;
} KeyDef;

static const char *const backend_names[] = {"auto", "cpu", "cuda", NULL};
static const char *const order_names[] = {"sequential", "shuffled", NULL};
static const char *const decay_names[] = {"cosine", "linear", "none", NULL};
static const char *const precision_names[] = {"auto", "fp32", "bf16", NULL};
static const char *const recompute_names[] = {"none", "layer", NULL};
static const char *const devpath_names[] = {"auto", "nccl", "staged", NULL};
static const char *const progress_names[] = {"poll", "thread", "none", NULL};   // = COMM_PROGRESS_*
static const char *const compute_only_names[] = {"false", "true", "alternate", NULL};   // = COMM_COMPUTE_*
static const char *const tokenizer_names[] = {"byte", "gpt2", NULL};
static const char *const gen_mode_names[] = {"splitfuse", "static", "continuous", NULL};
static const char *const gen_kv_names[] = {"lazy", "reserve", NULL};
static const char *const gen_jsonl_names[] = {"flat", "openai", NULL};
static const char *const gen_wdtype_names[] = {"fp32", "bf16", "int8", NULL};
static const char *const gen_from_names[] = {"memory", "host", "nvme", NULL};
static const char *const on_nan_names[] = {"stop", "skip", NULL};
static const char *const offload_tier_names[] = {"none", "host", "nvme", NULL};
static const char *const moe_gate_names[] = {"none", "jitter", NULL};

#define OFF(f) offsetof(Config, f)
#define GE(lo) (lo), 0, R_MIN
#define GT(lo) (lo), 0, (R_MIN | R_MIN_OPEN)
#define IN(lo, hi) (lo), (hi), (R_MIN | R_MAX)
#define ANY 0, 0, 0

static const KeyDef keys[] = {
    // section   key             type     offset                    default       range
    {"run", "name", T_STR, OFF(run.name), "run", 0, 0, R_NONEMPTY, NULL,
     "run name; outputs go to run.out_dir"},
    {"run", "out_dir", T_STR, OFF(run.out_dir), "", ANY, NULL,
     "output directory; \"\" = runs/<run.name>"},
    {"run", "seed", T_INT, OFF(run.seed), "1337", ANY, NULL, "seed for init and data order"},
    {"run", "backend", T_ENUM, OFF(run.backend), "auto", ANY, backend_names,
     "compute backend: auto picks cuda where a GPU is present"},
    {"run", "threads", T_INT, OFF(run.threads), "0", IN(0, 4096), NULL,
     "kernel threads per rank; 0 = cores / ranks on the node"},
    {"run", "peak_gflops", T_FLOAT, OFF(run.peak_gflops), "0", IN(0, 1e9), NULL,
     "sgemm peak GFLOP/s for MFU; 0 = measure at start"},
    {"run", "stop_signals", T_STR, OFF(run.stop_signals), "TERM, USR1", ANY, NULL,
     "signals that stop the run after the current step with a checkpoint, exit 75; none = no handlers"},
    {"run", "time_limit", T_STR, OFF(run.time_limit), "0", ANY, NULL,
     "wall-time limit of the job (3600, 90m, 2h, H:MM:SS); it stops with a checkpoint before it, exit 75; 0 = none"},
    {"run", "time_margin", T_FLOAT, OFF(run.time_margin), "60", IN(0, 86400), NULL,
     "seconds kept free before the time limit (or Slurm's end time) for the exit"},
    {"run", "overwrite", T_BOOL, OFF(run.overwrite), "false", ANY, NULL,
     "train: replace run.h5/init.h5/final.h5 of an earlier run in out_dir that has no checkpoint to resume"},

    {"model", "vocab", T_INT, OFF(model.vocab), "257", IN(2, DECK_MAX_VOCAB), NULL,
     "vocabulary size V"},
    {"model", "vocab_pad", T_INT, OFF(model.vocab_pad), "64", IN(1, 65536), NULL,
     "Vp = vocab rounded up to a multiple of this"},
    {"model", "layers", T_INT, OFF(model.layers), "2", IN(1, 1024), NULL,
     "transformer blocks L"},
    {"model", "d_model", T_INT, OFF(model.d_model), "64", IN(1, 65536), NULL, "model width C"},
    {"model", "heads", T_INT, OFF(model.heads), "4", IN(1, 1024), NULL,
     "attention heads NH; must divide d_model"},
    {"model", "seq_len", T_INT, OFF(model.seq_len), "64", IN(1, DECK_MAX_SEQ), NULL,
     "maximum sequence length T (position table rows)"},
    {"model", "mlp_ratio", T_INT, OFF(model.mlp_ratio), "4", IN(1, 64), NULL,
     "MLP hidden width = mlp_ratio * d_model"},
    {"model", "init_std", T_FLOAT, OFF(model.init_std), "0.02", 0, 10, (R_MIN | R_MIN_OPEN | R_MAX), NULL,
     "std of the normal weight init"},
    {"model", "dropout", T_FLOAT, OFF(model.dropout), "0", 0, 1, (R_MIN | R_MAX | R_MAX_OPEN), NULL,
     "training dropout probability at GPT-2's sites (embeddings, attention probabilities, "
     "both residual branches); evaluation and generation never drop"},

    {"data", "train", T_STR, OFF(data.train), "", ANY, NULL,
     "training token file (HDF5, from `partita prep`), or a comma-separated list of them to mix (see weights)"},
    {"data", "weights", T_STR, OFF(data.weights), "", ANY, NULL,
     "data mixing: one weight per file of train (a list), e.g. 0.7, 0.3; \"\" = one file, or equal weights"},
    {"data", "val", T_STR, OFF(data.val), "", ANY, NULL,
     "validation token file; \"\" = hold out val_fraction of train"},
    {"data", "val_fraction", T_FLOAT, OFF(data.val_fraction), "0.05", IN(0, 0.5), NULL,
     "tail of train held out for validation when val is \"\""},
    {"data", "order", T_ENUM, OFF(data.order), "sequential", ANY, order_names,
     "order in which training sequences are visited"},
    {"data", "tokenizer", T_ENUM, OFF(data.tokenizer), "byte", ANY, tokenizer_names,
     "tokenizer: byte (vocab 257) or gpt2 (GPT-2 BPE, vocab 50257); must match the token files"},
    {"data", "tokenizer_dir", T_STR, OFF(data.tokenizer_dir), "data/gpt2", ANY, NULL,
     "gpt2: directory of encoder.json + vocab.bpe (or vocab.json + merges.txt); `make deps` fills data/gpt2"},

    {"train", "steps", T_INT, OFF(train.steps), "100", IN(1, DECK_MAX_STEPS), NULL, "optimizer steps to run"},
    {"train", "stop_at", T_INT, OFF(train.stop_at), "0", IN(0, DECK_MAX_STEPS), NULL,
     "stop this job after this step (checkpointing there), e.g. to fit a batch time limit; 0 = train.steps"},
    {"train", "seq_len", T_INT, OFF(train.seq_len), "0", IN(0, DECK_MAX_SEQ), NULL,
     "training sequence length; 0 = model.seq_len"},
    {"train", "micro_batch", T_INT, OFF(train.micro_batch), "4", IN(1, DECK_MAX_COUNT), NULL,
     "sequences per rank per micro-step"},
    {"train", "grad_accum", T_INT, OFF(train.grad_accum), "0", IN(0, DECK_MAX_COUNT), NULL,
     "micro-steps per step; 0 = derive from batch (or 1)"},
    {"train", "batch", T_INT, OFF(train.batch), "0", IN(0, DECK_MAX_BATCH), NULL,
     "global sequences per step = micro_batch*grad_accum*dp; 0 = derive"},
    {"train", "clip", T_FLOAT, OFF(train.clip), "1.0", IN(0, 1e9), NULL,
     "global gradient-norm clip; 0 = off"},
    {"train", "log_interval", T_INT, OFF(train.log_interval), "10", IN(1, DECK_MAX_STEPS), NULL,
     "steps between log lines"},
    {"train", "eval_interval", T_INT, OFF(train.eval_interval), "0", IN(0, DECK_MAX_STEPS), NULL,
     "steps between evaluations; 0 = only at the end"},
    {"train", "eval_batches", T_INT, OFF(train.eval_batches), "4", IN(1, DECK_MAX_COUNT), NULL,
     "validation micro-batches per rank per evaluation"},
    {"train", "recompute", T_ENUM, OFF(train.recompute), "none", ANY, recompute_names,
     "none: keep every activation; layer: keep each layer's input and recompute the layer in backward"},
    {"train", "precision", T_ENUM, OFF(train.precision), "auto", ANY, precision_names,
     "matrix products: bf16 inputs with fp32 accumulation (cuda only), or fp32; auto = bf16 on cuda, fp32 on cpu"},
    {"train", "save_weights", T_BOOL, OFF(train.save_weights), "true", ANY, NULL,
     "write init.h5 and final.h5"},
    {"train", "on_nan", T_ENUM, OFF(train.on_nan), "stop", ANY, on_nan_names,
     "non-finite loss or gradient norm: stop (exit 3, no checkpoint of it) or skip the update"},
    {"train", "fault_nan_step", T_INT, OFF(train.fault_nan_step), "0", IN(0, DECK_MAX_STEPS), NULL,
     "test only: poison the gradient of this step (1-based) on one rank; 0 = none"},
    {"train", "fault_nan_rank", T_INT, OFF(train.fault_nan_rank), "0", IN(0, DECK_MAX_RANKS), NULL,
     "test only: ... on this rank"},

    {"optimizer", "lr", T_FLOAT, OFF(optim.lr), "6e-4", 0, 100, (R_MIN | R_MIN_OPEN | R_MAX), NULL, "peak learning rate"},
    {"optimizer", "min_lr", T_FLOAT, OFF(optim.min_lr), "0", IN(0, 100), NULL,
     "learning rate at the end of the decay; <= lr"},
    {"optimizer", "warmup", T_INT, OFF(optim.warmup), "0", IN(0, DECK_MAX_STEPS), NULL,
     "linear warmup steps; <= train.steps"},
    {"optimizer", "decay", T_ENUM, OFF(optim.decay), "cosine", ANY, decay_names,
     "decay from lr to min_lr after warmup"},
    {"optimizer", "beta1", T_FLOAT, OFF(optim.beta1), "0.9", 0, 1, (R_MIN | R_MAX | R_MAX_OPEN),
     NULL, "AdamW first-moment decay"},
    {"optimizer", "beta2", T_FLOAT, OFF(optim.beta2), "0.95", 0, 1, (R_MIN | R_MAX | R_MAX_OPEN),
     NULL, "AdamW second-moment decay"},
    {"optimizer", "eps", T_FLOAT, OFF(optim.eps), "1e-8", 0, 1, (R_MIN | R_MIN_OPEN | R_MAX), NULL, "AdamW epsilon"},
    {"optimizer", "weight_decay", T_FLOAT, OFF(optim.weight_decay), "0.1", IN(0, 100), NULL,
     "AdamW decoupled weight decay"},

    {"parallel", "dp", T_INT, OFF(parallel.dp), "0", IN(0, DECK_MAX_RANKS), NULL,
     "data-parallel ranks; 0 = world size / (sp*tp)"},
    {"parallel", "sp", T_INT, OFF(parallel.sp), "1", IN(1, DECK_MAX_RANKS), NULL, "sequence-parallel ranks"},
    {"parallel", "tp", T_INT, OFF(parallel.tp), "1", IN(1, DECK_MAX_RANKS), NULL, "tensor-parallel ranks"},
    {"parallel", "ep", T_INT, OFF(parallel.ep), "1", IN(1, DECK_MAX_RANKS), NULL, "expert-parallel ranks"},

    {"zero", "stage", T_INT, OFF(zero.stage), "0", IN(0, 3), NULL,
     "ZeRO stage: 0 all-reduce, 1 +optimizer states, 2 +gradients, 3 +parameters partitioned"},
    {"zero", "bucket_mb", T_FLOAT, OFF(zero.bucket_mb), "25", 0, 65536, (R_MIN | R_MIN_OPEN | R_MAX), NULL,
     "gradient bucket size in MiB (whole layers, in backward order)"},
    {"zero", "overlap", T_BOOL, OFF(zero.overlap), "true", ANY, NULL,
     "overlap collectives with compute (false: wait for each at once)"},
    {"zero", "prefetch", T_BOOL, OFF(zero.prefetch), "true", ANY, NULL,
     "stage 3: gather the next layer while this one computes"},
    {"zero", "node_shared", T_BOOL, OFF(zero.node_shared), "true", ANY, NULL,
     "stages 1-3 on the cpu backend, every rank on one node: parameter shards in one shared window, read in place (no all-gathers)"},
    {"zero", "fused_grads", T_BOOL, OFF(zero.fused_grads), "true", ANY, NULL,
     "stages 2-3 with node-shared parameters on two ranks: each matrix's gradient summed by the products themselves into the owner's shard (no reduce-scatter)"},
    {"zero", "fault_postpone", T_BOOL, OFF(zero.fault_postpone), "false", ANY, NULL,
     "test only: fused gradients postpone every second half they may and run them only when due (a full ring, a bucket's finish, the backward's end)"},

    {"checkpoint", "dir", T_STR, OFF(checkpoint.dir), "", ANY, NULL,
     "checkpoint directory; \"\" = <run.out_dir>/ckpt"},
    {"checkpoint", "interval", T_INT, OFF(checkpoint.interval), "0", IN(0, DECK_MAX_STEPS), NULL,
     "steps between checkpoints (and one at the end); 0 = none"},
    {"checkpoint", "keep", T_INT, OFF(checkpoint.keep), "3", IN(0, DECK_MAX_COUNT), NULL,
     "checkpoints kept (the newest); 0 = all"},
    {"checkpoint", "resume", T_STR, OFF(checkpoint.resume), "auto", ANY, NULL,
     "auto (the latest whole checkpoint in dir, if any), none, or a checkpoint file"},
    {"checkpoint", "async", T_BOOL, OFF(checkpoint.async), "false", ANY, NULL,
     "copy the states to a host buffer at the step and write them while training goes on (the next checkpoint waits)"},
    {"checkpoint", "test_pause_step", T_INT, OFF(checkpoint.test_pause_step), "0", IN(0, DECK_MAX_STEPS), NULL,
     "test only: pause half-way through writing this step's checkpoint"},
    {"checkpoint", "test_pause_s", T_FLOAT, OFF(checkpoint.test_pause_s), "0", IN(0, 3600), NULL,
     "test only: ... for this many seconds"},
    {"checkpoint", "fault_stall_rank", T_INT, OFF(checkpoint.fault_stall_rank), "-1", IN(-1, DECK_MAX_RANKS), NULL,
     "test only: this rank stalls in the middle of a checkpoint write (-1 = none)"},
    {"checkpoint", "fault_stall_step", T_INT, OFF(checkpoint.fault_stall_step), "0", IN(0, DECK_MAX_STEPS), NULL,
     "test only: ... of this step's checkpoint"},
    {"checkpoint", "fault_stall_s", T_FLOAT, OFF(checkpoint.fault_stall_s), "0", IN(0, 3600), NULL,
     "test only: ... for this many seconds (a stuck rank; [comm] timeout_s must end the job)"},

    {"generate", "weights", T_STR, OFF(generate.weights), "", ANY, NULL,
     "weights to generate with: a weights file (init.h5, final.h5, ckpt export) or a checkpoint"},
    {"generate", "requests", T_STR, OFF(generate.requests), "", ANY, NULL,
     "JSONL requests: id, prompt or tokens, max_tokens, temperature, top_k, top_p, seed, stop"},
    {"generate", "out", T_STR, OFF(generate.out), "", ANY, NULL, "gen.h5 path; \"\" = <run.out_dir>/gen.h5"},
    {"generate", "jsonl", T_STR, OFF(generate.jsonl), "", ANY, NULL,
     "JSONL mirror of the outputs; \"\" = <run.out_dir>/gen.jsonl (ids found there are skipped)"},
    {"generate", "mode", T_ENUM, OFF(generate.mode), "splitfuse", ANY, gen_mode_names,
     "splitfuse (Dynamic SplitFuse: decodes + prompt chunks fill a token budget), continuous (vLLM/Orca: whole prompts prefilled, decodes stall meanwhile) or static (prefill a batch, decode to the longest)"},
    {"generate", "weights_dtype", T_ENUM, OFF(generate.weights_dtype), "fp32", ANY, gen_wdtype_names,
     "matrices held for inference (generate, eval) as fp32, bf16, or int8 (a scale per output channel; activations fp32)"},
    {"generate", "token_budget", T_INT, OFF(generate.token_budget), "256", IN(1, DECK_MAX_COUNT), NULL,
     "tokens per forward pass: decodes first, prompt chunks fill the rest"},
    {"generate", "kv_block", T_INT, OFF(generate.kv_block), "16", IN(1, 65536), NULL, "tokens per KV-cache block"},
    {"generate", "kv_blocks", T_INT, OFF(generate.kv_blocks), "256", IN(1, DECK_MAX_SEQ), NULL, "KV-cache blocks in the pool"},
    {"generate", "max_batch", T_INT, OFF(generate.max_batch), "32", IN(1, 65536), NULL, "sequences running at once"},
    {"generate", "max_new_tokens", T_INT, OFF(generate.max_new_tokens), "64", IN(1, DECK_MAX_SEQ), NULL,
     "max_tokens of requests that do not say"},
    {"generate", "arrivals", T_STR, OFF(generate.arrivals), "all_at_once", ANY, NULL,
     "all_at_once, or poisson:RATE (requests per second, replayed inside the job)"},
    {"generate", "arrival_seed", T_INT, OFF(generate.arrival_seed), "1", ANY, NULL, "seed of the Poisson arrivals"},
    {"generate", "naive", T_BOOL, OFF(generate.naive), "false", ANY, NULL,
     "test reference: recompute every sequence in full for each token, no KV cache"},
    {"generate", "weights_from", T_ENUM, OFF(generate.weights_from), "memory", ANY, gen_from_names,
     "ZeRO-Inference: memory (load every weight), or stream each layer from the staged file held in host memory or read from NVMe (O_DIRECT)"},
    {"generate", "stage", T_STR, OFF(generate.stage), "", ANY, NULL,
     "the staged weight file (`partita stage`) that weights_from = host|nvme streams"},
    {"generate", "window", T_INT, OFF(generate.window), "2", IN(2, 1024), NULL,
     "layers held at once when streaming: the one computing and those arriving"},
    {"generate", "io_depth", T_INT, OFF(generate.io_depth), "0", IN(0, 4096), NULL,
     "nvme: reads of 1 MiB in flight at most; 0 = enough for the whole window (at most 4096)"},
    {"generate", "stream_share", T_BOOL, OFF(generate.stream_share), "true", ANY, NULL,
     "streaming at tp > 1: segments every rank needs whole (the resident one; layers of a whole-layer file) are read 1/N by each rank and all-gathered"},
    {"generate", "moe_drop", T_BOOL, OFF(generate.moe_drop), "false", ANY, NULL,
     "MoE: drop tokens over the eval capacity as training does (false: inference never drops)"},
    {"generate", "kv_alloc", T_ENUM, OFF(generate.kv_alloc), "lazy", ANY, gen_kv_names,
     "lazy (a block as tokens come; a dry pool preempts the newest sequence, recomputed later) or reserve (prompt + max_tokens up front)"},
    {"generate", "jsonl_format", T_ENUM, OFF(generate.jsonl_format), "flat", ANY, gen_jsonl_names,
     "gen.jsonl lines: flat (id, status, text, tokens) or openai (OpenAI batch output as vLLM writes it)"},

    {"serve", "host", T_STR, OFF(serve.host), "127.0.0.1", 0, 0, R_NONEMPTY, NULL,
     "address rank 0 listens on (an IPv4 address; 0.0.0.0 = every interface)"},
    {"serve", "port", T_INT, OFF(serve.port), "8000", IN(0, 65535), NULL, "TCP port (0 = any free port, printed at start)"},
    {"serve", "max_queue", T_INT, OFF(serve.max_queue), "64", IN(0, 65536), NULL,
     "requests waiting for a batch slot; one more is answered 429"},
    {"serve", "max_connections", T_INT, OFF(serve.max_connections), "128", IN(1, 4096), NULL, "open HTTP connections"},
    {"serve", "max_body_bytes", T_INT, OFF(serve.max_body_bytes), "1048576", IN(64, 1 << 26), NULL,
     "largest request body; a larger one is answered 413"},
    {"serve", "client_timeout_s", T_FLOAT, OFF(serve.client_timeout_s), "30", IN(0.1, 86400), NULL,
     "a request body not in within this long of its headers is answered 408; a client reading nothing for twice this is cut off (KV blocks freed, logged 408)"},
    {"serve", "drain_s", T_FLOAT, OFF(serve.drain_s), "30", IN(0, 86400), NULL,
     "on SIGTERM, running requests get this long to finish"},
    {"serve", "sla_prompt_tok_s", T_FLOAT, OFF(serve.sla_prompt_tok_s), "512", IN(1e-6, 1e9), NULL,
     "FastGen SLA: first token within prompt_len / this many seconds (generate's summary too)"},
    {"serve", "log", T_STR, OFF(serve.log), "", ANY, NULL, "served-requests JSONL; \"\" = <run.out_dir>/served.jsonl"},
    {"serve", "model", T_STR, OFF(serve.model), "", ANY, NULL, "the model's name in the API; \"\" = run.name"},
    {"serve", "test_pass_delay_s", T_FLOAT, OFF(serve.test_pass_delay_s), "0", IN(0, 10), NULL,
     "test only: rank 0 sleeps this long after each pass (slow generation on a tiny model)"},
    {"serve", "sndbuf_bytes", T_INT, OFF(serve.sndbuf_bytes), "0", IN(0, 1 << 26), NULL,
     "kernel send buffer of a completion's connection (0 = the kernel's autotuning); smaller notices a client that stopped reading sooner"},

    {"comm", "debug", T_BOOL, OFF(comm.debug), "false", ANY, NULL,
     "ranks compare (step, op, tensor, size) before every collective and name a diverging rank"},
    {"comm", "timeout_s", T_FLOAT, OFF(comm.timeout_s), "600", IN(0, 1e7), NULL,
     "a collective waited on longer than this is fatal, naming it; 0 = wait forever"},
    {"comm", "fault_skip_rank", T_INT, OFF(comm.fault_skip_rank), "-1", IN(-1, DECK_MAX_RANKS), NULL,
     "test only: this rank skips one collective (-1 = none)"},
    {"comm", "fault_skip_step", T_INT, OFF(comm.fault_skip_step), "1", IN(1, DECK_MAX_STEPS), NULL,
     "test only: ... its first collective of this step"},
    {"comm", "fault_hang_s", T_FLOAT, OFF(comm.fault_hang_s), "0", IN(0, 3600), NULL,
     "test only: instead of skipping it, the faulty rank stalls this long first (a stuck rank)"},
    {"comm", "device_path", T_ENUM, OFF(comm.device_path), "auto", ANY, devpath_names,
     "cuda: nccl, or staged (device -> host -> MPI -> device, lets ranks share a GPU); auto = nccl unless ranks share a GPU"},
    {"comm", "progress", T_ENUM, OFF(comm.progress), "poll", ANY, progress_names,
     "how collectives advance while kernels run: poll (tests between layers), thread (a progress thread too), none"},
    {"comm", "progress_us", T_FLOAT, OFF(comm.progress_us), "50", IN(0, 100000), NULL,
     "progress = thread: microseconds the thread sleeps between probes (0 = yield only; it spins on the core)"},
    {"comm", "compute_only", T_ENUM, OFF(comm.compute_only), "false", ANY, compute_only_names,
     "benchmark baseline: the float collectives return at once and move nothing (ranks compute on their own stale data; "
     "losses meaningless): true every step, alternate steps 1, 3, 5, ..."},

    {"offload", "optimizer", T_ENUM, OFF(offload.optimizer), "none", ANY, offload_tier_names,
     "where the AdamW moments live: none (with the parameters), host memory, or nvme (files in nvme_dir)"},
    {"offload", "params", T_ENUM, OFF(offload.params), "none", ANY, offload_tier_names,
     "where each rank's fp32 parameter shard lives between uses: none, host, nvme (needs [zero] stage = 3)"},
    {"offload", "nvme_dir", T_STR, OFF(offload.nvme_dir), "", ANY, NULL,
     "directory of the offload files (one per rank, O_DIRECT); \"\" = <run.out_dir>/offload"},
    {"offload", "subgroup_mb", T_FLOAT, OFF(offload.subgroup_mb), "64", IN(0.001, 65536), NULL,
     "the optimizer updates the offloaded states in subgroups of this many MiB (per array)"},
    {"offload", "queue_depth", T_INT, OFF(offload.queue_depth), "16", IN(1, 1024), NULL,
     "I/O requests in flight per rank (io_uring queue depth)"},
    {"offload", "buffers", T_INT, OFF(offload.buffers), "4", IN(2, 64), NULL,
     "staging buffers: subgroups held in memory at once (3 overlap read, update and write-back)"},
    {"offload", "prefetch", T_BOOL, OFF(offload.prefetch), "true", ANY, NULL,
     "read the next subgroup (and the next layer's shard) while this one is used"},
    {"offload", "host_cap_mb", T_FLOAT, OFF(offload.host_cap_mb), "0", IN(0, 1e9), NULL,
     "most MiB of offloaded states a rank holds in memory (subgroups shrink to fit); 0 = no cap"},
    {"offload", "dos", T_BOOL, OFF(offload.dos), "true", ANY, NULL,
     "cuda, optimizer = host|nvme: Deep Optimizer States places each subgroup's update on GPU or CPU; false = all on CPU"},
    {"offload", "dos_stride", T_INT, OFF(offload.dos_stride), "-1", IN(-1, 1048576), NULL,
     "Deep Optimizer States: -1 = the performance model chooses; 0 = all on the CPU; k = every k-th subgroup on the GPU"},

    {"moe", "experts", T_INT, OFF(moe.experts), "0", IN(0, DECK_MAX_EXPERTS), NULL,
     "experts per MoE layer; 0 = a dense model"},
    {"moe", "every", T_INT, OFF(moe.every), "2", IN(1, 1024), NULL,
     "an MoE layer replaces the MLP of every k-th layer (layers k-1, 2k-1, ...)"},
    {"moe", "top_k", T_INT, OFF(moe.top_k), "1", IN(1, 2), NULL, "experts each token is routed to"},
    {"moe", "capacity_factor", T_FLOAT, OFF(moe.capacity_factor), "1.0", 0, 1024,
     (R_MIN | R_MIN_OPEN | R_MAX), NULL, "training capacity: ceil(top_k*cf*seq_len/E) tokens per expert and row"},
    {"moe", "eval_capacity_factor", T_FLOAT, OFF(moe.eval_capacity_factor), "2.0", 0, 1024,
     (R_MIN | R_MIN_OPEN | R_MAX), NULL, "capacity factor of eval and generate"},
    {"moe", "min_capacity", T_INT, OFF(moe.min_capacity), "4", IN(0, DECK_MAX_SEQ), NULL,
     "the least capacity per expert and row"},
    {"moe", "drop_tokens", T_BOOL, OFF(moe.drop_tokens), "true", ANY, NULL,
     "drop tokens over capacity (they pass by the residual); false: capacity = seq_len"},
    {"moe", "aux_loss", T_FLOAT, OFF(moe.aux_loss), "0.01", IN(0, 1000), NULL,
     "weight of the load-balancing loss E*sum_e(f_e*P_e)"},
    {"moe", "noisy_gate", T_ENUM, OFF(moe.noisy_gate), "none", ANY, moe_gate_names,
     "none, or jitter (multiply the gate input by U(0.99, 1.01) in training)"},
    {"moe", "residual", T_BOOL, OFF(moe.residual), "false", ANY, NULL,
     "PR-MoE: a dense MLP plus a top-1 expert, mixed by a learned per-token coefficient"},
    {"moe", "pyramid", T_STR, OFF(moe.pyramid), "", ANY, NULL,
     "experts per MoE layer, e.g. 4,4,8 (one entry per MoE layer; overrides experts); \"\" = experts everywhere"},
};

#define NKEYS ((int)(sizeof keys / sizeof keys[0]))
_Static_assert(sizeof keys / sizeof keys[0] <= DECK_MAX_KEYS, "raise DECK_MAX_KEYS");

static const char *const sections[] = {"run", "model", "data", "train", "optimizer", "parallel", "zero", "checkpoint", "generate", "serve", "comm", "offload", "moe"};
#define NSECTIONS ((int)(sizeof sections / sizeof sections[0]))

// ---------------------------------------------------------------------------------------------
// Small helpers

// Appends to a fixed buffer; never overflows, remembers the length it wanted.
typedef struct Buf {
    char *p;
    size_t n, len;
} Buf;

__attribute__((format(printf, 2, 3))) static void bprintf(Buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->len < b->n ? b->n - b->len : 0;
    int w = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (w > 0) b->len += (size_t)w;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    return s;
}

// A value or line shown in a message: quoted by the caller, cut to a readable length.
static const char *shown(const char *s, char *buf, size_t n) {
    size_t len = strlen(s);
    if (len < n) return s;
    snprintf(buf, n, "%.*s...", (int)(n - 4), s);
    return buf;
}

static int eq_nocase(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return *a == *b;
}

// Edit distance with adjacent transpositions (optimal string alignment), case-insensitive;
// "stpes" is one edit from "steps".
static int edit_distance(const char *a, const char *b) {
    enum { M = 64 };
    size_t la = strlen(a), lb = strlen(b);
    if (la >= M || lb >= M) return 1 << 20;
    int d[M][M];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            int ca = tolower((unsigned char)a[i - 1]), cb = tolower((unsigned char)b[j - 1]);
            int cost = ca != cb;
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == cb && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[la][lb];
}

// How far a name may be from a known one and still be called a near miss.
static int near_enough(const char *name, int dist) {
    size_t n = strlen(name);
    int limit = n <= 3 ? 1 : n <= 6 ? 2 : 3;
    return dist <= limit;
}

static int find_section(const char *name) {
    for (int i = 0; i < NSECTIONS; i++)
        if (strcmp(sections[i], name) == 0) return i;
    return -1;
}

static int find_key(const char *section, const char *key) {
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0) return i;
    return -1;
}

// The key index for "section.key", or -1.
static int find_dotted(const char *dotted) {
    const char *dot = strchr(dotted, '.');
    if (!dot) return -1;
    char sec[64];
    size_t n = (size_t)(dot - dotted);
    if (n >= sizeof sec) return -1;
    memcpy(sec, dotted, n);
    sec[n] = '\0';
    return find_key(sec, dot + 1);
}

// Nearest section name to name, or -1 when none is near.
static int nearest_section(const char *name) {
    int best = -1, bd = 1 << 20;
    for (int i = 0; i < NSECTIONS; i++) {
        int dd = edit_distance(name, sections[i]);
        if (dd < bd) bd = dd, best = i;
    }
    return best >= 0 && near_enough(name, bd) ? best : -1;
}

// Nearest key in section (NULL: any section, exact matches first); -1 when none is near.
static int nearest_key(const char *section, const char *name) {
    int best = -1, bd = 1 << 20;
    for (int i = 0; i < NKEYS; i++) {
        if (section && strcmp(keys[i].section, section) != 0) continue;
        int dd = edit_distance(name, keys[i].key);
        if (dd < bd) bd = dd, best = i;
    }
    return best >= 0 && near_enough(name, bd) ? best : -1;
}

static void *field(Config *c, int k) { return (char *)c + keys[k].off; }
static const void *cfield(const Config *c, int k) { return (const char *)c + keys[k].off; }
static int64_t *iptr(Config *c, int k) { return (int64_t *)field(c, k); }

// "an integer >= 1", "a number in [0, 1)", ... : what a key accepts, for messages.
static void describe(int k, char *buf, size_t n) {
    const KeyDef *kd = &keys[k];
    Buf b = {buf, n, 0};
    if (n) buf[0] = '\0';
    switch (kd->type) {
    case T_BOOL: bprintf(&b, "a boolean (true/false, yes/no, on/off, 1/0)"); return;
    case T_STR:
        bprintf(&b, "%s (at most %d characters)", kd->flags & R_NONEMPTY ? "a non-empty string"
                                                                          : "a string",
                DECK_STR - 1);
        return;
    case T_ENUM:
        bprintf(&b, "one of ");
        for (int i = 0; kd->names[i]; i++) bprintf(&b, "%s%s", i ? ", " : "", kd->names[i]);
        return;
    default: break;
    }
    int isint = kd->type == T_INT;
    bprintf(&b, "%s", isint ? "an integer" : "a number");
    char lo[32], hi[32];
    if (isint) {
        snprintf(lo, sizeof lo, "%" PRId64, (int64_t)kd->min);
        snprintf(hi, sizeof hi, "%" PRId64, (int64_t)kd->max);
    } else {
        snprintf(lo, sizeof lo, "%g", kd->min);
        snprintf(hi, sizeof hi, "%g", kd->max);
    }
    if ((kd->flags & R_MIN) && (kd->flags & R_MAX))
        bprintf(&b, " in %c%s, %s%c", kd->flags & R_MIN_OPEN ? '(' : '[', lo, hi,
                kd->flags & R_MAX_OPEN ? ')' : ']');
    else if (kd->flags & R_MIN)
        bprintf(&b, " %s %s", kd->flags & R_MIN_OPEN ? ">" : ">=", lo);
    else if (kd->flags & R_MAX)
        bprintf(&b, " %s %s", kd->flags & R_MAX_OPEN ? "<" : "<=", hi);
}

static int in_range(int k, double v) {
    const KeyDef *kd = &keys[k];
    if (kd->flags & R_MIN) {
        if (kd->flags & R_MIN_OPEN ? !(v > kd->min) : !(v >= kd->min)) return 0;
    }
    if (kd->flags & R_MAX) {
        if (kd->flags & R_MAX_OPEN ? !(v < kd->max) : !(v <= kd->max)) return 0;
    }
    return 1;
}

// Shortest %g that reads back to the same double.
static void format_double(double v, char *buf, size_t n) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

// ---------------------------------------------------------------------------------------------
// Values

// Parses an integer with an optional K/M/G (binary) suffix. 0, or -1 with msg/hint.
static int parse_int(const char *s, int64_t *out, char *msg, size_t mn, char *hint, size_t hn) {
    char sb[80];
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!isdigit((unsigned char)*p)) {
        snprintf(msg, mn, "expected an integer, got '%s'", shown(s, sb, sizeof sb));
        snprintf(hint, hn, "integers are decimal digits with an optional K, M or G suffix "
                           "(K = 1024, M = 1024^2, G = 1024^3), e.g. 4K = 4096");
        return -1;
    }
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE) {
        snprintf(msg, mn, "integer overflow: '%s' does not fit in a signed 64-bit integer",
                 shown(s, sb, sizeof sb));
        snprintf(hint, hn, "the largest integer is %lld", (long long)INT64_MAX);
        return -1;
    }
    int64_t mult = 1;
    switch (*end) {
    case 'k': case 'K': mult = INT64_C(1) << 10; end++; break;
    case 'm': case 'M': mult = INT64_C(1) << 20; end++; break;
    case 'g': case 'G': mult = INT64_C(1) << 30; end++; break;
    default: break;
    }
    if (*end != '\0') {
        if (mult == 1 && (*end == '.' || *end == 'e' || *end == 'E')) {
            snprintf(msg, mn, "expected an integer, got '%s'", shown(s, sb, sizeof sb));
            snprintf(hint, hn, "this key takes a whole number; write it in digits, with an "
                               "optional K, M or G suffix (K = 1024, M = 1024^2, G = 1024^3)");
        } else {
            char tb[40];
            snprintf(msg, mn, "expected an integer, got '%s' (trailing '%s' after the number)",
                     shown(s, sb, sizeof sb), shown(end, tb, sizeof tb));
            snprintf(hint, hn, "the only suffixes are K, M and G (K = 1024, M = 1024^2, "
                               "G = 1024^3); put a comment after a '#'");
        }
        return -1;
    }
    if (v > INT64_MAX / mult || v < INT64_MIN / mult) {
        snprintf(msg, mn, "integer overflow: '%s' = %lld x %lld does not fit in a signed 64-bit "
                 "integer", shown(s, sb, sizeof sb), v, (long long)mult);
        snprintf(hint, hn, "the largest integer is %lld", (long long)INT64_MAX);
        return -1;
    }
    *out = (int64_t)v * mult;
    return 0;
}

static int parse_float(const char *s, double *out, char *msg, size_t mn, char *hint, size_t hn) {
    char sb[80];
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s) {
        snprintf(msg, mn, "expected a number, got '%s'", shown(s, sb, sizeof sb));
        snprintf(hint, hn, "write a decimal number such as 0.1 or 3e-4");
        return -1;
    }
    if (*end != '\0') {
        char tb[40];
        snprintf(msg, mn, "expected a number, got '%s' (trailing '%s' after the number)",
                 shown(s, sb, sizeof sb), shown(end, tb, sizeof tb));
        snprintf(hint, hn, "write a decimal number such as 0.1 or 3e-4; put a comment after a '#'");
        return -1;
    }
    if (!isfinite(v) || (errno == ERANGE && fabs(v) > 1.0)) {
        snprintf(msg, mn, "expected a finite number, got '%s'", shown(s, sb, sizeof sb));
        snprintf(hint, hn, "write a decimal number such as 0.1 or 3e-4");
        return -1;
    }
    *out = v;
    return 0;
}

// Stores text (already unquoted; quoted says whether it was) into key k of c, checking type and
// range. 0, or -1 with msg ("expected ..., got ...") and hint.
static int set_value(Config *c, int k, const char *s, int quoted, char *msg, size_t mn,
                     char *hint, size_t hn) {
    const KeyDef *kd = &keys[k];
    char want[200], sb[80];
    describe(k, want, sizeof want);
    if (*s == '\0' && !quoted) {
        snprintf(msg, mn, "empty value, expected %s", want);
        if (kd->type == T_STR)
            snprintf(hint, hn, "write %s = \"\" for an empty string, or delete the line to use "
                     "the default (\"%s\")", kd->key, kd->def);
        else
            snprintf(hint, hn, "give a value, or delete the line to use the default (%s)", kd->def);
        return -1;
    }
    if (quoted && kd->type != T_STR && kd->type != T_ENUM) {
        snprintf(msg, mn, "expected %s, got '\"%s\"'", want, shown(s, sb, sizeof sb));
        snprintf(hint, hn, "numbers and booleans are written without quotes");
        return -1;
    }
    switch (kd->type) {
    case T_INT: {
        int64_t v;
        if (parse_int(s, &v, msg, mn, hint, hn)) return -1;
        if (!in_range(k, (double)v)) {
            snprintf(msg, mn, "%" PRId64 " is out of range, expected %s", v, want);
            snprintf(hint, hn, "%s.%s is the %s; the default is %s", kd->section, kd->key,
                     kd->help, kd->def);
            return -1;
        }
        *iptr(c, k) = v;
        return 0;
    }
    case T_FLOAT: {
        double v;
        if (parse_float(s, &v, msg, mn, hint, hn)) return -1;
        if (!in_range(k, v)) {
            snprintf(msg, mn, "%s is out of range, expected %s", shown(s, sb, sizeof sb), want);
            snprintf(hint, hn, "%s.%s is the %s; the default is %s", kd->section, kd->key,
                     kd->help, kd->def);
            return -1;
        }
        *(double *)field(c, k) = v;
        return 0;
    }
    case T_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"};
        static const char *const no[] = {"false", "no", "off", "0"};
        for (int i = 0; i < 4; i++) {
            if (eq_nocase(s, yes[i])) { *(int *)field(c, k) = 1; return 0; }
            if (eq_nocase(s, no[i])) { *(int *)field(c, k) = 0; return 0; }
        }
        snprintf(msg, mn, "expected %s, got '%s'", want, shown(s, sb, sizeof sb));
        snprintf(hint, hn, "write true or false");
        return -1;
    }
    case T_STR: {
        size_t len = strlen(s);
        if (len > DECK_STR - 1) {
            snprintf(msg, mn, "a string of %zu characters is too long, expected at most %d",
                     len, DECK_STR - 1);
            snprintf(hint, hn, "use a shorter name or path");
            return -1;
        }
        if (len == 0 && (kd->flags & R_NONEMPTY)) {
            snprintf(msg, mn, "empty string, expected %s", want);
            snprintf(hint, hn, "give a value, or delete the line to use the default (\"%s\")",
                     kd->def);
            return -1;
        }
        memcpy(field(c, k), s, len + 1);
        return 0;
    }
    case T_ENUM: {
        int best = -1, bd = 1 << 20;
        for (int i = 0; kd->names[i]; i++) {
            if (eq_nocase(s, kd->names[i])) { *(int *)field(c, k) = i; return 0; }
            int dd = edit_distance(s, kd->names[i]);
            if (dd < bd) bd = dd, best = i;
        }
        const char *choices = want + strlen("one of ");
        snprintf(msg, mn, "unknown value '%s', expected one of: %s", shown(s, sb, sizeof sb),
                 choices);
        if (best >= 0 && near_enough(s, bd))
            snprintf(hint, hn, "did you mean '%s'? valid choices: %s", kd->names[best], choices);
        else
            snprintf(hint, hn, "valid choices: %s", choices);
        return -1;
    }
    }
    return -1;
}

// Extracts the value from the text after '=', in place. Quoted values are unescaped; unquoted
// ones end at a '#' when comments is set, and are trimmed. 0, or -1 with msg/hint.
static int extract_value(char *rhs, int comments, char **val, int *quoted, char *msg, size_t mn,
                         char *hint, size_t hn) {
    char *p = rhs;
    while (isspace((unsigned char)*p)) p++;
    *quoted = 0;
    if (*p == '"') {
        char *w = p + 1, *r = p + 1;
        while (*r && *r != '"') {
            if (*r == '\\' && (r[1] == '"' || r[1] == '\\')) r++;
            *w++ = *r++;
        }
        if (*r != '"') {
            char sb[80];
            *w = '\0';
            snprintf(msg, mn, "missing the closing '\"' of \"%s", shown(p + 1, sb, sizeof sb));
            snprintf(hint, hn, "end the string with '\"' (write \\\" for a quote inside it)");
            return -1;
        }
        *w = '\0';
        char *after = r + 1;
        while (isspace((unsigned char)*after)) after++;
        if (*after && !(comments && *after == '#')) {
            char sb[80];
            snprintf(msg, mn, "unexpected text '%s' after the closing '\"'",
                     shown(trim(after), sb, sizeof sb));
            snprintf(hint, hn, "put everything inside the quotes, or a comment after a '#'");
            return -1;
        }
        *val = p + 1;
        *quoted = 1;
        return 0;
    }
    if (comments) {
        char *hash = strchr(p, '#');
        if (hash) *hash = '\0';
    }
    *val = trim(p);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Loading

typedef struct Ctx {
    Deck *d;
    const char *path;        // as given by the caller (d->path may be cut)
    char *const *sets;
    int set_of[DECK_MAX_KEYS];  // which --set gave each key
    char *err;
    size_t errlen;
} Ctx;

__attribute__((format(printf, 4, 5))) static int fail(Ctx *x, const char *where,
                                                      const char *hint, const char *fmt, ...) {
    Buf b = {x->err, x->errlen, 0};
    if (!x->err || x->errlen == 0) return -1;
    x->err[0] = '\0';
    bprintf(&b, "error: %s: ", where);
    size_t room = b.len < b.n ? b.n - b.len : 0;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(room ? b.p + b.len : NULL, room, fmt, ap);
    va_end(ap);
    if (w > 0) b.len += (size_t)w;
    if (hint && *hint) bprintf(&b, "\n  hint: %s", hint);
    return -1;
}

static void set_defaults_raw(Deck *d) {
    memset(d, 0, sizeof *d);
    for (int k = 0; k < NKEYS; k++) {
        char msg[256], hint[256];
        int quoted = keys[k].type == T_STR;  // so that "" is a value, not an empty line
        if (set_value(&d->cfg, k, keys[k].def, quoted, msg, sizeof msg, hint, sizeof hint) != 0) {
            // A bad default is a bug in the table above, never a user error.
            fprintf(stderr, "deck.c: bad default for %s.%s: %s\n", keys[k].section, keys[k].key,
                    msg);
            abort();
        }
        d->from[k] = DECK_FROM_DEFAULT;
    }
}

// A deck line (or --set argument) is UTF-8 text: no NUL or other control character but
// tab (a CR is allowed only at the end, for CRLF files), at most DECK_LINE_MAX bytes.
// 0, or -1 with msg/hint.
static int check_text(const char *s, size_t n, char *msg, size_t mn, char *hint, size_t hn) {
    if (n > 0 && s[n - 1] == '\n') n--;
    if (n > 0 && s[n - 1] == '\r') n--;
    if (n >= DECK_LINE_MAX) {
        snprintf(msg, mn, "a line longer than %d bytes", DECK_LINE_MAX - 1);
        snprintf(hint, hn, "string values hold at most %d bytes; split long lists or paths",
                 DECK_STR - 1);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\t' || (c >= 0x20 && c != 0x7F)) continue;
        if (c == 0) snprintf(msg, mn, "a NUL byte at column %zu", i + 1);
        else snprintf(msg, mn, "control character 0x%02X at column %zu", c, i + 1);
        snprintf(hint, hn, "a deck is plain UTF-8 text (tabs allowed): remove the character%s",
                 c == 0 ? "; a NUL would silently cut the value short" : "");
        return -1;
    }
    size_t bad;
    if (!utf8_valid(s, n, &bad)) {
        snprintf(msg, mn, "invalid UTF-8 (byte 0x%02X at column %zu)", (unsigned char)s[bad],
                 bad + 1);
        snprintf(hint, hn, "decks and --set values are UTF-8; convert the file (e.g. iconv -f "
                           "latin1 -t utf-8)");
        return -1;
    }
    return 0;
}

// Reads one line of at most DECK_LINE_MAX bytes (with its newline) into line; a longer
// one is reported by check_text. Returns the length, or -1 at the end of the file.
static ssize_t read_line(FILE *f, char *line) {
    size_t n = 0;
    int ch;
    while ((ch = getc(f)) != EOF) {
        line[n++] = (char)ch;
        if (ch == '\n' || n == DECK_LINE_MAX) break;
    }
    if (n == 0) return -1;
    line[n] = '\0';
    return (ssize_t)n;
}

static int parse_file(Ctx *x, FILE *f) {
    Deck *d = x->d;
    char *line = malloc(DECK_LINE_MAX + 1);
    int lineno = 0, sec = -1, rc = 0;
    char where[DECK_STR + 64], msg[1024], hint[1024], sb[80];
    if (!line) return fail(x, x->path, NULL, "out of memory");
    ssize_t len;
    while ((len = read_line(f, line)) != -1) {
        lineno++;
        snprintf(where, sizeof where, "%s:%d", x->path, lineno);
        if (check_text(line, (size_t)len, msg, sizeof msg, hint, sizeof hint)) {
            rc = fail(x, where, hint, "%s", msg);
            break;
        }
        char *p = line;
        if (lineno == 1 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3;  // UTF-8 BOM
        p = trim(p);
        if (*p == '\0' || *p == '#') continue;

        if (*p == '[') {
            char *close = strchr(p, ']');
            if (!close) {
                rc = fail(x, where, "a section header is a name in brackets, e.g. [train]",
                          "malformed section header '%s': missing ']'", shown(p, sb, sizeof sb));
                break;
            }
            char *after = close + 1;
            while (isspace((unsigned char)*after)) after++;
            if (*after && *after != '#') {
                rc = fail(x, where, "put nothing but a '# comment' after a section header",
                          "malformed section header '%s': unexpected text after ']'",
                          shown(p, sb, sizeof sb));
                break;
            }
            *close = '\0';
            char *name = trim(p + 1);
            sec = find_section(name);
            if (sec < 0) {
                Buf hb = {hint, sizeof hint, 0};
                int near = nearest_section(name);
                if (near >= 0) bprintf(&hb, "did you mean [%s]? ", sections[near]);
                bprintf(&hb, "sections are:");
                for (int i = 0; i < NSECTIONS; i++) bprintf(&hb, " [%s]", sections[i]);
                rc = fail(x, where, hint, "unknown section [%s]", shown(name, sb, sizeof sb));
                break;
            }
            continue;
        }

        // key = value
        char *eq = p + strcspn(p, "=#");
        if (*eq != '=') {
            if (*eq == '#') *eq = '\0';
            char *text = trim(p);
            // Name the key when the first word is one.
            char word[64];
            size_t wn = strcspn(text, " \t:");
            snprintf(word, sizeof word, "%.*s", (int)(wn < sizeof word ? wn : sizeof word - 1),
                     text);
            int k = sec >= 0 ? find_key(sections[sec], word) : -1;
            if (k >= 0)
                snprintf(hint, sizeof hint, "write it as: %s = <%s>", word,
                         keys[k].type == T_STR ? "string" : "value");
            else
                snprintf(hint, sizeof hint, "each line is '[section]', 'key = value', a '# "
                                            "comment' or blank");
            if (k >= 0)
                rc = fail(x, where, hint, "[%s] %s: malformed line '%s', expected 'key = value'",
                          sections[sec], word, shown(text, sb, sizeof sb));
            else
                rc = fail(x, where, hint, "malformed line '%s'%s%s%s, expected 'key = value' or "
                          "'[section]'", shown(text, sb, sizeof sb),
                          sec >= 0 ? " in [" : "", sec >= 0 ? sections[sec] : "",
                          sec >= 0 ? "]" : "");
            break;
        }
        *eq = '\0';
        char *key = trim(p);
        if (*key == '\0') {
            rc = fail(x, where, "write 'key = value'", "malformed line: missing the key before '='");
            break;
        }
        int badchar = 0;
        for (char *q = key; *q; q++)
            if (!isalnum((unsigned char)*q) && *q != '_') badchar = 1;
        if (badchar) {
            int k = find_dotted(key);
            if (k >= 0)
                snprintf(hint, sizeof hint, "in a deck write it under its section: [%s] then "
                         "%s = ...", keys[k].section, keys[k].key);
            else
                snprintf(hint, sizeof hint, "key names are letters, digits and '_'");
            rc = fail(x, where, hint, "malformed line: '%s' is not a key name%s%s%s",
                      shown(key, sb, sizeof sb), sec >= 0 ? " in [" : "",
                      sec >= 0 ? sections[sec] : "", sec >= 0 ? "]" : "");
            break;
        }
        if (sec < 0) {
            Buf hb = {hint, sizeof hint, 0};
            int n = 0;
            for (int k = 0; k < NKEYS; k++)
                if (strcmp(keys[k].key, key) == 0)
                    bprintf(&hb, "%s[%s]", n++ ? " or " : "put a section header such as ",
                            keys[k].section);
            if (n) bprintf(&hb, " above it");
            else bprintf(&hb, "start the deck with a section header such as [train]");
            rc = fail(x, where, hint, "key '%s' appears before any [section] header",
                      shown(key, sb, sizeof sb));
            break;
        }
        int k = find_key(sections[sec], key);
        if (k < 0) {
            int near = nearest_key(sections[sec], key);
            int other = -1;
            for (int i = 0; i < NKEYS && other < 0; i++)
                if (strcmp(keys[i].key, key) == 0) other = i;
            if (other < 0 && near < 0) other = nearest_key(NULL, key);
            if (other >= 0)
                snprintf(hint, sizeof hint, "did you mean [%s] %s?", keys[other].section,
                         keys[other].key);
            else if (near >= 0)
                snprintf(hint, sizeof hint, "did you mean '%s'?", keys[near].key);
            else {
                Buf hb = {hint, sizeof hint, 0};
                bprintf(&hb, "keys in [%s]:", sections[sec]);
                for (int i = 0; i < NKEYS; i++)
                    if (strcmp(keys[i].section, sections[sec]) == 0)
                        bprintf(&hb, " %s", keys[i].key);
            }
            rc = fail(x, where, hint, "unknown key [%s] %s", sections[sec],
                      shown(key, sb, sizeof sb));
            break;
        }
        if (d->from[k] > 0) {
            snprintf(hint, sizeof hint, "keep one of the two lines");
            rc = fail(x, where, hint, "duplicate key [%s] %s: set on line %d and again on line %d",
                      keys[k].section, keys[k].key, d->from[k], lineno);
            break;
        }
        char *val;
        int quoted;
        if (extract_value(eq + 1, 1, &val, &quoted, msg, sizeof msg, hint, sizeof hint) ||
            set_value(&d->cfg, k, val, quoted, msg, sizeof msg, hint, sizeof hint)) {
            rc = fail(x, where, hint, "[%s] %s: %s", keys[k].section, keys[k].key, msg);
            break;
        }
        d->from[k] = lineno;
    }
    if (rc == 0 && ferror(f)) {
        snprintf(where, sizeof where, "%s", x->path);
        rc = fail(x, where, "check the file", "cannot read the deck: %s", strerror(errno));
    }
    free(line);
    return rc;
}

static int apply_set(Ctx *x, int i) {
    const char *arg = x->sets[i];
    char where[DECK_STR + 64], msg[1024], hint[1024], sb[80];
    snprintf(where, sizeof where, "--set %s", shown(arg, sb, sizeof sb));
    size_t len = strlen(arg);
    if (check_text(arg, len, msg, sizeof msg, hint, sizeof hint)) {
        // Not shown: the argument itself may be what is unprintable.
        snprintf(where, sizeof where, "--set argument %d", i + 1);
        return fail(x, where, hint, "%s", msg);
    }
    char *copy = malloc(len + 1);
    if (!copy) return fail(x, where, NULL, "out of memory");
    memcpy(copy, arg, len + 1);
    int rc = 0;
    char *eq = strchr(copy, '=');
    char *dot = eq ? memchr(copy, '.', (size_t)(eq - copy)) : NULL;
    if (!eq || !dot) {
        if (eq) *eq = '\0';
        char *lhs = trim(copy);
        int k = -1;
        for (int j = 0; j < NKEYS && k < 0; j++)
            if (strcmp(keys[j].key, lhs) == 0) k = j;
        if (k >= 0)
            snprintf(hint, sizeof hint, "did you mean --set %s.%s=...?", keys[k].section,
                     keys[k].key);
        else
            snprintf(hint, sizeof hint, "write --set section.key=value, e.g. --set train.steps=500");
        rc = fail(x, where, hint, "expected section.key=value, got '%s'", shown(arg, sb, sizeof sb));
        goto done;
    }
    *eq = '\0';
    *dot = '\0';
    char *secname = trim(copy), *key = trim(dot + 1);
    int sec = find_section(secname);
    if (sec < 0) {
        int near = nearest_section(secname);
        int other = -1;
        for (int j = 0; j < NKEYS && other < 0; j++)
            if (strcmp(keys[j].key, key) == 0) other = j;
        if (near >= 0 && find_key(sections[near], key) >= 0)
            snprintf(hint, sizeof hint, "did you mean %s.%s?", sections[near], key);
        else if (other >= 0)
            snprintf(hint, sizeof hint, "did you mean %s.%s?", keys[other].section, keys[other].key);
        else if (near >= 0)
            snprintf(hint, sizeof hint, "did you mean section '%s'?", sections[near]);
        else
            snprintf(hint, sizeof hint, "sections are: run, model, data, train, optimizer, "
                                        "parallel");
        rc = fail(x, where, hint, "unknown section '%s'", shown(secname, sb, sizeof sb));
        goto done;
    }
    int k = find_key(sections[sec], key);
    if (k < 0) {
        int near = nearest_key(sections[sec], key);
        int other = -1;
        for (int j = 0; j < NKEYS && other < 0; j++)
            if (strcmp(keys[j].key, key) == 0) other = j;
        if (other < 0 && near < 0) other = nearest_key(NULL, key);
        if (other >= 0)
            snprintf(hint, sizeof hint, "did you mean %s.%s?", keys[other].section, keys[other].key);
        else if (near >= 0)
            snprintf(hint, sizeof hint, "did you mean %s.%s?", keys[near].section, keys[near].key);
        else {
            Buf hb = {hint, sizeof hint, 0};
            bprintf(&hb, "keys in [%s]:", sections[sec]);
            for (int j = 0; j < NKEYS; j++)
                if (strcmp(keys[j].section, sections[sec]) == 0) bprintf(&hb, " %s", keys[j].key);
        }
        rc = fail(x, where, hint, "unknown key %s.%s", sections[sec], shown(key, sb, sizeof sb));
        goto done;
    }
    char *val;
    int quoted;
    if (extract_value(eq + 1, 0, &val, &quoted, msg, sizeof msg, hint, sizeof hint) ||
        set_value(&x->d->cfg, k, val, quoted, msg, sizeof msg, hint, sizeof hint)) {
        rc = fail(x, where, hint, "%s.%s: %s", keys[k].section, keys[k].key, msg);
        goto done;
    }
    x->d->from[k] = DECK_FROM_SET;
    x->set_of[k] = i;
done:
    free(copy);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Derivation and cross-checks

// Where key k came from, short form for inside a message: "line 7", "--set", "default", "derived".
static const char *origin(const Ctx *x, int k, char *buf, size_t n) {
    int f = x->d->from[k];
    if (f > 0) snprintf(buf, n, "line %d", f);
    else if (f == DECK_FROM_SET) snprintf(buf, n, "--set");
    else if (f == DECK_FROM_DERIVED) snprintf(buf, n, "derived");
    else snprintf(buf, n, "default");
    return buf;
}

// The WHERE of an error about keys ks[0..n) (the key at fault first): the first of them given in
// the deck or by --set, else the deck file itself.
static const char *blame(const Ctx *x, const int *ks, int n, char *buf, size_t bn) {
    for (int i = 0; i < n; i++) {
        int f = x->d->from[ks[i]];
        if (f > 0) {
            snprintf(buf, bn, "%s:%d", x->path, f);
            return buf;
        }
        if (f == DECK_FROM_SET) {
            snprintf(buf, bn, "--set %s", x->sets[x->set_of[ks[i]]]);
            return buf;
        }
    }
    snprintf(buf, bn, "%s", x->path);
    return buf;
}

static int mul_overflows(int64_t a, int64_t b) {  // both >= 0
    return a != 0 && b > INT64_MAX / a;
}

static int key_index(const char *dotted) {
    int k = find_dotted(dotted);
    if (k < 0) {
        fprintf(stderr, "deck.c: no key %s in the table\n", dotted);
        abort();
    }
    return k;
}

// A factor of a size derived from the deck: a key's value (key >= 0) or a constant.
typedef struct Term {
    const char *name;
    int64_t v;
    int key;
} Term;

// Refuses prod(t[0..n)) > limit (or a product that overflows int64), showing the
// arithmetic and where each key came from. what: "[train] micro_batch*seq_len".
static int limit_product(Ctx *x, const char *what, const Term *t, int n, int64_t limit,
                         const char *unit, const char *why, const char *hint) {
    int64_t p = 1;
    int ovf = 0;
    for (int i = 0; i < n; i++) {
        if (mul_overflows(p, t[i].v)) ovf = 1;
        else p *= t[i].v;
    }
    if (!ovf && p <= limit) return 0;
    char where[DECK_STR + 64], o[32], vals[256], from[512];
    Buf vb = {vals, sizeof vals, 0}, fb = {from, sizeof from, 0};
    int ks[16], nk = 0;
    for (int i = 0; i < n; i++) {
        bprintf(&vb, "%s%" PRId64, i ? "*" : "", t[i].v);
        int seen = t[i].key < 0 || nk == 16;
        for (int j = 0; j < nk; j++) seen |= ks[j] == t[i].key;
        if (seen) continue;
        ks[nk++] = t[i].key;
        bprintf(&fb, "%s%s: %s", fb.len ? ", " : "", keys[t[i].key].key,
                origin(x, t[i].key, o, sizeof o));
    }
    if (ovf) bprintf(&vb, " (overflows 64 bits)");
    else bprintf(&vb, " = %" PRId64, p);
    return fail(x, blame(x, ks, nk, where, sizeof where), hint,
                "%s = %s %s, more than the limit of %" PRId64 " (%s) (%s)", what, vals, unit,
                limit, why, from);
}

// HS = d_model / heads must fit the attention kernels' scratch (kernels.h).
static int check_head_size(Ctx *x) {
    const Config *c = &x->d->cfg;
    const int kh = key_index("model.heads"), kc = key_index("model.d_model"),
              kb = key_index("run.backend");
    int64_t HS = c->model.d_model / c->model.heads, max = KERNELS_ATT_HSMAX;
    const char *kernel = "the cpu attention";
    if (KERNELS_PAGED_HSMAX < max) max = KERNELS_PAGED_HSMAX, kernel = "the cpu paged attention";
    if (c->run.backend == BACKEND_CUDA && KERNELS_CUDA_ATT_HSMAX < max)
        max = KERNELS_CUDA_ATT_HSMAX, kernel = "the cuda attention";
    if (HS <= max) return 0;
    char where[DECK_STR + 64], hint[256], o1[32], o2[32];
    int ks[] = {kh, kc, kb};
    snprintf(hint, sizeof hint, "raise [model] heads to at least %" PRId64 " (a divisor of d_model), "
             "or lower d_model", (c->model.d_model + max - 1) / max);
    return fail(x, blame(x, ks, 3, where, sizeof where), hint,
                "[model] head size d_model/heads = %" PRId64 "/%" PRId64 " = %" PRId64 " is larger "
                "than %" PRId64 ", the most %s runs (heads: %s, d_model: %s)", c->model.d_model,
                c->model.heads, HS, max, kernel, origin(x, kh, o1, sizeof o1),
                origin(x, kc, o2, sizeof o2));
}

// Every size derived from several keys: rows and buffers of a micro-batch, the model's
// tensors, the tokens of the run, generation's KV pool and pass message.
static int check_sizes(Ctx *x) {
    const Config *c = &x->d->cfg;
    const int kB = key_index("train.micro_batch"), kT = key_index("train.seq_len"),
              kV = key_index("model.vocab"), kVp = key_index("model.vocab_pad"),
              kC = key_index("model.d_model"), kM = key_index("model.mlp_ratio"),
              kL = key_index("model.layers"), kMT = key_index("model.seq_len"),
              kN = key_index("train.batch"), kS = key_index("train.steps"),
              kbs = key_index("generate.kv_block"), knb = key_index("generate.kv_blocks"),
              kbud = key_index("generate.token_budget"), kmb = key_index("generate.max_batch"),
              knv = key_index("generate.naive");
    const int64_t B = c->train.micro_batch, T = c->train.seq_len, C = c->model.d_model;
    const int64_t Vp = (c->model.vocab + c->model.vocab_pad - 1) / c->model.vocab_pad *
                       c->model.vocab_pad;
    const int64_t M = c->model.mlp_ratio, L = c->model.layers, maxT = c->model.seq_len;
    const char *buf_why = "floats in one buffer, 4 TiB";
    const char *less = "lower [train] micro_batch or seq_len";
    {
        Term t[] = {{"micro_batch", B, kB}, {"seq_len", T, kT}};
        if (limit_product(x, "[train] token rows micro_batch*seq_len", t, 2, INT32_MAX, "rows",
                          "the kernels index rows with 32-bit integers", less)) return -1;
    }
    {
        Term t[] = {{"micro_batch", B, kB}, {"seq_len", T, kT}, {"Vp (vocab padded)", Vp, kV}};
        if (limit_product(x, "[train] logits micro_batch*seq_len*Vp", t, 3, DECK_MAX_ELEMS,
                          "floats", buf_why, less)) return -1;
    }
    {
        Term t[] = {{"micro_batch", B, kB}, {"seq_len", T, kT}, {"mlp_ratio", M, kM},
                    {"d_model", C, kC}};
        if (limit_product(x, "[train] MLP activations micro_batch*seq_len*mlp_ratio*d_model", t, 4,
                          DECK_MAX_ELEMS, "floats", buf_why, less)) return -1;
    }
    {
        Term t[] = {{"Vp (vocab padded)", Vp, kVp}, {"d_model", C, kC}};
        if (limit_product(x, "[model] wte Vp*d_model", t, 2, DECK_MAX_ELEMS, "floats", buf_why,
                          "lower [model] vocab or d_model")) return -1;
    }
    {
        Term t[] = {{"seq_len", maxT, kMT}, {"d_model", C, kC}};
        if (limit_product(x, "[model] wpe seq_len*d_model", t, 2, DECK_MAX_ELEMS, "floats", buf_why,
                          "lower [model] seq_len or d_model")) return -1;
    }
    {
        // Per layer: (4 + 2 mlp_ratio) C^2 weights and (9 + mlp_ratio) C biases and norms.
        Term t[] = {{"layers", L, kL}, {"(4+2*mlp_ratio)", 4 + 2 * M, kM}, {"d_model", C, kC},
                    {"d_model", C, kC}};
        if (limit_product(x, "[model] layer weights layers*(4+2*mlp_ratio)*d_model^2", t, 4,
                          DECK_MAX_PARAMS, "parameters", "17.6 trillion",
                          "lower [model] layers, d_model or mlp_ratio")) return -1;
    }
    {
        Term t[] = {{"steps", c->train.steps, kS}, {"batch", c->train.batch, kN},
                    {"seq_len", T, kT}};
        if (limit_product(x, "[train] tokens of the run steps*batch*seq_len", t, 3,
                          DECK_MAX_TOKENS, "tokens", "2^53, counted exactly in a double",
                          "lower [train] steps, batch or seq_len")) return -1;
    }
    // Generation: the KV pool, the logits of a pass, the naive reference, the pass message.
    const int64_t bs = c->generate.kv_block;
    {
        Term t[] = {{"kv_blocks", c->generate.kv_blocks, knb}, {"kv_block", bs, kbs},
                    {"layers", L, kL}, {"2 (K and V)", 2, -1}, {"d_model", C, kC}};
        if (limit_product(x, "[generate] KV cache kv_blocks*kv_block*layers*2*d_model", t, 5,
                          DECK_MAX_ELEMS, "floats", buf_why,
                          "lower [generate] kv_blocks or kv_block")) return -1;
    }
    {
        Term t[] = {{"max_batch", c->generate.max_batch, kmb}, {"Vp (vocab padded)", Vp, kV}};
        if (limit_product(x, "[generate] logits max_batch*Vp", t, 2, DECK_MAX_ELEMS, "floats",
                          buf_why, "lower [generate] max_batch")) return -1;
    }
    {
        Term t[] = {{"token_budget", c->generate.token_budget, kbud}, {"mlp_ratio", M, kM},
                    {"d_model", C, kC}};
        if (limit_product(x, "[generate] MLP activations token_budget*mlp_ratio*d_model", t, 3,
                          DECK_MAX_ELEMS, "floats", buf_why, "lower [generate] token_budget"))
            return -1;
    }
    if (c->generate.naive) {
        Term t[] = {{"seq_len", maxT, kMT}, {"Vp (vocab padded)", Vp, kV}};
        if (limit_product(x, "[generate] naive logits seq_len*Vp", t, 2, DECK_MAX_ELEMS, "floats",
                          buf_why, "lower [model] seq_len, or set [generate] naive = false"))
            return -1;
        (void)knv;
    }
    {
        // Each pass is one broadcast of int32s: 3 + token_budget*(2 + blocks) + max_batch.
        int64_t blocks = (maxT + bs - 1) / bs;
        Term t[] = {{"4 bytes", 4, -1}, {"token_budget", c->generate.token_budget, kbud},
                    {"(2 + seq_len/kv_block)", 2 + blocks, kbs}};
        if (limit_product(x, "[generate] pass message 4*token_budget*(2+ceil(seq_len/kv_block))",
                          t, 3, INT32_MAX - 4 * (3 + DECK_MAX_COUNT), "bytes",
                          "one MPI broadcast counts bytes in a 32-bit int",
                          "lower [generate] token_budget, or raise kv_block")) return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Mixture of Experts

// Reads entry i (0-based) of a pyramid list "4, 4,8": 1 with *v set, 0 past the end, -1 when the
// entry is not an integer in [1, DECK_MAX_EXPERTS] (bad = its text, cut to bn bytes).
static int pyramid_entry(const char *s, int64_t i, int64_t *v, char *bad, size_t bn) {
    const char *p = s;
    for (int64_t k = 0; k < i; k++) {
        p = strchr(p, ',');
        if (!p) return 0;
        p++;
    }
    while (*p == ' ' || *p == '\t') p++;
    size_t n = strcspn(p, ",");
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    snprintf(bad, bn, "%.*s", (int)(n < bn ? n : bn - 1), p);
    int64_t val = 0;
    int ok = n > 0 && n <= 5;
    for (size_t j = 0; ok && j < n; j++) {
        if (!isdigit((unsigned char)p[j])) ok = 0;
        else val = val * 10 + (p[j] - '0');
    }
    if (!ok || val < 1 || val > DECK_MAX_EXPERTS) return -1;
    *v = val;
    return 1;
}

// Entries of a pyramid list (a trailing empty entry counts, so "4,4," is refused as bad).
static int64_t pyramid_count(const char *s) {
    int64_t n = 1;
    for (const char *p = s; *p; p++) n += *p == ',';
    return n;
}

int deck_moe_layer(const Config *c, int64_t l) {
    return c->moe.experts > 0 && l >= 0 && l < c->model.layers && l % c->moe.every == c->moe.every - 1;
}

int64_t deck_moe_layers(const Config *c) {
    return c->moe.experts > 0 ? c->model.layers / c->moe.every : 0;
}

int64_t deck_moe_experts(const Config *c, int64_t l) {
    if (!deck_moe_layer(c, l)) return 0;
    if (!c->moe.pyramid[0]) return c->moe.experts;
    int64_t v = 0;
    char bad[8];
    return pyramid_entry(c->moe.pyramid, l / c->moe.every, &v, bad, sizeof bad) == 1 ? v : 0;
}

// The [moe] section against the model and the layout: the pyramid list, top_k with residual
// and with the experts of each layer, and [parallel] ep (divides every MoE layer's experts
// and the data-parallel ranks world / sp).
static int check_moe(Ctx *x, int64_t world) {
    Deck *d = x->d;
    Config *c = &d->cfg;
    MoeConfig *m = &c->moe;
    char where[DECK_STR + 64], hint[512], o1[32], o2[32], o3[32], bad[64];
    const int kE = key_index("moe.experts"), kev = key_index("moe.every"), kk = key_index("moe.top_k"),
              kpy = key_index("moe.pyramid"), kres = key_index("moe.residual"), kL = key_index("model.layers"),
              kep = key_index("parallel.ep"), ksp = key_index("parallel.sp");
    const int64_t L = c->model.layers, every = m->every, nmoe = L / every, ep = c->parallel.ep;
    if (m->pyramid[0]) {
        int64_t n = pyramid_count(m->pyramid), vmax = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t v = 0;
            if (pyramid_entry(m->pyramid, i, &v, bad, sizeof bad) != 1) {
                int ks[] = {kpy};
                snprintf(hint, sizeof hint, "write the experts of each MoE layer as integers in [1, %d] "
                         "separated by commas, e.g. pyramid = 4,4,8", DECK_MAX_EXPERTS);
                return fail(x, blame(x, ks, 1, where, sizeof where), hint,
                            "[moe] pyramid = \"%s\": entry %" PRId64 " '%s' is not an expert count in [1, %d]",
                            m->pyramid, i + 1, bad, DECK_MAX_EXPERTS);
            }
            if (v > vmax) vmax = v;
        }
        if (n != nmoe) {
            int ks[] = {kpy, kL, kev};
            snprintf(hint, sizeof hint, "give one entry per MoE layer (%" PRId64 " of them: layers %" PRId64
                     ", %" PRId64 ", ... are MoE layers), or change [model] layers or [moe] every", nmoe,
                     every - 1, 2 * every - 1);
            return fail(x, blame(x, ks, 3, where, sizeof where), hint,
                        "[moe] pyramid = \"%s\" has %" PRId64 " entr%s but the model has %" PRId64 " MoE layer%s "
                        "([model] layers = %" PRId64 " (%s), [moe] every = %" PRId64 " (%s))", m->pyramid, n,
                        n == 1 ? "y" : "ies", nmoe, nmoe == 1 ? "" : "s", L, origin(x, kL, o1, sizeof o1), every,
                        origin(x, kev, o2, sizeof o2));
        }
        if (m->experts == 0) {
            m->experts = vmax;
            d->from[kE] = DECK_FROM_DERIVED;
        }
    }
    if (m->experts > 0 && nmoe == 0) {
        int ks[] = {kev, kL, kE};
        snprintf(hint, sizeof hint, "set [moe] every to at most %" PRId64 " (2 = every other layer), or "
                 "experts = 0 for a dense model", L);
        return fail(x, blame(x, ks, 3, where, sizeof where), hint,
                    "[moe] every = %" PRId64 " (%s) is larger than [model] layers = %" PRId64 " (%s): no layer "
                    "would be an MoE layer", every, origin(x, kev, o1, sizeof o1), L, origin(x, kL, o2, sizeof o2));
    }
    if (m->residual && m->top_k != 1) {
        int ks[] = {kk, kres};
        return fail(x, blame(x, ks, 2, where, sizeof where), "PR-MoE routes each token to one expert: "
                    "set top_k = 1, or residual = false",
                    "[moe] residual = true (%s) needs top_k = 1, but top_k = %" PRId64 " (%s)",
                    origin(x, kres, o1, sizeof o1), m->top_k, origin(x, kk, o2, sizeof o2));
    }
    for (int64_t l = 0; l < L; l++) {
        int64_t E = deck_moe_experts(c, l);
        if (!deck_moe_layer(c, l)) continue;
        if (E < m->top_k) {
            int ks[] = {m->pyramid[0] ? kpy : kE, kk};
            return fail(x, blame(x, ks, 2, where, sizeof where), "give every MoE layer at least top_k experts",
                        "MoE layer %" PRId64 " has %" PRId64 " expert%s, fewer than [moe] top_k = %" PRId64 " (%s)",
                        l, E, E == 1 ? "" : "s", m->top_k, origin(x, kk, o1, sizeof o1));
        }
        if (E % ep != 0) {
            int ks[] = {kep, m->pyramid[0] ? kpy : kE};
            snprintf(hint, sizeof hint, "each of the ep ranks holds E/ep experts of every MoE layer: choose an ep "
                     "that divides %s", m->pyramid[0] ? "every [moe] pyramid entry" : "[moe] experts");
            return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                        "[parallel] ep = %" PRId64 " (%s) does not divide the %" PRId64 " experts of MoE layer %"
                        PRId64 " (%s): %" PRId64 " %% %" PRId64 " = %" PRId64, ep, origin(x, kep, o1, sizeof o1),
                        E, l, m->pyramid[0] ? "[moe] pyramid" : "[moe] experts", E, ep, E % ep);
        }
    }
    if (ep > 1 && m->experts == 0) {
        int ks[] = {kep, kE};
        return fail(x, blame(x, ks, 2, where, sizeof where), "set [moe] experts (or pyramid), or ep = 1",
                    "[parallel] ep = %" PRId64 " (%s) but the model has no experts ([moe] experts = 0)", ep,
                    origin(x, kep, o1, sizeof o1));
    }
    int64_t dpr = world / c->parallel.sp;
    if (dpr % ep != 0) {
        int ks[] = {kep, ksp};
        snprintf(hint, sizeof hint, "expert-parallel groups are ep consecutive data-parallel ranks: run with a "
                 "multiple of %" PRId64 " ranks, or choose an ep dividing %" PRId64, ep * c->parallel.sp, dpr);
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[parallel] ep = %" PRId64 " (%s) does not divide the data-parallel ranks world/sp = %" PRId64
                    "/%" PRId64 " = %" PRId64 " (sp: %s)", ep, origin(x, kep, o1, sizeof o1), world,
                    c->parallel.sp, dpr, origin(x, ksp, o2, sizeof o2));
    }
    if (m->experts > 0) {
        // Expert weights of the largest layer, over every MoE layer: (2 mlp_ratio C^2) each.
        Term t[] = {{"MoE layers", nmoe, kev}, {"experts", m->experts, m->pyramid[0] ? kpy : kE},
                    {"2*mlp_ratio", 2 * c->model.mlp_ratio, key_index("model.mlp_ratio")},
                    {"d_model", c->model.d_model, key_index("model.d_model")},
                    {"d_model", c->model.d_model, key_index("model.d_model")}};
        if (limit_product(x, "[moe] expert weights moe_layers*experts*2*mlp_ratio*d_model^2", t, 5,
                          DECK_MAX_PARAMS, "parameters", "17.6 trillion",
                          "lower [moe] experts, or raise [moe] every")) return -1;
    }
    (void)o3;
    return 0;
}

static int derive(Ctx *x, int world_size) {
    Deck *d = x->d;
    Config *c = &d->cfg;
    char where[DECK_STR + 64], hint[512], o1[32], o2[32], o3[32], o4[32];
    int64_t world = world_size < 1 ? 1 : world_size;

    // parallel.dp from the world size.
    const int kdp = key_index("parallel.dp"), ksp = key_index("parallel.sp"), ktp = key_index("parallel.tp");
    int64_t sp = c->parallel.sp, tp = c->parallel.tp;
    if (c->parallel.dp == 0) {
        int ks[] = {ksp, ktp, kdp};
        if (mul_overflows(sp, tp) || world % (sp * tp) != 0) {
            int64_t st = mul_overflows(sp, tp) ? INT64_MAX : sp * tp;
            snprintf(hint, sizeof hint, "run with a multiple of %" PRId64 " ranks, or change "
                     "[parallel] sp and tp so that sp*tp divides %" PRId64, st, world);
            return fail(x, blame(x, ks, 3, where, sizeof where), hint,
                        "[parallel] dp cannot be derived: world size %" PRId64 " is not divisible "
                        "by sp*tp = %" PRId64 "*%" PRId64 " = %" PRId64 " (sp: %s, tp: %s)",
                        world, sp, tp, st, origin(x, ksp, o1, sizeof o1),
                        origin(x, ktp, o2, sizeof o2));
        }
        c->parallel.dp = world / (sp * tp);
        d->from[kdp] = DECK_FROM_DERIVED;
    } else {
        int64_t dp = c->parallel.dp;
        int ks[] = {kdp, ksp, ktp};
        int ovf = mul_overflows(dp, sp) || mul_overflows(dp * sp, tp);
        if (ovf || dp * sp * tp != world) {
            if (!ovf && world % (sp * tp) == 0)
                snprintf(hint, sizeof hint, "leave [parallel] dp out (or 0) to derive it, set dp "
                         "= %" PRId64 ", or run with %" PRId64 " ranks", world / (sp * tp),
                         dp * sp * tp);
            else
                snprintf(hint, sizeof hint, "run with dp*sp*tp ranks, or leave [parallel] dp out "
                         "(or 0) to derive it from the world size");
            char prod[32];
            if (ovf) snprintf(prod, sizeof prod, "(overflow)");
            else snprintf(prod, sizeof prod, "%" PRId64, dp * sp * tp);
            return fail(x, blame(x, ks, 3, where, sizeof where), hint,
                        "[parallel] dp = %" PRId64 " (%s): dp*sp*tp = %" PRId64 "*%" PRId64
                        "*%" PRId64 " = %s but the job has %" PRId64 " rank%s (sp: %s, tp: %s)",
                        dp, origin(x, kdp, o1, sizeof o1), dp, sp, tp, prod, world,
                        world == 1 ? "" : "s",
                        origin(x, ksp, o2, sizeof o2), origin(x, ktp, o3, sizeof o3));
        }
    }

    // train.seq_len from model.seq_len.
    const int kts = key_index("train.seq_len"), kms = key_index("model.seq_len");
    if (c->train.seq_len == 0) {
        c->train.seq_len = c->model.seq_len;
        d->from[kts] = DECK_FROM_DERIVED;
    } else if (c->train.seq_len > c->model.seq_len) {
        int ks[] = {kts, kms};
        snprintf(hint, sizeof hint, "raise [model] seq_len to at least %" PRId64 ", lower [train] "
                 "seq_len, or leave [train] seq_len out to use [model] seq_len", c->train.seq_len);
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[train] seq_len = %" PRId64 " (%s) is larger than [model] seq_len = %" PRId64
                    " (%s)", c->train.seq_len, origin(x, kts, o1, sizeof o1), c->model.seq_len,
                    origin(x, kms, o2, sizeof o2));
    }

    // Sequence parallelism: each rank of a group of sp holds T/sp tokens and at least one head.
    if (c->train.seq_len % c->parallel.sp != 0) {
        int ks[] = {kts, ksp};
        snprintf(hint, sizeof hint, "choose [train] seq_len as a multiple of sp = %" PRId64 " (e.g. %" PRId64
                 "), or an sp that divides it", c->parallel.sp, c->train.seq_len / c->parallel.sp * c->parallel.sp);
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[train] seq_len = %" PRId64 " (%s) is not divisible by [parallel] sp = %" PRId64 " (%s)",
                    c->train.seq_len, origin(x, kts, o1, sizeof o1), c->parallel.sp, origin(x, ksp, o2, sizeof o2));
    }
    if (c->model.heads < c->parallel.sp) {
        int ks[] = {key_index("model.heads"), ksp};
        snprintf(hint, sizeof hint, "sequence parallelism splits heads over the sp ranks: use sp <= %" PRId64
                 ", or more heads", c->model.heads);
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[model] heads = %" PRId64 " (%s) is fewer than [parallel] sp = %" PRId64 " (%s)",
                    c->model.heads, origin(x, ks[0], o1, sizeof o1), c->parallel.sp, origin(x, ksp, o2, sizeof o2));
    }

    // model.heads divides model.d_model.
    const int kh = key_index("model.heads"), kc = key_index("model.d_model");
    if (c->model.d_model % c->model.heads != 0) {
        int64_t C = c->model.d_model, NH = c->model.heads, lo = 0, hi = 0;
        // Both searches are bounded by the table: NH <= 1024 and C <= 65536 steps at most.
        for (int64_t h = NH - 1; h >= 1 && !lo; h--)
            if (C % h == 0) lo = h;
        for (int64_t h = NH + 1; h <= C && h <= 1024 && !hi; h++)
            if (C % h == 0) hi = h;
        if (hi)
            snprintf(hint, sizeof hint, "choose heads among the divisors of d_model = %" PRId64
                     ", e.g. %" PRId64 " or %" PRId64, C, lo, hi);
        else
            snprintf(hint, sizeof hint, "choose heads among the divisors of d_model = %" PRId64
                     ", e.g. %" PRId64 ", or raise d_model to a multiple of %" PRId64, C, lo, NH);
        int ks[] = {kh, kc};
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[model] heads = %" PRId64 " (%s) does not divide [model] d_model = %" PRId64
                    " (%s): %" PRId64 " %% %" PRId64 " = %" PRId64,
                    NH, origin(x, kh, o1, sizeof o1), C, origin(x, kc, o2, sizeof o2), C, NH,
                    C % NH);
    }

    // The head size the attention kernels can run.
    if (check_head_size(x)) return -1;

    // train.batch = micro_batch * grad_accum * dp.
    const int kmb = key_index("train.micro_batch"), kga = key_index("train.grad_accum"), kb = key_index("train.batch");
    int64_t B = c->train.micro_batch, G = c->train.grad_accum, N = c->train.batch;
    int64_t dp = c->parallel.dp;
    if (mul_overflows(B, dp)) {
        int ks[] = {kmb, kdp};
        return fail(x, blame(x, ks, 2, where, sizeof where), "lower [train] micro_batch",
                    "[train] micro_batch*dp = %" PRId64 "*%" PRId64 " overflows", B, dp);
    }
    int64_t per = B * dp;  // sequences per micro-step, all ranks
    if (G == 0 && N == 0) {
        c->train.grad_accum = 1;
        c->train.batch = per;
        d->from[kga] = DECK_FROM_DERIVED;
        d->from[kb] = DECK_FROM_DERIVED;
    } else if (G == 0) {
        if (N % per != 0) {
            int64_t below = N / per * per, above = below + per;
            if (below > 0)
                snprintf(hint, sizeof hint, "set [train] batch to a multiple of %" PRId64
                         " (e.g. %" PRId64 " or %" PRId64 "), or give micro_batch and grad_accum "
                         "instead", per, below, above);
            else
                snprintf(hint, sizeof hint, "set [train] batch to a multiple of %" PRId64
                         " (e.g. %" PRId64 "), or lower [train] micro_batch", per, above);
            int ks[] = {kb, kmb, kdp};
            return fail(x, blame(x, ks, 3, where, sizeof where), hint,
                        "[train] grad_accum cannot be derived: [train] batch = %" PRId64 " (%s) is "
                        "not divisible by micro_batch*dp = %" PRId64 "*%" PRId64 " = %" PRId64
                        " (micro_batch: %s, dp: %s); %" PRId64 " / %" PRId64 " = %.4g",
                        N, origin(x, kb, o1, sizeof o1), B, dp, per, origin(x, kmb, o2, sizeof o2),
                        origin(x, kdp, o3, sizeof o3), N, per, (double)N / (double)per);
        }
        if (N / per > DECK_MAX_COUNT) {
            int ks[] = {kb, kmb, kdp};
            return fail(x, blame(x, ks, 3, where, sizeof where), "lower [train] batch, or raise "
                        "[train] micro_batch", "[train] grad_accum = batch/(micro_batch*dp) = "
                        "%" PRId64 "/(%" PRId64 "*%" PRId64 ") = %" PRId64 " is more than %" PRId64,
                        N, B, dp, N / per, DECK_MAX_COUNT);
        }
        c->train.grad_accum = N / per;
        d->from[kga] = DECK_FROM_DERIVED;
    } else {
        int ovf = mul_overflows(per, G);
        if (N == 0 && !ovf && per * G > DECK_MAX_BATCH) {
            int ks[] = {kmb, kga, kdp};
            return fail(x, blame(x, ks, 3, where, sizeof where), "lower [train] micro_batch or "
                        "grad_accum", "[train] batch = micro_batch*grad_accum*dp = %" PRId64 "*%"
                        PRId64 "*%" PRId64 " = %" PRId64 " is more than %" PRId64, B, G, dp,
                        per * G, DECK_MAX_BATCH);
        }
        if (N == 0 && !ovf) {
            c->train.batch = per * G;
            d->from[kb] = DECK_FROM_DERIVED;
        } else if (ovf || per * G != N) {
            int ks[] = {kb, kmb, kga, kdp};
            char prod[32];
            if (ovf) snprintf(prod, sizeof prod, "(overflow)");
            else snprintf(prod, sizeof prod, "%" PRId64, per * G);
            snprintf(hint, sizeof hint, "leave [train] batch out (or 0) to derive it, or leave "
                     "[train] grad_accum out (or 0) to derive it from batch");
            if (N == 0)
                return fail(x, blame(x, ks + 1, 3, where, sizeof where), hint,
                            "[train] batch = micro_batch*grad_accum*dp = %" PRId64 "*%" PRId64
                            "*%" PRId64 " overflows", B, G, dp);
            return fail(x, blame(x, ks, 4, where, sizeof where), hint,
                        "[train] batch = %" PRId64 " (%s) but micro_batch*grad_accum*dp = %" PRId64
                        "*%" PRId64 "*%" PRId64 " = %s (micro_batch: %s, grad_accum: %s, dp: %s)",
                        N, origin(x, kb, o1, sizeof o1), B, G, dp, prod,
                        origin(x, kmb, o2, sizeof o2), origin(x, kga, o3, sizeof o3),
                        origin(x, kdp, o4, sizeof o4));
        }
    }

    // run.out_dir from run.name.
    const int kout = key_index("run.out_dir"), kname = key_index("run.name");
    if (c->run.out_dir[0] == '\0') {
        size_t n = strlen(c->run.name);
        if (n + 5 > DECK_STR - 1) {
            int ks[] = {kname};
            return fail(x, blame(x, ks, 1, where, sizeof where), "use a shorter run name, or set "
                        "[run] out_dir", "[run] out_dir = runs/<name> would be %zu characters, "
                        "at most %d", n + 5, DECK_STR - 1);
        }
        memcpy(c->run.out_dir, "runs/", 5);
        memcpy(c->run.out_dir + 5, c->run.name, n + 1);
        d->from[kout] = DECK_FROM_DERIVED;
    }
    // checkpoint.dir from run.out_dir.
    const int kcd = key_index("checkpoint.dir");
    if (c->checkpoint.dir[0] == '\0') {
        size_t n = strlen(c->run.out_dir);
        if (n + 5 > DECK_STR - 1) {
            int ks[] = {kout};
            return fail(x, blame(x, ks, 1, where, sizeof where), "set [checkpoint] dir",
                        "[checkpoint] dir = <out_dir>/ckpt would be %zu characters, at most %d", n + 5, DECK_STR - 1);
        }
        memcpy(c->checkpoint.dir, c->run.out_dir, n);
        memcpy(c->checkpoint.dir + n, "/ckpt", 6);
        d->from[kcd] = DECK_FROM_DERIVED;
    }

    // [offload] params needs ZeRO-3 (the parameter shard is what moves), and on NVMe the moments too.
    const int kop = key_index("offload.params"), koo = key_index("offload.optimizer"), kst = key_index("zero.stage");
    if (c->offload.params != OFFLOAD_NONE && c->zero.stage != 3) {
        int ks[] = {kop, kst};
        snprintf(hint, sizeof hint, "set [zero] stage = 3 (parameters partitioned), or [offload] params = none");
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[offload] params = %s (%s) needs [zero] stage = 3, got stage %" PRId64 " (%s)",
                    offload_tier_names[c->offload.params], origin(x, kop, o1, sizeof o1), c->zero.stage,
                    origin(x, kst, o2, sizeof o2));
    }
    if (c->offload.params == OFFLOAD_NVME && c->offload.optimizer != OFFLOAD_NVME) {
        int ks[] = {kop, koo};
        snprintf(hint, sizeof hint, "set [offload] optimizer = nvme too (the update streams parameters and moments together)");
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[offload] params = nvme (%s) needs [offload] optimizer = nvme, got %s (%s)",
                    origin(x, kop, o1, sizeof o1), offload_tier_names[c->offload.optimizer],
                    origin(x, koo, o2, sizeof o2));
    }
    const int knd = key_index("offload.nvme_dir");
    if (!c->offload.nvme_dir[0]) {
        size_t n = strlen(c->run.out_dir);
        if (n + 9 > sizeof c->offload.nvme_dir) {
            snprintf(hint, sizeof hint, "set [offload] nvme_dir, or use a shorter [run] out_dir");
            return fail(x, x->path, hint, "[offload] nvme_dir cannot be derived: [run] out_dir is too long");
        }
        memcpy(c->offload.nvme_dir, c->run.out_dir, n);
        memcpy(c->offload.nvme_dir + n, "/offload", 9);
        d->from[knd] = DECK_FROM_DERIVED;
    }

    // Learning-rate schedule.
    const int klr = key_index("optimizer.lr"), kmin = key_index("optimizer.min_lr");
    if (c->optim.min_lr > c->optim.lr) {
        char a[32], b[32];
        format_double(c->optim.min_lr, a, sizeof a);
        format_double(c->optim.lr, b, sizeof b);
        int ks[] = {kmin, klr};
        snprintf(hint, sizeof hint, "min_lr is where the decay ends: make it at most lr");
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[optimizer] min_lr = %s (%s) is larger than [optimizer] lr = %s (%s)", a,
                    origin(x, kmin, o1, sizeof o1), b, origin(x, klr, o2, sizeof o2));
    }
    const int kw = key_index("optimizer.warmup"), ksteps = key_index("train.steps");
    if (c->optim.warmup > c->train.steps) {
        int ks[] = {kw, ksteps};
        snprintf(hint, sizeof hint, "lower [optimizer] warmup to at most %" PRId64 ", or raise "
                 "[train] steps", c->train.steps);
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[optimizer] warmup = %" PRId64 " (%s) is larger than [train] steps = %" PRId64
                    " (%s)", c->optim.warmup, origin(x, kw, o1, sizeof o1), c->train.steps,
                    origin(x, ksteps, o2, sizeof o2));
    }
    const int kco = key_index("comm.compute_only");
    if (c->comm.compute_only && (c->parallel.sp > 1 || c->parallel.ep > 1)) {
        int ks[] = {kco, key_index(c->parallel.sp > 1 ? "parallel.sp" : "parallel.ep")};
        snprintf(hint, sizeof hint, "measure compute alone with sp = 1 and ep = 1, or set [comm] compute_only = false");
        int sp = c->parallel.sp > 1;
        return fail(x, blame(x, ks, 2, where, sizeof where), hint,
                    "[comm] compute_only = %s (%s) with [parallel] %s = %" PRId64 " (%s): the all-to-alls it would skip "
                    "decide the shapes of the computation", compute_only_names[c->comm.compute_only],
                    origin(x, kco, o1, sizeof o1), sp ? "sp" : "ep", sp ? c->parallel.sp : c->parallel.ep,
                    origin(x, ks[1], o2, sizeof o2));
    }
    if (check_moe(x, world)) return -1;
    // A derived value must still be in its key's range (the specific checks above explain
    // the usual cases with their arithmetic).
    for (int k = 0; k < NKEYS; k++) {
        if (d->from[k] != DECK_FROM_DERIVED || keys[k].type != T_INT) continue;
        if (in_range(k, (double)*iptr(c, k))) continue;
        char want[200];
        describe(k, want, sizeof want);
        return fail(x, x->path, "set it in the deck", "derived [%s] %s = %" PRId64 " is out of "
                    "range, expected %s", keys[k].section, keys[k].key, *iptr(c, k), want);
    }
    return check_sizes(x);
}

// ---------------------------------------------------------------------------------------------
// Public API

int deck_load(Deck *d, const char *path, int nsets, char *const *sets, int world_size, char *err,
              size_t errlen) {
    Ctx x = {.d = d, .path = path, .sets = sets, .err = err, .errlen = errlen};
    if (err && errlen) err[0] = '\0';
    set_defaults_raw(d);
    if (strlen(path) >= sizeof d->path) {
        char sb[80];
        return fail(&x, shown(path, sb, sizeof sb), "move the deck to a shorter path",
                    "the deck's path is longer than %d bytes", DECK_STR - 1);
    }
    snprintf(d->path, sizeof d->path, "%s", path);
    FILE *f = fopen(path, "r");
    if (!f) {
        char hint[DECK_STR + 64];
        snprintf(hint, sizeof hint, "check the path; it is read relative to the current "
                 "directory");
        return fail(&x, path, hint, "cannot open the deck: %s", strerror(errno));
    }
    int rc = parse_file(&x, f);
    fclose(f);
    if (rc) return rc;
    for (int i = 0; i < nsets; i++)
        if (apply_set(&x, i)) return -1;
    return derive(&x, world_size);
}

void deck_defaults(Deck *d) {
    char err[1024];
    Ctx x = {.d = d, .path = "(defaults)", .err = err, .errlen = sizeof err};
    set_defaults_raw(d);
    if (derive(&x, 1) != 0) {  // the defaults must agree with each other: a bug otherwise
        fprintf(stderr, "deck.c: the defaults do not derive: %s\n", err);
        abort();
    }
}

size_t deck_format(const Deck *d, char *buf, size_t n) {
    Buf b = {buf, n, 0};
    if (n) buf[0] = '\0';
    for (int s = 0; s < NSECTIONS; s++) {
        bprintf(&b, "%s[%s]\n", s ? "\n" : "", sections[s]);
        for (int k = 0; k < NKEYS; k++) {
            const KeyDef *kd = &keys[k];
            if (strcmp(kd->section, sections[s]) != 0) continue;
            const void *p = cfield(&d->cfg, k);
            char val[2 * DECK_STR + 8];
            Buf vb = {val, sizeof val, 0};
            switch (kd->type) {
            case T_INT: bprintf(&vb, "%" PRId64, *(const int64_t *)p); break;
            case T_FLOAT: format_double(*(const double *)p, val, sizeof val); break;
            case T_BOOL: bprintf(&vb, "%s", *(const int *)p ? "true" : "false"); break;
            case T_ENUM: {
                int v = *(const int *)p, cnt = 0;
                while (kd->names[cnt]) cnt++;
                bprintf(&vb, "%s", v >= 0 && v < cnt ? kd->names[v] : "?");
                break;
            }
            case T_STR: {
                bprintf(&vb, "\"");
                for (const char *q = p; *q; q++)
                    bprintf(&vb, "%s%c", (*q == '"' || *q == '\\') ? "\\" : "", *q);
                bprintf(&vb, "\"");
                break;
            }
            }
            int f = d->from[k];
            const char *note = f == DECK_FROM_DEFAULT ? "  # default"
                             : f == DECK_FROM_DERIVED ? "  # derived"
                             : f == DECK_FROM_SET     ? "  # --set"
                                                      : "";
            bprintf(&b, "%-13s = %s%s\n", kd->key, val, note);
        }
    }
    return b.len < n ? b.len : (n ? n - 1 : 0);
}

const char *deck_where(const Deck *d, const char *key, char *buf, size_t n) {
    int k = find_dotted(key);
    if (!n) return buf;
    if (k < 0) snprintf(buf, n, "(no key %s)", key);
    else if (d->from[k] > 0) snprintf(buf, n, "%s:%d", d->path, d->from[k]);
    else if (d->from[k] == DECK_FROM_SET) snprintf(buf, n, "--set");
    else if (d->from[k] == DECK_FROM_DERIVED) snprintf(buf, n, "derived");
    else snprintf(buf, n, "default");
    return buf;
}

// ---------------------------------------------------------------------------------------------
// Key reference (`partita check --keys`, `partita train --help`): everyday path, issue 18

int deck_print_keys(FILE *out, const char *section) {
    int shown_keys = 0;
    for (int s = 0; s < NSECTIONS; s++) {
        if (section && section[0] && strcmp(section, sections[s]) != 0) continue;
        fprintf(out, "%s[%s]\n", shown_keys ? "\n" : "", sections[s]);
        for (int k = 0; k < NKEYS; k++) {
            const KeyDef *kd = &keys[k];
            if (strcmp(kd->section, sections[s]) != 0) continue;
            char what[256];
            describe(k, what, sizeof what);
            fprintf(out, "  %-16s = %-12s  %s\n  %-16s   %-12s  (%s)\n", kd->key, kd->type == T_STR && !kd->def[0] ? "\"\"" : kd->def,
                    kd->help, "", "", what);
            shown_keys++;
        }
    }
    return shown_keys;
}
