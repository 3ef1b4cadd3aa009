"""What goes into a loaded model and what comes out: prompts, sampling parameters, the
generation, and the protocol every backend implements (llama.cpp in a runner process,
llama.cpp in process for the smoke test and benchmarks, fakes in unit tests). No asyncio
and no llama.cpp here: the model runner imports this."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgefleet.agent.inference.decoding import Piece, TokenLogprob


@dataclass(frozen=True)
class SamplingParams:
    """Generation parameters accepted by the API, already validated: per request, so that
    each request keeps its own sampler, grammar, stop strings and logprobs."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None  # GBNF the output must match


@dataclass
class Generation:
    """A finished (or streamed) generation's text, token counts and logprobs."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    cached_tokens: int = 0  # prompt tokens reused from the KV cache, not evaluated again
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Prompt:
    """Chat messages (for chat completions) or plain text (for text completions)."""

    messages: tuple[Mapping[str, str], ...] = ()
    text: str | None = None

    @property
    def key(self) -> str:
        """The prompt as one string whose prefixes match where the prompts' tokens do."""
        if self.text is not None:
            return self.text
        return "".join(f"\x00{m['role']}\x01{m['content']}" for m in self.messages)


class ChatBackend(Protocol):
    """What a loaded model can do; llama.cpp in production, a fake in unit tests."""

    @property
    def dimensions(self) -> int:
        """The length of the model's embedding vectors."""
        ...

    def embedding_tokens(self, text: str) -> list[int]:
        """``text`` tokenized for :meth:`embed`."""
        ...

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One unit-length vector per tokenized input."""
        ...

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event
    ) -> Iterator[tuple[Piece, Generation]]:
        """Yield (released piece, running totals) as tokens are sampled; stop early when
        ``cancel`` is set. The last item carries the final totals."""
        ...

    def close(self) -> None:
        """Free what the model holds (weights, contexts, caches) now, whoever still
        refers to this object."""
        ...

    @property
    def failure(self) -> str:
        """Why it can serve nothing more (its model runner died), or "" while it can."""
        ...


# Loads a model for ``slots`` concurrent requests: one backend per slot (with llama.cpp,
# the sequences of one batched context: edgefleet.agent.inference.llama_backend).
BackendFactory = Callable[[Path, int], Sequence[ChatBackend]]
