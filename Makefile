# kvseek build. `make run` installs what is missing, fetches the default model, builds and
# serves; `make test` builds and runs every test. PORTABLE=1 builds for generic x86-64-v3
# instead of the build machine's CPU; CUDA=1 adds the GPU backend (later issue).

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
           -Iengine -Ikernels -Ikvcache -Iindex -Iserver
LDLIBS  += $(SAN) -fopenmp -lmicrohttpd -lcjson -lpthread -lfaiss -lopenblas -lstdc++ -lm
MODEL   ?= models/gemma-3-270m-q4_k_m.gguf
PYTHON  ?= python3

LIB_SRC := $(wildcard engine/*.c kernels/*.c kvcache/*.c index/*.c)
SRV_SRC := $(wildcard server/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard index/*.cpp))
SRV_OBJ := $(SRV_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TOOL_SRC := $(wildcard tests/tool_*.c)
TOOL_BIN := $(TOOL_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all run test setup model model-qwen2 tiny clean asan
all: $(BUILD)/kvseek $(TEST_BIN) $(TOOL_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# C++ only for index/faiss_c_shim.cpp (the FAISS C API over its C++ API)
$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(OPT) $(ARCHFLAGS) -g $(SAN) -std=c++17 -Wall -Wextra -fopenmp -MMD -MP -c $< -o $@

$(BUILD)/libkvseek.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/kvseek: $(SRV_OBJ) $(BUILD)/libkvseek.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libkvseek.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(BUILD)/libkvseek.a -o $@ $(LDLIBS)

setup:
	bash scripts/setup.sh

model:
	bash scripts/fetch_model.sh

# optional: a real qwen2 model (0.5B) for the byte-level BPE and qwen2 checks in tests/test_cli.py
model-qwen2:
	bash scripts/fetch_model.sh qwen2

tiny: $(BUILD)/tiny/.stamp
$(BUILD)/tiny/.stamp: tests/make_tiny.py
	@mkdir -p $(BUILD)/tiny
	$(PYTHON) tests/make_tiny.py $(BUILD)/tiny
	@touch $@

run: setup model all
	./$(BUILD)/kvseek serve -m $(MODEL)

test: setup model all tiny
	bash tests/run.sh $(BUILD) $(MODEL)

# Address + undefined-behaviour sanitizers over the C unit tests (the Python differential tests
# drive the optimised binary; they would only be slow under ASan).
asan:
	$(MAKE) BUILD=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    build/asan/kvseek $(TEST_BIN:$(BUILD)/%=build/asan/%)
	@set -e; for t in build/asan/tests/test_*; do case $$t in *.d|*.log) continue;; esac; \
	    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $$t; done

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(SRV_OBJ:.o=.d)
