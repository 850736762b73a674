"""A live `gptcore serve` for the tests: started in this process on a free loopback port, asked
over plain HTTP, with the tiny model that never ends a reply and the greedy reply to compare with."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn
from support_models import save_tiny_model

from gptcore.checkpoint import load_model
from gptcore.generate import complete
from gptcore.sampling import Sampling
from gptcore.serve.server import ServeOptions, build_app

NAME = "tiny"
DEFAULTS = Sampling(max_new_tokens=20)


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    """Poll until `condition()` holds; fail naming `what` if it never does (a guard, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict]:
    return request(url, "GET", path, None, headers)


def request(
    url: str, method: str, path: str, body: bytes | dict | None, headers: dict | None = None
) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    status, payload = response.status, json.loads(response.read())
    conn.close()
    return status, payload


def serve_options(model_path: Path, **overrides) -> ServeOptions:
    """The tests' server options: generous limits, no key, loopback only; `overrides` change them."""
    options = ServeOptions(
        model_path=model_path,
        name=NAME,
        defaults=DEFAULTS,
        device="cpu",
        max_tokens_limit=100_000,
        max_batch=4,
        max_body_bytes=64 * 1024,
        api_key=None,
        max_choices=16,
        max_prompt_tokens=100_000,
        max_waiting=64,
        allowed_hosts=(),
    )
    return replace(options, **overrides)


@contextlib.contextmanager
def running(model_path: Path, **overrides) -> Iterator[str]:
    """A live server on a free loopback port, the model loaded; yields its base URL."""
    options = serve_options(model_path, **overrides)
    server = uvicorn.Server(uvicorn.Config(build_app(options), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start")
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    wait_for(lambda: get(url, "/health")[0] == 200, "the model to load")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def endless_model(folder: Path) -> Path:
    """A tiny model that never draws <|endoftext|>: replies run to max_tokens unless a stop
    string (or the client) ends them."""
    save_tiny_model(folder / "model.pt", never_eot=True)
    return folder / "model.pt"


def greedy(model_path: Path, prompt: str, max_tokens: int, stop: tuple[str, ...] = ()) -> str:
    model, tokenizer, _ = load_model(model_path)
    return complete(model, tokenizer, prompt, Sampling(temperature=0.0, max_new_tokens=max_tokens, stop=stop))
