"""llama-cpp-python's modules, imported without running its package's ``__init__``.

``import llama_cpp`` (or ``from llama_cpp.x import y``) first runs the package's
``__init__``, which loads the whole high-level API: ``llama.py`` with numpy, jinja2, every
chat handler, diskcache (and with it sqlite3). Measured on this project's pinned version:
+33.4 MiB of RSS for that import, where the JSON-schema-to-GBNF converter the agent needs
(``llama_grammar``, pure Python) costs nothing and the runner's ctypes bindings
(``llama_cpp.llama_cpp``, with libllama) 7.3-7.5 MiB. So the agent and its runners
import the submodules they use through :func:`llama_module`: the package is put in
``sys.modules`` as the real module object, its ``__init__`` deferred until something
asks it for a name it does not hold yet. A plain ``import llama_cpp`` later in the same
process (a benchmark, a test) then gets the whole package at its first
``llama_cpp.Llama``, sharing the submodules already loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

from edgefleet.errors import InferenceError

_PACKAGE = "llama_cpp"
_lock = threading.RLock()  # one thread creates the package, one runs its __init__


class _DeferredPackage(ModuleType):
    """The package before its ``__init__`` ran: the first missing name runs it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__all__":  # probes (copy, inspect, pickle)
            raise AttributeError(name)  # do not load it all; `import *` does
        with _lock:
            if type(self) is _DeferredPackage:
                self.__class__ = ModuleType  # type: ignore[assignment]
                assert self.__spec__ is not None and self.__spec__.loader is not None  # noqa: S101
                self.__spec__.loader.exec_module(self)
        return getattr(self, name)


def llama_module(name: str) -> ModuleType:
    """``llama_cpp.<name>``, imported without the package's ``__init__`` unless something
    in this process already ran it."""
    with _lock:
        if _PACKAGE not in sys.modules:
            spec = importlib.util.find_spec(_PACKAGE)
            if spec is None:
                raise InferenceError("llama-cpp-python is not installed")
            package = importlib.util.module_from_spec(spec)  # not executed
            package.__class__ = _DeferredPackage
            sys.modules[_PACKAGE] = package
    # not sys.modules' entry: another thread may be half-way through the same import;
    # the import system's per-module lock makes this one wait for it
    return importlib.import_module(f"{_PACKAGE}.{name}")
