"""llama.cpp behind :class:`ChatBackend`, with continuous batching.

A loaded model is one :class:`BatchedLlama`: one llama.cpp context holding ``slots``
sequences (``n_seq_max``; each sequence has its own ``n_ctx`` cells of the KV cache, so a
long conversation cannot take another's room) and one decode thread. At each step that
thread puts into one batch the next token of every sequence that is generating and a
chunk of the prompt of each sequence still reading one, decodes the batch once (the
weights are read once for all of them), and samples each generating sequence from its
own row of logits with its own sampler (logit bias, penalties, grammar, top-p,
temperature, seed), stop strings, logprobs and cancellation. Requests join and leave
between steps. While others generate, prompts are read ``PREFILL_CHUNK`` tokens per step:
a long prompt delays their next token by one chunk's time, not by its own length.

Each slot of the pool is a :class:`SequenceSlot` (the ChatBackend a ModelWorker drives):
it renders the chat template from the GGUF itself, tokenizes once (so ``prompt_tokens``
is the same for one prompt whatever else the request asks), hands the request to the
decode thread and relays what it produces. The decode thread keeps the longest prefix of
the prompt that the slot's sequence already holds in the KV cache (a shared system
prompt, a growing conversation: only the new suffix is evaluated, reported as
``cached_tokens``).
"""

from __future__ import annotations

import ctypes
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.agent.inference.chat_template import ChatTemplate
from edgefleet.agent.inference.decoding import OutputAssembler, Piece
from edgefleet.agent.inference.llama_handles import Batch, Context, Model, bindings
from edgefleet.agent.inference.model_io import Generation, Prompt, SamplingParams
from edgefleet.agent.inference.sampling import TokenSampler
from edgefleet.errors import InferenceError, InvalidPromptError, RequestTooLargeError


def _log_failure(error: BaseException) -> None:
    """A decode that failed (its requests fail with it). structlog is imported here: a
    runner does not otherwise load it (5 MiB)."""
    import structlog

    log = structlog.get_logger("agent.inference")
    log.error("decode.failed", error=type(error).__name__, reason=str(error))


# Tokens per decode (llama.cpp's n_batch, as llama-cpp-python's default), computed in
# micro-batches of UBATCH_TOKENS (n_ubatch): half of llama.cpp's 512, which on the bundled
# model reads a 362-token prompt 7 % faster (1.02 s against 1.10) and leaves the runner
# 6 MiB smaller after long prompts (219 MiB against 225): the compute buffer's
# activations are sized by n_ubatch.
BATCH_TOKENS = 512
UBATCH_TOKENS = 256
# Prompt tokens read per step (all sequences reading together) while others generate.
PREFILL_CHUNK = 64

# Embeddings come from a second context on the same weights (no second copy in memory):
# up to EMBED_CONTEXT tokens per input and per decode, EMBED_SEQUENCES inputs per decode.
EMBED_CONTEXT = 512
EMBED_SEQUENCES = 32

_END = object()  # the last item of a sequence's results


@dataclass(eq=False)
class _Sequence:
    """One request while the decode thread serves it."""

    slot: int  # its sequence id in the context
    prompt: list[int]
    params: SamplingParams
    sampler: TokenSampler
    cancel: threading.Event
    totals: Generation
    output: OutputAssembler
    results: queue.SimpleQueue[object] = field(default_factory=queue.SimpleQueue)
    read: int = 0  # prompt tokens in the KV cache (cached or evaluated)
    next_token: int | None = None  # sampled, decoded at the next step
    done: bool = False


class BatchedLlama:
    """One model, one llama.cpp context of ``slots`` sequences, one decode thread."""

    def __init__(self, path: Path, n_ctx: int, slots: int, n_threads: int) -> None:
        self._lib: Any = bindings()  # here: an agent serving no model never loads llama.cpp
        self.n_ctx = n_ctx  # per sequence
        self.n_threads = n_threads
        self.n_threads_batch = os.cpu_count() or 1  # llama-cpp-python's default
        self._model = model = Model(path)
        try:
            self._ctx = Context(model, self._context_params(slots), path.name)
            self._batch = Batch(self._lib, BATCH_TOKENS, 1)
            self._vocab = model.vocab
            self._n_vocab = model.n_vocab
            self.metadata: dict[str, str] = model.metadata()
            self._template = ChatTemplate(
                self.metadata.get("tokenizer.chat_template"),
                eos_token=model.token_text(model.eos),
                bos_token=model.token_text(model.bos),
            )
        except InvalidPromptError as e:
            self._free()
            raise InferenceError(f"cannot load {path.name}: {e}") from e
        except BaseException:
            self._free()
            raise
        self._embedding: tuple[Context, Batch] | None = None  # made on first use
        self._embedding_lock = threading.Lock()
        self._held: list[list[int]] = [[] for _ in range(slots)]  # each sequence's KV cells
        self._inbox: deque[_Sequence] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._open_slots = slots
        self.slots = [SequenceSlot(self, slot) for slot in range(slots)]
        self._thread = threading.Thread(target=self._run, name=f"decode-{path.name[:12]}")
        self._thread.start()

    def _context_params(self, slots: int) -> Any:
        params = self._lib.llama_context_default_params()
        params.n_ctx = self.n_ctx * slots
        params.n_batch, params.n_ubatch = BATCH_TOKENS, UBATCH_TOKENS
        params.n_seq_max = slots
        params.kv_unified = False  # each sequence its own n_ctx cells
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads_batch
        params.flash_attn_type = self._lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as before batching
        return params

    # --- what every slot shares ---------------------------------------------------------
    def tokens(self, prompt: Prompt) -> list[int]:
        """The prompt as the model sees it: chat messages through the GGUF's template."""
        if prompt.text is not None:
            return self._model.tokenize(prompt.text.encode("utf-8"), True, False)
        rendered = self._template.render(prompt.messages)
        return self._model.tokenize(rendered.encode("utf-8"), False, True)

    def sampler(self, params: SamplingParams) -> TokenSampler:
        """A request's own sampler (it checks the request's logit bias and grammar)."""
        return TokenSampler(self._lib, self._vocab, self._n_vocab, params)

    def submit(self, sequence: _Sequence) -> None:
        """Hand a request to the decode thread; it joins the batch at the next step."""
        with self._wake:
            if self._closing:
                raise InferenceError("the model is being unloaded")
            self._inbox.append(sequence)
            self._wake.notify()

    # --- the decode thread --------------------------------------------------------------
    def _run(self) -> None:
        active: list[_Sequence] = []
        while True:
            with self._wake:
                while not self._inbox and not active and not self._closing:
                    self._wake.wait()
                if self._closing:
                    for sequence in [*active, *self._inbox]:
                        if not sequence.done:
                            self._fail(sequence, InferenceError("the model was unloaded"))
                    return
                while self._inbox:
                    active.append(self._admit(self._inbox.popleft()))
            try:
                active = self._step(active)
            except Exception as e:  # noqa: BLE001 - fail these requests, keep serving
                _log_failure(e)
                for sequence in active:
                    if not sequence.done:
                        self._fail(sequence, InferenceError(f"generation failed: {e}"))
                    self._forget(sequence.slot)
                active = []

    def _admit(self, sequence: _Sequence) -> _Sequence:
        """Keep the longest prefix of the prompt the slot's sequence already holds (at
        least one token is always evaluated, so fresh logits exist)."""
        held, prompt = self._held[sequence.slot], sequence.prompt
        common = 0
        for a, b in zip(held, prompt[:-1], strict=False):
            if a != b:
                break
            common += 1
        if not self._lib.llama_memory_seq_rm(self._ctx.memory, sequence.slot, common, -1):
            self._forget(sequence.slot)  # the cache cannot be cut there: evaluate it all
            common = 0
        del held[common:]
        sequence.read = sequence.totals.cached_tokens = common
        return sequence

    def _forget(self, slot: int) -> None:
        self._lib.llama_memory_seq_rm(self._ctx.memory, slot, -1, -1)
        self._held[slot].clear()

    def _step(self, active: list[_Sequence]) -> list[_Sequence]:
        """One decode of every sequence's next token and of prompt chunks; then sampling."""
        for sequence in active:
            if sequence.cancel.is_set():
                sequence.totals.finish_reason = "cancelled"
                self._finish(sequence)
        active = [s for s in active if not s.done]
        self._batch.clear()
        rows: list[tuple[_Sequence, int]] = []
        generating = [s for s in active if s.next_token is not None]
        for sequence in generating:
            token = sequence.next_token
            assert token is not None  # noqa: S101 - selected above
            rows.append((sequence, self._add(sequence.slot, token, logits=True)))
        # prompt tokens of this step, all readers together: a bounded step while others
        # generate, a full batch when nobody waits for a token
        room = PREFILL_CHUNK if generating else BATCH_TOKENS
        reading = [s for s in active if s.next_token is None]
        for sequence in reading:
            take = min(len(sequence.prompt) - sequence.read, room)
            if take <= 0:
                continue
            for token in sequence.prompt[sequence.read : sequence.read + take]:
                sequence.read += 1
                row = self._add(sequence.slot, token, logits=sequence.read == len(sequence.prompt))
            room -= take
            if sequence.read == len(sequence.prompt):
                rows.append((sequence, row))
        if self._batch.size == 0:
            return active
        self._ctx.decode(self._batch)
        for sequence, row in rows:
            try:
                self._sample(sequence, row)
            except Exception as e:  # noqa: BLE001 - this request's failure (a grammar…)
                self._fail(sequence, e)
        return [s for s in active if not s.done]

    def _add(self, slot: int, token: int, logits: bool) -> int:
        """Append ``token`` of sequence ``slot`` to the batch; return its row."""
        held = self._held[slot]
        row = self._batch.add(token, len(held), slot, logits)
        held.append(token)
        return row

    def _sample(self, sequence: _Sequence, row: int) -> None:
        totals, params = sequence.totals, sequence.params
        sequence.next_token = None
        if sequence.cancel.is_set():
            totals.finish_reason = "cancelled"
            self._finish(sequence)
            return
        token = sequence.sampler.sample(self._ctx.handle, row)
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            totals.finish_reason = "stop"
            self._finish(sequence)
            return
        totals.completion_tokens += 1
        logprob, top = (
            self._logprobs(row, token, params.top_logprobs) if params.logprobs else (None, ())
        )
        piece = sequence.output.push(self._piece(token), logprob, top)
        self._emit(sequence, piece)
        if piece.stopped:
            totals.finish_reason = "stop"
        elif totals.completion_tokens < params.max_tokens and (
            len(self._held[sequence.slot]) + 1 < self.n_ctx
        ):
            sequence.next_token = token
            return
        self._finish(sequence)  # a stop string, max_tokens or a full context ("length")

    def _emit(self, sequence: _Sequence, piece: Piece) -> None:
        if piece.text or piece.logprobs:
            sequence.totals.text += piece.text
            sequence.totals.logprobs.extend(piece.logprobs)
            sequence.results.put((piece, sequence.totals))

    def _finish(self, sequence: _Sequence) -> None:
        if not sequence.output.stopped:
            self._emit(sequence, sequence.output.finish())
        sequence.results.put((Piece(), sequence.totals))
        sequence.results.put(_END)
        self._drop(sequence)

    def _fail(self, sequence: _Sequence, error: Exception) -> None:
        sequence.results.put(error)
        sequence.results.put(_END)
        self._drop(sequence)

    @staticmethod
    def _drop(sequence: _Sequence) -> None:
        sequence.done = True
        sequence.sampler.close()

    def _logprobs(
        self, row: int, token: int, top: int
    ) -> tuple[float, tuple[tuple[str, bytes, float], ...]]:
        """The sampled token's log-probability under the model (before sampling's
        truncation and temperature) and the ``top`` most likely alternatives."""
        import numpy as np  # only for requests that ask for log-probabilities

        pointer = self._lib.llama_get_logits_ith(self._ctx.handle, row)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).astype(np.float64)
        peak = logits.max()
        log_probs = logits - peak - np.log(np.exp(logits - peak).sum())
        alternatives: tuple[tuple[str, bytes, float], ...] = ()
        if top:
            best = np.argpartition(-log_probs, top)[:top]
            best = best[np.argsort(-log_probs[best])]
            alternatives = tuple(
                (raw.decode("utf-8", errors="replace"), raw, float(log_probs[t]))
                for t in best
                for raw in (self._piece(int(t)),)
            )
        return float(log_probs[token]), alternatives

    def _piece(self, token: int) -> bytes:
        """The token's text bytes (control tokens render as nothing)."""
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self._vocab, token, buffer, size, 0, False)
            if n >= 0:
                return buffer.raw[:n]
            size = -n  # llama.cpp says how much room the piece needs

    # --- embeddings -----------------------------------------------------------------
    @property
    def pooling(self) -> int:
        """How one vector is made from a sequence's token vectors: the GGUF's own pooling
        (an embedding model says which), else mean pooling (a chat model)."""
        arch = self.metadata.get("general.architecture", "")
        declared = self.metadata.get(f"{arch}.pooling_type")
        if declared is not None and declared.isdigit() and int(declared) in (1, 2, 3):
            return int(declared)
        return int(self._lib.LLAMA_POOLING_TYPE_MEAN)

    @property
    def dimensions(self) -> int:
        return self._model.n_embd

    def embedding_tokens(self, text: str) -> list[int]:
        """An input string as the embedding context sees it."""
        return self._model.tokenize(text.encode("utf-8"), True, False)

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One L2-normalised vector per tokenized input; as many inputs per decode as fit.
        One embedding request at a time per model (its own context, beside generation)."""
        for tokens in inputs:
            if not tokens or len(tokens) > EMBED_CONTEXT:
                raise RequestTooLargeError(
                    f"an input is {len(tokens)} tokens; embeddings take 1 to "
                    f"{EMBED_CONTEXT} tokens per input"
                )
            if min(tokens) < 0 or max(tokens) >= self._n_vocab:
                raise InvalidPromptError(
                    f"token ids must be from 0 to {self._n_vocab - 1} for this model"
                )
        with self._embedding_lock:
            context, batch = self._embedding_context()
            vectors: list[list[float]] = []
            start = 0
            while start < len(inputs):
                end, used = start, 0
                while (
                    end < len(inputs)
                    and end - start < EMBED_SEQUENCES
                    and used + len(inputs[end]) <= EMBED_CONTEXT
                ):
                    used += len(inputs[end])
                    end += 1
                batch.clear()
                for seq, tokens in enumerate(inputs[start:end]):
                    batch.add_sequence(tokens, seq)
                context.clear()
                context.decode(batch)
                for seq in range(end - start):
                    pointer = self._lib.llama_get_embeddings_seq(context.handle, seq)
                    if not pointer:  # no pooled vector (never with the pooling set above)
                        raise InferenceError("llama.cpp gave no embedding for an input")
                    vector = pointer[: self.dimensions]
                    norm = math.sqrt(math.fsum(v * v for v in vector))
                    vectors.append([v / norm for v in vector] if norm > 0 else vector)
                start = end
            return vectors

    def _embedding_context(self) -> tuple[Context, Batch]:
        if self._embedding is None:
            params = self._lib.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = EMBED_CONTEXT
            params.n_seq_max = EMBED_SEQUENCES
            params.kv_unified = True  # sequences of any length share the context's cells
            params.embeddings = True
            params.pooling_type = self.pooling
            params.n_threads = self.n_threads
            params.n_threads_batch = self.n_threads_batch
            context = Context(self._model, params, "embeddings")
            self._embedding = (context, Batch(self._lib, EMBED_CONTEXT, EMBED_SEQUENCES))
        return self._embedding

    # --- unloading ------------------------------------------------------------------
    def release(self) -> None:
        """One slot is done with the model; the last one frees it."""
        with self._wake:
            self._open_slots -= 1
            if self._open_slots > 0:
                return
            self._closing = True
            self._wake.notify()
        self.close()

    def close(self) -> None:
        """Stop the decode thread (requests still in it fail), then free the contexts and
        the model: llama.cpp's memory goes now, not when the last reference does."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self._embedding_lock:
            if self._embedding is not None:
                context, batch = self._embedding
                self._embedding = None
                batch.close()
                context.close()
        self._free()

    def _free(self) -> None:
        """The generation context and batch, then the model (a context goes before its
        model); what a failed load made so far."""
        for owner in ("_batch", "_ctx", "_model"):
            if (handle := getattr(self, owner, None)) is not None:
                handle.close()


class SequenceSlot:
    """One sequence of a :class:`BatchedLlama`: the ChatBackend of one pool slot."""

    def __init__(self, model: BatchedLlama, slot: int) -> None:
        self.model = model
        self.slot = slot

    @property
    def dimensions(self) -> int:
        return self.model.dimensions

    def embedding_tokens(self, text: str) -> list[int]:
        return self.model.embedding_tokens(text)

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        return self.model.embed(inputs)

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[Piece, Generation]]:
        tokens = self.model.tokens(prompt)
        if len(tokens) >= self.model.n_ctx:
            raise RequestTooLargeError(
                f"the prompt is {len(tokens)} tokens, more than the model's context of "
                f"{self.model.n_ctx} tokens"
            )
        sequence = _Sequence(
            slot=self.slot,
            prompt=tokens,
            params=params,
            sampler=self.model.sampler(params),
            cancel=cancel,
            totals=Generation(prompt_tokens=len(tokens), finish_reason="length"),
            output=OutputAssembler(params.stop),
        )
        try:
            self.model.submit(sequence)
        except InferenceError:
            sequence.sampler.close()
            raise
        ended = False
        try:
            while True:
                item = sequence.results.get()
                if item is _END:
                    ended = True
                    return
                if isinstance(item, Exception):
                    ended = sequence.results.get() is _END  # what follows a failure
                    raise item
                yield item  # type: ignore[misc]
        finally:
            if not ended:  # left early: the decode thread drops the sequence at its next
                cancel.set()  # step, and this slot is not reused before it has
                while sequence.results.get() is not _END:
                    pass

    def close(self) -> None:
        self.model.release()

    @property
    def failure(self) -> str:
        return ""  # in this process: a crash of llama.cpp ends the process


def load_slots(path: Path, n_ctx: int, slots: int, n_threads: int) -> list[SequenceSlot]:
    """The pool's factory: a model with ``slots`` sequences of ``n_ctx`` tokens each."""
    return BatchedLlama(path, n_ctx, slots, n_threads).slots
