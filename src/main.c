// main.c: `partita <command> ...`: one SPMD binary, every rank runs this.
#include "ckpt.h"
#include "deck.h"
#include "comm_nccl.h"
#include "device.h"
#ifdef PARTITA_CUDA
#include "cuda/cuda_kernels.h"
#endif
#include "estimate.h"
#include "infer/eval.h"
#include "infer/generate.h"
#include "infer/stage.h"
#include "kernels.h"
#include "log.h"
#include "prep.h"
#include "safetensors.h"
#include "stop.h"
#include "train.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PARTITA_VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f,
        "partita " PARTITA_VERSION ": ZeRO-style GPT training and inference in C\n"
        "\n"
        "usage: mpiexec -np N partita <command> [args]\n"
        "  train DECK [--set section.key=value]...   train a GPT; writes run.h5 and weights\n"
        "  check DECK [--set section.key=value]...   validate a deck and print it resolved\n"
        "  estimate DECK --ranks N [--mem-per-rank 4G] [--set ...]\n"
        "                                            per-rank memory, communication, FLOPs for ZeRO 0-3; sp plan\n"
        "  generate DECK [--set ...]                 batched generation (KV cache, SplitFuse, tensor parallel)\n"
        "  eval DECK [LOGITS.f32] [--set ...]        validation loss and perplexity of [generate] weights\n"
        "  prep [--tokenizer byte|gpt2] [--tokenizer-dir DIR] OUT.h5 TEXT_FILE_OR_DIR...\n"
        "                                            tokenize text (files, dirs, .jsonl) into an HDF5 token file\n"
        "  ckpt info FILE                            a checkpoint's step, layout, tensors, checksums\n"
        "  ckpt export FILE OUT [--format h5|safetensors]\n"
        "                                            a checkpoint's weights as a GPT-2-named weights file,\n"
        "                                            or a Hugging Face safetensors file (+ config.json beside it)\n"
        "  import FILE.safetensors OUT.h5 [--heads N] a Hugging Face GPT-2 safetensors file as a weights file\n"
        "  stage DECK --out FILE [--from W.h5 | --random SEED] [--dtype D] [--shards N]\n"
        "                                            the per-layer weight file ZeRO-Inference streams\n"
        "  dump DECK OUT.h5 [--set ...]              write one batch's logits and gradients (tests)\n"
        "  version                                   print the version\n"
        "\n"
        "See README.md for the deck reference and the output formats.\n");
}

// Splits "DECK [--set k=v]... [EXTRA]" into the deck, the overrides and extra
// positional arguments. Returns -1 on a malformed command line.
static int parse_args(int argc, char **argv, const char **deck, char **sets, int *nsets,
                      const char **extra, int *nextra) {
    *deck = NULL;
    *nsets = *nextra = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0) {
            if (i + 1 >= argc) return -1;
            sets[(*nsets)++] = argv[++i];
        } else if (strncmp(argv[i], "--set=", 6) == 0) {
            sets[(*nsets)++] = argv[i] + 6;
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            return -1;
        } else if (!*deck) {
            *deck = argv[i];
        } else {
            extra[(*nextra)++] = argv[i];
        }
    }
    return *deck ? 0 : -1;
}

// Every rank parses the same deck and reaches the same verdict, so an error is
// printed by rank 0 alone and every rank leaves with status 2: no abort, no hang.
static int load_deck(Deck *d, int argc, char **argv, const char **extra, int *nextra, int rank, int size) {
    const char *path;
    char **sets = malloc(sizeof(char *) * (size_t)(argc + 1));
    int nsets = 0;
    if (!sets || parse_args(argc, argv, &path, sets, &nsets, extra, nextra) != 0) {
        if (rank == 0) usage(stderr);
        free(sets);
        return 2;
    }
    char err[4096];
    int rc = deck_load(d, path, nsets, sets, size, err, sizeof err);
    free(sets);
    if (rc != 0) {
        if (rank == 0) fprintf(stderr, "%s\n", err);
        return 2;
    }
    return 0;
}

// estimate's `--mem-per-rank SIZE` (bytes, or with a K/M/G/T suffix, powers of 1024), removed from argv.
static int parse_mem_flag(int *argc, char **argv, double *mem, int rank) {
    for (int i = 0; i + 1 < *argc; i++) {
        if (strcmp(argv[i], "--mem-per-rank") != 0) continue;
        char *end;
        double v = strtod(argv[i + 1], &end);
        const char *units = "KMGT", *u = *end ? strchr(units, *end) : NULL;
        if (u && *u) {
            for (const char *k = units; k <= u; k++) v *= 1024.0;
            end++;
        }
        if (*end || !(v > 0) || v > 1e18) {
            if (rank == 0) fprintf(stderr, "error: --mem-per-rank wants a size such as 4G or 512M, got '%s'\n"
                                           "  hint: bytes, or a number with K, M, G or T (powers of 1024)\n", argv[i + 1]);
            return -1;
        }
        *mem = v;
        for (int j = i; j + 2 < *argc; j++) argv[j] = argv[j + 2];
        *argc -= 2;
        return 0;
    }
    return 0;
}

// Checks the deck asks for what this binary can do, before any work starts.
// [run] time_limit and stop_signals are strings the trainer parses at start;
// `check` and `train` refuse a bad one here, naming the deck line.
static int check_stop_keys(const Deck *d, char *msg, size_t n) {
    char why[256], where[600];
    double seconds;
    int sigs[STOP_MAX_SIGNALS];
    if (stop_parse_duration(d->cfg.run.time_limit, &seconds, why, sizeof why) != 0) {
        snprintf(msg, n, "error: %s: [run] time_limit: %s\n  hint: write e.g. time_limit = 2h, 90m, 3600 or 1:30:00 "
                 "(0 = none)", deck_where(d, "run.time_limit", where, sizeof where), why);
        return -1;
    }
    if (stop_parse_signals(d->cfg.run.stop_signals, sigs, STOP_MAX_SIGNALS, why, sizeof why) < 0) {
        snprintf(msg, n, "error: %s: [run] stop_signals: %s\n  hint: list signal names, e.g. stop_signals = TERM, "
                 "USR1 (or none)", deck_where(d, "run.stop_signals", where, sizeof where), why);
        return -1;
    }
    return 0;
}

static int check_runnable(const Deck *d, int rank) {
    char where[600], msg[4096] = "";
    const Config *c = &d->cfg;
    DeviceInfo dev;
    if (device_select(d, 1, &dev, msg, sizeof msg) == 0 && rank == 0) log_info("%s\n", dev.note);
    if (msg[0] || check_stop_keys(d, msg, sizeof msg) != 0) {
    } else if (dev.backend == BACKEND_CUDA && c->model.d_model / c->model.heads > KERNELS_CUDA_ATT_HSMAX) {
        snprintf(msg, sizeof msg, "error: %s: head size d_model/heads = %lld/%lld = %lld is larger than %d, the most "
                 "the cuda attention runs\n  hint: raise [model] heads, or set [run] backend = cpu",
                 deck_where(d, "model.heads", where, sizeof where), (long long)c->model.d_model,
                 (long long)c->model.heads, (long long)(c->model.d_model / c->model.heads), KERNELS_CUDA_ATT_HSMAX);
    } else if (c->parallel.tp != 1 || c->parallel.ep != 1) {
        snprintf(msg, sizeof msg, "error: %s: tensor and expert parallelism are not implemented yet\n"
                 "  hint: set [parallel] tp and ep to 1", deck_where(d, "parallel.tp", where, sizeof where));
    } else if (!c->data.train[0]) {
        snprintf(msg, sizeof msg, "error: %s: [data] train is not set\n"
                 "  hint: make a token file with `partita prep data/tokens.h5 TEXT...` and set train = data/tokens.h5",
                 d->path);
    } else if (access(c->data.train, R_OK) != 0) {
        snprintf(msg, sizeof msg, "error: %s: [data] train = \"%s\": no such readable file\n"
                 "  hint: make it with `partita prep %s TEXT...`",
                 deck_where(d, "data.train", where, sizeof where), c->data.train, c->data.train);
    } else if (c->data.val[0] && access(c->data.val, R_OK) != 0) {
        snprintf(msg, sizeof msg, "error: %s: [data] val = \"%s\": no such readable file\n"
                 "  hint: leave val empty to hold out data.val_fraction of the train tokens",
                 deck_where(d, "data.val", where, sizeof where), c->data.val);
    }
    if (!msg[0]) return 0;
    if (rank == 0) fprintf(stderr, "%s\n", msg);
    return 2;
}

// Checks a generate deck before any work: files present, tp = the job's ranks.
static int check_generate(const Deck *d, int rank, int size) {
    char where[600], msg[4096] = "";
    const GenerateConfig *g = &d->cfg.generate;
    DeviceInfo dev;
    if (device_select(d, !g->naive && size == 1, &dev, msg, sizeof msg) == 0 && rank == 0) log_info("%s\n", dev.note);
    if (msg[0]) {
    } else if (g->weights_from == GEN_FROM_MEMORY && (!g->weights[0] || access(g->weights, R_OK) != 0)) {
        snprintf(msg, sizeof msg, "error: %s: [generate] weights = \"%s\": no such readable file\n"
                 "  hint: use a run's final.h5, an `partita ckpt export`, or a checkpoint",
                 deck_where(d, "generate.weights", where, sizeof where), g->weights);
    } else if (!g->requests[0] || access(g->requests, R_OK) != 0) {
        snprintf(msg, sizeof msg, "error: %s: [generate] requests = \"%s\": no such readable file\n"
                 "  hint: one JSON object a line: {\"id\": \"a\", \"prompt\": \"text\", \"max_tokens\": 32}",
                 deck_where(d, "generate.requests", where, sizeof where), g->requests);
    } else if (d->cfg.parallel.tp != size) {
        snprintf(msg, sizeof msg, "error: %s: generate runs tensor-parallel over all %d ranks, but [parallel] tp = %lld\n"
                 "  hint: set [parallel] tp = %d (or launch %lld ranks)", deck_where(d, "parallel.tp", where, sizeof where),
                 size, (long long)d->cfg.parallel.tp, size, (long long)d->cfg.parallel.tp);
    } else if (g->naive && g->weights_from != GEN_FROM_MEMORY) {
        snprintf(msg, sizeof msg, "error: %s: [generate] naive recomputes from resident weights only\n"
                 "  hint: set [generate] weights_from = memory", deck_where(d, "generate.naive", where, sizeof where));
    } else if (g->naive && size != 1) {
        snprintf(msg, sizeof msg, "error: %s: [generate] naive runs on one rank\n  hint: launch with -np 1",
                 deck_where(d, "generate.naive", where, sizeof where));
    } else if (d->cfg.model.heads % size || (d->cfg.model.mlp_ratio * d->cfg.model.d_model) % size) {
        snprintf(msg, sizeof msg, "error: %s: tp = %d must divide [model] heads = %lld and the MLP width\n"
                 "  hint: use a tp that divides the heads", deck_where(d, "model.heads", where, sizeof where), size,
                 (long long)d->cfg.model.heads);
    }
    if (!msg[0]) return 0;
    if (rank == 0) fprintf(stderr, "%s\n", msg);
    return 2;
}

// Checks an eval deck: the weights file and the token files present, one rank per model copy.
static int check_eval(const Deck *d, int rank, int nextra) {
    char where[600], msg[4096] = "";
    const Config *c = &d->cfg;
    if (nextra > 1) {
        snprintf(msg, sizeof msg, "usage: partita eval DECK [LOGITS.f32] [--set ...]");
    } else if (!c->generate.weights[0] || access(c->generate.weights, R_OK) != 0) {
        snprintf(msg, sizeof msg, "error: %s: [generate] weights = \"%s\": no such readable file\n"
                 "  hint: use a run's final.h5, an `partita ckpt export`, or a checkpoint",
                 deck_where(d, "generate.weights", where, sizeof where), c->generate.weights);
    } else if (!c->data.val[0] && (!c->data.train[0] || access(c->data.train, R_OK) != 0)) {
        snprintf(msg, sizeof msg, "error: %s: [data] train = \"%s\": no such readable file (eval reads its "
                 "val_fraction tail)\n  hint: set [data] val or [data] train to a token file",
                 deck_where(d, "data.train", where, sizeof where), c->data.train);
    } else if (c->data.val[0] && access(c->data.val, R_OK) != 0) {
        snprintf(msg, sizeof msg, "error: %s: [data] val = \"%s\": no such readable file\n"
                 "  hint: make it with `partita prep`", deck_where(d, "data.val", where, sizeof where), c->data.val);
    } else if (c->parallel.tp != 1) {
        snprintf(msg, sizeof msg, "error: %s: eval deals rows over the ranks, each with the whole model\n"
                 "  hint: set [parallel] tp = 1", deck_where(d, "parallel.tp", where, sizeof where));
    }
    if (!msg[0]) return 0;
    if (rank == 0) fprintf(stderr, "%s\n", msg);
    return 2;
}

// A binary compiled for instructions this CPU lacks would die of SIGILL somewhere in the
// first kernel; check before anything runs, in code compiled for the baseline x86-64 (the
// target attribute), and say what to do. -march=native on another node type is the usual cause.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CPU_NEED(macro_on, feature) \
    if ((macro_on) && !__builtin_cpu_supports(feature)) missing = feature;
__attribute__((constructor, target("arch=x86-64"))) static void check_cpu_features(void) {
    const char *missing = NULL;
    __builtin_cpu_init();
#ifdef __SSE4_2__
    CPU_NEED(1, "sse4.2")
#endif
#ifdef __AVX__
    CPU_NEED(1, "avx")
#endif
#ifdef __AVX2__
    CPU_NEED(1, "avx2")
#endif
#ifdef __FMA__
    CPU_NEED(1, "fma")
#endif
#ifdef __AVX512F__
    CPU_NEED(1, "avx512f")
#endif
#ifdef __AVX512BW__
    CPU_NEED(1, "avx512bw")
#endif
#ifdef __AVX512VL__
    CPU_NEED(1, "avx512vl")
#endif
#ifdef __AVX512DQ__
    CPU_NEED(1, "avx512dq")
#endif
#ifdef __AVX512VP2INTERSECT__
    CPU_NEED(1, "avx512vp2intersect")
#endif
    if (!missing) return;
    fprintf(stderr, "error: this partita was compiled for CPUs with %s, which this CPU lacks "
            "(built with -march=native on another node type?)\n"
            "  hint: rebuild on this node type, or build once for all with `make PORTABLE=1` "
            "(x86-64-v3) or `make ARCH=x86-64-v2`\n", missing);
    exit(2);
}
#undef CPU_NEED
#endif

static void print_version(void) {
#ifdef PARTITA_CUDA
    int devices = cuda_device_count();
    const char *why = cuda_probe_error();
    printf("partita %s (backends: cpu, cuda with %s; %d CUDA device(s) here%s%s)\n", PARTITA_VERSION,
           nccl_available() ? "NCCL" : "no NCCL", devices, why[0] ? ": " : "", why);
#else
    printf("partita %s (backends: cpu; built without cuda)\n", PARTITA_VERSION);
#endif
}

static int run_command(const char *cmd, int argc, char **argv, int rank, int size) {
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        if (rank == 0) print_version();
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        if (rank == 0) usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "prep") == 0) return prep_main(argc, argv);   // every rank: parallel over the job
    if (strcmp(cmd, "ckpt") == 0) return rank == 0 ? ckpt_main(argc, argv) : 0;
    if (strcmp(cmd, "import") == 0) return rank == 0 ? st_import_main(argc, argv) : 0;
    if (strcmp(cmd, "stage") == 0) return rank == 0 ? stage_main(argc, argv) : 0;

    int is_train = strcmp(cmd, "train") == 0, is_check = strcmp(cmd, "check") == 0;
    int is_dump = strcmp(cmd, "dump") == 0, is_estimate = strcmp(cmd, "estimate") == 0;
    int is_generate = strcmp(cmd, "generate") == 0, is_eval = strcmp(cmd, "eval") == 0;
    int ranks = size;
    double mem_per_rank = 0.0;
    if (is_estimate && parse_mem_flag(&argc, argv, &mem_per_rank, rank) != 0) return 2;
    if (is_estimate) {
        // `--ranks N` plans for N ranks instead of this job's size.
        for (int i = 0; i + 1 < argc; i++) {
            if (strcmp(argv[i], "--ranks") != 0) continue;
            char *end;
            long n = strtol(argv[i + 1], &end, 10);
            if (*end || n < 1 || n > 1 << 24) {
                if (rank == 0) fprintf(stderr, "error: --ranks wants a positive integer, got '%s'\n", argv[i + 1]);
                return 2;
            }
            ranks = (int)n;
            for (int j = i; j + 2 < argc; j++) argv[j] = argv[j + 2];
            argc -= 2;
            break;
        }
    }
    if (!is_train && !is_check && !is_dump && !is_estimate && !is_generate && !is_eval) {
        if (rank == 0) {
            fprintf(stderr, "error: unknown command '%s'\n", cmd);
            usage(stderr);
        }
        return 2;
    }
    Deck *d = malloc(sizeof *d);
    const char **extra = malloc(sizeof(char *) * (size_t)(argc + 1));
    int nextra = 0, rc;
    SYS_CHECK(d && extra, "out of memory");
    if ((rc = load_deck(d, argc, argv, extra, &nextra, rank, ranks)) == 0) {
        if (is_estimate) {
            if (rank == 0) rc = estimate_run(d, ranks, mem_per_rank);
        } else if (is_check) {
            char msg[1200];
            if (check_stop_keys(d, msg, sizeof msg) != 0) {
                if (rank == 0) fprintf(stderr, "%s\n", msg);
                rc = 2;
            } else if (rank == 0) {
                char *text = malloc(1 << 16);
                SYS_CHECK(text, "out of memory");
                deck_format(d, text, 1 << 16);
                fputs(text, stdout);
                free(text);
            }
        } else if (is_generate) {
            rc = check_generate(d, rank, size);
            if (rc == 0) rc = generate_run(d);
        } else if (is_eval) {
            rc = check_eval(d, rank, nextra);
            if (rc == 0) rc = eval_run(d, nextra ? extra[0] : NULL);
        } else if ((rc = check_runnable(d, rank)) == 0) {
            if (is_train) rc = train_run(d);
            else if (nextra != 1 || size != 1) {
                if (rank == 0) fprintf(stderr, "usage: partita dump DECK OUT.h5 (one rank)\n");
                rc = 2;
            } else rc = train_dump(d, extra[0]);
        }
    }
    free(extra);
    free(d);
    return rc;
}

int main(int argc, char **argv) {
    MPI_CHECK(MPI_Init(&argc, &argv));
    int rank = 0, size = 1;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    log_init(rank);
    int rc;
    if (argc < 2) {
        if (rank == 0) usage(stderr);
        rc = 2;
    } else {
        rc = run_command(argv[1], argc - 2, argv + 2, rank, size);
    }
    MPI_CHECK(MPI_Finalize());
    return rc;
}
