# make install   idempotent set-up: torch 2.13 CPU only if no torch is importable,
#                then the other requirements, then the package in editable mode
# make test      the whole test suite (what CI runs)
# make bench     the benchmark table (quick suite), torch.nn vs rnnkernels
PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip
STAMP  := build/.installed

.PHONY: install test bench check cuda-check clean

$(STAMP): setup.py pyproject.toml requirements.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	@mkdir -p build && touch $(STAMP)

install: $(STAMP)

test: install
	$(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) -m rnnkernels bench --markdown

check: install
	$(PYTHON) -m rnnkernels check

clean:
	rm -rf build rnnkernels/*.so *.egg-info
