# tests/gpu/emu/partita_emu.mk: build/emu-partita/partita, the real trainer on the
# emulated cuda backend (no GPU needed). Run it through build_partita_emu.sh.
#
# kernels/cuda/*.cu go through translate.py and g++ against emu_cuda.h; src/,
# src/infer/ and kernels/cpu/ are built as by the main Makefile (the compiler,
# flags, include and library paths of flags.mk) plus -DPARTITA_CUDA,
# never -DPARTITA_NCCL. Objects live under $(OUT), apart from the normal build;
# -MMD dependencies and a flags stamp make rebuilds incremental.
#   SANITIZE=address,undefined   sanitizers on every object and the link

OUT      ?= build/emu-partita
CXX      := g++
PYTHON   ?= /usr/bin/python3
SANITIZE ?=

include flags.mk
CFLAGS   += -DPARTITA_CUDA
CXXFLAGS := -std=c++20 -DPARTITA_CUDA_EMU -O2 -pthread -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas \
            -Itests/gpu/emu/include -Ikernels -Ikernels/cuda -MMD -MP
LDLIBS   += -lstdc++ -pthread
ifneq ($(strip $(SANITIZE)),)
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -g
endif

CSRC  := $(wildcard src/*.c src/infer/*.c kernels/cpu/*.c)
CUSRC := $(wildcard kernels/cuda/*.cu)
COBJ  := $(CSRC:%.c=$(OUT)/%.o)
CUCPP := $(CUSRC:kernels/cuda/%.cu=$(OUT)/cuda/%.cpp)
CUOBJ := $(CUCPP:.cpp=.o)

$(OUT)/partita: $(COBJ) $(CUOBJ) $(OUT)/flags.stamp
	$(CC) $(CFLAGS) $(SANFLAGS) -o $@ $(COBJ) $(CUOBJ) $(LDLIBS)

# Rewritten only when the flags change, so a change of SANITIZE or CFLAGS rebuilds everything.
$(OUT)/flags.stamp: FORCE
	@mkdir -p $(@D)
	@echo '$(CC) $(CFLAGS) | $(CXX) $(CXXFLAGS) | $(SANFLAGS) | $(LDLIBS)' > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(OUT)/%.o: %.c $(OUT)/flags.stamp
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(SANFLAGS) -c -o $@ $<

# translate.py leaves an unchanged .cpp alone; touch keeps make from asking again.
$(OUT)/cuda/%.cpp: kernels/cuda/%.cu tests/gpu/emu/translate.py
	$(PYTHON) tests/gpu/emu/translate.py $(@D) $<
	@touch $@

$(OUT)/cuda/%.o: $(OUT)/cuda/%.cpp $(OUT)/flags.stamp
	$(CXX) $(CXXFLAGS) $(SANFLAGS) -c -o $@ $<

.PHONY: FORCE
.SECONDARY: $(CUCPP)
-include $(COBJ:.o=.d) $(CUOBJ:.o=.d)
