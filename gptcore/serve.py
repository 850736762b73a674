"""`gptcore serve`: a model behind an OpenAI-compatible HTTP API, and a chat page at `/`.

Routes (Starlette on uvicorn):
- `GET /health`: 200 {"status": "ok", "requests": live requests} once the model is loaded,
  503 {"status": "loading"} before;
- `GET /v1/models`, `GET /v1/models/{id}`: the one model served, under `--name`;
- `POST /v1/completions` and `POST /v1/chat/completions`: `prompt` / `messages`, `max_tokens`,
  `temperature`, `top_p`, `top_k` (an extension, as vLLM's), `stop`, `seed`, `n`, `stream`
  (server-sent events ending with `data: [DONE]`) with `stream_options.include_usage`;
  every response carries `usage` token counts (a stream, when asked) and each choice a
  `finish_reason`: "stop" (end of text or a stop string) or "length" (max_tokens);
- `GET /`: the chat page, one self-contained file (gptcore/chat.html).

Requests are generated together by one `gptcore.engine.Engine` (continuous batching); each
stream's text is decoded and cut at stop strings with generate.py's own functions. A client
that disconnects, streaming or not, stops its generation at the next step.

A prompt longer than the model's context keeps its last block_size tokens (as `gptcore chat`
and `gptcore sample` do); `usage.prompt_tokens` counts the whole prompt. Bad requests get
OpenAI's error shape, {"error": {"message", "type", "param", "code"}}, with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import torch
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gptcore.engine import Engine, TokenStream
from gptcore.generate import cut_at_stop, decode_stream, prompt_ids
from gptcore.hf import load_any
from gptcore.instruct import PromptTemplate, render_prompt, reply_stops, template_of
from gptcore.sampling import Sampling, SamplingError
from gptcore.tokenizer import Tokenizer

MAX_CHOICES = 16  # largest `n`
MAX_STOP = 4  # stop strings per request, as OpenAI allows
ROLES = ("system", "developer", "user", "assistant")
# fields whose truthy values ask for what this server does not do
UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "suffix", "tools", "functions", "logit_bias")


@dataclass(frozen=True)
class ServeOptions:
    """What `gptcore serve` was started with."""

    model_path: Path  # a model file or a Hugging Face folder
    name: str  # the model id clients send
    defaults: Sampling  # for fields a request leaves out (not the seed: see _settings)
    device: str
    max_tokens_limit: int  # a request's max_tokens may not exceed this
    max_batch: int  # requests generated together; more wait their turn
    max_body_bytes: int
    api_key: str | None


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

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


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
        raise ApiError(400, f"{key} must be {what}, got {json.dumps(value)[:100]}", param=key)
    return value


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
        shown = json.dumps(list(exc.value) if isinstance(exc.value, tuple) else exc.value)[:100]
        raise ApiError(400, f"{param} = {shown} is invalid: {exc.rule}", param=param) from None
    if sampling.max_new_tokens > limit:
        raise ApiError(
            400,
            f"{length_key} = {sampling.max_new_tokens} is invalid: must be at most {limit} (this server's limit)",
            param=length_key,
        )
    if len(sampling.stop) > MAX_STOP:
        raise ApiError(400, f"stop is invalid: at most {MAX_STOP} strings are allowed", param="stop")
    return sampling


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
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{param}.content must be a string", param=f"{param}.content")
        turns.append((message["role"], content))
    return turns


# ---------------------------------------------------------------------------------------------
# generation of one request's choices


@dataclass
class _Choice:
    stream: TokenStream
    drained: bool = False  # the token stream ran to its end (no stop string cut it short)

    def finish_reason(self) -> str:
        return "length" if self.drained and self.stream.finish_reason == "length" else "stop"


def _pieces(choice: _Choice, tokenizer: Tokenizer) -> Iterator[str]:
    def tokens() -> Iterator[int]:
        yield from choice.stream
        choice.drained = True

    try:
        yield from cut_at_stop(decode_stream(tokenizer, tokens()), choice.stream.sampling.stop)
    finally:
        choice.stream.close()


async def _merged(choices: list[_Choice], tokenizer: Tokenizer) -> AsyncIterator[tuple[int, str | None]]:
    """(choice index, text piece) as each choice's text comes, then (index, None) when it ends.
    Closing this early (a client gone) stops every choice's generation."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, choice: _Choice) -> None:
        try:
            async for piece in iterate_in_threadpool(_pieces(choice, tokenizer)):
                await queue.put((i, piece))
            await queue.put((i, None))
        except Exception as exc:
            await queue.put((i, exc))

    tasks = [asyncio.create_task(pump(i, c)) for i, c in enumerate(choices)]
    try:
        for _ in range(len(choices)):
            while True:
                i, piece = await queue.get()
                if isinstance(piece, Exception):
                    raise piece
                yield i, piece
                if piece is None:
                    break
    finally:
        for choice in choices:
            choice.stream.close()
        for task in tasks:
            task.cancel()


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
    page = resources.files("gptcore").joinpath("chat.html").read_text(encoding="utf-8")

    def load() -> None:
        try:
            model, tokenizer, meta = load_any(options.model_path, options.device)
            served.tokenizer, served.block_size = tokenizer, model.config.block_size
            served.template = template_of(meta)
            served.engine = Engine(model, tokenizer.eot_id, options.max_batch)
        except Exception as exc:
            served.error = f"cannot load {options.model_path}: {exc}"
            if on_load_error is not None:
                on_load_error(served.error)

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # each live stream waits for its tokens in a worker thread; anyio's default of 40 would
        # make the 41st concurrent stream wait for a thread rather than for the model
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(64, 4 * options.max_batch)
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
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > options.max_body_bytes:
            raise _too_large(options.max_body_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > options.max_body_bytes:
                raise _too_large(options.max_body_bytes)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
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
            # requests: those being generated or waiting for a slot
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
        n = _optional(
            body, "n", lambda v: _is_int(v) and 1 <= v <= MAX_CHOICES, f"an integer in [1, {MAX_CHOICES}]"
        )
        n = n or 1
        stream = _optional(body, "stream", lambda v: isinstance(v, bool), "true or false") or False
        stream_options = body.get("stream_options") or {}
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        engine, tokenizer = ready_engine()
        if messages is not None:
            prompts = [render_chat(messages, served.template)]
            if served.template is not None:  # a reply ends where the template would open a new section
                sampling = replace(sampling, stop=sampling.stop + reply_stops(served.template))

        prompts_ids = [prompt_ids(tokenizer, p) for p in prompts]
        choices = []
        for ids in prompts_ids:
            for k in range(n):
                # choice k is seeded with seed + k: n choices differ, and a seeded request repeats
                seeded = replace(sampling, seed=(sampling.seed + k) % 2**63)
                choices.append(_Choice(engine.submit(ids, seeded)))
        head = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            "created": int(time.time()),
            "model": options.name,
        }

        def usage() -> dict:
            prompt_tokens = sum(len(ids) for ids in prompts_ids)  # once per prompt, whatever n is
            completion_tokens = sum(c.stream.generated for c in choices)
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }

        if stream:
            return StreamingResponse(
                _events(head, chat, choices, tokenizer, usage if include_usage else None),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        texts = [""] * len(choices)
        async with anyio.create_task_group() as group:

            async def watch() -> None:  # a client that goes away stops its generation
                while not await request.is_disconnected():
                    await anyio.sleep(0.1)
                group.cancel_scope.cancel()

            group.start_soon(watch)
            async for i, piece in _merged(choices, tokenizer):
                texts[i] += piece or ""
            group.cancel_scope.cancel()
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
    return Starlette(
        routes=routes, exception_handlers=handlers, lifespan=contextlib.asynccontextmanager(lifespan)
    )


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server's limit of {limit} bytes")


def _sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def _events(
    head: dict,
    chat: bool,
    choices: list[_Choice],
    tokenizer: Tokenizer,
    usage: Callable[[], dict] | None,
) -> AsyncIterator[bytes]:
    """A streamed response: one chunk per text piece, a last one per choice with its
    finish_reason, the usage when asked, then [DONE]."""
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

    if chat:
        for i in range(len(choices)):
            yield chunk(i, None, None, role=True)
    async for i, piece in _merged(choices, tokenizer):
        yield chunk(i, piece, None) if piece is not None else chunk(i, None, choices[i].finish_reason())
    if usage is not None:
        yield _sse({**head, "object": kind, "choices": [], "usage": usage()})
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
    # The engine thread hands each token to the thread of its stream and to the event loop; with
    # Python's default 5 ms GIL switch interval every hand-off waits out the interval, which
    # costs a single stream most of its speed (measured: README, "Serve")
    sys.setswitchinterval(0.0005)
    torch.set_grad_enabled(False)
    server.run()
    if failure:
        raise GptcoreError(failure[0])
