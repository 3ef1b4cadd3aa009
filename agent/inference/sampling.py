"""One request's token sampler over a llama.cpp context: logit bias, penalties, top-k,
top-p, min-p, temperature and a seeded draw (or greedy) — and, for constrained output,
a grammar checked the way llama.cpp's own server does it: the token sampled without the
grammar is kept if the grammar accepts it (the common case: one check), and only when
it does not is the grammar applied to the whole vocabulary and the token drawn again.
Applying the grammar to every candidate at every step costs a third of the speed.

Built per request by :class:`edgefleet.agent.inference.llama_backend.BatchedLlama`, which
imports llama.cpp; used only by its decode thread, on the logits of the request's own row
of each batch.
"""

from __future__ import annotations

import array
import ctypes
import math
import random
from typing import Any

from edgefleet.agent.inference.llama_handles import SamplerChain
from edgefleet.agent.inference.model_io import SamplingParams
from edgefleet.errors import InferenceError, InvalidPromptError

PENALTY_WINDOW = 64  # tokens the presence and frequency penalties look back over


class TokenSampler:
    """Samples one token at a time from one row of the context's logits; never touched by
    two threads (it belongs to the decode thread once its request is admitted)."""

    def __init__(self, lib: Any, vocab: Any, n_vocab: int, params: SamplingParams):
        self._lib = lib
        self._n_vocab = n_vocab
        self._chain = chain = SamplerChain(lib)
        self._grammar: Any = None
        if params.logit_bias:
            outside = [t for t, _ in params.logit_bias if not 0 <= t < n_vocab]
            if outside:  # llama.cpp would write outside its logits: the caller's mistake
                self.close()
                raise InvalidPromptError(
                    f"logit_bias names token {outside[0]}; this model's tokens are 0 to "
                    f"{n_vocab - 1}"
                )
            biases = dict(params.logit_bias)  # the last bias given for a token wins
            table = (lib.llama_logit_bias * len(biases))()
            for entry, (token, bias) in zip(table, biases.items(), strict=True):
                entry.token, entry.bias = token, bias
            chain.add(lib.llama_sampler_init_logit_bias(n_vocab, len(biases), table))
        if params.presence_penalty or params.frequency_penalty:
            chain.add(lib.llama_sampler_init_penalties(
                n_vocab, PENALTY_WINDOW, 1.0, params.frequency_penalty, params.presence_penalty
            ))  # fmt: skip
        if params.temperature == 0.0:
            chain.add(lib.llama_sampler_init_greedy())
        else:
            chain.add(lib.llama_sampler_init_top_k(40))
            chain.add(lib.llama_sampler_init_top_p(params.top_p, 1))
            chain.add(lib.llama_sampler_init_min_p(0.05, 1))
            chain.add(lib.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            chain.add(lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if params.grammar is not None:
            self._grammar = lib.llama_sampler_init_grammar(
                vocab, params.grammar.encode("utf-8"), b"root"
            )
            if not self._grammar:  # llama.cpp could not parse it: never sample unconstrained
                self.close()
                raise InferenceError("the output grammar could not be loaded")
            self._all = _Candidates(lib, n_vocab)
            self._one = (lib.llama_token_data * 1)()
            self._one_array = lib.llama_token_data_array(
                data=_pointer(lib, self._one),
                size=1,
                selected=-1,
                sorted=False,
            )

    def sample(self, ctx: Any, row: int = -1) -> int:
        """The next token from the logits of batch row ``row`` (-1: the last), accepted by
        every sampler of the chain (and the grammar)."""
        if self._grammar is None:
            return int(self._lib.llama_sampler_sample(self._chain.handle, ctx, row))
        logits = self._lib.llama_get_logits_ith(ctx, row)
        token = self._draw(logits, constrained=False)
        if not self._allowed(token):
            token = self._draw(logits, constrained=True)
        self._lib.llama_sampler_accept(self._grammar, token)
        self._lib.llama_sampler_accept(self._chain.handle, token)
        return token

    def _draw(self, logits: Any, constrained: bool) -> int:
        candidates = self._all
        candidates.fill(logits)
        whole = ctypes.byref(candidates.array)
        if constrained:
            self._lib.llama_sampler_apply(self._grammar, whole)
        self._lib.llama_sampler_apply(self._chain.handle, whole)
        chosen = candidates.array.selected
        if constrained and math.isinf(candidates.entries[chosen].logit):
            # every token is forbidden: a grammar that cannot go on (never a 200)
            raise InferenceError("the output grammar allows no further token")
        return int(candidates.entries[chosen].id)

    def _allowed(self, token: int) -> bool:
        one = self._one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        self._lib.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return not math.isinf(self._one[0].logit)

    def close(self) -> None:
        self._chain.close()
        if self._grammar:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None


class _Candidates:
    """The whole vocabulary as a ``llama_token_data_array``, refilled from a row of
    logits before each pass (a pass reorders and masks it). Filled by strided copies
    through memoryviews (0.7 ms for 49,152 tokens here), not numpy: a runner that served
    one request under a schema kept numpy's 14 MiB."""

    def __init__(self, lib: Any, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.entries = (lib.llama_token_data * n_vocab)()  # (id int32, logit float, p float)
        raw = memoryview(self.entries).cast("B")
        self._ints, self._floats = raw.cast("i"), raw.cast("f")
        self._ids = array.array("i", range(n_vocab))
        self._zeros = array.array("f", bytes(4 * n_vocab))
        self._row = ctypes.c_float * n_vocab  # a row of logits
        self.array = lib.llama_token_data_array(
            data=_pointer(lib, self.entries),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )

    def fill(self, logits: Any) -> None:
        row = self._row.from_address(ctypes.addressof(logits.contents))
        self._ints[0::3] = self._ids
        self._floats[1::3] = memoryview(row).cast("B").cast("f")
        self._floats[2::3] = self._zeros
        self.array.size, self.array.selected, self.array.sorted = self.n_vocab, -1, False


def _pointer(lib: Any, entries: Any) -> Any:
    """A ``llama_token_data *`` to ``entries``, which its owner keeps alive.
    ``ctypes.cast(entries, …)`` would tie the two in a reference cycle: each sampler's
    49,152-token array (0.6 MiB) then outlived its request until a garbage collection."""
    return ctypes.cast(ctypes.addressof(entries), lib.llama_token_data_p)
