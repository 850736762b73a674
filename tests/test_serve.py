"""`gptcore serve`: the OpenAI API spoken by the official `openai` client to a live server on a
loopback port, the batching engine behind it, errors, API keys, concurrency and disconnects."""

from __future__ import annotations

import http.client
import json
import random
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from support_cli import child_env, run_cli
from support_models import TEXT
from support_serve import DEFAULTS, NAME, endless_model, get, greedy, request, running, wait_for

import gptcore.serve.server as serve_module
from gptcore.checkpoint import load_model
from gptcore.generate import generate
from gptcore.model import GPT, GPTConfig
from gptcore.sampling import Sampling
from gptcore.serve.batcher import Engine
from gptcore.serve.server import ServeOptions, build_app, render_chat


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return endless_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[str]:
    with running(model_path, max_tokens_limit=500) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


# ---------------------------------------------------------------------------------------------
# the engine


@pytest.mark.parametrize("family", [{}, {"arch": "llama"}, {"arch": "llama", "qk_norm": True}])
def test_engine_batched_tokens_equal_generate_for_many_requests_of_any_length(family: dict) -> None:
    # more requests than slots, prompts shorter and longer than the block, generations that slide
    # the window several times and end at <|endoftext|> or at max_new_tokens; learned positions
    # (gpt2) and rotary ones (llama), each row at its own position
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, **family)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(30.0)  # peaked logits: greedy choices are not near ties
    engine = Engine(model, eot_id=49, max_batch=3)
    rng = random.Random(0)
    prompts = [[rng.randrange(50) for _ in range(rng.randrange(1, 40))] for _ in range(8)]
    lengths = [rng.randrange(1, 45) for _ in prompts]
    streams = [
        engine.submit(p, Sampling(temperature=0.0, max_new_tokens=n, seed=0))
        for p, n in zip(prompts, lengths, strict=True)
    ]
    try:
        for prompt, n, stream in zip(prompts, lengths, streams, strict=True):
            greedy = Sampling(temperature=0.0, max_new_tokens=n)
            expected = generate(model, torch.tensor([prompt]), greedy, eot_id=49)[0, len(prompt) :].tolist()
            if 49 in expected:
                expected = expected[: expected.index(49) + 1]
            assert list(stream) == expected
            assert stream.finish_reason == ("stop" if expected[-1] == 49 else "length")
    finally:
        engine.shutdown()


def test_engine_closed_stream_ends_and_frees_its_slot() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    engine = Engine(model, eot_id=999, max_batch=1)  # an id never drawn: the stream is endless
    try:
        endless = engine.submit([1, 2], Sampling(max_new_tokens=10**9, seed=1))
        waiting = engine.submit([3], Sampling(max_new_tokens=5, seed=2))
        tokens = iter(endless)
        next(tokens)
        assert engine.live() == 2  # one generating, one waiting for the only slot
        endless.close()
        assert len(list(tokens)) < 10**9  # the stream ends
        assert len(list(waiting)) >= 1  # and the waiting request gets the slot
        wait_for(lambda: engine.live() == 0, "the engine to drop both requests")
    finally:
        engine.shutdown()


# ---------------------------------------------------------------------------------------------
# the API through the official client


def test_models_and_health(server: str, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    status, health = get(server, "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == NAME


def test_completion_equals_generate_and_counts_usage(client: openai.OpenAI, model_path: Path) -> None:
    # a prompt longer than the 16-token context keeps its last tokens; 40 tokens slide the window
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak."
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=40, temperature=0.0)
    assert out.object == "text_completion"
    assert out.choices[0].text == greedy(model_path, prompt, 40)
    assert out.choices[0].finish_reason == "length"
    _, tokenizer, _ = load_model(model_path)
    assert out.usage.prompt_tokens == len(tokenizer.encode(prompt))  # the whole prompt is counted
    assert out.usage.completion_tokens == 40
    assert out.usage.total_tokens == out.usage.prompt_tokens + 40


def test_streamed_completion_is_the_same_text_in_pieces(client: openai.OpenAI) -> None:
    kwargs = dict(model=NAME, prompt="ROMEO:", max_tokens=30, temperature=30.0, top_p=0.9, seed=7)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 5  # streamed as it is generated, not in one piece
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 30 and not chunks[-1].choices


def test_seed_repeats_a_reply_and_n_choices_differ(client: openai.OpenAI) -> None:
    # the test model's logits are spread over +-30: a high temperature makes its draws vary
    kwargs = dict(model=NAME, prompt="JULIET:", max_tokens=20, temperature=30.0, seed=3)
    first = client.completions.create(**kwargs, n=3)
    again = client.completions.create(**kwargs, n=3)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]
    assert len(set(texts)) == 3
    assert first.usage.completion_tokens == 60
    assert first.usage.prompt_tokens == len("JULIET:")  # the prompt counts once, whatever n is


def test_stop_string_ends_the_completion(client: openai.OpenAI, model_path: Path) -> None:
    full = greedy(model_path, "ROMEO:", 30)
    stop = full[10:12]
    out = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=30, temperature=0.0, stop=[stop])
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=NAME, prompt="ROMEO:", max_tokens=30, temperature=0.0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_chat_reply_is_what_gptcore_chat_says(
    client: openai.OpenAI, model_path: Path, tmp_path: Path
) -> None:
    # the terminal chat, piped two lines, greedy: its second reply follows the first exchange
    args = shlex.split(f"chat --model {model_path} --temperature 0 --max-new-tokens 12 --device cpu")
    result = run_cli(args, tmp_path, stdin="ROMEO:\nJULIET:\n")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()[:2]
    messages = [
        {"role": "user", "content": "ROMEO:"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "JULIET:"},
    ]
    out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0.0)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == second
    assert out.choices[0].finish_reason == "length"
    stream = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=12, temperature=0.0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == second
    assert chunks[-1].choices[0].finish_reason == "length"


def test_render_chat_is_the_terminal_conversation() -> None:
    turns = [("system", "A play."), ("user", "ROMEO:"), ("assistant", " Hark"), ("user", "JULIET:")]
    # what `gptcore chat` feeds the model: each line continued by its reply, which ends the line
    assert render_chat(turns) == "A play.\nROMEO: Hark\nJULIET:"
    assert render_chat([("user", "a"), ("user", "b")]) == "a\nb"


# ---------------------------------------------------------------------------------------------
# bad requests


def error_of(status_and_payload: tuple[int, dict]) -> tuple[int, str | None, str]:
    status, payload = status_and_payload
    error = payload["error"]
    assert set(error) >= {"message", "type", "param"} and error["message"]
    return status, error["param"], error["message"]


OK = {"model": NAME, "prompt": "ROMEO:", "max_tokens": 3}


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        ({"prompt": "a"}, 400, "model", "model"),
        ({"model": NAME}, 400, "prompt", "prompt"),
        ({**OK, "prompt": 5}, 400, "prompt", "string"),
        ({**OK, "model": "gpt-4"}, 404, "model", "'gpt-4' does not exist"),
        ({**OK, "temperature": -0.5}, 400, "temperature", ">= 0"),
        ({**OK, "temperature": "hot"}, 400, "temperature", "number"),
        ({**OK, "top_p": 0}, 400, "top_p", "(0, 1]"),
        ({**OK, "top_p": 1.5}, 400, "top_p", "(0, 1]"),
        ({**OK, "top_k": -1}, 400, "top_k", ">= 0"),
        ({**OK, "top_k": 2.5}, 400, "top_k", "whole number"),
        ({**OK, "temperature": True}, 400, "temperature", "number"),
        # the Sampling type's rule, under the request's name for the setting
        ({**OK, "max_tokens": 0}, 400, "max_tokens", "max_tokens = 0 is invalid: must be"),
        ({"model": NAME, "prompt": "a", "max_completion_tokens": 0}, 400, "max_completion_tokens", ">= 1"),
        (
            {**OK, "max_tokens": 501},
            400,
            "max_tokens",
            "at most 500 (this server's limit, --max-tokens-limit)",
        ),
        ({**OK, "n": 0}, 400, "n", ">= 1"),
        (
            {**OK, "n": 17},
            400,
            "n",
            "n = 17 is invalid: must be at most 16 (this server's limit, --max-choices)",
        ),
        ({**OK, "seed": 1.5}, 400, "seed", "whole number"),
        ({**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
        ({**OK, "stop": [""]}, 400, "stop", "non-empty strings"),
        ({**OK, "stop": 5}, 400, "stop", "stop = 5 is invalid"),
        ({**OK, "stream": "yes"}, 400, "stream", "true or false"),
        ({**OK, "logprobs": 2}, 400, "logprobs", "not supported"),
        ({**OK, "echo": True}, 400, "echo", "not supported"),
    ],
)
def test_bad_completion_requests_get_openai_errors(
    server: str, body: bytes | dict, status: int, param: str | None, says: str
) -> None:
    got_status, got_param, message = error_of(request(server, "POST", "/v1/completions", body))
    assert (got_status, got_param) == (status, param)
    assert says in message
    assert request(server, "POST", "/v1/completions", OK)[0] == 200  # and the server keeps serving


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content",
        ),
    ],
)
def test_bad_chat_messages_name_the_message(server: str, messages: object, param: str) -> None:
    body = {"model": NAME, "messages": messages}
    assert error_of(request(server, "POST", "/v1/chat/completions", body))[:2] == (400, param)


def test_the_client_raises_on_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="a")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "a"}], max_tokens=10_000
        )


def test_oversized_body_is_refused(server: str) -> None:
    body = {**OK, "prompt": "x" * 100_000}
    status, _, message = error_of(request(server, "POST", "/v1/completions", body))
    assert status == 413 and "65536 bytes" in message
    assert error_of(request(server, "GET", "/v1/nowhere", None))[0] == 404


def test_api_key_guards_every_v1_route(model_path: Path) -> None:
    with running(model_path, api_key="s3cret") as url:
        for path in ("/v1/models", "/v1/models/tiny"):
            assert error_of(get(url, path))[0] == 401
            assert error_of(get(url, path, {"Authorization": "Bearer wrong"}))[0] == 401
            assert get(url, path, {"Authorization": "Bearer s3cret"})[0] == 200
        assert error_of(request(url, "POST", "/v1/completions", OK))[0] == 401
        assert get(url, "/health")[0] == 200  # health and the page stay open
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model=NAME, prompt="a", max_tokens=2).usage.completion_tokens == 2


def test_page_is_served_and_self_contained(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/")
    response = conn.getresponse()
    page = response.read().decode()
    assert response.status == 200 and response.getheader("content-type").startswith("text/html")
    assert "/v1/chat/completions" in page
    # nothing fetched from elsewhere: users run this offline
    assert "http://" not in page and "https://" not in page and "src=" not in page


# ---------------------------------------------------------------------------------------------
# loading, concurrency, disconnects


def test_health_answers_while_the_model_loads(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_load = serve_module.load_any

    def slow_load(*args, **kwargs):
        release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(serve_module, "load_any", slow_load)
    options = ServeOptions(model_path, NAME, DEFAULTS, "cpu", 100, 2, 4096, None, 16, 10_000, 64, ())
    server = uvicorn.Server(uvicorn.Config(build_app(options), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "the server to start")
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        assert get(url, "/health") == (503, {"status": "loading", "model": NAME})
        status, _, message = error_of(request(url, "POST", "/v1/completions", OK))
        assert status == 503 and "loading" in message
        release.set()
        wait_for(lambda: get(url, "/health")[0] == 200, "the model to load")
        assert request(url, "POST", "/v1/completions", OK)[0] == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    result = run_cli(["serve", "--model", str(bad), "--port", "0", "--device", "cpu"], tmp_path)
    assert result.returncode == 1
    assert f"error: cannot load {bad}" in result.stderr
    missing = run_cli(["serve", "--model", str(tmp_path / "none.pt"), "--port", "0"], tmp_path)
    assert missing.returncode == 1 and "none.pt not found" in missing.stderr


def test_a_short_request_is_not_held_up_by_a_long_one(client: openai.OpenAI, server: str) -> None:
    long = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=500, stream=True)
    first = next(iter(long))  # the long stream is generating
    assert first.choices[0].text is not None
    short = client.completions.create(model=NAME, prompt="JULIET:", max_tokens=5)
    assert short.usage.completion_tokens == 5
    # the long one is still being generated after the short one finished: served side by side
    assert get(server, "/health")[1]["requests"] >= 1
    long.close()
    wait_for(lambda: get(server, "/health")[1]["requests"] == 0, "the long stream to be dropped")


def test_concurrent_greedy_requests_each_get_their_own_reply(client: openai.OpenAI, model_path: Path) -> None:
    prompts = ["ROMEO:", "JULIET: Before we proceed", "F", "hear me speak.\n", "Citizen", "me"]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        out = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=25, temperature=0.0)
        results[i] = out.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: greedy(model_path, p, 25) for i, p in enumerate(prompts)}


def test_a_client_that_disconnects_stops_its_generation(model_path: Path) -> None:
    with running(model_path) as url:
        host, port = url.removeprefix("http://").split(":")
        for stream in (True, False):
            body = json.dumps({**OK, "max_tokens": 100_000, "stream": stream}).encode()
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_for(lambda: get(url, "/health")[1]["requests"] == 1, "the request to start")
            if stream:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.close()
            # 100,000 tokens would take minutes: the request is dropped as soon as the client goes
            wait_for(
                lambda: get(url, "/health")[1]["requests"] == 0, f"a disconnect (stream={stream}) to stop it"
            )


@pytest.mark.slow
def test_serve_command_answers_on_loopback(model_path: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "--model", str(model_path), "--port", str(port), "--name", NAME, "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcore.cli", *args],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return get(url, "/health")[0] == 200
            except OSError:
                return False

        wait_for(up, "gptcore serve to answer", timeout=60)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert client.completions.create(model=NAME, prompt="a", max_tokens=4).usage.completion_tokens == 4
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"at {url}/" in out


def test_an_instruction_tuned_model_answers_chat_in_its_template(tmp_path: Path) -> None:
    # an instruction-tuned model's file carries its template: a chat request is rendered in it,
    # as `gptcore chat --model <it>` does, and the reply ends where the template opens a section
    from gptcore.checkpoint import save_model
    from gptcore.finetune.instruct import TEMPLATES, render_prompt
    from gptcore.tokenizer import CharTokenizer

    template = TEMPLATES["alpaca"]
    tok = CharTokenizer.train([TEXT + template.preamble + template.instruction + template.response])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32))
    path = tmp_path / "instruct.pt"
    save_model(path, model, tok, {"template": template.to_dict()})
    with running(path) as url:
        chat = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        for messages, prompt in [
            ([{"role": "user", "content": "Say hi."}], render_prompt(template, "Say hi.")),
            (
                [{"role": "system", "content": "Reply as BEN."}, {"role": "user", "content": "Hello"}],
                render_prompt(template, "Reply as BEN.", "Hello"),
            ),
        ]:
            out = chat.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0.0)
            assert out.choices[0].message.content == greedy(path, prompt, 12, stop=template.stops)
    assert render_chat([("user", "Say hi.")], template) == render_prompt(template, "Say hi.")
