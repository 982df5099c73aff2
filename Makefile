# make install   idempotent set-up: torch 2.13 CPU only if no torch is importable,
#                then the other requirements, then the package in editable mode
# make test      the whole test suite (what CI runs)
# make bench     the benchmark table (quick suite), torch.nn vs rnnkernels
# make demo      ~2 minutes on a 2-core CPU: trains the dates translator, translates a few
#                dates with their scores, writes runs/demo-alignment.png
PYTHON ?= python3
PIP    ?= $(PYTHON) -m pip
STAMP  := build/.installed

.PHONY: install test bench check cuda-check clean demo

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

DEMO_DATES := "Wednesday, November 25, 2026" "11/25/26" "the 3rd of July, 1999" "25-NOV-26" "2049/12/31"

demo: install
	$(PYTHON) -m rnnkernels train seq2seq --data builtin:dates --batch-size 256 --steps 1000 --time-limit 100 \
		--eval-every 0 --eval-size 500 --checkpoint runs/demo-dates.pt
	$(PYTHON) -m rnnkernels translate --checkpoint runs/demo-dates.pt --beam 5 --plot runs/demo-alignment.png $(DEMO_DATES)
