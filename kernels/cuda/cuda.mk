# kernels/cuda/cuda.mk: the cuda backend's build fragment.
#
# Included by the main Makefile when nvcc exists; also usable alone from the
# repository root:  make -f kernels/cuda/cuda.mk build/test_kernels_gpu
#
# Provides: CUDA_SRC, CUDA_OBJ (build/kernels/cuda/%.o), CUDA_LDLIBS (to add to
# the trainer's link line), the rule for build/kernels/cuda/%.o, and
# build/test_kernels_gpu (cuda kernels vs cpu kernels, tests/gpu).
# Every variable that a includer may want to set is ?=.

_cuda_saved_goal := $(.DEFAULT_GOAL)

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80
NVCCFLAGS ?= -O3 -std=c++17 $(CUDA_ARCH) -Xcompiler -Wall,-Wextra -Ikernels -Ikernels/cuda \
             -DPARTITA_CUBLAS_DIR='"$(CUDA_HOME)/lib64"'

CUDA_SRC    := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ    := $(CUDA_SRC:%.cu=build/%.o)
CUDA_HDR    := kernels/kernels.h $(wildcard kernels/cuda/*.h kernels/cuda/*.cuh)
# -lstdc++: the .cu objects are C++ (cub); a C link (mpicc) needs it. cuBLAS is
# not linked: cublas.cu opens it when a device starts (loading it costs every
# process ~0.5 s of CPU, cpu runs included).
CUDA_LDLIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -ldl -lstdc++

build/kernels/cuda/%.o: kernels/cuda/%.cu $(CUDA_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

# ---------------------------------------------------------------- gpu kernel test
# The cpu reference is kernels/cpu built with gcc and OpenBLAS; where
# libopenblas is missing, with the plain-loop sgemm of tests/gpu/fallback
# (GPUTEST_BLAS=fallback forces it).
GPUTEST_CC  ?= gcc
GPUTEST_CXX ?= g++
BLAS_INC    ?= /usr/include/x86_64-linux-gnu/openblas-pthread
BLAS_LIB    ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
ifeq ($(wildcard $(BLAS_LIB)/libopenblas.so.0),)
GPUTEST_BLAS ?= fallback
endif
ifeq ($(wildcard $(BLAS_INC)/cblas.h),)
GPUTEST_BLAS ?= fallback
endif
GPUTEST_BLAS ?= openblas

GPUTEST_CFLAGS := -O3 -march=native -fopenmp -std=c11 -Wall -Wextra -D_GNU_SOURCE -Ikernels
ifeq ($(GPUTEST_BLAS),fallback)
GPUTEST_BLAS_INC  := -Itests/gpu/fallback
GPUTEST_BLAS_OBJ  := build/gputest/fallback/cblas_fallback.o
GPUTEST_BLAS_LIBS :=
else
GPUTEST_BLAS_INC  := -I$(BLAS_INC)
GPUTEST_BLAS_OBJ  :=
GPUTEST_BLAS_LIBS := -L$(BLAS_LIB) -l:libopenblas.so.0 -Wl,-rpath,$(BLAS_LIB)
endif
GPUTEST_CPU_OBJ := $(patsubst kernels/cpu/%.c,build/gputest/cpu-$(GPUTEST_BLAS)/%.o,$(wildcard kernels/cpu/*.c))

build/gputest/cpu-$(GPUTEST_BLAS)/%.o: kernels/cpu/%.c kernels/kernels.h $(wildcard kernels/cpu/*.h)
	@mkdir -p $(dir $@)
	$(GPUTEST_CC) $(GPUTEST_CFLAGS) $(GPUTEST_BLAS_INC) -c -o $@ $<

build/gputest/fallback/cblas_fallback.o: tests/gpu/fallback/cblas_fallback.c tests/gpu/fallback/cblas.h
	@mkdir -p $(dir $@)
	$(GPUTEST_CC) $(GPUTEST_CFLAGS) -c -o $@ $<

build/gputest/test_kernels_gpu.o: tests/gpu/test_kernels_gpu.cu $(CUDA_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

build/test_kernels_gpu: build/gputest/test_kernels_gpu.o $(CUDA_OBJ) $(GPUTEST_CPU_OBJ) $(GPUTEST_BLAS_OBJ)
	$(GPUTEST_CXX) -o $@ $^ $(CUDA_LDLIBS) $(GPUTEST_BLAS_LIBS) -fopenmp -lm

.PHONY: cuda-objs
cuda-objs: $(CUDA_OBJ)

# Adds no default goal to an includer; alone, the default is the kernel test.
ifeq ($(firstword $(MAKEFILE_LIST)),kernels/cuda/cuda.mk)
.DEFAULT_GOAL := build/test_kernels_gpu
else
.DEFAULT_GOAL := $(_cuda_saved_goal)
endif
