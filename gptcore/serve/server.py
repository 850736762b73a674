"""`gptcore serve`: a model behind an OpenAI-compatible HTTP API, and a chat page at `/`.

Routes (Starlette on uvicorn):
- `GET /health`: 200 {"status": "ok", "requests": choices generating or waiting} once the model
  is loaded, 503 {"status": "loading"} before;
- `GET /v1/models`, `GET /v1/models/{id}`: the one model served, under `--name`;
- `POST /v1/completions` and `POST /v1/chat/completions`: `prompt` / `messages`, `max_tokens`,
  `temperature`, `top_p`, `top_k` (an extension, as vLLM's), `stop`, `seed`, `n`, `stream`
  (server-sent events ending with `data: [DONE]`) with `stream_options.include_usage`;
  every response carries `usage` token counts (a stream, when asked) and each choice a
  `finish_reason`: "stop" (end of text or a stop string) or "length" (max_tokens);
- `GET /`: the chat page, one self-contained file (gptcore/chat.html).

Requests are generated together by one `gptcore.serve.batcher.Engine` (continuous batching), which
shares its slots fairly between requests; each choice's text is decoded and cut at stop strings
on the event loop as its tokens come (generate.py's `TextDecoder` and `StopCutter`), while
parsing and tokenizing a request run in worker threads, so a large request never stalls the
others or `/health`. A client that disconnects, streaming or not, stops its generation at the
next step; a generation that fails fails its own request alone (a 500, or in a stream an error
event that ends it).

The work one request may ask for is bounded by the `ServeOptions` limits (`gptcore serve`
flags): its choices (prompts x n), prompt tokens, max_tokens and body size; a request past one
gets a 400 (413 for the body) naming the limit and its flag, and a request that finds more rows
waiting than `max_waiting` a 503. Without an API key, only requests whose Host is `localhost`,
an IP address or an `allowed_hosts` name are answered (403 otherwise): a web page whose own name
was rebound to the server's address (DNS rebinding) would send its name. Every JSON route wants
`Content-Type: application/json` (415 otherwise), which a page on another site cannot send
without the CORS permission this server never gives.

A prompt longer than the model's context keeps its last block_size tokens (as `gptcore chat`
and `gptcore sample` do); `usage.prompt_tokens` counts the whole prompt. Bad requests get
OpenAI's error shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gptcore.errors import DataError, GptcoreError, parse_json
from gptcore.finetune.instruct import PromptTemplate, render_prompt, reply_stops, template_of
from gptcore.generate import StopCutter, TextDecoder, prompt_ids
from gptcore.hf.convert import load_any
from gptcore.sampling import Sampling, SamplingError
from gptcore.serve.batcher import Engine, EngineBusy, GenerationFailed, TokenStream
from gptcore.tokenizer import Tokenizer

MAX_STOP = 4  # stop strings per request, as OpenAI allows
# characters per stop string: a stop string is a delimiter, and each new piece of text is
# compared with every one, so a long one would cost every step of the reply
MAX_STOP_CHARS = 256
# requests parsed and tokenized at once, in worker threads: that work mostly holds the GIL, so
# more at once would not be faster, only hold more memory
PREPARE_THREADS = 4
ROLES = ("system", "developer", "user", "assistant")
# fields whose truthy values ask for what this server does not do
UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "echo",
    "suffix",
    "tools",
    "functions",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
)


@dataclass(frozen=True)
class ServeOptions:
    """What `gptcore serve` was started with."""

    model_path: Path  # a model file or a Hugging Face folder
    name: str  # the model id clients send
    defaults: Sampling  # for fields a request leaves out (not the seed: see _settings)
    device: str
    max_tokens_limit: int  # a request's max_tokens may not exceed this
    max_batch: int  # rows (choices) generated together; more wait their turn
    max_body_bytes: int
    api_key: str | None  # None: no key, and then only the Hosts below are answered
    max_choices: int  # choices one request may ask for: its prompts x n
    max_prompt_tokens: int  # tokens of one request's prompts together
    max_waiting: int  # rows waiting for a slot, across requests; past it a request gets 503
    allowed_hosts: tuple[str, ...]  # Host names answered without a key, beside localhost and IPs

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            # an empty key from an unset variable must not quietly serve everyone
            raise GptcoreError("the API key is empty: give a non-empty key, or none to serve without one")


class ApiError(Exception):
    """A request the server refuses, answered in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# ---------------------------------------------------------------------------------------------
# prompts


def render_chat(messages: Sequence[tuple[str, str]], template: PromptTemplate | None = None) -> str:
    """The prompt for a chat: (role, text) turns as one text, which the model then continues.

    A base model (no template) gets the conversation format of `gptcore chat`: a person's turn is
    a line that the model's reply continues, each reply ends its line, and a system (or developer)
    turn is a line of text before them. An instruction-tuned model gets its prompt template, which
    holds one turn, as `gptcore chat --model <it>` does: the last user message is the instruction,
    or, when system messages are given, they are the instruction and the last user message its
    input (as `gptcore chat --instruction`). This is the one place a conversation becomes a prompt.
    """
    if template is not None:
        system = "\n".join(text for role, text in messages if role in ("system", "developer"))
        user = next((text for role, text in reversed(messages) if role == "user"), "")
        return render_prompt(template, system, user) if system else render_prompt(template, user)
    text = ""
    for role, content in messages:
        if role == "assistant":
            text += content if content.endswith("\n") else content + "\n"
        else:
            if text and not text.endswith("\n"):
                text += "\n"
            text += content
    return text


# ---------------------------------------------------------------------------------------------
# request fields


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(body: dict, key: str, check: Callable[[Any], bool], what: str) -> Any:
    value = body.get(key)
    if value is not None and not check(value):
        raise ApiError(400, f"{key} must be {what}, got {_json_shown(value)}", param=key)
    return value


def _json_shown(value: Any, limit: int = 100) -> str:
    """A request value as JSON in a message: cut at `limit` characters, whatever its size or depth."""
    try:
        text = json.dumps(value)
    except RecursionError:
        return "(a value nested too deeply to show)"
    return text if len(text) <= limit else text[:limit] + "..."


def _settings(body: dict, defaults: Sampling, limit: int) -> Sampling:
    """The sampling settings of a request: its fields over the server's defaults, checked by the
    Sampling type, whose rules are params.yaml's and the CLI's too. The setting it refuses is the
    error's `param`, by the request's name for it (max_tokens for max_new_tokens)."""
    # chat's newer max_completion_tokens counts when max_tokens is absent
    keys = ("max_tokens", "max_completion_tokens")
    length_key = next((key for key in keys if body.get(key) is not None), "max_tokens")
    fields = {key: body.get(key) for key in ("temperature", "top_k", "top_p", "stop", "seed")}
    fields["max_new_tokens"] = body.get(length_key)
    if isinstance(fields["stop"], str):
        fields["stop"] = [fields["stop"]]
    if fields["max_new_tokens"] is None:
        fields["max_new_tokens"] = min(defaults.max_new_tokens, limit)
    if fields["seed"] is None:
        # a fresh seed per request: one seed for all (the params') would make every reply the same
        fields["seed"] = int.from_bytes(os.urandom(4), "little")
    try:
        sampling = replace(defaults, **{k: v for k, v in fields.items() if v is not None})
    except SamplingError as exc:
        param = length_key if exc.field == "max_new_tokens" else exc.field
        shown = _json_shown(list(exc.value) if isinstance(exc.value, tuple) else exc.value)
        raise ApiError(400, f"{param} = {shown} is invalid: {exc.rule}", param=param) from None
    if sampling.max_new_tokens > limit:
        raise _over_limit(
            length_key, f"{length_key} = {sampling.max_new_tokens}", limit, "--max-tokens-limit"
        )
    if len(sampling.stop) > MAX_STOP:
        raise ApiError(400, f"stop is invalid: at most {MAX_STOP} strings are allowed", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in sampling.stop):
        raise ApiError(
            400, f"stop is invalid: a stop string may have at most {MAX_STOP_CHARS} characters", param="stop"
        )
    return sampling


def _over_limit(param: str, what: str, limit: int, flag: str) -> ApiError:
    """A request over one of the server's limits: the 400 names the limit and its flag."""
    return ApiError(
        400, f"{what} is invalid: must be at most {limit} (this server's limit, {flag})", param=param
    )


def _prompts(body: dict) -> list[str]:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "you must provide a prompt", param="prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
    return prompts


def _messages(body: dict) -> list[tuple[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", param="messages")
    turns = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"{param}.role must be one of {', '.join(ROLES)}", param=f"{param}.role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(
                    400, f"{param}.content: only text parts are supported", param=f"{param}.content"
                )
            for j, part in enumerate(content):
                if not isinstance(part.get("text"), str):
                    where = f"{param}.content[{j}].text"
                    raise ApiError(400, f"{where} must be a string", param=where)
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{param}.content must be a string", param=f"{param}.content")
        turns.append((message["role"], content))
    return turns


# ---------------------------------------------------------------------------------------------
# generation of one request's choices


@dataclass
class _Choice:
    """One choice's token stream, turned into text on the event loop as its tokens come."""

    stream: TokenStream
    decoder: TextDecoder
    cutter: StopCutter
    eot_id: int
    ended: bool = False
    drained: bool = False  # the token stream ran to its end (no stop string cut it short)

    def finish_reason(self) -> str:
        return "length" if self.drained and self.stream.finish_reason == "length" else "stop"

    def take(self) -> str:
        """The text that can be sent now (maybe ""), without waiting; sets `ended` when the
        choice is over. Raises GenerationFailed when its generation failed."""
        tokens, ended = self.stream.take()
        text = ""
        for token in tokens:
            if token != self.eot_id:  # the stream ends after it
                text += self.cutter.feed(self.decoder.feed(token))
            if self.cutter.stopped:
                self.stream.close()  # a stop string: generating more is wasted
                self.ended = True
                return text
        if ended:
            text += self.cutter.feed(self.decoder.flush())
            if not self.cutter.stopped:
                text += self.cutter.flush()
                self.drained = True
            self.ended = True
        return text


async def _merged(choices: list[_Choice], ready: asyncio.Event) -> AsyncIterator[tuple[int, str | None]]:
    """(choice index, text piece) as each choice's text comes, then (index, None) when it ends;
    `ready` is set whenever one of their streams has something new. Raises GenerationFailed when
    a choice's generation fails. Closing this early (a client gone) stops every choice's
    generation."""
    try:
        while True:
            ready.clear()  # before taking: what arrives after the takes sets it again
            for i, choice in enumerate(choices):
                if choice.ended:
                    continue
                if text := choice.take():
                    yield i, text
                if choice.ended:
                    yield i, None
            if all(choice.ended for choice in choices):
                return
            await ready.wait()
    finally:
        for choice in choices:
            choice.stream.close()


# ---------------------------------------------------------------------------------------------
# the app


class _Served:
    """The model once loaded (in a thread, so /health answers meanwhile)."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.tokenizer: Tokenizer | None = None
        self.engine: Engine | None = None
        self.block_size = 0
        self.template: PromptTemplate | None = None  # an instruction-tuned model's prompt template


def build_app(options: ServeOptions, on_load_error: Callable[[str], None] | None = None) -> Starlette:
    """The ASGI app; the model loads in the background when the app starts."""
    served = _Served()
    page = resources.files("gptcore.serve").joinpath("chat.html").read_text(encoding="utf-8")

    def load() -> None:
        try:
            model, tokenizer, meta = load_any(options.model_path, options.device)
            served.tokenizer, served.block_size = tokenizer, model.config.block_size
            served.template = template_of(meta)
            served.engine = Engine(model, tokenizer.eot_id, options.max_batch, options.max_waiting)
        except Exception as exc:
            served.error = f"cannot load {options.model_path}: {exc}"
            if on_load_error is not None:
                on_load_error(served.error)

    preparing = anyio.CapacityLimiter(PREPARE_THREADS)

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=load, name="gptcore-load", daemon=True).start()
        yield
        if served.engine is not None:
            served.engine.shutdown()

    def ready_engine() -> tuple[Engine, Tokenizer]:
        if served.engine is None or served.tokenizer is None:
            message = served.error or "the model is still loading; try again shortly"
            raise ApiError(503, message, kind="server_error", code="model_not_ready")
        return served.engine, served.tokenizer

    def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), options.api_key.encode()
        ):
            raise ApiError(
                401, "invalid or missing API key: send Authorization: Bearer <key>", code="invalid_api_key"
            )

    async def read_json(request: Request) -> dict:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            # a web page may send text/plain to any site without asking; JSON needs CORS's consent
            shown = media_type or "none"
            raise ApiError(415, f"Content-Type must be application/json, got {shown}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > options.max_body_bytes:
            raise _too_large(options.max_body_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > options.max_body_bytes:
                raise _too_large(options.max_body_bytes)
        try:
            data = await anyio.to_thread.run_sync(
                parse_json, bytes(body), "the request body", limiter=preparing
            )
        except DataError as exc:
            raise ApiError(400, str(exc)) from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = data.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "you must provide a model parameter", param="model")
        if model != options.name:
            raise ApiError(
                404,
                f"the model '{model}' does not exist: this server serves '{options.name}'",
                param="model",
                code="model_not_found",
            )
        return data

    async def health(request: Request) -> Response:
        if served.engine is not None:
            # requests: the choices being generated or waiting for a slot
            return JSONResponse({"status": "ok", "model": options.name, "requests": served.engine.live()})
        if served.error is not None:
            return JSONResponse({"status": "error", "message": served.error}, status_code=503)
        return JSONResponse({"status": "loading", "model": options.name}, status_code=503)

    def model_card() -> dict:
        return {"id": options.name, "object": "model", "created": 0, "owned_by": "gptcore"}

    async def list_models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request: Request) -> Response:
        authorize(request)
        if request.path_params["model"] != options.name:
            raise ApiError(
                404, f"the model '{request.path_params['model']}' does not exist", code="model_not_found"
            )
        return JSONResponse(model_card())

    async def respond(request: Request, chat: bool) -> Response:
        authorize(request)
        body = await read_json(request)
        messages = _messages(body) if chat else None
        prompts = [] if chat else _prompts(body)
        for key in UNSUPPORTED:  # refused rather than silently ignored: the client relies on them
            if body.get(key):
                raise ApiError(400, f"{key} is not supported by gptcore serve", param=key)
        sampling = _settings(body, options.defaults, options.max_tokens_limit)
        n = _optional(body, "n", lambda v: _is_int(v) and v >= 1, "an integer >= 1") or 1
        if n > options.max_choices:
            raise _over_limit("n", f"n = {n}", options.max_choices, "--max-choices")
        if len(prompts) * n > options.max_choices:  # refused before any work is done for them
            what = f"choices = prompts x n = {len(prompts)} x {n} = {len(prompts) * n}"
            raise _over_limit("prompt", what, options.max_choices, "--max-choices")
        stream = _optional(body, "stream", lambda v: isinstance(v, bool), "true or false") or False
        stream_options = body.get("stream_options") or {}
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        engine, tokenizer = ready_engine()
        if messages is not None and served.template is not None:
            # a reply ends where the template would open a new section
            sampling = replace(sampling, stop=sampling.stop + reply_stops(served.template))

        def encode() -> list[list[int]]:
            texts = [render_chat(messages, served.template)] if messages is not None else prompts
            return [prompt_ids(tokenizer, text) for text in texts]

        prompts_ids = await anyio.to_thread.run_sync(encode, limiter=preparing)
        prompt_tokens = sum(len(ids) for ids in prompts_ids)  # once per prompt, whatever n is
        if prompt_tokens > options.max_prompt_tokens:
            param = "messages" if chat else "prompt"
            what = f"prompt tokens = {prompt_tokens}"
            raise _over_limit(param, what, options.max_prompt_tokens, "--max-prompt-tokens")

        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:  # on the engine thread, after each token of this request
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
                loop.call_soon_threadsafe(ready.set)

        # choice k of a prompt is seeded with seed + k: n choices differ, and a seeded request repeats
        assert sampling.seed is not None  # _settings gives every request one
        rows = [
            (ids, replace(sampling, seed=(sampling.seed + k) % 2**63))
            for ids in prompts_ids
            for k in range(n)
        ]
        del prompts_ids  # the engine keeps what the model sees of them
        try:
            streams = engine.submit_all(rows, wake)
        except EngineBusy as exc:
            raise ApiError(
                503,
                f"this server is busy ({exc}; --max-waiting lets {options.max_waiting} wait): try again shortly",
                kind="server_error",
                code="server_busy",
            ) from None
        del rows
        choices = [
            _Choice(s, TextDecoder(tokenizer), StopCutter(s.sampling.stop), tokenizer.eot_id) for s in streams
        ]
        head = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            "created": int(time.time()),
            "model": options.name,
        }

        def usage() -> dict:
            completion_tokens = sum(c.stream.generated for c in choices)
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }

        if stream:
            return StreamingResponse(
                _events(head, chat, choices, ready, usage if include_usage else None),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        texts = [""] * len(choices)
        failure: Exception | None = None
        async with anyio.create_task_group() as group:

            async def watch() -> None:  # a client that goes away stops its generation
                while not await request.is_disconnected():
                    await anyio.sleep(0.1)
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                async for i, piece in _merged(choices, ready):
                    texts[i] += piece or ""
            except GenerationFailed as exc:
                failure = exc
            group.cancel_scope.cancel()
        if failure is not None:
            raise ApiError(500, str(failure), kind="server_error", code="generation_failed")
        if chat:
            out = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": c.finish_reason(),
                }
                for i, (text, c) in enumerate(zip(texts, choices, strict=True))
            ]
            return JSONResponse({**head, "object": "chat.completion", "choices": out, "usage": usage()})
        out = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": c.finish_reason()}
            for i, (text, c) in enumerate(zip(texts, choices, strict=True))
        ]
        return JSONResponse({**head, "object": "text_completion", "choices": out, "usage": usage()})

    async def completions(request: Request) -> Response:
        return await respond(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await respond(request, chat=True)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return ApiError(
            exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind
        ).response()

    async def server_error(request: Request, exc: Exception) -> Response:
        return ApiError(500, f"internal error: {exc}", kind="server_error").response()

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/v1/models", list_models),
        Route("/v1/models/{model:path}", get_model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    handlers = {ApiError: api_error, HTTPException: http_error, Exception: server_error}
    middleware = (
        [] if options.api_key is not None else [Middleware(_HostGuard, allowed=options.allowed_hosts)]
    )
    return Starlette(
        routes=routes,
        exception_handlers=handlers,
        middleware=middleware,
        lifespan=contextlib.asynccontextmanager(lifespan),
    )


def host_allowed(host: str | None, allowed: Collection[str]) -> bool:
    """Whether a key-less server answers a request with this Host header: `localhost`, an IP
    address or a name in `allowed`, with any port. A page whose name an attacker rebinds to this
    machine sends that name, never one of these; a request without a Host is no browser's."""
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [v6]:port
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost" or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _HostGuard:
    """Refuses, with a 403, a request whose Host `host_allowed` does not allow."""

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = {name.lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hosts = [value.decode("latin-1") for key, value in scope["headers"] if key == b"host"]
            if len(hosts) > 1 or not host_allowed(hosts[0] if hosts else None, self.allowed):
                error = ApiError(
                    403,
                    f"Host {', '.join(hosts)!r} is not allowed: without an API key this server answers "
                    "only localhost, IP addresses and the names given with --allow-host",
                    code="host_not_allowed",
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server's limit of {limit} bytes")


def _sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def _events(
    head: dict,
    chat: bool,
    choices: list[_Choice],
    ready: asyncio.Event,
    usage: Callable[[], dict] | None,
) -> AsyncIterator[bytes]:
    """A streamed response: one chunk per text piece, a last one per choice with its
    finish_reason, the usage when asked, then [DONE]; a generation that fails ends the stream with
    an error event, `data: {"error": {...}}`, instead (what OpenAI's clients raise on)."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(i: int, text: str | None, finish: str | None, role: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**head, "object": kind, "choices": [choice]})

    try:
        if chat:
            for i in range(len(choices)):
                yield chunk(i, None, None, role=True)
        async for i, piece in _merged(choices, ready):
            yield chunk(i, piece, None) if piece is not None else chunk(i, None, choices[i].finish_reason())
        if usage is not None:
            yield _sse({**head, "object": kind, "choices": [], "usage": usage()})
    except Exception as exc:  # the status line is sent: the client learns of it in the stream
        message = str(exc) if isinstance(exc, GenerationFailed) else f"internal error: {exc}"
        yield _sse(ApiError(500, message, kind="server_error", code="generation_failed").body())
        return
    yield _sse("[DONE]")


def serve(options: ServeOptions, host: str, port: int) -> None:
    """Run the server until Ctrl-C; a model that fails to load stops it with that error."""
    import uvicorn

    from gptcore.errors import GptcoreError

    failure: list[str] = []

    def stop(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(build_app(options, stop), host=host, port=port, log_level="info"))
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(
        f"gptcore serve: {options.model_path} as '{options.name}' at {where}/ (chat page) and {where}/v1",
        flush=True,
    )
    # The engine thread hands each token to the event loop; with Python's default 5 ms GIL switch
    # interval every hand-off waits out the interval, which costs a single stream most of its
    # speed (measured: docs/serving.md, "Many users at once")
    sys.setswitchinterval(0.0005)
    torch.set_grad_enabled(False)
    server.run()
    if failure:
        raise GptcoreError(failure[0])
