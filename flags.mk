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

CFLAGS   ?= -O3 -march=native
CFLAGS   += -std=c11 -fopenmp -Wall -Wextra -D_GNU_SOURCE -Isrc -Isrc/infer -Ikernels -I$(HDF5_INC) -I$(BLAS_INC) -MMD -MP
LDLIBS   := -L$(HDF5_LIB) -Wl,-rpath,$(HDF5_LIB) -lhdf5 \
            -L$(BLAS_LIB) -l:libopenblas.so.0 -Wl,-rpath,$(BLAS_LIB) -lm
