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

Handling a request is plain functions of plain values, which raise `ApiError` to refuse one
(`check_host`, `check_api_key`, `parse_request`, `completion_json`, `chunk_json`, ...), and a
`ServedModel` that holds the model and generates; the routes of `build_app` only read a request,
call them and respond.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
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
# a request: its checks and what it asks for, as plain values


def check_host(hosts: list[str], allowed: Collection[str]) -> None:
    """Raises ApiError (403) unless a key-less server answers a request with these Host headers
    (lowercase `allowed`): at most one, which `host_allowed` allows."""
    if len(hosts) > 1 or not host_allowed(hosts[0] if hosts else None, allowed):
        raise ApiError(
            403,
            f"Host {', '.join(hosts)!r} is not allowed: without an API key this server answers "
            "only localhost, IP addresses and the names given with --allow-host",
            code="host_not_allowed",
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


def check_api_key(authorization: str | None, api_key: str | None) -> None:
    """Raises ApiError (401) unless the Authorization header holds `api_key`, when there is one."""
    if api_key is None:
        return
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), api_key.encode()):
        raise ApiError(
            401, "invalid or missing API key: send Authorization: Bearer <key>", code="invalid_api_key"
        )


def check_body_headers(content_type: str, content_length: str | None, limit: int) -> None:
    """Raises ApiError for a body the headers already refuse: 415 unless it is JSON, 413 when it
    declares more than `limit` bytes."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != "application/json":
        # a web page may send text/plain to any site without asking; JSON needs CORS's consent
        raise ApiError(415, f"Content-Type must be application/json, got {media_type or 'none'}")
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server's limit of {limit} bytes")


def check_body(data: Any, model_name: str) -> dict:
    """A parsed request body as the JSON object it must be; raises ApiError: 400 for one that is
    not an object or names no model, 404 for a model other than `model_name`."""
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "you must provide a model parameter", param="model")
    if model != model_name:
        raise ApiError(
            404,
            f"the model '{model}' does not exist: this server serves '{model_name}'",
            param="model",
            code="model_not_found",
        )
    return data


@dataclass(frozen=True)
class CompletionRequest:
    """What a completions or chat completions body asks for, checked against the server's limits."""

    chat: bool
    prompts: list[str]  # a completions request's prompts; a chat's has none
    messages: list[tuple[str, str]] | None  # a chat's (role, text) turns
    sampling: Sampling  # with its seed: the body's, or a fresh one
    n: int  # choices per prompt
    stream: bool
    include_usage: bool  # a stream ends with a chunk holding the usage


def parse_request(body: dict, chat: bool, options: ServeOptions) -> CompletionRequest:
    """A completions body (chat completions with `chat`) as what it asks for; raises ApiError
    (400) for a field that is malformed, not supported or past one of `options`' limits."""
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
    return CompletionRequest(chat, prompts, messages, sampling, n, stream, include_usage)


def encode_prompts(
    request: CompletionRequest, tokenizer: Tokenizer, template: PromptTemplate | None
) -> list[list[int]]:
    """The token ids of the request's prompts: a chat's one, rendered by `render_chat`."""
    texts = [render_chat(request.messages, template)] if request.messages is not None else request.prompts
    return [prompt_ids(tokenizer, text) for text in texts]


def count_prompt_tokens(prompts_ids: list[list[int]], chat: bool, limit: int) -> int:
    """The request's prompt tokens, once per prompt whatever n is; ApiError (400) past `limit`."""
    prompt_tokens = sum(len(ids) for ids in prompts_ids)
    if prompt_tokens > limit:
        param = "messages" if chat else "prompt"
        raise _over_limit(param, f"prompt tokens = {prompt_tokens}", limit, "--max-prompt-tokens")
    return prompt_tokens


def choice_rows(prompts_ids: list[list[int]], sampling: Sampling, n: int) -> list[tuple[list[int], Sampling]]:
    """The engine's rows: n per prompt, choice k seeded with seed + k, so that the n choices
    differ and a seeded request repeats."""
    assert sampling.seed is not None  # _settings gives every request one
    return [
        (ids, replace(sampling, seed=(sampling.seed + k) % 2**63)) for ids in prompts_ids for k in range(n)
    ]


# ---------------------------------------------------------------------------------------------
# responses, as plain values


def model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "gptcore"}


def model_card_for(requested: str, name: str) -> dict:
    """GET /v1/models/{requested}: the served model's card, or ApiError (404) for another."""
    if requested != name:
        raise ApiError(404, f"the model '{requested}' does not exist", code="model_not_found")
    return model_card(name)


def response_head(chat: bool, model_name: str) -> dict:
    """The fields that a response and every chunk of its stream share."""
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
        "created": int(time.time()),
        "model": model_name,
    }


def usage_json(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_json(
    head: dict, chat: bool, texts: Sequence[str], finish_reasons: Sequence[str], usage: dict
) -> dict:
    """A whole (non-streamed) response: one choice per text, with its finish_reason."""
    pairs = enumerate(zip(texts, finish_reasons, strict=True))
    if chat:
        out = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason) in pairs
        ]
        return {**head, "object": "chat.completion", "choices": out, "usage": usage}
    out = [
        {"index": i, "text": text, "logprobs": None, "finish_reason": reason} for i, (text, reason) in pairs
    ]
    return {**head, "object": "text_completion", "choices": out, "usage": usage}


def _chunk_object(chat: bool) -> str:
    return "chat.completion.chunk" if chat else "text_completion"


def chunk_json(
    head: dict, chat: bool, i: int, text: str | None, finish: str | None, role: bool = False
) -> dict:
    """One chunk of a stream, for choice `i`: a text piece, or (`finish`) its end; a chat's first
    chunk per choice (`role`) names the assistant role."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {**head, "object": _chunk_object(chat), "choices": [choice]}


def usage_chunk_json(head: dict, chat: bool, usage: dict) -> dict:
    """A stream's last chunk when the request asks for the usage (stream_options.include_usage)."""
    return {**head, "object": _chunk_object(chat), "choices": [], "usage": usage}


def sse(data: dict | str) -> bytes:
    """One server-sent event: `data: <json>` (or the text, for [DONE]) and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


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


@dataclass
class _Generation:
    """One request's choices as they are generated: what its response, whole or streamed, is
    built from."""

    head: dict  # see response_head
    chat: bool
    choices: list[_Choice]
    ready: asyncio.Event  # set whenever one of the choices' streams has something new
    prompt_tokens: int

    def usage(self) -> dict:
        return usage_json(self.prompt_tokens, sum(c.stream.generated for c in self.choices))

    async def response(self, is_disconnected: Callable[[], Awaitable[bool]]) -> dict:
        """The whole response once every choice has ended; a client that goes away
        (`is_disconnected`) stops the generation. Raises ApiError (500) when it fails."""
        texts = [""] * len(self.choices)
        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, is_disconnected, group.cancel_scope)
            try:
                async for i, piece in _merged(self.choices, self.ready):
                    texts[i] += piece or ""
            except GenerationFailed as exc:
                failure = exc
            group.cancel_scope.cancel()
        if failure is not None:
            raise ApiError(500, str(failure), kind="server_error", code="generation_failed")
        reasons = [c.finish_reason() for c in self.choices]
        return completion_json(self.head, self.chat, texts, reasons, self.usage())

    async def events(self, include_usage: bool) -> AsyncIterator[bytes]:
        """A streamed response: one chunk per text piece, a last one per choice with its
        finish_reason, the usage when asked, then [DONE]; a generation that fails ends the stream
        with an error event, `data: {"error": {...}}`, instead (what OpenAI's clients raise on).
        Closing it early (a client gone) stops the generation."""
        head, chat = self.head, self.chat
        try:
            if chat:
                for i in range(len(self.choices)):
                    yield sse(chunk_json(head, chat, i, None, None, role=True))
            async for i, piece in _merged(self.choices, self.ready):
                finish = self.choices[i].finish_reason() if piece is None else None
                yield sse(chunk_json(head, chat, i, piece, finish))
            if include_usage:
                yield sse(usage_chunk_json(head, chat, self.usage()))
        except Exception as exc:  # the status line is sent: the client learns of it in the stream
            message = str(exc) if isinstance(exc, GenerationFailed) else f"internal error: {exc}"
            yield sse(ApiError(500, message, kind="server_error", code="generation_failed").body())
            return
        yield sse("[DONE]")


async def _cancel_on_disconnect(
    is_disconnected: Callable[[], Awaitable[bool]], scope: anyio.CancelScope
) -> None:
    """Cancels `scope` once the client has gone away."""
    while not await is_disconnected():
        await anyio.sleep(0.1)
    scope.cancel()


# ---------------------------------------------------------------------------------------------
# the served model


class ServedModel:
    """The model served, loaded in a thread (so /health answers meanwhile), and the generation of
    requests with it."""

    def __init__(self, options: ServeOptions, on_load_error: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.on_load_error = on_load_error
        self.error: str | None = None
        self.tokenizer: Tokenizer | None = None
        self.engine: Engine | None = None
        self.block_size = 0
        self.template: PromptTemplate | None = None  # an instruction-tuned model's prompt template
        self.preparing = anyio.CapacityLimiter(PREPARE_THREADS)  # worker threads parsing requests

    def load(self) -> None:
        """Load the model (on the loader thread); a failure is kept in `error` and reported."""
        options = self.options
        try:
            model, tokenizer, meta = load_any(options.model_path, options.device)
            self.tokenizer, self.block_size = tokenizer, model.config.block_size
            self.template = template_of(meta)
            self.engine = Engine(model, tokenizer.eot_id, options.max_batch, options.max_waiting)
        except Exception as exc:
            self.error = f"cannot load {options.model_path}: {exc}"
            if self.on_load_error is not None:
                self.on_load_error(self.error)

    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=self.load, name="gptcore-load", daemon=True).start()
        yield
        if self.engine is not None:
            self.engine.shutdown()

    def health(self) -> tuple[int, dict]:
        """GET /health's status and body."""
        if self.engine is not None:
            # requests: the choices being generated or waiting for a slot
            return 200, {"status": "ok", "model": self.options.name, "requests": self.engine.live()}
        if self.error is not None:
            return 503, {"status": "error", "message": self.error}
        return 503, {"status": "loading", "model": self.options.name}

    def ready(self) -> tuple[Engine, Tokenizer]:
        """The engine and tokenizer; ApiError (503) while the model loads or when it failed to."""
        if self.engine is None or self.tokenizer is None:
            message = self.error or "the model is still loading; try again shortly"
            raise ApiError(503, message, kind="server_error", code="model_not_ready")
        return self.engine, self.tokenizer

    async def start(self, request: CompletionRequest) -> _Generation:
        """Submit the request's choices to the engine (the prompts tokenized in a worker thread);
        raises ApiError: 503 while the model is not ready or when the engine is full, 400 for too
        many prompt tokens."""
        engine, tokenizer = self.ready()
        sampling, template = request.sampling, self.template
        if request.chat and template is not None:
            # a reply ends where the template would open a new section
            sampling = replace(sampling, stop=sampling.stop + reply_stops(template))
        prompts_ids = await anyio.to_thread.run_sync(
            encode_prompts, request, tokenizer, template, limiter=self.preparing
        )
        prompt_tokens = count_prompt_tokens(prompts_ids, request.chat, self.options.max_prompt_tokens)
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:  # on the engine thread, after each token of this request
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
                loop.call_soon_threadsafe(ready.set)

        try:
            streams = engine.submit_all(choice_rows(prompts_ids, sampling, request.n), wake)
        except EngineBusy as exc:
            raise ApiError(
                503,
                f"this server is busy ({exc}; --max-waiting lets {self.options.max_waiting} wait): "
                "try again shortly",
                kind="server_error",
                code="server_busy",
            ) from None
        choices = [
            _Choice(s, TextDecoder(tokenizer), StopCutter(s.sampling.stop), tokenizer.eot_id) for s in streams
        ]
        head = response_head(request.chat, self.options.name)
        return _Generation(head, request.chat, choices, ready, prompt_tokens)


# ---------------------------------------------------------------------------------------------
# the app: routes that read a request, call the functions above and respond


def build_app(options: ServeOptions, on_load_error: Callable[[str], None] | None = None) -> Starlette:
    """The ASGI app; the model loads in the background when the app starts."""
    served = ServedModel(options, on_load_error)
    page = resources.files("gptcore.serve").joinpath("chat.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        status, body = served.health()
        return JSONResponse(body, status_code=status)

    async def list_models(request: Request) -> Response:
        check_api_key(request.headers.get("authorization"), options.api_key)
        return JSONResponse({"object": "list", "data": [model_card(options.name)]})

    async def get_model(request: Request) -> Response:
        check_api_key(request.headers.get("authorization"), options.api_key)
        return JSONResponse(model_card_for(request.path_params["model"], options.name))

    async def completions(request: Request) -> Response:
        return await _complete(request, served, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await _complete(request, served, chat=True)

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/v1/models", list_models),
        Route("/v1/models/{model:path}", get_model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _server_error}
    middleware = (
        [] if options.api_key is not None else [Middleware(_HostGuard, allowed=options.allowed_hosts)]
    )
    return Starlette(
        routes=routes,
        exception_handlers=handlers,
        middleware=middleware,
        lifespan=contextlib.asynccontextmanager(served.lifespan),
    )


async def _complete(request: Request, served: ServedModel, chat: bool) -> Response:
    """POST /v1/completions (/v1/chat/completions with `chat`)."""
    check_api_key(request.headers.get("authorization"), served.options.api_key)
    body = await _read_json(request, served.options, served.preparing)
    asked = parse_request(body, chat, served.options)
    generation = await served.start(asked)
    if asked.stream:
        return StreamingResponse(
            generation.events(asked.include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return JSONResponse(await generation.response(request.is_disconnected))


async def _read_json(request: Request, options: ServeOptions, limiter: anyio.CapacityLimiter) -> dict:
    """The request's body, read no further than the body limit, parsed in a worker thread and
    checked (`check_body`)."""
    limit = options.max_body_bytes
    check_body_headers(request.headers.get("content-type", ""), request.headers.get("content-length"), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    try:
        # parse_json itself in the thread: the nesting it can parse is the stack left to it
        data = await anyio.to_thread.run_sync(parse_json, bytes(body), "the request body", limiter=limiter)
    except DataError as exc:
        raise ApiError(400, str(exc)) from None
    return check_body(data, options.name)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return ApiError(
        exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind
    ).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    return ApiError(500, f"internal error: {exc}", kind="server_error").response()


class _HostGuard:
    """Refuses, with a 403, a request whose Host `check_host` refuses."""

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = {name.lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hosts = [value.decode("latin-1") for key, value in scope["headers"] if key == b"host"]
            try:
                check_host(hosts, self.allowed)
            except ApiError as error:
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
