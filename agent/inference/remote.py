"""The agent's side of a model runner (`runner.py`): the child process, the thread that
reads its frames, and one :class:`RemoteSlot` per sequence — the ChatBackend the pool's
workers drive, as they would an in-process `SequenceSlot`."""

from __future__ import annotations

import collections
import itertools
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from edgefleet import errors
from edgefleet.agent.inference.decoding import Piece
from edgefleet.agent.inference.model_io import Generation, Prompt, SamplingParams
from edgefleet.agent.inference.protocol import (
    answer_from_wire,
    params_to_wire,
    prompt_to_wire,
    read_frame,
    write_frame,
)
from edgefleet.errors import EdgefleetError, InferenceError, MalformedInputError

log = structlog.get_logger("agent.runner")

# A large model read from an SD card loads slowly; past this the load has failed.
LOAD_TIMEOUT_SECONDS = 600.0
EXIT_WAIT_SECONDS = 10.0
CANCEL_POLL_SECONDS = 0.1
STALL_SECONDS = 300.0  # the agent's `runner_stall_seconds` default


class RunnerProcess:
    """One model runner: started loaded, then serving calls until closed or dead."""

    def __init__(
        self,
        path: Path,
        n_ctx: int,
        slots: int,
        n_threads: int,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self.name = path.name
        self.stall_seconds = stall_seconds
        command = [sys.executable, "-m", "edgefleet.agent.inference.runner", str(path)]
        command += [str(n_ctx), str(slots), str(n_threads)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self._stdin = self.process.stdin
        self._send_lock = threading.Lock()
        self._calls: dict[int, queue.SimpleQueue[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._said: collections.deque[str] = collections.deque(maxlen=20)  # its stderr
        self._ready: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.dead: str = ""  # why it is gone, once it is
        self._heard = time.monotonic()  # when it last sent a frame (or was first asked)
        # Not the send lock: a sender blocked writing to a frozen runner's full pipe holds
        # that one, and the kill is what unblocks it.
        self._stall_lock = threading.Lock()
        self._open_slots = slots
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            hello = self._ready.get(timeout=LOAD_TIMEOUT_SECONDS)
        except queue.Empty:
            self._kill()
            raise InferenceError(f"{self.name}: the model runner did not load it in time") from None
        if "error" in hello or not hello.get("ready"):
            self._kill()
            raise InferenceError(str(hello.get("error") or self.dead or "the runner failed"))
        self.dimensions = int(hello["dimensions"])
        self.slots = [RemoteSlot(self, index) for index in range(slots)]
        log.info("runner.started", model=self.name, pid=self.process.pid, slots=slots)

    # --- the reader --------------------------------------------------------------------
    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._said.append(line.decode("utf-8", errors="replace").rstrip())

    def _read(self) -> None:
        assert self.process.stdout is not None
        first = True
        try:
            while (message := read_frame(self.process.stdout)) is not None:
                self._heard = time.monotonic()
                if first:
                    self._ready.put(message)
                    first = False
                    continue
                calls = self._calls.get(int(message.get("id", 0)))
                if calls is not None:
                    calls.put(message)
        except (EdgefleetError, ValueError) as e:  # a runner saying nonsense is dead to us
            self.dead = f"the model runner sent a bad frame ({e})"
        self._on_exit(first)

    def _on_exit(self, before_ready: bool) -> None:
        self.process.stdout.close()  # type: ignore[union-attr]
        try:
            code = self.process.wait(timeout=EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self.process.returncode
        if not self.dead:
            self.dead = _why(self.name, code, list(self._said))
        if before_ready:
            self._ready.put({"error": self.dead})
        for calls in list(self._calls.values()):
            calls.put({"error": self.dead, "kind": "InferenceError"})
        if code != 0:
            log.error("runner.died", model=self.name, reason=self.dead)

    # --- calls -------------------------------------------------------------------------
    def call(self, message: dict[str, Any]) -> tuple[int, queue.SimpleQueue[dict[str, Any]]]:
        """Send ``message`` as a new call; its answers arrive on the returned queue."""
        if self.dead:
            raise InferenceError(self.dead)
        call = next(self._ids)
        answers: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        if not self._calls:  # nothing was in flight: its silence until now was not a stall
            self._heard = time.monotonic()
        self._calls[call] = answers
        try:
            self.send({**message, "id": call})
        except InferenceError:
            self.done(call)
            raise
        return call, answers

    def next_answer(self, answers: queue.SimpleQueue[dict[str, Any]]) -> dict[str, Any] | None:
        """The call's next answer, None if none came within a moment; once the runner is
        gone (a call made as it died may never hear), its reason as an error answer."""
        try:
            return answers.get(timeout=CANCEL_POLL_SECONDS)
        except queue.Empty:
            if self.dead and self.process.poll() is not None:
                return {"error": self.dead, "kind": "InferenceError"}
            self._kill_if_stalled()
            return None

    def _kill_if_stalled(self) -> None:
        """Calls are waiting and the runner has said nothing for ``stall_seconds``: its
        decode never returned. Kill it; the reader then fails every call with why."""
        silent = time.monotonic() - self._heard
        if silent < self.stall_seconds or self.process.poll() is not None:
            return
        with self._stall_lock:
            if self.dead:
                return
            self.dead = (
                f"{self.name}: the model runner sent nothing for {silent:.0f} s with "
                "requests in flight and was stopped"
            )
        log.error("runner.stalled", model=self.name, pid=self.process.pid, seconds=round(silent))
        self._kill()

    def done(self, call: int) -> None:
        self._calls.pop(call, None)

    def send(self, message: dict[str, Any]) -> None:
        try:
            with self._send_lock:
                write_frame(self._stdin, message)
        except (BrokenPipeError, ValueError, OSError):  # it is gone: the reader says why
            raise InferenceError(self.dead or f"{self.name}: the model runner is gone") from None

    def ask(self, message: dict[str, Any]) -> Any:
        """A call with one answer: its result, or its error raised."""
        call, answers = self.call(message)
        try:
            while (answer := self.next_answer(answers)) is None:
                pass
            return _result(answer)
        finally:
            self.done(call)

    # --- the end -----------------------------------------------------------------------
    def release(self) -> None:
        """One slot is closed; the last closes the runner (it exits, its memory with it).
        Slots close on their workers' own threads, hence the lock."""
        with self._send_lock:
            self._open_slots -= 1
            last = self._open_slots == 0
        if last:
            self.close()

    def close(self) -> None:
        try:
            self.send({"op": "exit"})
            self._stdin.close()
            self.process.wait(timeout=EXIT_WAIT_SECONDS)
        except (InferenceError, subprocess.TimeoutExpired, OSError):
            self._kill()
        log.info("runner.stopped", model=self.name, pid=self.process.pid)

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _why(name: str, code: int, said: list[str]) -> str:
    if code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        return f"{name} crashed its model runner ({signame})"
    last = next((line for line in reversed(said) if line.strip()), "")
    return f"{name}: the model runner exited {code}" + (f": {last[:200]}" if last else "")


def _result(answer: dict[str, Any]) -> Any:
    if "error" in answer:
        raise _error(answer)
    return answer["result"]


def _error(answer: dict[str, Any]) -> EdgefleetError:
    """The runner's failure as the exception it was there (an EdgefleetError kind by its
    name; anything else an InferenceError)."""
    kind = getattr(errors, str(answer.get("kind")), None)
    if not (isinstance(kind, type) and issubclass(kind, EdgefleetError)):
        kind = InferenceError
    return kind(str(answer["error"]))


class RemoteSlot:
    """One sequence of a runner's batched context: what a pool worker drives."""

    def __init__(self, runner: RunnerProcess, slot: int) -> None:
        self.runner = runner
        self.slot = slot

    @property
    def dimensions(self) -> int:
        return self.runner.dimensions

    def embedding_tokens(self, text: str) -> list[int]:
        return [int(t) for t in self.runner.ask({"op": "embedding_tokens", "text": text})]

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        vectors = self.runner.ask({"op": "embed", "inputs": inputs})
        return [[float(x) for x in vector] for vector in vectors]

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[Piece, Generation]]:
        message = {
            "op": "generate",
            "slot": self.slot,
            "prompt": prompt_to_wire(prompt),
            "params": params_to_wire(params),
        }
        call, answers = self.runner.call(message)
        totals = Generation()
        ended = cancelled = False
        try:
            while True:
                if cancel.is_set() and not cancelled:  # the runner stops at its next step
                    cancelled = True
                    self.runner.send({"op": "cancel", "id": call})
                if (answer := self.runner.next_answer(answers)) is None:
                    continue
                if "error" in answer:
                    ended = True
                    raise _error(answer)
                if answer.get("end"):
                    ended = True
                    return
                try:
                    piece, counts = answer_from_wire(answer)
                except MalformedInputError as e:  # the runner's fault, not the caller's
                    raise InferenceError(f"{self.runner.name}: {e}") from None
                (
                    totals.prompt_tokens,
                    totals.completion_tokens,
                    totals.finish_reason,
                    totals.cached_tokens,
                ) = counts
                totals.text += piece.text
                totals.logprobs.extend(piece.logprobs)
                yield piece, totals
        finally:
            if not ended:  # left early: stop it there, and wait until this slot is free
                try:
                    self.runner.send({"op": "cancel", "id": call})
                    while True:
                        answer = self.runner.next_answer(answers)
                        if answer is not None and (answer.get("end") or "error" in answer):
                            break
                except InferenceError:
                    pass  # the runner is gone: nothing runs in this slot any more
            self.runner.done(call)

    def close(self) -> None:
        self.runner.release()

    @property
    def failure(self) -> str:
        return self.runner.dead


def load_runner_slots(
    path: Path, n_ctx: int, slots: int, n_threads: int, stall_seconds: float = STALL_SECONDS
) -> list[RemoteSlot]:
    """The pool's factory: the model loaded in its own runner process, ``slots`` sequences."""
    return RunnerProcess(path, n_ctx, slots, n_threads, stall_seconds).slots
