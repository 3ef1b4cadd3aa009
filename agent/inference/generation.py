"""POST /v1/chat/completions and /v1/completions: validate, generate, stream, shape."""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from edgefleet.agent.inference.api_errors import ApiError
from edgefleet.agent.inference.context import ApiContext
from edgefleet.agent.inference.decoding import Piece
from edgefleet.agent.inference.endpoint import ModelEndpoint, Outcome, drain
from edgefleet.agent.inference.engine import ModelWorker
from edgefleet.agent.inference.model_io import Generation
from edgefleet.agent.inference.requests import GenerationRequest, parse_request
from edgefleet.agent.inference.shapes import ChunkWriter, answer_of, whole
from edgefleet.canonical import canonical_bytes


class GenerationEndpoint(ModelEndpoint):
    """POST /v1/chat/completions (chat=True) or /v1/completions (chat=False)."""

    def __init__(self, ctx: ApiContext, chat: bool) -> None:
        super().__init__(ctx)
        self.chat = chat
        self.endpoint = "chat" if chat else "completions"
        self.prompt_param = "messages" if chat else "prompt"

    def parse(self, body: Any) -> GenerationRequest:
        return parse_request(body, self.chat, self.ctx.config.max_tokens_limit)

    def prefix(self, req: GenerationRequest) -> str:
        return req.prompt.key

    async def serve(
        self, request: web.Request, req: GenerationRequest, worker: ModelWorker, outcome: Outcome
    ) -> web.StreamResponse:
        request_id, created = (
            f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}",
            int(time.time()),
        )
        async with contextlib.aclosing(worker.stream(req.prompt, req.params)) as batches:
            if req.stream:
                writer = ChunkWriter(req, self.chat, request_id, created)
                return await self._stream(request, req, writer, batches, outcome)
            await drain(request, batches, outcome)
        try:
            body = whole(req, self.chat, request_id, created, outcome.result)
        except ApiError:
            outcome.label = "invalid_output"
            raise
        outcome.tool_calls = len(body["choices"][0].get("message", {}).get("tool_calls") or ())
        return web.json_response(body)

    async def _stream(
        self,
        request: web.Request,
        req: GenerationRequest,
        writer: ChunkWriter,
        batches: AsyncGenerator[list[tuple[Piece, Generation]], None],
        outcome: Outcome,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if self.chat:
            await response.write(writer.role())
        async for batch in batches:
            outcome.took(batch)
            if req.tools is not None:
                continue  # a tool answer is taken apart once whole (see docs/api.md)
            # one event per piece, as OpenAI streams; one write per batch
            data = b"".join(
                writer.content(p.text, p.logprobs) for p, _ in batch if p.text or p.logprobs
            )
            if data:
                await response.write(data)
        try:
            answer = answer_of(req, outcome.result)
        except ApiError as e:  # the stream has begun: the error is its last event
            outcome.label = "invalid_output"
            await response.write(writer.error(e) + writer.done())
            await response.write_eof()
            return response
        if req.tools is not None:
            if answer.tool_calls is not None:
                outcome.tool_calls = len(answer.tool_calls)
                await response.write(writer.tool_calls(answer.tool_calls))
            elif answer.content:
                await response.write(writer.content(answer.content, []))
        data = writer.finish(answer.finish_reason)
        if req.include_usage:
            data += writer.usage(outcome.result)
        await response.write(data + writer.done())
        await response.write_eof()
        return response

    def observe(self, req: GenerationRequest, outcome: Outcome, started: float, label: str) -> None:
        m, result = self.ctx.metrics, outcome.result
        if result.completion_tokens:
            m.prompt_tokens.labels(label).inc(result.prompt_tokens)
            m.cached_tokens.labels(label).inc(result.cached_tokens)
            m.completion_tokens.labels(label).inc(result.completion_tokens)
        if outcome.first_token is not None and outcome.last_token is not None:
            m.time_to_first_token.labels(label).observe(outcome.first_token - started)
            span = outcome.last_token - outcome.first_token
            if span > 0 and result.completion_tokens > 1:
                m.tokens_per_second.labels(label).observe((result.completion_tokens - 1) / span)

    def details(self, req: GenerationRequest, outcome: Outcome, started: float) -> dict[str, Any]:
        result = outcome.result
        details: dict[str, Any] = {
            "prompt_tokens": result.prompt_tokens,
            "cached_tokens": result.cached_tokens,
            "completion_tokens": result.completion_tokens,
            "stream": req.stream,
        }
        if req.constrained:
            details["output"] = "tools" if req.tools is not None else req.output.kind
        if outcome.tool_calls:
            details["tool_calls"] = outcome.tool_calls
        if outcome.first_token is not None:
            details["ttft_ms"] = round((outcome.first_token - started) * 1000)
        if self.ctx.config.audit_content_hashes:
            prompt = canonical_bytes(list(req.prompt.messages) if self.chat else req.prompt.text)
            details["prompt_sha256"] = hashlib.sha256(prompt).hexdigest()
            details["completion_sha256"] = hashlib.sha256(result.text.encode("utf-8")).hexdigest()
        return details
