# The README's two commands. Everything installs into .venv; torch comes first, pinned to the CPU
# wheel that lies on local disk, so no later step can pull a CUDA build (and torchvision is never asked for).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: test demo install browser clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	@$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__)"
	touch $(STAMP)

# The chat page's browser test needs Chromium: Debian's package, installed when missing (tools/ensure_chromium.sh).
browser:
	@bash tools/ensure_chromium.sh

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/nativevl demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
