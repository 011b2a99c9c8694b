# flags.mk: the compiler, library paths and flags of Partita's C code, in one
# place for the Makefile and for tests/gpu/emu/partita_emu.mk (the trainer on
# the emulated cuda backend), so the two builds cannot drift apart.
# MPICH's own wrapper: where Open MPI is installed too, plain mpicc may be it.
CC       := mpicc.mpich

HDF5_INC := /usr/include/hdf5/mpich
HDF5_LIB := /usr/lib/x86_64-linux-gnu/hdf5/mpich
# OpenBLAS's OpenMP build shares one thread pool with our kernels.
BLAS_INC := /usr/include/x86_64-linux-gnu/openblas-pthread
BLAS_LIB := /usr/lib/x86_64-linux-gnu/openblas-openmp

# The instruction set the code is compiled for. `native` is the fastest on the
# machine that builds and dies of SIGILL on an older or other CPU type (a login
# node with AVX-512, compute nodes without): `make PORTABLE=1` compiles for
# x86-64-v3 (AVX2 + FMA: every x86 server since about 2015), `make ARCH=x86-64-v2`
# for anything older. The binary checks at start that the CPU has what it was
# compiled for and says so instead of dying (src/main.c). OpenBLAS picks its own
# kernels at run time either way.
PORTABLE ?= 0
ARCH     ?= $(if $(filter 1,$(PORTABLE)),x86-64-v3,native)

# ASAN=1: AddressSanitizer + UBSan, for `make asan` (build-asan/).
ifeq ($(ASAN),1)
CFLAGS   ?= -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -march=$(ARCH)
else
CFLAGS   ?= -O3 -march=$(ARCH)
endif
CFLAGS   += -std=c11 -fopenmp -Wall -Wextra -D_GNU_SOURCE -Isrc -Isrc/infer -Ikernels -I$(HDF5_INC) -I$(BLAS_INC) -MMD -MP
LDLIBS   := -L$(HDF5_LIB) -Wl,-rpath,$(HDF5_LIB) -lhdf5_hl -lhdf5 \
            -L$(BLAS_LIB) -l:libopenblas.so.0 -Wl,-rpath,$(BLAS_LIB) -luring -lm
