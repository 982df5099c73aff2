# make install   idempotent set-up: torch 2.13 CPU only if no torch is importable,
#                then the other requirements, then the package in editable mode
# make test      the whole test suite (what CI runs)
# make test-without-triton  the suite as on a machine without Triton (its tests skip, the rest passes)
# make bench     the benchmark table (quick suite), torch.nn vs rnnkernels, written to $(BENCH_OUT)
#                (build/bench: ignored by git, so a bench run leaves the checkout clean)
# make cuda-check compile check of the CUDA side without a GPU (part of `make test` when nvcc exists)
# make demo      ~2 minutes on a 2-core CPU: trains the dates translator, translates a few
#                dates with their scores, writes runs/demo-alignment.png
PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip
STAMP  := build/.installed

BENCH_OUT ?= build/bench

.PHONY: install test test-without-triton bench check cuda-check cuda-check-if-nvcc clean demo

$(STAMP): setup.py pyproject.toml requirements.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	@mkdir -p build && touch $(STAMP)

install: $(STAMP)

test: install cuda-check-if-nvcc
	$(PYTHON) -m pytest -q tests

# tests/without_triton/sitecustomize.py makes `import triton` fail in pytest and every process it starts
test-without-triton: install
	PYTHONPATH=$(CURDIR)/tests/without_triton$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) -m rnnkernels bench --markdown --json --out-dir $(BENCH_OUT)

check: install
	$(PYTHON) -m rnnkernels check

# ---- cuda-check: the CUDA side must compile even where no GPU runs it.
# Every csrc/cuda/*.cu is compiled by nvcc for sm_80 and sm_90 with the flags
# torch.utils.cpp_extension gives nvcc in setup.py; the CUDA-side C++
# (csrc/cuda/*.cpp and csrc/rnn_layer.cpp with RNNKERNELS_WITH_CUDA) is compiled
# by g++ against torch's headers and the CUDA runtime headers; then every
# rnnkernels symbol those objects need must be defined by one of them (the
# .cpp <-> .cu launcher boundary: a missing template instantiation fails here,
# not at import time on a GPU machine). A CPU wheel of torch lacks one
# generated header of c10/cuda; a stand-in is written under build/.
NVCC         ?= nvcc
CUDA_INCLUDE ?= /usr/local/cuda/include
CUDA_CHECK   := build/cuda-check
CUDA_ARCHS   := -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90
NVCC_FLAGS   := -std=c++17 -O3 --use_fast_math -DRNNKERNELS_WITH_CUDA -I csrc $(CUDA_ARCHS) \
                -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
                -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -Werror all-warnings
CUDA_HEADERS := $(wildcard csrc/*.h csrc/cuda/*.h csrc/cuda/*.cuh)
CU_OBJECTS   := $(patsubst csrc/cuda/%.cu,$(CUDA_CHECK)/%.cu.o,$(wildcard csrc/cuda/*.cu))
CUDA_CXX_OBJECTS := $(patsubst csrc/%.cpp,$(CUDA_CHECK)/%.o,$(wildcard csrc/cuda/*.cpp) csrc/rnn_layer.cpp)
CUDA_CHECK_SHIM  := $(CUDA_CHECK)/include/c10/cuda/impl/cuda_cmake_macros.h

$(CUDA_CHECK)/%.cu.o: csrc/cuda/%.cu $(CUDA_HEADERS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(CUDA_CHECK_SHIM):
	@mkdir -p $(@D)
	@printf '#pragma once\n// Stand-in for the header a CUDA build of torch generates.\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > $@

CUDA_CXX = g++ -std=c++17 -O0 -c -Wall -DRNNKERNELS_WITH_CUDA -I csrc \
  $$($(PYTHON) -c "import torch.utils.cpp_extension as c; print(' '.join('-isystem ' + p for p in c.include_paths()))") \
  -isystem $(CUDA_CHECK)/include -isystem $(CUDA_INCLUDE)

# Warnings are errors in csrc/cuda/ only (the shared loop has its own owner).
$(CUDA_CHECK)/cuda/%.o: csrc/cuda/%.cpp $(CUDA_HEADERS) $(CUDA_CHECK_SHIM)
	@mkdir -p $(@D)
	$(CUDA_CXX) -Werror $< -o $@

$(CUDA_CHECK)/%.o: csrc/%.cpp $(CUDA_HEADERS) $(CUDA_CHECK_SHIM)
	@mkdir -p $(@D)
	$(CUDA_CXX) $< -o $@

cuda-check: $(CU_OBJECTS) $(CUDA_CXX_OBJECTS)
	@nm --defined-only $^ | awk 'NF == 3 {print $$3}' | sort -u > $(CUDA_CHECK)/defined.txt
	@nm -u $(CUDA_CXX_OBJECTS) | awk '{print $$2}' | grep '^_ZN10rnnkernels' | grep -v -e '_cpuE' -e '^_ZN10rnnkernels4gemm' | sort -u > $(CUDA_CHECK)/needed.txt
	@missing=$$(comm -23 $(CUDA_CHECK)/needed.txt $(CUDA_CHECK)/defined.txt); \
	 if [ -n "$$missing" ]; then echo "cuda-check: symbols used but defined nowhere:"; echo "$$missing" | c++filt; exit 1; fi
	@echo "cuda-check: $(words $(CU_OBJECTS)) .cu files (sm_80, sm_90) and $(words $(CUDA_CXX_OBJECTS)) C++ files compile and link up"

cuda-check-if-nvcc:
	@if command -v $(NVCC) >/dev/null 2>&1; then $(MAKE) --no-print-directory cuda-check; \
	 else echo "cuda-check skipped: no nvcc on PATH"; fi

clean:
	rm -rf build rnnkernels/*.so *.egg-info

DEMO_DATES := "Wednesday, November 25, 2026" "11/25/26" "the 3rd of July, 1999" "25-NOV-26" "2049/12/31"

demo: install
	$(PYTHON) -m rnnkernels train seq2seq --data builtin:dates --batch-size 256 --steps 1000 --time-limit 100 \
		--eval-every 0 --eval-size 500 --log-every 50 --checkpoint runs/demo-dates.pt --plot-loss runs/demo-loss.png
	$(PYTHON) -m rnnkernels translate --checkpoint runs/demo-dates.pt --beam 5 --plot runs/demo-alignment.png $(DEMO_DATES)
