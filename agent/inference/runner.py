"""The model runner: one loaded model in a child process of the agent (as Ollama runs its
models), driven over a pipe.

``python -m edgefleet.agent.inference.runner PATH N_CTX SLOTS N_THREADS`` loads the model
as one batched llama.cpp context of SLOTS sequences (`llama_backend`), says it is ready,
then serves requests read from stdin until told to exit or stdin closes. So:

- a model that crashes llama.cpp mid-request kills its runner, not the agent: the
  requests in flight fail, the pool drops the model, the next request loads it again;
- an unloaded model gives back everything it took, llama.cpp included: the runner exits
  (in-process, the libraries stayed: +29 MiB after eviction);
- the decode loop shares its interpreter with no HTTP server, sync or audit writer.

Messages both ways are frames: a 4-byte big-endian length, then a JSON object (not
pickle: a runner that a hostile model took over must not be able to run code in the
agent by what it sends back). `remote.py` is the agent's side; `protocol.py` the frames.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from edgefleet.agent.inference.protocol import (
    params_from_wire,
    piece_to_wire,
    prompt_from_wire,
    read_frame,
    write_frame,
)
from edgefleet.errors import EdgefleetError
from edgefleet.memory import trim_heap


class _Runner:
    def __init__(self, slots: list[Any], out: IO[bytes]) -> None:
        self.slots = slots
        self.out = out
        self.lock = threading.Lock()
        self.cancels: dict[int, threading.Event] = {}
        self.busy = 0  # calls being served
        self.busy_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            write_frame(self.out, message)

    def fail(self, call: int, error: BaseException) -> None:
        kind = type(error).__name__ if isinstance(error, EdgefleetError) else "InferenceError"
        self.send({"id": call, "error": str(error) or kind, "kind": kind})

    def begin(self) -> None:
        with self.busy_lock:
            self.busy += 1

    def end(self) -> None:
        """A call was answered: once none is left, give the C heap's freed pages back (a
        grammar's vocabulary-wide pass alone leaves ~13 MiB of them in llama.cpp's arenas;
        what llama.cpp frees is C memory, so no garbage collection first)."""
        with self.busy_lock:
            self.busy -= 1
            if self.busy:
                return
        trim_heap()

    def generate(self, call: int, message: dict[str, Any]) -> None:
        cancel = self.cancels[call]
        try:
            slot = self.slots[int(message["slot"])]
            prompt = prompt_from_wire(message["prompt"])
            params = params_from_wire(message["params"])
            for piece, totals in slot.generate(prompt, params, cancel):
                self.send({"id": call, "piece": piece_to_wire(piece), "totals": {
                    "prompt_tokens": totals.prompt_tokens,
                    "completion_tokens": totals.completion_tokens,
                    "finish_reason": totals.finish_reason,
                    "cached_tokens": totals.cached_tokens,
                }})  # fmt: skip
            self.send({"id": call, "end": True})
        except Exception as e:  # noqa: BLE001 - every failure goes back to its caller
            self.fail(call, e)
        finally:
            self.cancels.pop(call, None)
            self.end()

    def answer(self, call: int, message: dict[str, Any]) -> None:
        try:
            slot = self.slots[0]
            if message["op"] == "embed":
                result: object = slot.embed([list(map(int, t)) for t in message["inputs"]])
            else:
                result = slot.embedding_tokens(str(message["text"]))
            self.send({"id": call, "result": result})
        except Exception as e:  # noqa: BLE001 - every failure goes back to its caller
            self.fail(call, e)
        finally:
            self.end()

    def serve(self, source: IO[bytes]) -> None:
        while (message := read_frame(source)) is not None:
            op, call = message.get("op"), int(message.get("id", 0))
            if op == "generate":
                self.cancels[call] = threading.Event()
                self.begin()
                threading.Thread(target=self.generate, args=(call, message), daemon=True).start()
            elif op == "cancel":
                if (event := self.cancels.get(call)) is not None:
                    event.set()
            elif op in ("embed", "embedding_tokens"):
                self.begin()
                threading.Thread(target=self.answer, args=(call, message), daemon=True).start()
            elif op == "exit":
                return


def main(argv: list[str]) -> int:
    # Nothing but frames on the pipe: the frames get their own descriptor, and whatever
    # else writes to descriptor 1 (Python's print, a C library's printf) goes to stderr.
    source, out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    path, n_ctx, slots, n_threads = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    from edgefleet.agent.inference.llama_backend import load_slots

    try:
        loaded = load_slots(path, n_ctx, slots, n_threads)
    except Exception as e:  # noqa: BLE001 - said to the agent, then the runner ends
        said = str(e) if isinstance(e, EdgefleetError) else f"cannot load {path.name}: {e}"
        write_frame(out, {"error": said})
        os._exit(1)
    write_frame(out, {"ready": True, "dimensions": loaded[0].dimensions, "pid": os.getpid()})
    runner = _Runner(list(loaded), out)
    runner.serve(source)
    for event in list(runner.cancels.values()):
        event.set()
    loaded[0].model.close()  # stops the decode thread; requests still in it fail
    os._exit(0)  # no interpreter teardown: the process's memory goes with it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
