"""Owners of llama.cpp's handles — model, context, batch, sampler chain — over
llama-cpp-python's ctypes bindings (``llama_cpp.llama_cpp``) and nothing else.

llama-cpp-python's own wrappers (``_internals``) import numpy for the one class that
needs it: numpy costs a runner 14 MiB of RSS (measured: ``import numpy`` after the
bindings) for every loaded model, and the engine needs it only for requests that ask for
log-probabilities, which import it then. Each owner frees
its handle once (``close`` twice is harmless) and turns llama.cpp's failures into
``InferenceError`` with llama.cpp's own reason where it logged one.

llama.cpp's log goes through :func:`_write_log`: warnings and errors to stderr (a
runner's stderr is kept by the agent for its error messages), the rest (a line per
tensor at load) nowhere; the first error is kept so that a model that does not load says
why ("unknown model architecture: 'x'", "bad GGUF version: 0").
"""

from __future__ import annotations

import ctypes
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgefleet.agent.inference.llama_library import llama_module
from edgefleet.errors import InferenceError

# ggml.h's ggml_log_level (llama-cpp-python's _logger.py has an older table)
_LOG_WARN, _LOG_ERROR, _LOG_CONTINUED = 3, 4, 5
_log_lock = threading.Lock()
_log_callback: Any = None  # the ctypes callback llama.cpp holds: it must outlive every call
# whether the current message is shown / is an error, and the errors since the last reset
_log_state: dict[str, Any] = {"shown": False, "error": False, "errors": []}


def bindings() -> Any:
    """``llama_cpp.llama_cpp`` (the ctypes functions), its log routed to :func:`_write_log`
    (again each time: importing llama-cpp-python's whole package sets its own)."""
    global _log_callback
    lib = llama_module("llama_cpp")
    with _log_lock:
        if _log_callback is None:
            _log_callback = lib.llama_log_callback(_write_log)
        lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return lib


def _write_log(level: int, text: bytes, _user_data: Any) -> None:
    line = text.decode("utf-8", errors="replace")
    errors: list[str] = _log_state["errors"]
    if level != _LOG_CONTINUED:
        _log_state["shown"] = level in (_LOG_WARN, _LOG_ERROR)
        _log_state["error"] = level == _LOG_ERROR
        if level == _LOG_ERROR and len(errors) < 8:
            errors.append("")
    if _log_state["shown"]:
        sys.stderr.write(line)
        if _log_state["error"] and errors:
            errors[-1] += line


def _first_error() -> str:
    """The first error llama.cpp logged since the last reset (the cause; what follows is
    each caller saying it failed too), on one line, without its function's name."""
    errors: list[str] = _log_state["errors"]
    said = " ".join(errors[0].split()) if errors else ""
    return re.sub(r"^\w+: ", "", said)[:300]


def _reset_errors() -> None:
    _log_state["errors"] = []


class Model:
    """A loaded GGUF (its weights memory-mapped) and its vocabulary."""

    def __init__(self, path: Path) -> None:
        self._lib = lib = bindings()
        _reset_errors()
        if not path.is_file():
            raise InferenceError(f"cannot load {path.name}: no such file")
        handle = lib.llama_model_load_from_file(
            str(path).encode("utf-8"), lib.llama_model_default_params()
        )
        if not handle:
            reason = _first_error() or "llama.cpp refused it"
            raise InferenceError(f"cannot load {path.name}: {reason}")
        self.handle: Any = handle
        self.vocab: Any = lib.llama_model_get_vocab(handle)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(lib.llama_model_n_embd(handle))
        self.bos = int(lib.llama_vocab_bos(self.vocab))
        self.eos = int(lib.llama_vocab_eos(self.vocab))

    def metadata(self) -> dict[str, str]:
        """The GGUF's key-value metadata, values as strings (as llama.cpp renders them)."""
        lib, found = self._lib, {}
        for index in range(int(lib.llama_model_meta_count(self.handle))):
            key = self._meta_string(lib.llama_model_meta_key_by_index, index)
            found[key] = self._meta_string(lib.llama_model_meta_val_str_by_index, index)
        return found

    def _meta_string(self, read: Any, index: int) -> str:
        size = 256
        while True:
            buffer = ctypes.create_string_buffer(size)
            needed = int(read(self.handle, index, buffer, size))
            if needed < size:
                return buffer.value.decode("utf-8", errors="replace")
            size = needed + 1

    def token_text(self, token: int) -> str:
        """A token's text in the vocabulary ("" for none, as -1)."""
        if token < 0:
            return ""
        return bytes(self._lib.llama_vocab_get_text(self.vocab, token) or b"").decode(
            "utf-8", errors="replace"
        )

    def tokenize(self, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
        lib = self._lib
        room = max(len(text) + 8, 16)  # a token is at least a byte, plus BOS/EOS
        while True:
            tokens = (lib.llama_token * room)()
            n = int(lib.llama_tokenize(
                self.vocab, text, len(text), tokens, room, add_special, parse_special
            ))  # fmt: skip
            if n >= 0:
                return list(tokens[:n])
            if -n <= room:  # not a "needs more room" answer: llama.cpp failed
                raise InferenceError("the text could not be tokenized")
            room = -n

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle:
            self._lib.llama_model_free(handle)


class Context:
    """A llama.cpp context (KV cache and compute buffers) on a :class:`Model`."""

    def __init__(self, model: Model, params: Any, what: str) -> None:
        self._lib = lib = bindings()
        _reset_errors()
        handle = lib.llama_init_from_model(model.handle, params)
        if not handle:
            reason = _first_error() or "llama.cpp refused it"
            raise InferenceError(f"cannot create a context for {what}: {reason}")
        self.handle: Any = handle
        self.memory: Any = lib.llama_get_memory(handle)

    def decode(self, batch: Batch) -> None:
        code = int(self._lib.llama_decode(self.handle, batch.batch))
        if code != 0:
            raise InferenceError(f"llama_decode returned {code}")

    def clear(self) -> None:
        """Empty the KV cache (every sequence)."""
        if self.memory:
            self._lib.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle:
            self._lib.llama_free(handle)


class Batch:
    """A ``llama_batch`` of up to ``n_tokens`` tokens, each of one sequence."""

    def __init__(self, lib: Any, n_tokens: int, n_seq_max: int) -> None:
        self._lib = lib
        self.capacity = n_tokens
        self.batch: Any = lib.llama_batch_init(n_tokens, 0, n_seq_max)

    @property
    def size(self) -> int:
        return int(self.batch.n_tokens)

    def clear(self) -> None:
        self.batch.n_tokens = 0

    def add(self, token: int, position: int, sequence: int, logits: bool) -> int:
        """Append one token; its row (where its logits will be)."""
        batch, row = self.batch, int(self.batch.n_tokens)
        if row >= self.capacity:
            raise InferenceError(f"a batch holds at most {self.capacity} tokens")
        batch.token[row] = token
        batch.pos[row] = position
        batch.seq_id[row][0] = sequence
        batch.n_seq_id[row] = 1
        batch.logits[row] = logits
        batch.n_tokens = row + 1
        return row

    def add_sequence(self, tokens: Sequence[int], sequence: int) -> None:
        """A whole sequence from position 0, every row's output kept (embeddings)."""
        for position, token in enumerate(tokens):
            self.add(token, position, sequence, True)

    def close(self) -> None:
        batch, self.batch = self.batch, None
        if batch is not None:
            self._lib.llama_batch_free(batch)


class SamplerChain:
    """A llama.cpp sampler chain; :meth:`add` hands it each sampler to own."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.handle: Any = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())

    def add(self, sampler: Any) -> None:
        self._lib.llama_sampler_chain_add(self.handle, sampler)

    def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle:
            self._lib.llama_sampler_free(handle)
