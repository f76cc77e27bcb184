"""An OpenAI-compatible HTTP API over the batching engine (FastAPI + uvicorn), and the chat page at `/`.

    POST /v1/chat/completions   text and image_url parts, multi-turn, n, seed, stop, stream (server-sent events)
    GET  /v1/models, GET /health, GET / (the chat page)

Choices made where OpenAI's API and InternVL differ (docs/serving.md):
- no `temperature` (or 0) decodes greedily, so an answer equals `model.chat`'s with the original's default
  `do_sample=False`; OpenAI's default of 1 would sample;
- a user message's images come first, then its text, as `chat` writes them: `<image>\\n` for the conversation's
  only image, `Image-k: <image>\\n` lines when there are several (numbered over the whole conversation); a text
  that already holds one `<image>` per image of its message is used as written;
- a system message replaces the template's system prompt;
- choice k of a request with `seed` samples with seed + k;
- `thinking: true` (or vLLM's `chat_template_kwargs: {"enable_thinking": true}`, or `--thinking` for every
  request) is InternVL3.5's thinking mode: its system prompt, temperature 0.6 unless the request sets one, and
  the <think> part in `reasoning_content` (serve/replies.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from nativevl.conversation import (
    IMAGE_PLACEHOLDER,
    THINKING_SAMPLING,
    THINKING_SYSTEM_PROMPT,
    chat_prompt,
    expand_images,
)
from nativevl.data.image import ImageError, load_image, open_image
from nativevl.device import check_device
from nativevl.infer.chat import chat_generation_config, check_tokenizer, speed_up
from nativevl.infer.generate import GenerationConfig
from nativevl.serve.engine import Engine, Event, Sequence
from nativevl.serve.replies import ApiError, complete, error_body, error_response, stream
from nativevl.tokenizer import InternVLTokenizer, load_tokenizer
from nativevl.weights import load_model

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """What the operator decides; every limit is per request unless it says otherwise."""

    model: str  # checkpoint folder
    model_name: str | None = None  # the id clients send as `model`; default: `model_id(model)`, the folder's
    # name, or the run's for a trainer's output folder (demo_out/sft/final -> sft, out/step-0000200 ->
    # out-step-0000200) or a Hugging Face cache snapshot (models--OpenGVLab--InternVL3-1B/snapshots/<sha> ->
    # InternVL3-1B)
    max_batch: int = 16  # sequences decoded together (across requests)
    max_body_bytes: int = 32 * 1024 * 1024
    # The rest of an oversize body is read and dropped before its 413, so clients that write the whole body
    # before reading (urllib, http.client, requests) get the answer, not a reset; past this many bytes in all,
    # or this many seconds after the body went over the limit, the 413 goes out with `Connection: close`.
    max_discard_bytes: int = 1024 * 1024 * 1024
    discard_timeout: float = 60.0
    max_images: int = 8
    max_tiles: int | None = None  # tiles per image (dynamic tiling's max_num); default: the model's
    max_model_len: int | None = None  # prompt + output tokens; default: the tokenizer's model_max_length
    default_max_tokens: int = 1024  # when the request sets none (capped by what the context has left)
    thinking: bool = False  # InternVL3.5's thinking mode for requests that do not say (`thinking` in the body)
    max_n: int = 8
    allowed_local_media_path: str | None = None  # image_url may name files under this folder (off when None)
    allow_remote_images: bool = False  # image_url may be http(s) (off by default: the server fetches nothing)
    remote_timeout: float = 10.0
    dtype: torch.dtype | None = None
    device: str | None = None
    v2pe_delta: float | None = None
    compile: bool = False  # torch.compile the language model (dynamic shapes): faster decode after a warm-up
    prepack: bool = False  # CPU: oneDNN-packed Linear weights (a second copy of them)
    quantize: str | None = None  # "int8" / "int4": the language model's linear layers quantized on load
    # LoRA adapters (model id -> adapter folder) beside the base, each answering requests that name it
    adapters: dict[str, str] = field(default_factory=dict)


# --- the request, as OpenAI defines it (only what we act on; other fields are ignored) ---------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # extension (vLLM, LMDeploy): 0 = off
    repetition_penalty: float = Field(1.0, gt=0)  # extension
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    thinking: bool | None = None  # extension; vLLM's `chat_template_kwargs: {"enable_thinking": …}` is read too


UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs", "response_format")


# --- from messages to a prompt ---------------------------------------------------------------------------------


def thinks(req: ChatRequest, default: bool) -> bool:
    """The request's `thinking`, else vLLM's chat_template_kwargs.enable_thinking, else the server's default."""
    kwargs = (req.model_extra or {}).get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ApiError(400, "chat_template_kwargs must be an object", "chat_template_kwargs")
    return bool(req.thinking if req.thinking is not None else kwargs.get("enable_thinking", default))


def parts(message: Message) -> tuple[str, list[str]]:
    """(the text parts joined by newlines, the image URLs in order)."""
    if message.content is None:
        return "", []
    if isinstance(message.content, str):
        return message.content, []
    texts = [p.text for p in message.content if isinstance(p, TextPart)]
    return "\n".join(texts), [p.image_url.url for p in message.content if isinstance(p, ImagePart)]


def render(messages: list[Message]) -> tuple[str | None, list[tuple[str, str]], str, list[str]]:
    """(system message or None, history (question, answer) pairs, the last question, every image URL in order)."""
    system = None
    turns = list(messages)
    while turns and turns[0].role in ("system", "developer"):
        text, images = parts(turns.pop(0))
        if images:
            raise ApiError(400, "a system message cannot hold images", "messages")
        system = text if system is None else system + "\n" + text
    texts, urls = [], []
    total = sum(len(parts(m)[1]) for m in turns)
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m.role != want:
            raise ApiError(400, f"messages[{i + len(messages) - len(turns)}] is a {m.role} message where a {want} "
                           "message was expected: after the system message, user and assistant must alternate, "
                           "ending with user", "messages")
        text, images = parts(m)
        if images and m.role != "user":
            raise ApiError(400, "only user messages can hold images", "messages")
        if images and text.count(IMAGE_PLACEHOLDER) != len(images):
            if IMAGE_PLACEHOLDER in text:
                raise ApiError(400, f"a message with {len(images)} image(s) writes {text.count(IMAGE_PLACEHOLDER)} "
                               f"{IMAGE_PLACEHOLDER} placeholder(s); write one per image or none", "messages")
            prefix = (f"{IMAGE_PLACEHOLDER}\n" if total == 1 else
                      "".join(f"Image-{len(urls) + k + 1}: {IMAGE_PLACEHOLDER}\n" for k in range(len(images))))
            text = prefix + text
        texts.append(text)
        urls.extend(images)
    if len(texts) % 2 == 0:
        raise ApiError(400, "the last message must be a user message", "messages")
    history = list(zip(texts[0:-1:2], texts[1::2], strict=True))
    return system, history, texts[-1], urls


# --- images ----------------------------------------------------------------------------------------------------


def image_bytes(url: str, cfg: ServeConfig, index: int) -> bytes | Path:
    """The image's bytes (data URL, remote URL when allowed) or its path (under the allowed folder)."""
    where = f"image {index + 1}"
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(400, f"{where}: a data URL must be `data:image/...;base64,<data>`", "messages")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: the data URL is not valid base64", "messages") from None
    if url.startswith(("http://", "https://")):
        if not cfg.allow_remote_images:
            raise ApiError(400, f"{where}: remote image URLs are turned off on this server (the operator can allow "
                           "them with --allow-remote-images); send the image as a data URL", "messages")
        try:
            with urllib.request.urlopen(url, timeout=cfg.remote_timeout) as r:  # noqa: S310 - http(s) checked above
                data = r.read(cfg.max_body_bytes + 1)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ApiError(400, f"{where}: could not fetch {url}: {e}", "messages") from None
        if len(data) > cfg.max_body_bytes:
            raise ApiError(400, f"{where}: {url} is larger than {cfg.max_body_bytes} bytes", "messages")
        return data
    if cfg.allowed_local_media_path is None:
        raise ApiError(400, f"{where}: local image paths are turned off on this server (the operator can allow a "
                       "folder with --allowed-local-media-path); send the image as a data URL", "messages")
    root = Path(cfg.allowed_local_media_path).resolve()
    path = Path(url.removeprefix("file://")).expanduser()
    path = (root / path if not path.is_absolute() else path).resolve()  # symlinks and .. resolved before the check
    if not path.is_relative_to(root):
        raise ApiError(400, f"{where}: {url} is outside the folder this server may read", "messages")
    return path


def load_tiles(urls: list[str], cfg: ServeConfig, size: int, max_tiles: int, dtype: torch.dtype
               ) -> tuple[torch.Tensor | None, list[int]]:
    tiles = []
    for i, url in enumerate(urls):
        try:
            tiles.append(load_image(open_image(image_bytes(url, cfg, i)), input_size=size, max_num=max_tiles))
        except ImageError as e:
            raise ApiError(400, f"image {i + 1}: {e}", "messages") from None
    return (torch.cat(tiles).to(dtype) if tiles else None), [t.shape[0] for t in tiles]


# --- the server --------------------------------------------------------------------------------------------------

GENERIC_FOLDER = re.compile(r"final|(step|checkpoint)-\d+")  # the trainer's out/final, out/step-0000200; HF's


def model_id(folder: str | Path) -> str:
    """The id a checkpoint folder is served under when the operator names none: the folder's name, except for
    names that say nothing about the model: a trainer's `final` is its run's (demo_out/sft/final -> `sft`), a
    step's is the run's and the step's (out/step-0000200 -> `out-step-0000200`), and a Hugging Face cache
    snapshot (models--OpenGVLab--InternVL3-1B/snapshots/<sha>) is the model's (`InternVL3-1B`)."""
    path = Path(folder).resolve()
    parent = path.parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--"):
        return parent.parent.name.split("--")[-1]
    if not GENERIC_FOLDER.fullmatch(path.name) or not parent.name:
        return path.name
    return parent.name if path.name == "final" else f"{parent.name}-{path.name}"


def server_urls(host: str, port: int) -> tuple[str, str]:
    """(the API's base URL, the chat page's URL) of a server listening on host:port."""
    root = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    return root + "/v1", root + "/"


class Server:
    """The loaded model, its engine and the request handlers."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        device = check_device(cfg.device)  # one line for 'gpu' or a device this machine lacks, before loading
        self.model = load_model(cfg.model, dtype=cfg.dtype, device=device).eval()
        self.name = cfg.model_name or model_id(cfg.model)
        use_adapter = self._load_adapters() if cfg.adapters else None
        speed_up(self.model, cfg.prepack, cfg.compile, None if cfg.adapters else cfg.quantize)
        self.tokenizer: InternVLTokenizer = load_tokenizer(cfg.model)
        check_tokenizer(self.model, self.tokenizer)
        self.max_tiles = cfg.max_tiles or self.model.config.max_dynamic_patch
        self.max_len = (cfg.max_model_len or self.tokenizer.model_max_length
                        or self.model.config.text.max_position_embeddings)
        self.engine = Engine(self.model, self.tokenizer, cfg.max_batch, cfg.v2pe_delta, use_adapter)
        self.created = int(time.time())

    def _load_adapters(self) -> Callable[[str | None], None]:
        """Every adapter into the one model (a quantized base first: the adapters stay float, as in QLoRA)."""
        from nativevl.weights import checkpoint_hash
        from nativevl.weights.lora import load_adapter, use_adapter

        cfg = self.cfg
        if cfg.prepack or cfg.compile:
            raise ValueError("--adapter serves LoRA layers beside the base: without --prepack and --compile "
                             "(merge one adapter into its base with `nativevl merge-lora` for those)")
        if self.name in cfg.adapters:
            raise ValueError(f"adapter name {self.name!r} is the base model's id: give the adapter another name")
        speed_up(self.model, quantize=cfg.quantize)
        digest = checkpoint_hash(cfg.model)
        for name, folder in cfg.adapters.items():
            load_adapter(self.model, folder, name=name, base_sha256=digest)
        use_adapter(self.model, None)
        return lambda name: use_adapter(self.model, name)

    @property
    def names(self) -> list[str]:
        """The model ids this server answers to: the base's, then each adapter's."""
        return [self.name, *self.cfg.adapters]

    def prepare(self, req: ChatRequest) -> tuple[list[int], torch.Tensor | None, GenerationConfig, bool]:
        """Prompt ids, tiles, settings and whether it thinks, for a request; or an ApiError naming what is wrong."""
        if req.model not in self.names:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server serves "
                           f"{', '.join(map(repr, self.names))}", "model", "model_not_found")
        for key in UNSUPPORTED:
            if (req.model_extra or {}).get(key) not in (None, False, [], {}):
                raise ApiError(400, f"{key} is not supported by this server", key)
        if req.n > self.cfg.max_n:
            raise ApiError(400, f"n is {req.n}; this server allows at most {self.cfg.max_n}", "n")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes at most 4 non-empty strings", "stop")
        system, history, question, urls = render(req.messages)
        thinking = thinks(req, self.cfg.thinking)
        if thinking and system is not None:
            raise ApiError(400, "thinking mode sets the system message (InternVL3.5's thinking prompt): send no "
                           "system message with it", "messages")
        system = THINKING_SYSTEM_PROMPT if thinking else system
        temperature = THINKING_SAMPLING["temperature"] if thinking and req.temperature is None else req.temperature
        if len(urls) > self.cfg.max_images:
            raise ApiError(400, f"{len(urls)} images; this server allows at most {self.cfg.max_images} per request",
                           "messages")
        dtype = next(self.model.parameters()).dtype
        pixels, patches = load_tiles(urls, self.cfg, self.model.config.vision.image_size, self.max_tiles, dtype)
        prompt = chat_prompt(question, history, system if system is not None else self.model.config.system_message,
                             self.model.config.template)
        try:
            ids = self.tokenizer.prompt_ids(expand_images(prompt, patches, self.model.num_image_token))
        except ValueError as e:
            raise ApiError(400, str(e), "messages") from None
        left = self.max_len - len(ids)
        wanted = req.max_completion_tokens or req.max_tokens
        if left < 1 or (wanted is not None and wanted > left):
            raise ApiError(400, f"the prompt is {len(ids)} tokens and {wanted or 1} more were asked for, over this "
                           f"model's {self.max_len}-token context", "messages", "context_length_exceeded")
        settings = dict(max_new_tokens=min(wanted or self.cfg.default_max_tokens, left), stop_strings=stops,
                        do_sample=bool(temperature), temperature=temperature or 1.0, top_p=req.top_p,
                        top_k=req.top_k, repetition_penalty=req.repetition_penalty)
        try:
            config = chat_generation_config(self.model, self.tokenizer, settings)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        return ids, pixels, config, thinking

    def submit(self, req: ChatRequest, ids: list[int], pixels: torch.Tensor | None, config: GenerationConfig,
               loop: asyncio.AbstractEventLoop) -> tuple[list[Sequence], asyncio.Queue[tuple[int, Event]]]:
        """One sequence per choice; their events arrive on the returned queue as (choice index, event)."""
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        seqs = []
        for k in range(req.n):
            seed = None if req.seed is None else req.seed + k
            cfg = GenerationConfig(**{**config.__dict__, "seed": seed})
            emit = (lambda e, k=k: loop.call_soon_threadsafe(events.put_nowait, (k, e)))
            seqs.append(Sequence(list(ids), pixels, cfg, emit, adapter=None if req.model == self.name else req.model))
        for seq in seqs:
            self.engine.submit(seq)
        return seqs, events


def create_app(cfg: ServeConfig) -> FastAPI:
    server = Server(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        yield
        server.engine.stop()  # after uvicorn's graceful wait: whatever still runs is cancelled

    app = FastAPI(title="nativevl", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            at = f" at character {loc[0]}" if loc else ""
            return JSONResponse(error_body(f"the body is not valid JSON{at}: "
                                           f"{first.get('ctx', {}).get('error', first.get('msg'))}"), status_code=400)
        else:
            message = f"{'.'.join(loc) or 'body'}: {first.get('msg')}"
        return JSONResponse(error_body(message, param=".".join(loc) or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail), "invalid_request_error" if e.status_code < 500 else
                                       "server_error"), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        s = server.engine.stats
        return {"status": "ok", "model": server.name, "running": s.running, "waiting": s.waiting,
                "steps": s.steps, "prefills": s.prefills, "tokens": s.tokens, "max_running": s.max_running}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": server.created,
                                            "owned_by": "nativevl", "max_model_len": server.max_len}
                                           for name in server.names]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        html = resources.files("nativevl.serve").joinpath("page.html").read_text(encoding="utf-8")
        return html.replace("{{MODEL}}", server.name)

    @app.post("/v1/chat/completions")
    async def completions(req: ChatRequest, request: Request) -> Any:
        ids, pixels, config, thinking = await run_in_threadpool(server.prepare, req)
        seqs, events = server.submit(req, ids, pixels, config, asyncio.get_running_loop())
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(stream(seqs, events, head, len(ids), include_usage, thinking),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await complete(request, seqs, events, head, len(ids), thinking)

    return app


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app sees it (Content-Length or
    not); the body read here is replayed to the app, whose later receives (disconnects) go to the client.

    An oversize body is read to its end and dropped (chunk by chunk: memory stays at one chunk) before the 413
    goes out. Answering first would not do: uvicorn closes the connection after the response when the client
    sent `Connection: close` (urllib always does), and closing a socket with unread bytes makes the kernel
    send a reset, which loses the 413 under a client still writing its body. Draining is bounded: a body
    declared or counted over `discard` bytes, or still arriving `discard_seconds` after it went over the
    limit, gets the 413 at once with `Connection: close` (such a client may see a reset instead); so does one
    sent with `Expect: 100-continue`, whose client waits for the answer before sending the body."""

    def __init__(self, app: Any, limit: int, discard: int = 1024 * 1024 * 1024,
                 discard_seconds: float = 60.0) -> None:
        self.app, self.limit, self.discard, self.discard_seconds = app, limit, discard, discard_seconds

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            waiting = headers.get(b"expect", b"").lower() == b"100-continue"
            return await self.refuse(scope, receive, send, 0, True, int(declared) <= self.discard and not waiting)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                received, body = len(body), bytearray()  # dropped before the drain, not held through it
                return await self.refuse(scope, receive, send, received, more)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def refuse(self, scope: dict[str, Any], receive: Any, send: Any, received: int, more: bool,
                     drain: bool = True) -> None:
        """Read and drop the rest of an oversize body (`received` bytes read so far, `more` to come) within the
        bounds, unless `drain` is false; then answer 413, with `Connection: close` where some was left unread."""
        try:
            async with asyncio.timeout(self.discard_seconds):
                while drain and more and received <= self.discard:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    received += len(message.get("body", b""))
                    more = message.get("more_body", False)
        except TimeoutError:
            pass
        response = JSONResponse(error_body(f"the request body is over this server's limit of {self.limit} bytes",
                                           code="request_too_large"), status_code=413,
                                headers={"connection": "close"} if more else None)
        await response(scope, receive, send)


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: float = 30.0) -> None:
    """Run until SIGINT / SIGTERM; in-flight requests get `graceful_timeout` seconds to finish, then are
    cancelled."""
    import uvicorn

    app = BodyLimit(create_app(cfg), cfg.max_body_bytes, cfg.max_discard_bytes, cfg.discard_timeout)
    api, page = server_urls(host, port)
    log.info('serving model %r (the id clients send as "model"): API %s, chat page %s', app.app.state.server.name,
             api, page)
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=graceful_timeout, log_level="info")
