"""llama.cpp behind :class:`ChatBackend`: one context per slot, driven token by token.

The agent renders the chat template from the GGUF itself, tokenizes once (so
``prompt_tokens`` is the same for one prompt whatever else the request asks), reuses the
longest prefix of the prompt already in the context's KV cache (a shared system prompt, a
growing conversation: only the new suffix is evaluated, reported as ``cached_tokens``),
and samples each token through the request's own sampler chain (logit bias, penalties,
grammar, top-p, temperature, seed). Only the worker thread of the slot touches it.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.inference.decoding import OutputAssembler, Piece
from edgefleet.agent.inference.engine import Generation, Prompt, SamplingParams
from edgefleet.agent.inference.sampling import TokenSampler
from edgefleet.errors import InferenceError, InvalidPromptError, RequestTooLargeError

# Embeddings come from a second context on the same weights (no second copy in memory):
# up to EMBED_CONTEXT tokens per input and per decode, EMBED_SEQUENCES inputs per decode.
EMBED_CONTEXT = 512
EMBED_SEQUENCES = 32
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}

# A GGUF without a chat template is rendered as ChatML (what most small models expect).
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class LlamaBackend:
    """One llama.cpp context of a model."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int) -> None:
        import llama_cpp  # imported here so unit tests and the controller never load it
        from llama_cpp import _internals, llama_chat_format

        self._lib = llama_cpp
        self._internals: Any = _internals
        self._n_threads = n_threads
        self._embedding: tuple[Any, Any] | None = None  # (context, batch), made on first use
        try:
            self._llama: Any = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise InferenceError(f"cannot load {path.name}: {e}") from e
        model = self._llama._model
        self._vocab = model.vocab
        self._n_vocab = int(self._llama.n_vocab())
        eos, bos = self._llama.token_eos(), self._llama.token_bos()
        self._formatter: Any = llama_chat_format.Jinja2ChatFormatter(
            template=self._llama.metadata.get("tokenizer.chat_template") or CHATML,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )

    @property
    def pooling(self) -> int:
        """How one vector is made from a sequence's token vectors: the GGUF's own pooling
        (an embedding model says which), else mean pooling (a chat model)."""
        arch = self._llama.metadata.get("general.architecture", "")
        declared = self._llama.metadata.get(f"{arch}.pooling_type")
        if declared is not None and declared.isdigit() and int(declared) in (1, 2, 3):
            return int(declared)
        return int(self._lib.LLAMA_POOLING_TYPE_MEAN)

    @property
    def dimensions(self) -> int:
        return int(self._llama.n_embd())

    def embedding_tokens(self, text: str) -> list[int]:
        """An input string as the embedding context sees it."""
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One L2-normalised vector per tokenized input; as many inputs per decode as fit."""
        context, batch = self._embedding_context()
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
            batch.reset()
            for seq, tokens in enumerate(inputs[start:end]):
                batch.add_sequence(tokens, seq, True)
            context.kv_cache_clear()
            context.decode(batch)
            for seq in range(end - start):
                pointer = self._lib.llama_get_embeddings_seq(context.ctx, seq)
                vector = np.ctypeslib.as_array(pointer, shape=(self.dimensions,)).astype(np.float64)
                norm = np.linalg.norm(vector)
                vectors.append((vector / norm if norm > 0 else vector).tolist())
            start = end
        return vectors

    def _embedding_context(self) -> tuple[Any, Any]:
        if self._embedding is None:
            params = self._lib.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = EMBED_CONTEXT
            params.n_seq_max = EMBED_SEQUENCES
            params.kv_unified = True  # sequences of any length share the context's cells
            params.embeddings = True
            params.pooling_type = self.pooling
            params.n_threads = self._n_threads
            # a batch uses the cores as the generation context's prompt processing does
            params.n_threads_batch = self._llama.context_params.n_threads_batch
            from llama_cpp._utils import suppress_stdout_stderr

            try:
                with suppress_stdout_stderr(disable=False):  # llama.cpp notes the pooling
                    context = self._internals.LlamaContext(
                        model=self._llama._model, params=params, verbose=False
                    )
            except ValueError as e:
                raise InferenceError(f"cannot create an embedding context: {e}") from e
            batch = self._internals.LlamaBatch(
                n_tokens=EMBED_CONTEXT, embd=0, n_seq_max=EMBED_SEQUENCES, verbose=False
            )
            self._embedding = (context, batch)
        return self._embedding

    def close(self) -> None:
        """Free the embedding context (it uses the model), then the model and its
        context: llama.cpp's memory goes now, not when the last reference does."""
        if self._embedding is not None:
            context, batch = self._embedding
            self._embedding = None
            batch.close()
            context.close()
        self._llama.close()

    @property
    def n_ctx(self) -> int:
        return int(self._llama.n_ctx())

    def tokens(self, prompt: Prompt) -> list[int]:
        """The prompt as the model sees it: chat messages through the GGUF's template."""
        if prompt.text is not None:
            return list(self._llama.tokenize(prompt.text.encode("utf-8"), add_bos=True))
        try:
            rendered = self._formatter(messages=[dict(m) for m in prompt.messages])
        except Exception as e:  # noqa: BLE001 - a template raises whatever it likes
            raise InvalidPromptError(
                f"the model's chat template refused the conversation: {str(e)[:200]}"
            ) from e
        return list(
            self._llama.tokenize(
                rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
            )
        )

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the longest prefix of ``tokens`` the context already holds (at least one
        token is always evaluated, so fresh logits exist); return its length."""
        held = self._llama._input_ids
        common = 0
        for a, b in zip(held, tokens[:-1], strict=False):
            if a != b:
                break
            common += 1
        if common and not self._llama._ctx.kv_cache_seq_rm(-1, common, -1):
            common = 0  # the cache cannot be cut here: evaluate everything
        self._llama.n_tokens = common
        if common == 0:
            self._llama.reset()
        return common

    def _logprobs(self, token: int, top: int) -> tuple[float, tuple[tuple[str, bytes, float], ...]]:
        """The sampled token's log-probability under the model (before sampling's
        truncation and temperature) and the ``top`` most likely alternatives."""
        pointer = self._lib.llama_get_logits_ith(self._llama._ctx.ctx, -1)
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

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[Piece, Generation]]:
        tokens = self.tokens(prompt)
        if len(tokens) >= self.n_ctx:
            raise RequestTooLargeError(
                f"the prompt is {len(tokens)} tokens, more than the model's context of "
                f"{self.n_ctx} tokens"
            )
        totals = Generation(prompt_tokens=len(tokens), finish_reason="length")
        totals.cached_tokens = self._reuse_prefix(tokens)
        output = OutputAssembler(params.stop)
        sampler = TokenSampler(self._lib, self._internals, self._vocab, self._n_vocab, params)
        try:
            self._llama.eval(tokens[totals.cached_tokens :])
            for _ in range(params.max_tokens):
                if cancel.is_set():
                    totals.finish_reason = "cancelled"
                    break
                token = sampler.sample(self._llama._ctx.ctx)
                if self._lib.llama_vocab_is_eog(self._vocab, token):
                    totals.finish_reason = "stop"
                    break
                totals.completion_tokens += 1
                logprob, top = (
                    self._logprobs(token, params.top_logprobs) if params.logprobs else (None, ())
                )
                piece = output.push(self._piece(token), logprob, top)
                if piece.text or piece.logprobs:
                    yield self._add(totals, piece), totals
                if piece.stopped:
                    totals.finish_reason = "stop"
                    break
                if self._llama.n_tokens + 1 >= self.n_ctx:
                    break  # the context is full: "length"
                self._llama.eval([token])
        finally:
            sampler.close()
        if not output.stopped:
            tail = output.finish()
            if tail.text or tail.logprobs:
                yield self._add(totals, tail), totals
        yield Piece(), totals

    @staticmethod
    def _add(totals: Generation, piece: Piece) -> Piece:
        totals.text += piece.text
        totals.logprobs.extend(piece.logprobs)
        return piece
