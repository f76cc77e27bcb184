"""What a request's events become: OpenAI's chat.completion reply, or its chat.completion.chunk server-sent
events, and the error bodies; in thinking mode the <think> part goes to `reasoning_content` (the field DeepSeek's
API and vLLM's reasoning parsers use), the answer to `content`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from nativevl.conversation import ThinkingStream, split_thinking
from nativevl.serve.engine import Event, Sequence


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status)


async def collect(seqs: list[Sequence], events: asyncio.Queue[tuple[int, Event]]
                  ) -> AsyncIterator[tuple[int, Event]]:
    """Each choice's events until every choice has finished; the sequences are cancelled if the caller stops."""
    left = len(seqs)
    try:
        while left:
            k, e = await events.get()
            left -= e.finish_reason is not None
            yield k, e
    finally:
        for seq in seqs:
            seq.cancel()  # no-op for finished ones; frees the slot of a client that went away


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def failure(e: Event) -> ApiError:
    if e.finish_reason == "cancelled":
        return ApiError(503, "the server is shutting down; the request was cancelled", kind="server_error")
    return ApiError(500, f"generation failed: {e.error}", kind="server_error")


async def complete(request: Request, seqs: list[Sequence], events: asyncio.Queue[tuple[int, Event]],
                   head: dict[str, Any], prompt_tokens: int, thinking: bool) -> JSONResponse:
    texts, ends = [""] * len(seqs), [Event()] * len(seqs)

    async def gather() -> None:
        async for k, e in collect(seqs, events):
            texts[k] += e.text
            if e.finish_reason:
                ends[k] = e

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, gone = asyncio.create_task(gather()), asyncio.create_task(disconnected())
    await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not work.done():  # the client went away: free its slots, answer nobody
        work.cancel()
        for seq in seqs:
            seq.cancel()
        return JSONResponse(error_body("client disconnected"), status_code=499)
    gone.cancel()
    bad = next((e for e in ends if e.finish_reason not in ("stop", "length")), None)
    if bad is not None:
        return error_response(failure(bad))
    choices = [{"index": k, "message": message(texts[k], thinking), "finish_reason": ends[k].finish_reason,
                "logprobs": None} for k in range(len(seqs))]
    return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                         "usage": usage(prompt_tokens, sum(e.completion_tokens for e in ends))})


def message(text: str, thinking: bool) -> dict[str, str]:
    """The reply; in thinking mode the <think> part goes to `reasoning_content` (DeepSeek's and vLLM's field)."""
    if not thinking:
        return {"role": "assistant", "content": text.strip()}
    reasoning, answer = split_thinking(text)
    return {"role": "assistant", "content": answer, "reasoning_content": reasoning}


async def stream(seqs: list[Sequence], events: asyncio.Queue[tuple[int, Event]], head: dict[str, Any],
                 prompt_tokens: int, include_usage: bool, thinking: bool = False) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`; in thinking mode the deltas of
    the <think> part come as `reasoning_content`."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"

    yield chunk([{"index": k, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                 for k in range(len(seqs))])
    completion, parts = 0, [ThinkingStream() for _ in seqs]
    async for k, e in collect(seqs, events):
        reasoning, text = parts[k].feed(e.text) if thinking else ("", e.text)
        if reasoning:
            yield chunk([{"index": k, "delta": {"reasoning_content": reasoning}, "finish_reason": None}])
        if text:
            yield chunk([{"index": k, "delta": {"content": text}, "finish_reason": None}])
        if e.finish_reason in ("stop", "length"):
            for field, held in zip(("reasoning_content", "content"), parts[k].finish() if thinking else ("", "")):
                if held:
                    yield chunk([{"index": k, "delta": {field: held}, "finish_reason": None}])
            completion += e.completion_tokens
            yield chunk([{"index": k, "delta": {}, "finish_reason": e.finish_reason}])
        elif e.finish_reason:
            err = failure(e)
            yield f"data: {json.dumps(error_body(err.message, err.kind))}\n\n"
            return
    if include_usage:
        yield chunk([], usage=usage(prompt_tokens, completion))
    yield "data: [DONE]\n\n"
