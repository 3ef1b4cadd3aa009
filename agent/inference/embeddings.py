"""POST /v1/embeddings: one unit-length vector per input, from the model's embedding
context (mean pooling for a chat model, the GGUF's own pooling for an embedding model).

``input`` is a string, a list of strings, a list of token ids or a list of such lists;
``encoding_format`` float or base64 (float32, little-endian: what the SDKs decode);
``dimensions`` only when it is the model's own (a model's vectors cannot be shortened
unless it was trained for that, and no GGUF says so)."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edgefleet.agent.inference.api_errors import bad_request
from edgefleet.agent.inference.endpoint import ModelEndpoint, Outcome
from edgefleet.agent.inference.engine import ModelWorker
from edgefleet.agent.inference.model_io import ChatBackend

MAX_INPUTS = 256
EMBEDDING_PARAMETERS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: tuple[str, ...] = ()  # either texts
    token_lists: tuple[tuple[int, ...], ...] = ()  # or token ids
    base64: bool = False
    dimensions: int | None = None

    @property
    def count(self) -> int:
        return len(self.texts) or len(self.token_lists)


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def parse_embedding_request(body: Any) -> EmbeddingRequest:
    """Validate a /v1/embeddings body; ApiError(400) naming the bad field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for key in body:
        if key not in EMBEDDING_PARAMETERS:
            raise bad_request(f"unrecognized request argument: {str(key)[:64]}", str(key)[:64])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required", "model")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request('encoding_format must be "float" or "base64"', "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise bad_request("dimensions must be a positive integer", "dimensions")
    value: Any = body.get("input")
    texts: tuple[str, ...] = ()
    token_lists: tuple[tuple[int, ...], ...] = ()
    if isinstance(value, str):
        texts = (value,)
    elif _is_tokens(value):
        token_lists = (tuple(value),)
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = tuple(value)
    elif isinstance(value, list) and value and all(_is_tokens(v) for v in value):
        token_lists = tuple(tuple(v) for v in value)
    else:
        raise bad_request(
            "input must be a string, a list of strings, a list of token ids "
            "or a list of lists of token ids",
            "input",
        )
    if len(texts) + len(token_lists) > MAX_INPUTS:
        raise bad_request(f"at most {MAX_INPUTS} inputs per request", "input")
    if any(not t for t in texts):
        raise bad_request("an input string is empty", "input")
    return EmbeddingRequest(model, texts, token_lists, encoding == "base64", dimensions)


def _encoded(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    # little-endian float32s, as OpenAI's base64 encoding (numpy's "<f4")
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class EmbeddingsEndpoint(ModelEndpoint):
    """POST /v1/embeddings; needs ``inference.embed`` (an app may embed without being
    allowed to generate)."""

    endpoint = "embeddings"
    permission = "inference.embed"
    prompt_param = "input"

    def parse(self, body: Any) -> EmbeddingRequest:
        return parse_embedding_request(body)

    async def serve(
        self, request: web.Request, req: EmbeddingRequest, worker: ModelWorker, outcome: Outcome
    ) -> web.StreamResponse:
        def embed(backend: ChatBackend) -> tuple[int, list[list[float]], int]:
            inputs = [backend.embedding_tokens(t) for t in req.texts] or [
                list(t) for t in req.token_lists
            ]
            return backend.dimensions, backend.embed(inputs), sum(len(i) for i in inputs)

        dimensions, vectors, tokens = await worker.run(embed)
        if req.dimensions is not None and req.dimensions != dimensions:
            raise bad_request(
                f"this model's embeddings have {dimensions} dimensions and cannot be "
                "shortened; leave dimensions out",
                "dimensions",
            )
        outcome.inputs, outcome.result.prompt_tokens = len(vectors), tokens
        outcome.result.finish_reason = "stop"
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": _encoded(v, req.base64)}
                    for i, v in enumerate(vectors)
                ],
                "model": req.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def observe(self, req: EmbeddingRequest, outcome: Outcome, started: float, label: str) -> None:
        if outcome.inputs:
            self.ctx.metrics.prompt_tokens.labels(label).inc(outcome.result.prompt_tokens)
            self.ctx.metrics.embedded_inputs.labels(label).inc(outcome.inputs)

    def details(self, req: EmbeddingRequest, outcome: Outcome, started: float) -> dict[str, Any]:
        return {"inputs": req.count, "prompt_tokens": outcome.result.prompt_tokens}
