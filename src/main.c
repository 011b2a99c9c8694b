// main.c: `partita <command> ...`: one SPMD binary, every rank runs this.
#include "ckpt.h"
#include "deck.h"
#include "comm_nccl.h"
#include "data.h"
#include "device.h"
#ifdef PARTITA_CUDA
#include "cuda/cuda_kernels.h"
#endif
#include "estimate.h"
#include "infer/engine.h"
#include "infer/eval.h"
#include "infer/generate.h"
#include "infer/serve.h"
#include "infer/stage.h"
#include "kernels.h"
#include "log.h"
#include "prep.h"
#include "safetensors.h"
#include "stop.h"
#include "train.h"
#include "version.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <unistd.h>


// The command table is below (after the handlers): one line a command.

static void usage(FILE *f);
// Splits "DECK [--set k=v]... [EXTRA]" into the deck, the overrides and extra
// positional arguments. Returns -1 on a malformed command line, with why.
static int parse_args(int argc, char **argv, const char **deck, char **sets, int *nsets,
                      const char **extra, int *nextra, char *why, size_t wn) {
    *deck = NULL;
    *nsets = *nextra = 0;
    snprintf(why, wn, "a deck file is needed");
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0) {
            if (i + 1 >= argc) {
                snprintf(why, wn, "--set needs section.key=value after it");
                return -1;
            }
            sets[(*nsets)++] = argv[++i];
        } else if (strncmp(argv[i], "--set=", 6) == 0) {
            sets[(*nsets)++] = argv[i] + 6;
        } else if (argv[i][0] == '-' && argv[i][1] != 0) {
            snprintf(why, wn, "unknown option '%.200s'", argv[i]);
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
static int load_deck(Deck *d, const char *cmd, int argc, char **argv, const char **extra, int *nextra, int rank,
                     int size) {
    const char *path;
    char **sets = malloc(sizeof(char *) * (size_t)(argc + 1)), why[300];
    int nsets = 0;
    SYS_CHECK(sets, "out of memory");
    if (parse_args(argc, argv, &path, sets, &nsets, extra, nextra, why, sizeof why) != 0) {
        if (rank == 0)
            fprintf(stderr, "error: partita %s: %s\n  hint: `partita %s --help` shows its arguments\n", cmd, why, cmd);
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

// The first token file of [data] train (a comma-separated list when mixing) that cannot be read.
static int unreadable_train(const char *list, char *bad, size_t n) {
    char paths[DATA_MAX_SOURCES][512];
    int k = data_split_list(list, paths, DATA_MAX_SOURCES);
    snprintf(bad, n, "%.500s", list);
    if (k < 1) return 1;
    for (int i = 0; i < k; i++)
        if (access(paths[i], R_OK) != 0) {
            snprintf(bad, n, "%.500s", paths[i]);
            return 1;
        }
    return 0;
}

static int check_runnable(const Deck *d, int rank) {
    char where[600], msg[4096] = "", bad[512];
    const Config *c = &d->cfg;
    DeviceInfo dev;
    if (device_select(d, 1, &dev, msg, sizeof msg) == 0 && rank == 0) log_info("%s\n", dev.note);
    if (msg[0] || check_stop_keys(d, msg, sizeof msg) != 0) {
    } else if (dev.backend == BACKEND_CUDA && c->model.d_model / c->model.heads > KERNELS_CUDA_ATT_HSMAX) {
        snprintf(msg, sizeof msg, "error: %s: head size d_model/heads = %lld/%lld = %lld is larger than %d, the most "
                 "the cuda attention runs\n  hint: raise [model] heads, or set [run] backend = cpu",
                 deck_where(d, "model.heads", where, sizeof where), (long long)c->model.d_model,
                 (long long)c->model.heads, (long long)(c->model.d_model / c->model.heads), KERNELS_CUDA_ATT_HSMAX);
    } else if (c->parallel.tp != 1) {   // expert parallelism (ep) trains: issue 13
        snprintf(msg, sizeof msg, "error: %s: tensor parallelism is not implemented for training yet\n"
                 "  hint: set [parallel] tp = 1", deck_where(d, "parallel.tp", where, sizeof where));
    } else if (c->moe.experts > 0 && c->parallel.sp > 1) {   // MoE training: issue 13
        snprintf(msg, sizeof msg, "error: %s: Mixture of Experts with sequence parallelism (sp = %lld) is not supported\n"
                 "  hint: set [parallel] sp = 1", deck_where(d, "parallel.sp", where, sizeof where),
                 (long long)c->parallel.sp);
    } else if (!c->data.train[0]) {
        snprintf(msg, sizeof msg, "error: %s: [data] train is not set\n"
                 "  hint: make a token file with `partita prep data/tokens.h5 TEXT...` and set train = data/tokens.h5",
                 d->path);
    } else if (unreadable_train(c->data.train, bad, sizeof bad)) {
        snprintf(msg, sizeof msg, "error: %s: [data] train = \"%s\": no such readable file%s%s\n"
                 "  hint: make it with `partita prep %s TEXT...`",
                 deck_where(d, "data.train", where, sizeof where), c->data.train, strcmp(bad, c->data.train) ? ": " : "",
                 strcmp(bad, c->data.train) ? bad : "", bad);
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
    } else if (!g->requests[0] || access(g->requests, R_OK) != 0) {
        snprintf(msg, sizeof msg, "error: %s: [generate] requests = \"%s\": no such readable file\n"
                 "  hint: one JSON object a line: {\"id\": \"a\", \"prompt\": \"text\", \"max_tokens\": 32}",
                 deck_where(d, "generate.requests", where, sizeof where), g->requests);
    } else {
        engine_check_deck(d, size, msg, sizeof msg);
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
    char blas[768];
    int blas_ok = cuda_blas_probe(blas, sizeof blas);
    printf("partita %s (backends: cpu, cuda with %s, %s%s; %d CUDA device(s) here%s%s)\n", partita_version(),
           nccl_available() ? "NCCL" : "no NCCL", blas_ok ? "cuBLAS" : "no cuBLAS: ", blas_ok ? "" : blas, devices,
           why[0] ? ": " : "", why);
#else
    printf("partita %s (backends: cpu; built without cuda)\n", partita_version());
#endif
}

// ---------------------------------------------------------------------------------------------
// Deck commands: train, check, estimate, generate, eval, dump

// A file the deck names: there, readable, and HDF5 (an empty string passes).
static int check_file(const Deck *d, const char *key, const char *path, int hdf5, char *msg, size_t n) {
    char where[600];
    if (!path[0]) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, n, "error: %s: [%.*s] %s = \"%s\": cannot read it: %s\n  hint: check the path (relative paths "
                 "are from the directory partita runs in)", deck_where(d, key, where, sizeof where),
                 (int)(strchr(key, '.') - key), key, strchr(key, '.') + 1, path, strerror(errno));
        return -1;
    }
    fclose(f);
    htri_t ok = 1;
    if (hdf5) H5E_BEGIN_TRY { ok = H5Fis_hdf5(path); } H5E_END_TRY;
    if (ok <= 0) {
        snprintf(msg, n, "error: %s: [%.*s] %s = \"%s\" is not an HDF5 file\n  hint: token files come from "
                 "`partita prep`, weights from a run's final.h5 or `partita ckpt export`",
                 deck_where(d, key, where, sizeof where), (int)(strchr(key, '.') - key), key, strchr(key, '.') + 1, path);
        return -1;
    }
    return 0;
}

// `partita check DECK`: every problem found before a run would meet it, each
// with its hint, then one summary line. Returns the exit status.
static int check_deck(const Deck *d, int rank) {
    char msg[4096];
    int problems = 0, files = 0;
    const Config *c = &d->cfg;
#define PROBLEM() do { if (rank == 0) fprintf(stderr, "%s\n", msg); problems++; } while (0)
    if (check_stop_keys(d, msg, sizeof msg) != 0) PROBLEM();
    DeviceInfo dev;
    msg[0] = 0;
    if (device_select(d, 1, &dev, msg, sizeof msg) != 0) PROBLEM();
    char list[DECK_STR];
    snprintf(list, sizeof list, "%s", c->data.train);
    for (char *save = NULL, *one = strtok_r(list, ",", &save); one; one = strtok_r(NULL, ",", &save)) {
        while (*one == ' ') one++;
        char *e = one + strlen(one);
        while (e > one && e[-1] == ' ') *--e = 0;
        if (check_file(d, "data.train", one, 1, msg, sizeof msg) != 0) PROBLEM();
        files++;
    }
    if (check_file(d, "data.val", c->data.val, 1, msg, sizeof msg) != 0) PROBLEM();
    if (check_file(d, "generate.weights", c->generate.weights, 1, msg, sizeof msg) != 0) PROBLEM();
    if (check_file(d, "generate.requests", c->generate.requests, 0, msg, sizeof msg) != 0) PROBLEM();
    files += !!c->data.val[0] + !!c->generate.weights[0] + !!c->generate.requests[0];
#undef PROBLEM
    if (rank == 0) {
        if (problems)
            printf("check: %s: %d problem%s (above)\n", d->path, problems, problems > 1 ? "s" : "");
        else
            printf("check: %s: ok (%d file%s readable; backend %s)\n", d->path, files, files == 1 ? "" : "s",
                   dev.backend == BACKEND_CUDA ? "cuda" : "cpu");
    }
    return problems ? 2 : 0;
}

// A run directory holding an earlier run's outputs and no checkpoint to resume
// from: training would replace them, so it is refused unless [run] overwrite.
static int check_overwrite(const Deck *d, int rank) {
    const Config *c = &d->cfg;
    if (c->run.overwrite || rank != 0) return 0;
    const char *outs[] = {"run.h5", "final.h5"};
    char path[DECK_STR + 32], found[DECK_STR + 32] = "";
    for (int i = 0; i < 2 && !found[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", c->run.out_dir, outs[i]);
        if (access(path, F_OK) == 0) snprintf(found, sizeof found, "%s", path);
    }
    if (!found[0]) return 0;
    int resumable = 0;
    if (strcmp(c->checkpoint.resume, "none") != 0) {
        if (strcmp(c->checkpoint.resume, "auto") != 0) return 0;   // a checkpoint file: resume names it
        DIR *dir = opendir(c->checkpoint.dir);
        for (struct dirent *e; dir && (e = readdir(dir)) && !resumable; )
            resumable = strcmp(e->d_name, "latest") == 0 || strncmp(e->d_name, "step-", 5) == 0;
        if (dir) closedir(dir);
    }
    if (resumable) return 0;
    fprintf(stderr, "error: %s: run directory '%s' holds an earlier run (%s) and no checkpoint to resume from; "
            "training would overwrite its run.h5 and weights\n"
            "  hint: set [run] overwrite = true (or --set run.overwrite=true) to replace them, or give this run "
            "another [run] name or out_dir\n", d->path, c->run.out_dir, found);
    return 2;
}

enum { DECK_TRAIN, DECK_CHECK, DECK_ESTIMATE, DECK_GENERATE, DECK_EVAL, DECK_DUMP, DECK_CHECK_ONLY };
static const char *const deck_cmd_names[] = {"train", "check", "estimate", "generate", "eval", "dump", "check"};

static int deck_command(int kind, int argc, char **argv, int rank, int size) {
    int ranks = size;
    double mem_per_rank = 0.0;
    if (kind == DECK_ESTIMATE) {
        if (parse_mem_flag(&argc, argv, &mem_per_rank, rank) != 0) return 2;
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
    Deck *d = malloc(sizeof *d);
    const char **extra = malloc(sizeof(char *) * (size_t)(argc + 1));
    int nextra = 0, rc;
    SYS_CHECK(d && extra, "out of memory");
    if ((rc = load_deck(d, deck_cmd_names[kind], argc, argv, extra, &nextra, rank, ranks)) == 0) {
        if (kind == DECK_ESTIMATE) {
            if (rank == 0) rc = estimate_run(d, ranks, mem_per_rank);
        } else if (kind == DECK_CHECK || kind == DECK_CHECK_ONLY) {
            if (rank == 0) {
                char *text = malloc(1 << 16);
                SYS_CHECK(text, "out of memory");
                deck_format(d, text, 1 << 16);
                fputs(text, stdout);
                free(text);
                fflush(stdout);
            }
            if (kind == DECK_CHECK) rc = check_deck(d, rank);
            else {
                char msg[1200];
                if (check_stop_keys(d, msg, sizeof msg) != 0) {
                    if (rank == 0) fprintf(stderr, "%s\n", msg);
                    rc = 2;
                }
            }
        } else if (kind == DECK_GENERATE) {
            rc = check_generate(d, rank, size);
            if (rc == 0) rc = generate_run(d);
        } else if (kind == DECK_EVAL) {
            rc = check_eval(d, rank, nextra);
            if (rc == 0) rc = eval_run(d, nextra ? extra[0] : NULL);
        } else if ((rc = check_runnable(d, rank)) == 0) {
            if (kind == DECK_TRAIN) {
                rc = check_overwrite(d, rank);
                MPI_CHECK(MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD));
                if (rc == 0) rc = train_run(d);
            } else if (nextra != 1 || size != 1) {
                if (rank == 0) fprintf(stderr, "usage: partita dump DECK OUT.h5 (one rank)\n");
                rc = 2;
            } else rc = train_dump(d, extra[0]);
        }
    }
    free(extra);
    free(d);
    return rc;
}

static int cmd_train(int argc, char **argv, int rank, int size) { return deck_command(DECK_TRAIN, argc, argv, rank, size); }
static int cmd_estimate(int argc, char **argv, int rank, int size) { return deck_command(DECK_ESTIMATE, argc, argv, rank, size); }
static int cmd_generate(int argc, char **argv, int rank, int size) { return deck_command(DECK_GENERATE, argc, argv, rank, size); }
static int cmd_eval(int argc, char **argv, int rank, int size) { return deck_command(DECK_EVAL, argc, argv, rank, size); }
static int cmd_dump(int argc, char **argv, int rank, int size) { return deck_command(DECK_DUMP, argc, argv, rank, size); }

// `check DECK` validates; `check --keys [SECTION]` prints the key reference.
static int cmd_check(int argc, char **argv, int rank, int size) {
    if (argc >= 1 && strcmp(argv[0], "--keys") == 0) {
        if (rank != 0) return 0;
        if (argc > 2 || deck_print_keys(stdout, argc == 2 ? argv[1] : NULL) == 0) {
            fprintf(stderr, "error: partita check --keys: no section '%s'\n  hint: run, model, data, train, optimizer, "
                    "parallel, zero, checkpoint, moe, generate, comm (or none for all)\n", argc > 1 ? argv[1] : "");
            return 2;
        }
        return 0;
    }
    // --deck-only: the deck alone (keys, values, derivations), not its files or the backend.
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--deck-only") == 0) {
            for (int j = i; j + 1 < argc; j++) argv[j] = argv[j + 1];
            return deck_command(DECK_CHECK_ONLY, argc - 1, argv, rank, size);
        }
    return deck_command(DECK_CHECK, argc, argv, rank, size);
}

static int cmd_prep(int argc, char **argv, int rank, int size) {
    (void)rank, (void)size;
    return prep_main(argc, argv);   // every rank: parallel over the job
}
static int cmd_ckpt(int argc, char **argv, int rank, int size) {
    (void)size;
    return rank == 0 ? ckpt_main(argc, argv) : 0;
}
static int cmd_import(int argc, char **argv, int rank, int size) {
    (void)size;
    return rank == 0 ? st_import_main(argc, argv) : 0;
}
static int cmd_stage(int argc, char **argv, int rank, int size) {
    (void)size;
    return rank == 0 ? stage_main(argc, argv) : 0;
}
static int cmd_version(int argc, char **argv, int rank, int size) {
    (void)argc, (void)argv, (void)size;
    if (rank == 0) print_version();
    return 0;
}
static int cmd_help(int argc, char **argv, int rank, int size);
static int cmd_serve(int argc, char **argv, int rank, int size) { return serve_main(argc, argv, rank, size); }

// ---------------------------------------------------------------------------------------------
// The commands. Adding one is one line here: its name, its arguments, a one-line
// summary (for `partita help`), the keys section its --help lists ("" none, "*" all),
// longer help (or NULL), and int fn(int argc, char **argv, int rank, int size),
// argv being the arguments after the command name. fn runs on every rank.

typedef struct Command {
    const char *name, *args, *summary, *keys, *help;
    int (*run)(int argc, char **argv, int rank, int size);
} Command;

static const Command commands[] = {
    {"train", "DECK [--set section.key=value]...", "train a GPT; writes run.h5, checkpoints and weights", "*",
     "Runs under mpiexec: `mpiexec.mpich -np 4 build/partita train inputs/gpt-tiny.deck`.\n"
     "Outputs go to [run] out_dir (runs/<name>); an earlier run there without a checkpoint is\n"
     "kept unless [run] overwrite = true; with one, resume = auto continues it.\n"
     "Exit 0 done, 75 stopped early with a checkpoint, 2 bad input, 3 non-finite loss.", cmd_train},
    {"check", "DECK [--set ...] [--deck-only] | --keys [SECTION]", "validate a deck, its files and backend; print it resolved", "",
     "Prints every key resolved (marking defaults and derived keys), then checks that the token,\n"
     "weights and request files it names are there and readable and that the backend is available,\n"
     "and ends with one summary line (exit 2 on any problem). `--deck-only` checks the deck alone.\n"
     "`--keys [SECTION]` lists every key with its default.", cmd_check},
    {"estimate", "DECK --ranks N [--mem-per-rank 4G] [--set ...]",
     "per-rank memory, communication, FLOPs for ZeRO 0-3; sp plan", "", NULL, cmd_estimate},
    {"generate", "DECK [--set ...]", "batched generation (KV cache, SplitFuse, tensor parallel)", "generate", NULL,
     cmd_generate},
    {"serve", "DECK [--set ...]", "OpenAI-compatible completions server ([serve] host, port)", "serve",
     "Rank 0 listens on [serve] host:port (default 127.0.0.1:8000); the other ranks follow its\n"
     "passes. SIGTERM stops accepting, drains running requests ([serve] drain_s) and exits 0.", cmd_serve},
    {"eval", "DECK [LOGITS.f32] [--set ...]", "validation loss and perplexity of [generate] weights", "", NULL, cmd_eval},
    {"prep", "[--tokenizer byte|gpt2] [--tokenizer-dir DIR] OUT.h5 PATH...",
     "tokenize text (files, dirs, .jsonl, - for stdin) into an HDF5 token file", "",
     "A file is one document; a .jsonl file one per line (its \"text\"); `-` reads standard\n"
     "input (add --jsonl when it is JSON lines). Runs in parallel under mpiexec.", cmd_prep},
    {"ckpt", "info FILE | export FILE OUT [--format h5|safetensors]",
     "inspect a checkpoint, or export its weights (GPT-2 names; safetensors + config.json)", "", NULL, cmd_ckpt},
    {"import", "FILE.safetensors OUT.h5 [--heads N]", "a Hugging Face GPT-2 safetensors file as a weights file", "",
     NULL, cmd_import},
    {"stage", "DECK --out FILE [--from W.h5 | --random SEED] [--dtype D] [--shards N]",
     "the per-layer, aligned weight file ZeRO-Inference streams ([generate] weights_from)", "", NULL, cmd_stage},
    {"dump", "DECK OUT.h5 [--set ...]", "write one batch's logits and gradients (tests)", "", NULL, cmd_dump},
    {"version", "", "print the version and the backends this binary carries", "", NULL, cmd_version},
    {"help", "[COMMAND]", "this text, or one command's help", "", NULL, cmd_help},
};
#define NCOMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void usage(FILE *f) {
    fprintf(f, "partita %s: ZeRO-style GPT training and inference in C\n\n"
               "usage: [mpiexec.mpich -np N] partita <command> [args]\n", partita_version());
    for (int i = 0; i < NCOMMANDS; i++) {
        char head[160];
        snprintf(head, sizeof head, "%s %s", commands[i].name, commands[i].args);
        if (strlen(head) <= 42) fprintf(f, "  %-42s %s\n", head, commands[i].summary);
        else fprintf(f, "  %s\n  %-42s %s\n", head, "", commands[i].summary);
    }
    fprintf(f, "\n`partita help COMMAND` (or `partita COMMAND --help`) for one command; `partita check --keys`\n"
               "lists every deck key with its default. README.md has the deck reference and output formats.\n");
}

static void command_help(const Command *c) {
    printf("usage: [mpiexec.mpich -np N] partita %s %s\n  %s\n", c->name, c->args, c->summary);
    if (c->help) printf("\n%s\n", c->help);
    if (c->keys[0]) {
        printf("\nDeck keys (key = default, then what it accepts; `partita check --keys SECTION` for one section):\n\n");
        deck_print_keys(stdout, strcmp(c->keys, "*") == 0 ? NULL : c->keys);
    } else {
        printf("\n`partita check --keys` lists every deck key with its default.\n");
    }
}

// Levenshtein distance of two short strings (command names), capped at 31 bytes each.
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b), row[32];
    if (la > 31 || lb > 31) return 99;
    for (int j = 0; j <= lb; j++) row[j] = j;
    for (int i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= lb; j++) {
            int up = row[j], v = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < v) v = up + 1;
            if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
            // a swap of two neighbours (trian -> train) counts as one edit
            diag = up;
            row[j] = v;
        }
    }
    return row[lb];
}

static const Command *find_command(const char *name) {
    for (int i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

// The known command nearest to name, if near enough to be a slip.
static const Command *nearest_command(const char *name) {
    const Command *best = NULL;
    int bd = 3;
    for (int i = 0; i < NCOMMANDS; i++) {
        int dd = edit_distance(name, commands[i].name);
        if (dd < bd) bd = dd, best = &commands[i];
    }
    return best;
}

static int unknown_command(const char *name, int rank) {
    if (rank != 0) return 2;
    const Command *near = nearest_command(name);
    fprintf(stderr, "error: unknown command '%s'\n", name);
    if (near) fprintf(stderr, "  hint: did you mean `partita %s`?\n", near->name);
    else fprintf(stderr, "  hint: `partita help` lists the commands\n");
    return 2;
}

static int cmd_help(int argc, char **argv, int rank, int size) {
    (void)size;
    if (argc == 0) {
        if (rank == 0) usage(stdout);
        return 0;
    }
    const Command *c = find_command(argv[0]);
    if (!c) return unknown_command(argv[0], rank);
    if (rank == 0) command_help(c);
    return 0;
}

static int run_command(const char *cmd, int argc, char **argv, int rank, int size) {
    if (strcmp(cmd, "--version") == 0) cmd = "version";
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) cmd = "help";
    const Command *c = find_command(cmd);
    if (!c) return unknown_command(cmd, rank);
    for (int i = 0; i < argc && c->run != cmd_help; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (rank == 0) command_help(c);
            return 0;
        }
    return c->run(argc, argv, rank, size);
}

int main(int argc, char **argv) {
    // MULTIPLE: [comm] progress = thread and asynchronous checkpoints use threads beside the caller's.
    int provided = 0;
    // UCX (MPICH ch4:ucx) copies a large message between ranks of a node by CMA in 512 KiB
    // segments, one per progress call: a ZeRO-3 layer (28 MB at 124M) needed ~30 polls. One
    // segment per message lets a poll between two GEMM tiles move it whole (issue 16: blocked
    // 0.35 -> 0.23 s a step). A value the user set stays.
    SYS_CHECK(setenv("UCX_CMA_SEG_SIZE", "256m", 0) == 0, "cannot set UCX_CMA_SEG_SIZE: %s", strerror(errno));
    MPI_CHECK(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided));
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
