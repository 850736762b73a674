"""`gptcore serve` against hostile or careless clients: sampling values at the edge of floats, a
request that fails in the middle of a batch, requests that ask for unbounded work, empty API
keys, web pages on other sites (foreign Host headers, text/plain bodies) and malformed JSON.
Each gets a clear answer, the other clients go on being served, and the server logs no traceback."""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from support_serve import NAME, endless_model, get, greedy, request, running, wait_for

import gptcore.serve.batcher as engine_module
import gptcore.serve.server as serve_module
from gptcore.cli import main
from gptcore.errors import GptcoreError
from gptcore.generate import generate
from gptcore.model import GPT, GPTConfig
from gptcore.sampling import Sampling
from gptcore.serve.batcher import Engine
from gptcore.serve.server import ServeOptions, host_allowed

OK = {"model": NAME, "prompt": "ROMEO:", "max_tokens": 3}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return endless_model(tmp_path_factory.mktemp("hostile"))


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_traceback() -> Iterator[None]:
    """Whatever a test sends, the server logs no error (uvicorn logs every unhandled exception,
    with its traceback, on uvicorn.error)."""
    handler = _Tracebacks()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == []


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[str]:
    with running(model_path, max_body_bytes=1 << 20, max_prompt_tokens=200, max_tokens_limit=100_000) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def error_of(status_and_payload: tuple[int, dict]) -> tuple[int, str | None, str]:
    status, payload = status_and_payload
    return status, payload["error"]["param"], payload["error"]["message"]


def sse(url: str, body: dict) -> tuple[int, list[str]]:
    """The status and the `data:` payloads of a streamed completion, read to the stream's end."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(
        "POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    events = [line[6:].decode().strip() for line in response if line.startswith(b"data: ")]
    conn.close()
    return response.status, events


# ---------------------------------------------------------------------------------------------
# sampling values at the edge of floats


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-30])
def test_a_temperature_too_small_for_floats_is_greedy(
    client: openai.OpenAI, model_path: Path, temperature: float
) -> None:
    out = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=20, temperature=temperature)
    assert out.choices[0].text == greedy(model_path, "ROMEO:", 20)


def test_a_huge_temperature_is_drawn_from_not_refused(client: openai.OpenAI) -> None:
    # uniform over the vocabulary, <|endoftext|> included, which may end it early
    out = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=20, temperature=1e300, seed=1)
    assert 1 <= out.usage.completion_tokens <= 20


def test_a_stream_beside_an_extreme_temperature_finishes(server: str, model_path: Path) -> None:
    # the attack on the landed code: a stream cut mid-way when another request's logits turned NaN
    results: dict[str, object] = {}

    def stream() -> None:
        results["stream"] = sse(server, {**OK, "max_tokens": 60, "temperature": 0.0})

    thread = threading.Thread(target=stream)
    thread.start()
    for temperature in (1e-300, 1e300):
        assert request(server, "POST", "/v1/completions", {**OK, "temperature": temperature})[0] == 200
    thread.join(timeout=60)
    status, events = results["stream"]
    assert status == 200 and events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == greedy(model_path, "ROMEO:", 60)


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", 2**64), ("seed", -(2**63) - 1), ("top_p", 1e-400), ("top_k", -1), ("temperature", -1e-300)],
)
def test_sampling_values_out_of_range_are_400s(server: str, field: str, value: float) -> None:
    body = json.dumps({**OK, field: value}).encode()  # 1e-400 parses to 0.0: refused as top_p 0
    status, param, message = error_of(request(server, "POST", "/v1/completions", body))
    assert (status, param) == (400, field) and "is invalid" in message


# ---------------------------------------------------------------------------------------------
# a failure in one request fails that request alone


def _fails_at_temperature(monkeypatch: pytest.MonkeyPatch, marker: float) -> None:
    """Make the engine's draw raise for every row sampled at temperature `marker`."""
    real = engine_module.sample_next

    def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None):
        if sampling.temperature == marker:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return real(logits, sampling, generator)

    monkeypatch.setattr(engine_module, "sample_next", sample_next)


def test_a_request_that_fails_mid_batch_fails_alone(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fails_at_temperature(monkeypatch, 0.123)
    with running(model_path, max_batch=4) as url:
        results: dict[str, object] = {}
        long = threading.Thread(
            target=lambda: results.update(long=sse(url, {**OK, "max_tokens": 150, "temperature": 0.0}))
        )
        long.start()
        wait_for(lambda: get(url, "/health")[1]["requests"] == 1, "the long stream to start")
        # in the same batch: a plain request and a stream that fail, and a request that does not
        status, _, message = error_of(request(url, "POST", "/v1/completions", {**OK, "temperature": 0.123}))
        assert status == 500 and "generation failed" in message
        status, events = sse(url, {**OK, "max_tokens": 50, "temperature": 0.123})
        assert status == 200 and events and "[DONE]" not in events
        assert "generation failed" in json.loads(events[-1])["error"]["message"]  # and the stream ends
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.APIError, match="generation failed"):
            list(
                client.completions.create(
                    model=NAME, prompt="a", max_tokens=5, temperature=0.123, stream=True
                )
            )
        assert request(url, "POST", "/v1/completions", {**OK, "temperature": 0.0})[0] == 200
        long.join(timeout=60)
        status, events = results["long"]
        assert status == 200 and events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
        assert text == greedy(model_path, "ROMEO:", 150)


def test_a_batched_pass_that_fails_is_retried_row_by_row() -> None:
    # as an out-of-memory error in the batched pass would: each row alone then goes on, unharmed
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(30.0)
    real_forward = model.forward
    failures = []

    def forward(idx, *args, **kwargs):
        if idx.shape[0] > 1 and len(failures) < 3:
            failures.append(idx.shape[0])
            raise RuntimeError("out of memory")
        return real_forward(idx, *args, **kwargs)

    model.forward = forward
    engine = Engine(model, eot_id=49, max_batch=3)
    prompts = [[1, 2, 3], [4, 5], [6]]
    try:
        streams = [engine.submit(p, Sampling(temperature=0.0, max_new_tokens=20, seed=0)) for p in prompts]
        for prompt, stream in zip(prompts, streams, strict=True):
            expected = generate(model, torch.tensor([prompt]), Sampling(temperature=0.0, max_new_tokens=20))
            assert list(stream) == expected[0, len(prompt) :].tolist()
    finally:
        engine.shutdown()
    assert failures  # the batched pass did fail


# ---------------------------------------------------------------------------------------------
# the work one request may ask for


def test_thousands_of_prompts_are_refused_before_any_work(server: str) -> None:
    body = {"model": NAME, "prompt": ["a"] * 20000, "n": 16, "max_tokens": 1}  # 200 KB
    status, param, message = error_of(request(server, "POST", "/v1/completions", body))
    assert (status, param) == (400, "prompt")
    assert "20000 x 16 = 320000" in message and "at most 16" in message and "--max-choices" in message
    assert get(server, "/health")[1]["requests"] == 0


def test_a_prompt_over_the_token_limit_is_refused(server: str) -> None:
    status, param, message = error_of(request(server, "POST", "/v1/completions", {**OK, "prompt": "a" * 201}))
    assert (status, param) == (400, "prompt") and "201" in message and "--max-prompt-tokens" in message
    chat = {"model": NAME, "messages": [{"role": "user", "content": "a" * 201}]}
    status, param, message = error_of(request(server, "POST", "/v1/chat/completions", chat))
    assert (status, param) == (400, "messages") and "--max-prompt-tokens" in message


def test_a_long_stop_string_is_refused(server: str) -> None:
    status, param, message = error_of(request(server, "POST", "/v1/completions", {**OK, "stop": "x" * 257}))
    assert (status, param) == (400, "stop") and "256 characters" in message


def test_requests_past_the_waiting_limit_get_503(model_path: Path) -> None:
    with running(model_path, max_batch=1, max_waiting=1) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        endless = dict(model=NAME, prompt="a", max_tokens=100_000, stream=True)
        generating = client.completions.create(**endless)
        waiting = client.completions.create(**endless)
        wait_for(lambda: get(url, "/health")[1]["requests"] == 2, "one generating, one waiting")
        with pytest.raises(openai.InternalServerError, match="--max-waiting") as info:
            client.completions.create(model=NAME, prompt="a", max_tokens=2)
        assert info.value.status_code == 503
        generating.close()
        waiting.close()
        wait_for(lambda: get(url, "/health")[1]["requests"] == 0, "both to be dropped")
        assert client.completions.create(model=NAME, prompt="a", max_tokens=2).usage.completion_tokens == 2


def test_a_small_request_is_served_while_a_large_one_holds_every_slot(model_path: Path) -> None:
    with running(model_path, max_batch=4) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        # four choices of 100,000 tokens: every slot, for minutes, were slots handed out in order
        large = client.completions.create(model=NAME, prompt=["a", "b"], n=2, max_tokens=100_000, stream=True)
        next(iter(large))
        assert get(url, "/health")[0] == 200
        small = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=5, temperature=0.0)
        assert small.choices[0].text == greedy(model_path, "ROMEO:", 5)
        assert get(url, "/health")[1]["requests"] == 4  # the large one is still being generated
        large.close()
        wait_for(lambda: get(url, "/health")[1]["requests"] == 0, "the large request to be dropped")


def test_health_answers_while_a_request_is_tokenized(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = serve_module.prompt_ids

    def slow_prompt_ids(tokenizer, prompt):  # a tokenization that takes as long as the test says
        entered.set()
        release.wait(30)
        return real(tokenizer, prompt)

    monkeypatch.setattr(serve_module, "prompt_ids", slow_prompt_ids)
    with running(model_path) as url:
        results: list = []
        thread = threading.Thread(target=lambda: results.append(request(url, "POST", "/v1/completions", OK)))
        thread.start()
        try:
            assert entered.wait(30)
            assert get(url, "/health")[0] == 200  # the event loop is free while the request is tokenized
        finally:
            release.set()
            thread.join(timeout=60)
        assert results[0][0] == 200


# ---------------------------------------------------------------------------------------------
# API keys


@pytest.mark.parametrize(("flag", "env"), [("", None), ("  ", None), (None, ""), (None, " \t")])
def test_an_empty_api_key_is_an_error_at_startup(
    model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    flag: str | None,
    env: str | None,
) -> None:
    monkeypatch.delenv("GPTCORE_API_KEY", raising=False)
    if env is not None:
        monkeypatch.setenv("GPTCORE_API_KEY", env)
    args = ["serve", "--model", str(model_path), "--device", "cpu", "--port", "0"]
    with pytest.raises(SystemExit) as info:
        main(args + (["--api-key", flag] if flag is not None else []))
    assert info.value.code == 1
    err = capsys.readouterr().err
    where = "--api-key" if flag is not None else "$GPTCORE_API_KEY"
    assert (
        err
        == f"error: {where} is empty: give a key, or {'leave the flag out' if flag is not None else 'unset it'} to serve without one\n"
    )


def test_serve_options_refuse_an_empty_key(model_path: Path) -> None:
    with pytest.raises(GptcoreError, match="empty"):
        ServeOptions(model_path, NAME, Sampling(), "cpu", 10, 1, 100, "", 1, 10, 1, ())


# ---------------------------------------------------------------------------------------------
# web pages on other sites


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("[::1]:8000", True),
        ("[::1]", True),
        ("192.168.1.20:8000", True),  # other machines, by address, when serving on 0.0.0.0
        ("LOCALHOST:80", True),
        ("myhost.lan:8000", True),  # given with --allow-host
        ("evil.example:8000", False),  # a page whose name was rebound to this machine
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
    ],
)
def test_host_rule(host: str, allowed: bool) -> None:
    assert host_allowed(host, {"myhost.lan"}) is allowed


def test_a_foreign_host_is_refused_without_a_key(server: str) -> None:
    for method, path, body in (
        ("GET", "/v1/models", None),
        ("POST", "/v1/completions", OK),
        ("GET", "/", None),
        ("GET", "/health", None),
    ):
        headers = {"Host": "evil.example:8000", "Content-Type": "application/json"}
        status, payload = _raw(server, method, path, body, headers)
        assert status == 403 and "evil.example" in payload["error"]["message"]
        assert "--allow-host" in payload["error"]["message"]
    for host in ("localhost:1", "127.0.0.1", "[::1]:5"):
        assert _raw(server, "GET", "/v1/models", None, {"Host": host})[0] == 200


def test_allow_host_and_an_api_key_let_other_names_in(model_path: Path) -> None:
    with running(model_path, allowed_hosts=("myhost.lan",)) as url:
        assert _raw(url, "GET", "/v1/models", None, {"Host": "myhost.lan:8000"})[0] == 200
        assert _raw(url, "GET", "/v1/models", None, {"Host": "other.lan:8000"})[0] == 403
    with running(model_path, api_key="s3cret") as url:  # the key is the guard: any name
        headers = {"Host": "gpt.example.com", "Authorization": "Bearer s3cret"}
        assert _raw(url, "GET", "/v1/models", None, headers)[0] == 200
        assert _raw(url, "GET", "/v1/models", None, {"Host": "gpt.example.com"})[0] == 401


def _raw(url: str, method: str, path: str, body: dict | bytes | None, headers: dict) -> tuple[int, dict]:
    """A request with exactly these headers (http.client would add its own Host)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    if data is not None:
        headers = {**headers, "Content-Length": str(len(data))}
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders(data)
    response = conn.getresponse()
    status, raw = response.status, response.read()
    conn.close()
    return status, json.loads(raw) if raw.startswith(b"{") else {}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_routes_want_a_json_content_type(server: str, content_type: str | None) -> None:
    # what a page on another site can send without asking: a "simple" cross-origin request
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/v1/completions", "/v1/chat/completions"):
        status, payload = _raw(
            server, "POST", path, json.dumps(OK).encode(), {"Host": "127.0.0.1", **headers}
        )
        assert status == 415 and "application/json" in payload["error"]["message"]
    ok = {"Host": "127.0.0.1", "Content-Type": "application/json; charset=utf-8"}
    assert _raw(server, "POST", "/v1/completions", json.dumps(OK).encode(), ok)[0] == 200


# ---------------------------------------------------------------------------------------------
# malformed JSON and content parts


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"model": "tiny", "prompt": "a", "n": ' + b"[" * 900 + b"]" * 900 + b"}", "n must be"),
        (b'{"model": "tiny", "prompt": "a", "temperature": ' + b"[" * 900 + b"]" * 900 + b"}", "temperature"),
        (b'{"model": "tiny", "prompt": "a", "temperature": NaN}', "NaN"),
        (b'{"model": "tiny", "prompt": "a", "top_p": Infinity}', "Infinity"),
        (b'{"model": "tiny", "prompt": "a", "temperature": "' + b"9" * 500_000 + b'"}', "temperature"),
    ],
)
def test_malformed_json_is_a_400(server: str, body: bytes, says: str) -> None:
    status, _, message = error_of(request(server, "POST", "/v1/completions", body))
    assert status == 400 and says in message
    assert len(message) < 500  # one line, however large the value


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ([{"type": "text", "text": 5}], "messages[0].content[0].text"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": ["b"]}], "messages[0].content[1].text"),
        ([{"type": "text"}], "messages[0].content[0].text"),
    ],
)
def test_a_content_part_whose_text_is_not_a_string_is_named(server: str, parts: list, param: str) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": parts}]}
    status, got, message = error_of(request(server, "POST", "/v1/chat/completions", body))
    assert (status, got) == (400, param) and f"{param} must be a string" in message


def test_text_parts_are_joined(client: openai.OpenAI, model_path: Path) -> None:
    parts = [{"type": "text", "text": "ROM"}, {"type": "text", "text": "EO:"}]
    out = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0.0
    )
    assert out.choices[0].message.content == greedy(model_path, "ROMEO:", 8)


def test_a_new_request_takes_the_next_free_slot_before_a_large_ones_other_rows() -> None:
    # one slot; a request of three rows, then one of one row: the new request goes second, not
    # after every row that came before it
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    engine = Engine(model, eot_id=999, max_batch=1)  # an id never drawn: every row runs to its end
    events: list[str] = []
    try:
        large = engine.submit_all(
            [([1], Sampling(max_new_tokens=50, seed=k)) for k in range(3)],
            wake=lambda: events.append("large"),
        )
        small = engine.submit_all(
            [([2], Sampling(max_new_tokens=5, seed=0))], wake=lambda: events.append("small")
        )
        assert [len(list(s)) for s in large + small] == [50, 50, 50, 5]
    finally:
        engine.shutdown()
    assert events.index("small") == 51  # the first large row's 50 tokens and its end, then the small one
