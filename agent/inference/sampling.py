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

import ctypes
import math
import random
from typing import Any

import numpy as np

from edgefleet.agent.inference.model_io import SamplingParams
from edgefleet.errors import InferenceError, InvalidPromptError

PENALTY_WINDOW = 64  # tokens the presence and frequency penalties look back over


class TokenSampler:
    """Samples one token at a time from one row of the context's logits; never touched by
    two threads (it belongs to the decode thread once its request is admitted)."""

    def __init__(self, lib: Any, internals: Any, vocab: Any, n_vocab: int, params: SamplingParams):
        self._lib = lib
        self._n_vocab = n_vocab
        self._chain = internals.LlamaSampler()
        self._grammar: Any = None
        if params.logit_bias:
            outside = [t for t, _ in params.logit_bias if not 0 <= t < n_vocab]
            if outside:  # llama.cpp would write outside its logits: the caller's mistake
                self.close()
                raise InvalidPromptError(
                    f"logit_bias names token {outside[0]}; this model's tokens are 0 to "
                    f"{n_vocab - 1}"
                )
            self._chain.add_logit_bias(n_vocab, dict(params.logit_bias))
        if params.presence_penalty or params.frequency_penalty:
            self._chain.add_penalties(
                n_vocab, PENALTY_WINDOW, 1.0, params.frequency_penalty, params.presence_penalty
            )
        if params.temperature == 0.0:
            self._chain.add_greedy()
        else:
            self._chain.add_top_k(40)
            self._chain.add_top_p(params.top_p, 1)
            self._chain.add_min_p(0.05, 1)
            self._chain.add_temp(params.temperature)
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            self._chain.add_dist(seed & 0xFFFFFFFF)
        if params.grammar is not None:
            self._grammar = lib.llama_sampler_init_grammar(
                vocab, params.grammar.encode("utf-8"), b"root"
            )
            if not self._grammar:  # llama.cpp could not parse it: never sample unconstrained
                self.close()
                raise InferenceError("the output grammar could not be loaded")
            self._all = internals.LlamaTokenDataArray(n_vocab=n_vocab)
            self._one = (lib.llama_token_data * 1)()
            self._one_array = lib.llama_token_data_array(
                data=ctypes.cast(self._one, lib.llama_token_data_p),
                size=1,
                selected=-1,
                sorted=False,
            )

    def sample(self, ctx: Any, row: int = -1) -> int:
        """The next token from the logits of batch row ``row`` (-1: the last), accepted by
        every sampler of the chain (and the grammar)."""
        if self._grammar is None:
            return int(self._lib.llama_sampler_sample(self._chain.sampler, ctx, row))
        pointer = self._lib.llama_get_logits_ith(ctx, row)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token = self._draw(logits, constrained=False)
        if not self._allowed(token):
            token = self._draw(logits, constrained=True)
        self._lib.llama_sampler_accept(self._grammar, token)
        self._lib.llama_sampler_accept(self._chain.sampler, token)
        return token

    def _draw(self, logits: np.ndarray[Any, Any], constrained: bool) -> int:
        candidates = self._all
        candidates.copy_logits(logits)
        array = ctypes.byref(candidates.candidates)
        if constrained:
            self._lib.llama_sampler_apply(self._grammar, array)
        self._lib.llama_sampler_apply(self._chain.sampler, array)
        chosen = candidates.candidates.selected
        if constrained and math.isinf(float(candidates.candidates_data.logit[chosen])):
            # every token is forbidden: a grammar that cannot go on (never a 200)
            raise InferenceError("the output grammar allows no further token")
        return int(candidates.candidates_data.id[chosen])

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
