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

SRC     := $(wildcard src/*.c src/infer/*.c)
KSRC    := $(wildcard kernels/cpu/*.c)
OBJ     := $(SRC:%.c=build/%.o) $(KSRC:%.c=build/%.o)
KOBJ    := $(KSRC:%.c=build/%.o)

DEBS := build-essential mpich libhdf5-mpich-dev libopenblas-dev libopenblas0-openmp \
        liburing-dev python3 python3-numpy python3-h5py python3-matplotlib python3-torch hdf5-tools

.PHONY: all deps test bench clean demo
all: build/partita build/test_kernels build/test_comm build/test_ulysses $(GPU_TARGETS)

build/partita: $(OBJ) $(CUDA_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LDLIBS)

build/test_kernels: build/tests/unit/test_kernels.o $(KOBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

build/test_comm: build/tests/unit/test_comm.o build/src/comm.o build/src/comm_nccl.o build/src/log.o $(CUDA_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LDLIBS)

build/test_ulysses: build/tests/unit/test_ulysses.o build/src/ulysses.o build/src/comm.o build/src/comm_nccl.o build/src/log.o $(CUDA_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LDLIBS)

build/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# Installs what Partita needs from Debian; does nothing when all is there.
deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "deps: all installed"; fi

# The newcomer's first run: tokenize text every Debian machine has, train the tiny GPT,
# generate from it.
demo: all
	@mkdir -p data
	build/partita prep data/licenses.h5 /usr/share/common-licenses
	$(MPIEXEC) -np 2 build/partita train inputs/gpt-tiny.deck
	$(MPIEXEC) -np 1 build/partita generate inputs/generate-tiny.deck

test: all
	@MPIEXEC=$(MPIEXEC) PYTHON=$(PYTHON) bash tests/run.sh

bench: all
	@MPIEXEC=$(MPIEXEC) PYTHON=$(PYTHON) bash bench/run.sh

clean:
	rm -rf build

-include $(OBJ:.o=.d) build/tests/unit/test_kernels.d build/tests/unit/test_comm.d build/tests/unit/test_ulysses.d
