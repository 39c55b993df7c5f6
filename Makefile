# kvseek build. `make run` installs what is missing, fetches the default model, builds and
# serves; `make test` builds and runs every test. PORTABLE=1 builds for generic x86-64-v3
# instead of the build machine's CPU; CUDA=1 adds the GPU backend (kernels/gpu*.cu, cuBLAS):
# `make cuda-build` builds it in build/cuda/, `make test-gpu` builds and runs its tests.

CC      ?= gcc
CXX     ?= g++
BUILD   ?= build
ifeq ($(PORTABLE),1)
ARCHFLAGS ?= -march=x86-64-v3
else
ARCHFLAGS ?= $(shell $(CC) -march=native -E -x c /dev/null >/dev/null 2>&1 && echo -march=native || echo -march=x86-64-v2)
endif
OPT     ?= -O3
CFLAGS  ?= $(OPT) $(ARCHFLAGS) -g $(SAN)
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fopenmp -MMD -MP \
           -Iengine -Ikernels -Ikvcache -Iindex -Iserver -Igrammar
LDLIBS  += $(SAN) -fopenmp -lmicrohttpd -lcjson -lpthread -lfaiss -lopenblas -lstdc++ -lm
# the model `make run` serves: an instruct model, so chat answers make sense. The tests run on
# Gemma 3 270M (TEST_MODEL: smaller, faster, and its sliding-window layers exercise more of the
# engine); the ones about chat, structured output and tools use the default model.
MODEL   ?= models/qwen2.5-coder-0.5b-instruct.gguf
TEST_MODEL ?= models/gemma-3-270m-q4_k_m.gguf
PYTHON  ?= python3

# ---- CUDA (CUDA=1): kernels/*.cu by nvcc replace kernels/gpu_none.c ----
CUDA      ?= 0
CUDA_HOME ?= /usr/local/cuda
ifeq ($(origin NVCC),undefined)
NVCC := $(shell command -v nvcc 2>/dev/null || { [ -x $(CUDA_HOME)/bin/nvcc ] && echo $(CUDA_HOME)/bin/nvcc; })
endif
# sm_80 (A100) and sm_90 (H100/H200) machine code, plus compute_90 PTX for newer GPUs
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode 'arch=compute_90,code=[sm_90,compute_90]'
NVCCFLAGS ?= -O3 -lineinfo $(CUDA_ARCH)
NVCCFLAGS += -std=c++17 -Xcompiler -fopenmp -Xcompiler -Wall -Iengine -Ikernels -Ikvcache -Iindex -Iserver -Igrammar

LIB_SRC := $(wildcard engine/*.c kernels/*.c kvcache/*.c index/*.c grammar/*.c)
CU_SRC  :=
ifeq ($(CUDA),1)
ifeq ($(NVCC),)
$(error CUDA=1 but no nvcc: not on PATH nor in $(CUDA_HOME)/bin)
endif
LIB_SRC := $(filter-out kernels/gpu_none.c,$(LIB_SRC))
CU_SRC  := $(wildcard kernels/*.cu)
LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart
endif
# server/: the HTTP server; tools/: the command line (main.c) and its tools (bench, synth-model)
SRV_SRC := $(wildcard server/*.c)
TOOLS_SRC := $(wildcard tools/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard index/*.cpp)) \
           $(CU_SRC:%.cu=$(BUILD)/%.o)
# The CUDA setting the build folder's libkvseek.a was made with: rewritten when it changes, so
# switching CUDA=0/1 in one folder re-archives the library (and relinks what uses it).
CUDA_STAMP := $(BUILD)/.cuda-setting
$(shell mkdir -p $(BUILD) && { [ "$$(cat $(CUDA_STAMP) 2>/dev/null)" = "$(CUDA)" ] || echo "$(CUDA)" > $(CUDA_STAMP); })
# the web UI (server/ui/index.html) goes into the binary as a C array (rule below)
SRV_OBJ := $(SRV_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/ui_page.o
TOOLS_OBJ := $(TOOLS_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TOOL_SRC := $(wildcard tests/tool_*.c)
TOOL_BIN := $(TOOL_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all run test setup model model-qwen2 model-gemma tiny clean asan tsan
all: $(BUILD)/kvseek $(TEST_BIN) $(TOOL_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# C++ only for index/faiss_c_shim.cpp (the FAISS C API over its C++ API)
$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(OPT) $(ARCHFLAGS) -g $(SAN) -std=c++17 -Wall -Wextra -fopenmp -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -MF $(@:.o=.d) -c $< -o $@

# The page as bytes, with od and awk only (no xxd, no Python): srv_ui_page[] and its length, a
# NUL after the last byte so that an empty page is still valid C. Written to a temporary file
# first, so an interrupted build leaves no half array behind.
$(BUILD)/gen/ui_page.c: server/ui/index.html
	@mkdir -p $(dir $@)
	{ echo '/* generated from server/ui/index.html by the Makefile: do not edit */'; \
	  echo '#include "srv.h"'; \
	  echo 'const unsigned char srv_ui_page[] = {'; \
	  od -An -v -tu1 $< | awk '{ for (i = 1; i <= NF; i++) printf "%s,", $$i; printf "\n" }'; \
	  echo '0};'; \
	  echo 'const size_t srv_ui_page_len = sizeof srv_ui_page - 1;'; } > $@.tmp && mv $@.tmp $@

$(BUILD)/gen/ui_page.o: $(BUILD)/gen/ui_page.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libkvseek.a: $(LIB_OBJ) $(CUDA_STAMP)
	@rm -f $@
	ar rcs $@ $(LIB_OBJ)

$(BUILD)/kvseek: $(TOOLS_OBJ) $(SRV_OBJ) $(BUILD)/libkvseek.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libkvseek.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(BUILD)/libkvseek.a -o $@ $(LDLIBS)

setup:
	bash scripts/setup.sh

# the default model (Qwen2.5-Coder-0.5B-Instruct); `make model-gemma`: Gemma 3 270M (base)
model:
	bash scripts/fetch_model.sh qwen2
model-qwen2: model
model-gemma:
	bash scripts/fetch_model.sh gemma3

tiny: $(BUILD)/tiny/.stamp
$(BUILD)/tiny/.stamp: tests/make_tiny.py
	@mkdir -p $(BUILD)/tiny
	$(PYTHON) tests/make_tiny.py $(BUILD)/tiny
	@touch $@

run: setup model all
	./$(BUILD)/kvseek serve -m $(MODEL)

test: setup model model-gemma all tiny
	bash tests/run.sh $(BUILD) $(TEST_MODEL)
	$(MAKE) asan-quick
	$(MAKE) cuda-build
	@if [ -x build/cuda/tests/test_gpu ]; then build/cuda/tests/test_gpu; fi

# ---- GPU backend ----
# `make cuda-build`: the CUDA=1 build in build/cuda/ (kvseek and the C tests); succeeds with a
# note where no CUDA toolkit is installed. `make test-gpu`: that build's kernel tests (each GPU
# kernel against its CPU reference; "skipped: no CUDA device" without a GPU), then the model-level
# GPU tests below.
.PHONY: cuda-build test-gpu
cuda-build:
ifeq ($(NVCC),)
	@echo "skipped: no nvcc (CUDA toolkit not installed)"
else
	$(MAKE) BUILD=build/cuda CUDA=1 build/cuda/kvseek $(TEST_BIN:$(BUILD)/%=build/cuda/%)
endif

# model-level GPU tests, run after test_gpu: every model's logits and selector decode on the GPU
# against the CPU (tests/test_gpu_logits.py; also in `make test`, where it prints skipped)
GPU_MODEL_TESTS = $(PYTHON) tests/test_gpu_logits.py build $(TEST_MODEL)
test-gpu: cuda-build tiny
	@if [ -x build/cuda/tests/test_gpu ]; then build/cuda/tests/test_gpu; \
	    else echo "skipped: build/cuda/tests/test_gpu not built"; fi
	$(GPU_MODEL_TESTS)

# The part of `make asan` that `make test` runs (kept to about a minute on 2 cores): the
# parsers, the stores, the contexts and the fuzz regressions under ASan + UBSan on the tiny
# models. `make asan` runs every C test.
ASAN_QUICK = test_gguf test_kvcache test_context test_centroids test_tok test_sampler test_attn_sparse test_fault test_sparq test_estimate \
              test_ops $(FUZZ_TARGETS:%=test_fuzz_replay_%)
.PHONY: asan-quick
asan-quick: tiny
	$(MAKE) BUILD=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    $(ASAN_QUICK:%=build/asan/tests/%)
	@set -e; for t in $(ASAN_QUICK); do \
	    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 build/asan/tests/$$t \
	        > build/asan/tests/$$t.log 2>&1 || { echo "FAIL  asan $$t (log: build/asan/tests/$$t.log)"; \
	        tail -n 20 build/asan/tests/$$t.log; exit 1; }; \
	    echo "ok    asan $$t"; done

# Address + undefined-behaviour sanitizers over the C unit tests (the Python differential tests
# drive the optimised binary; they would only be slow under ASan).
asan:
	$(MAKE) BUILD=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    build/asan/kvseek $(TEST_BIN:$(BUILD)/%=build/asan/%)
	@set -e; for t in build/asan/tests/test_*; do case $$t in *.d|*.log) continue;; esac; \
	    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $$t; done

# ---- fuzzing ----
# `make fuzz` builds each target tests/fuzz/fuzz_<t>.c with clang and libFuzzer over its own
# instrumented objects (build/fuzz/: address + undefined sanitizers, -O1, OpenMP pragmas off so
# one thread) and runs it FUZZ_TIME seconds over tests/fuzz/corpus/fuzz_<t>/ (read) and
# build/fuzz/corpus/fuzz_<t>/ (new inputs), with tests/fuzz/fuzz_<t>.dict. Crashes are written
# to build/fuzz/crashes/fuzz_<t>/. `make fuzz-merge` adds the new inputs that cover new code to
# the committed seeds. The gcc build links each target with tests/fuzz/replay.c into
# build/tests/test_fuzz_replay_<t> (part of `make all`), which `make test` runs over the seeds
# and tests/fuzz/regress/fuzz_<t>/. tests/fuzz/README.md has the details.
FUZZ_TARGETS := gguf tok ctxfile chat api grammar
FUZZ_TIME ?= 60
FUZZ_CC   ?= clang
FUZZ_CXX  ?= clang++
FUZZ_OUT  := build/fuzz
FUZZ_SAN  := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS = -O1 -g $(ARCHFLAGS) $(FUZZ_SAN) $(FUZZ_COV) -std=c11 -D_GNU_SOURCE -Wall \
           -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -Wno-unknown-attributes -MMD -MP \
           -Iengine -Ikernels -Ikvcache -Iindex -Iserver -Igrammar -Itests/fuzz
# coverage feedback everywhere but the numeric kernels (their branches are loop bounds; the
# sanitizers stay on): the model's forward pass in fuzz_ctxfile runs 5x faster
FUZZ_COV  = -fsanitize=fuzzer-no-link
$(FUZZ_OUT)/kernels/%.o: FUZZ_COV =
FUZZ_LDLIBS := -lmicrohttpd -lcjson -lpthread -lfaiss -lopenblas -lgomp -lstdc++ -lm
FUZZ_OBJ  := $(LIB_SRC:%.c=$(FUZZ_OUT)/%.o) $(patsubst %.cpp,$(FUZZ_OUT)/%.o,$(wildcard index/*.cpp)) \
             $(SRV_SRC:%.c=$(FUZZ_OUT)/%.o)
FUZZ_BIN  := $(FUZZ_TARGETS:%=$(FUZZ_OUT)/fuzz_%)
FUZZ_HDR  := $(wildcard tests/fuzz/*.h)
FUZZ_REPLAY_BIN := $(FUZZ_TARGETS:%=$(BUILD)/tests/test_fuzz_replay_%)

.PHONY: fuzz fuzz-build fuzz-merge
all: $(FUZZ_REPLAY_BIN)

$(FUZZ_OUT)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_OUT)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) -O1 -g $(ARCHFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -std=c++17 -MMD -MP -c $< -o $@

$(FUZZ_OUT)/libkvseek.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_OUT)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_HDR) $(FUZZ_OUT)/libkvseek.a
	$(FUZZ_CXX) $(filter-out -std=c11 -MMD -MP,$(FUZZ_CFLAGS)) -fsanitize=fuzzer -x c -std=c11 $< -x none \
	    $(FUZZ_OUT)/libkvseek.a -o $@ $(FUZZ_LDLIBS)

fuzz-build: $(FUZZ_BIN)

fuzz: fuzz-build tiny
	@fail=0; for t in $(FUZZ_TARGETS:%=fuzz_%); do \
	    mkdir -p $(FUZZ_OUT)/corpus/$$t $(FUZZ_OUT)/crashes/$$t tests/fuzz/corpus/$$t; \
	    dict=; [ -f tests/fuzz/$$t.dict ] && dict=-dict=tests/fuzz/$$t.dict; \
	    echo "== $$t: $(FUZZ_TIME) s"; \
	    UBSAN_OPTIONS=print_stacktrace=1 nice -n 10 $(FUZZ_OUT)/$$t -max_total_time=$(FUZZ_TIME) \
	        -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 $$dict \
	        -artifact_prefix=$(FUZZ_OUT)/crashes/$$t/ $(FUZZ_OUT)/corpus/$$t tests/fuzz/corpus/$$t \
	        > $(FUZZ_OUT)/$$t.log 2>&1 || { fail=1; echo "   CRASH: see $(FUZZ_OUT)/$$t.log and $(FUZZ_OUT)/crashes/$$t/"; }; \
	    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' \
	        $(FUZZ_OUT)/$$t.log | sed 's/^/   /'; \
	done; exit $$fail

# New inputs that add coverage, minimised into the committed seeds.
fuzz-merge: fuzz-build tiny
	@for t in $(FUZZ_TARGETS:%=fuzz_%); do [ -d $(FUZZ_OUT)/corpus/$$t ] || continue; \
	    nice -n 10 $(FUZZ_OUT)/$$t -merge=1 tests/fuzz/corpus/$$t $(FUZZ_OUT)/corpus/$$t 2>&1 | tail -n 1; done

$(BUILD)/tests/test_fuzz_replay_%: tests/fuzz/replay.c tests/fuzz/fuzz_%.c $(FUZZ_HDR) $(SRV_OBJ) $(BUILD)/libkvseek.a
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -Itests/fuzz -DFUZZ_TARGET='"fuzz_$*"' tests/fuzz/replay.c \
	    tests/fuzz/fuzz_$*.c $(SRV_OBJ) $(BUILD)/libkvseek.a -o $@ $(LDLIBS)

# the replays also run under the sanitizers
asan: asan-fuzz-replay
.PHONY: asan-fuzz-replay
asan-fuzz-replay:
	$(MAKE) BUILD=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    $(FUZZ_REPLAY_BIN:$(BUILD)/%=build/asan/%)

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(SRV_OBJ:.o=.d) $(TOOLS_OBJ:.o=.d) $(FUZZ_OBJ:.o=.d)

# ---- benchmarks ----
# `make bench`: memory bandwidth, kernel GB/s and the model's tok/s ceiling (kvseek bench-kernels),
# then prefill and decode tok/s by context length and attention selector, and a plot
# (scripts/bench.sh; results in build/bench/). The full run (up to 32K tokens) takes an hour on
# 2 cores; BENCH_ARGS="--lengths 512,4096 --selectors dense,window" is a quick one.
.PHONY: bench
bench: model $(BUILD)/kvseek
	bash scripts/bench.sh -m $(MODEL) $(BENCH_ARGS)

# ---- long-context accuracy ----
# `make eval`: the RULER-style suite (scripts/ruler.py, docs/eval.md) on $(MODEL) at 4K-16K with
# every selector from one prefill per sample (kvseek eval); rows and a table per length go to
# scripts/results/ruler-<model>.jsonl, and a rerun resumes where it stopped. Hours on 2 cores:
# EVAL_ARGS="--lengths 4096 --n 3" is a shorter one, `make eval-quick` a few samples at 2K.
# `make eval MODEL=models/gemma-3-270m-q4_k_m.gguf` after `make model-gemma` for the other model.
.PHONY: eval eval-quick
eval: model $(BUILD)/kvseek
	$(PYTHON) scripts/ruler.py --model $(MODEL) --kvseek $(BUILD)/kvseek --lengths 4096,8192,16384 \
	    --out scripts/results/ruler-$(notdir $(basename $(MODEL))).jsonl --resume --table $(EVAL_ARGS)
eval-quick: model $(BUILD)/kvseek
	$(PYTHON) scripts/ruler.py --smoke --model $(MODEL) --kvseek $(BUILD)/kvseek --table $(EVAL_ARGS)

# ---- ThreadSanitizer ----
# `make tsan`: the scheduler test and the server's concurrency tests (contexts: builder threads,
# concurrent requests on one context, restarts; hostile clients among normal ones) against a
# -fsanitize=thread build; the first race stops the process, so its test fails. One OpenMP
# thread: libgomp is not instrumented, and its barriers would read as races; the threads that
# matter here are the HTTP, engine and builder threads.
.PHONY: tsan
tsan: tiny
	$(MAKE) BUILD=build/tsan OPT=-O1 SAN="-fsanitize=thread" build/tsan/kvseek build/tsan/tests/test_scheduler
	@mkdir -p build/tsan && ln -sfn ../tiny build/tsan/tiny
	OMP_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1 build/tsan/tests/test_scheduler
	OMP_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1 $(PYTHON) tests/test_contexts_server.py build/tsan $(TEST_MODEL)
	OMP_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1 $(PYTHON) tests/test_hostile.py build/tsan $(TEST_MODEL)
