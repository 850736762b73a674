"""Tests of the `gptcore` command (chat, sample, info) and of the sample stage, on a tiny untrained model."""

from __future__ import annotations

import io
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from support_cli import child_env, run_cli
from support_models import TEXT, save_tiny_model

from gptcore.checkpoint import load_model
from gptcore.cli import main
from gptcore.generate import complete, seeded_generator
from gptcore.memory import activation_bytes
from gptcore.model import GPT, GPTConfig
from gptcore.sampling import Sampling
from gptcore.tokenizer import CharTokenizer
from stages import sample as sample_stage

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECTION = {
    "prompts": ["ROMEO:", "JULIET:"],
    "max_new_tokens": 20,
    "temperature": 0.8,
    "top_k": 10,
    "top_p": 0.95,
    "seed": 1337,
    "stop": [],
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder holding models/model.pt, made the current folder (no params.yaml yet)."""
    save_tiny_model(tmp_path / "models" / "model.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(folder: Path, **sections: dict) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(sections), encoding="utf-8")


def reference_completion(prompt: str, max_new_tokens: int, seed: int, **settings: float) -> str:
    model, tok, _ = load_model("models/model.pt")
    sampling = Sampling(max_new_tokens=max_new_tokens, seed=seed, **settings)
    return complete(model, tok, prompt, sampling, generator=seeded_generator(sampling))


# ---------------------------------------------------------------------------------------------
# chat


# left in the fast tier, though a child process: its one run of the command as a user runs it
def test_chat_through_a_pipe_answers_each_line_and_exits_zero_at_eof(workdir: Path) -> None:
    args = shlex.split("chat --model models/model.pt --temperature 0 --max-new-tokens 12 --device cpu")
    result = run_cli(args, workdir, stdin="ROMEO:\nJULIET:\n")
    assert result.returncode == 0, result.stderr
    # the second line continues the conversation: the model sees the first exchange before it
    first = reference_completion("ROMEO:", 12, 0, temperature=0.0)
    first = first if first.endswith("\n") else first + "\n"
    second = reference_completion("ROMEO:" + first + "JULIET:", 12, 0, temperature=0.0)
    assert first.strip() and second
    assert result.stdout == first + (second if second.endswith("\n") else second + "\n")
    assert "gptcore chat" in result.stderr  # the banner, kept off stdout
    assert "> " not in result.stdout  # no prompt when stdin is not a terminal


@pytest.mark.slow
def test_chat_commands_change_the_settings_and_reset_forgets_the_conversation(workdir: Path) -> None:
    args = shlex.split("chat --model models/model.pt --temperature 0.9 --max-new-tokens 12 --device cpu")
    lines = [
        "/help",
        "/temperature 0",
        "/max_tokens 5",
        "/top_k 3",
        "/top_p 0.5",
        "/top_p 2",
        "/max_tokens zero",
        "/bogus",
        "ROMEO:",
        "/reset",
        "ROMEO:",
    ]
    result = run_cli(args, workdir, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "/temperature X" in err and "/reset" in err  # the help
    assert "[temperature 0, top_k 3, top_p 0.5, max_new_tokens 5," in err
    assert "error: /top_p: top_p = 2.0 is invalid: must be a number in (0, 1] (1 is off)" in err
    assert "error: /max_tokens: max_new_tokens = 'zero' is invalid: must be a whole number >= 1" in err
    assert "error: unknown command /bogus: /help lists them" in err
    assert "[conversation cleared]" in err
    # greedy, 5 tokens, top-k 3 / top-p 0.5; after /reset the same prompt gives the same reply
    reply = reference_completion("ROMEO:", 5, 0, temperature=0.0, top_k=3, top_p=0.5)
    reply = reply if reply.endswith("\n") else reply + "\n"
    assert result.stdout == reply + reply
    assert "/" not in result.stdout  # commands are never sent to the model


def test_chat_with_no_input_exits_zero_quietly(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    main(["chat", "--device", "cpu"])  # returns: exit status 0
    assert capsys.readouterr().out == ""


def start_chat(folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gptcore.cli", "chat", "--max-new-tokens", "1000000", "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=folder,
        env=child_env(),
    )


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery is POSIX")
@pytest.mark.slow
def test_ctrl_c_during_a_reply_stops_it_and_returns_to_the_prompt(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "models" / "model.pt", never_eot=True)
    proc = start_chat(tmp_path)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("ROMEO:\n")
    proc.stdin.flush()
    proc.stdout.read(1)  # the reply (of a million tokens) has started
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    # the reply stopped, the chat went back for the next line, found end of input and exited 0
    assert proc.returncode == 0, err
    assert "[stopped]" in err and "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery is POSIX")
@pytest.mark.slow
def test_ctrl_c_at_the_prompt_exits_cleanly(workdir: Path) -> None:
    proc = start_chat(workdir)
    assert proc.stderr is not None
    for _ in range(3):  # the banner: the model is loaded and the chat waits for a line
        proc.stderr.readline()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == "" and "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
@pytest.mark.slow
def test_ctrl_c_at_an_idle_terminal_prompt_clears_the_line_and_ctrl_d_quits(workdir: Path) -> None:
    import pty
    import select

    args = ["chat", "--max-new-tokens", "3", "--temperature", "0", "--device", "cpu"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a chat on a terminal, as a user starts it
        os.execve(sys.executable, [sys.executable, "-m", "gptcore.cli", *args], child_env())
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        while text not in seen:
            ready, _, _ = select.select([fd], [], [], 60)
            assert ready, f"no {text!r} from the chat; it said {seen!r}"
            seen += os.read(fd, 1024)

    read_until(b"> ")
    os.write(fd, b"half a thought")
    read_until(b"half a thought")
    os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT
    read_until(b"> ")  # a fresh prompt: the chat goes on
    seen = b""
    os.write(fd, b"ROMEO:\n")
    read_until(b"> ")  # it answered the line and asks for the next
    assert b"Traceback" not in seen
    os.write(fd, b"\x04")  # Ctrl-D quits
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.slow
def test_prompt_characters_outside_a_char_vocabulary_are_noted_once(workdir: Path) -> None:
    args = shlex.split("chat --model models/model.pt --temperature 0 --max-new-tokens 3 --device cpu")
    result = run_cli(args, workdir, stdin="ROMEO: Ω and €\nJULIET: Ω and ✓\nROMEO:\n")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: 'Ω', '€' not in the model's vocabulary: it reads each as <|unk|>",
        "note: '✓' not in the model's vocabulary: it reads each as <|unk|>",
    ]


# ---------------------------------------------------------------------------------------------
# sample


def test_sample_prints_the_prompt_and_its_completion(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    main(shlex.split("sample --prompt ROMEO: --max-new-tokens 15 --seed 3 --top-k 5 --device cpu"))
    expected = "ROMEO:" + reference_completion("ROMEO:", 15, 3, top_k=5)
    assert capsys.readouterr().out == expected + ("" if expected.endswith("\n") else "\n")


def test_sample_stop_flag_ends_each_completion_before_the_text(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    full = reference_completion("ROMEO:", 15, 3, temperature=0.0)
    stop = full[4:6]  # some text the greedy completion reaches
    assert stop and stop in full
    main(
        shlex.split("sample --prompt ROMEO: --max-new-tokens 15 --seed 3 --temperature 0 --device cpu")
        + ["--stop", stop]
    )
    cut = full[: full.index(stop)]
    assert capsys.readouterr().out == "ROMEO:" + cut + ("" if cut.endswith("\n") else "\n")


def test_sample_prints_num_samples_completions_per_prompt(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    main(["sample", "--prompt", "A", "--prompt", "B", "--num-samples", "2", "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert [int(n) for n in re.findall(r"--- sample (\d) of 4 ---", out)] == [1, 2, 3, 4]


def test_sample_defaults_come_from_params_and_match_the_sample_stage(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    write_params(workdir, sample=SAMPLE_SECTION)
    sample_stage.main()
    report = (workdir / "reports" / "samples.md").read_text(encoding="utf-8")
    capsys.readouterr()
    main(["sample", "--prompt", "JULIET:", "--device", "cpu"])  # the stage samples on the CPU too
    completion = capsys.readouterr().out.rstrip("\n")
    assert completion.startswith("JULIET:")
    assert f"```\n{completion}\n```" in report


# ---------------------------------------------------------------------------------------------
# info


def test_info_reports_the_model_parameter_count(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    write_params(workdir, train={"batch_size": 4, "grad_accum_steps": 1} | _train_shape())
    main(["info", "--model", "models/model.pt"])
    out = capsys.readouterr().out
    model, tok, _ = load_model("models/model.pt")
    assert re.search(r"parameters \(total\)\s+([\d,]+)", out).group(1) == f"{model.num_params(False):,}"
    assert re.search(r"parameters \(non-embedding\)\s+([\d,]+)", out).group(1) == f"{model.num_params():,}"
    assert f"char, {tok.vocab_size} tokens" in out
    assert "steps" in out and "123" in out  # the model file's meta
    # the memory plan of one fp32 process: weights and gradients 4 bytes a parameter, AdamW's moments 8
    n = model.num_params(False)
    assert re.search(rf"weights \(fp32 masters\)\s+{4 * n:,} bytes", out)
    assert re.search(rf"gradients\s+{4 * n:,} bytes", out)
    assert re.search(rf"optimizer \(AdamW\)\s+{8 * n:,} bytes", out)
    assert re.search(r"peak\s+[\d.]+ \w+ per process fits in", out)


def test_info_plans_a_preset_sharded_over_many_processes_and_says_it_does_not_fit_one_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    big = {
        "preset": "gpt2-1.5b",
        "arch": None,
        "n_layer": None,
        "n_head": None,
        "n_embd": None,
        "block_size": None,
    }
    write_params(tmp_path, train=_train_shape() | big | {"batch_size": 4096, "device": "cpu"})
    main(["info"])
    out = capsys.readouterr().out
    assert re.search(r"preset\s+gpt2-1.5b", out) and "n_layer=48" in out
    assert "does NOT fit" in out
    write_params(
        tmp_path,
        train=_train_shape()
        | big
        | {"batch_size": 8, "nproc_per_node": 8, "parallel": "fsdp", "dtype": "float32"},
    )
    main(["info"])
    out = capsys.readouterr().out
    assert "fsdp over 8, fp32, micro-batch 1 x 1024 tokens per process" in out


def test_info_without_a_model_sizes_the_params_and_says_the_vocab_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    # both families, tied and untied: the count follows train.arch and the head, not the GPT-2
    # shape alone
    for arch, tie in itertools.product(("gpt2", "llama"), (True, False)):
        family = {"arch": arch, "tie_embeddings": tie}
        write_params(tmp_path, train={"batch_size": 4, "grad_accum_steps": 1} | _train_shape() | family)
        main(["info"])
        out = capsys.readouterr().out
        assert "placeholder" in out
        shape = {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, **family}
        expected = GPT(GPTConfig(vocab_size=256, **shape)).num_params(False)
        assert re.search(r"parameters \(total\)\s+([\d,]+)", out).group(1) == f"{expected:,}"

    # with a built vocabulary its size is used
    tok = CharTokenizer.train([TEXT])
    tok.save(tmp_path / "data" / "vocab")
    main(["info"])
    out = capsys.readouterr().out
    assert "placeholder" not in out and f"vocab_size={tok.vocab_size}" in out


def _saved_activation_bytes(config: GPTConfig, batch_size: int, attention: str = "sdpa") -> int:
    """Bytes of the tensors autograd saves in one training forward (weights left out), plus the
    logits, which stay alive until the loss is taken."""
    torch.manual_seed(0)
    model = GPT(config).train()
    model.attention = attention
    # the model's own tensors (weights, llama's rotary tables) are not activations
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:  # a tensor and its views share one storage
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    T, V = config.block_size, config.vocab_size
    x, y = (torch.randint(0, V, (batch_size, T)) for _ in range(2))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, _ = model(x, y)
    return sum(saved.values()) + logits.numel() * logits.element_size()


FAMILIES = {
    "gpt2": {},
    "llama": {"arch": "llama", "tie_embeddings": False},
    "llama, qk_norm": {"arch": "llama", "qk_norm": True},
    "llama, wide SwiGLU": {"arch": "llama", "intermediate_size": 200},
}


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("block_size", [32, 128])
def test_activation_estimate_matches_what_a_real_backward_saves(
    dropout: float, block_size: int, family: str, attention: str
) -> None:
    config = GPTConfig(
        vocab_size=64,
        block_size=block_size,
        n_layer=2,
        n_head=2,
        n_embd=32,
        dropout=dropout,
        **FAMILIES[family],
    )
    measured = _saved_activation_bytes(config, 4, attention)
    explicit = attention == "explicit"
    assert activation_bytes(config, 4, explicit=explicit) == pytest.approx(measured, rel=0.03)
    if explicit and block_size == 128:  # the T x T weights (4 bytes each) the explicit kernel adds
        weights = 4 * config.n_layer * 4 * config.n_head * block_size**2
        assert measured - _saved_activation_bytes(config, 4) > 0.7 * weights


def test_activation_estimate_grows_linearly_with_batch() -> None:
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.1)
    assert activation_bytes(config, 8) == 2 * activation_bytes(config, 4) > 0


def _train_shape() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["train"]
    return params | {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("command", ["chat", "sample", "info"])
def test_missing_model_file_is_an_error_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, command: str
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ["--prompt", "x"] if command == "sample" else []
    with pytest.raises(SystemExit) as exc:
        main([command, "--model", "nowhere/model.pt", *extra])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere/model.pt" in err


def test_a_params_file_named_but_missing_is_an_error(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info", "--params", "elsewhere.yaml"])
    assert exc.value.code != 0 and "elsewhere.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["chat", "--temperature", "-1"], ["sample", "--top-p", "0"], ["chat", "--device", "tpu"], ["launch"]],
)
def test_bad_flags_are_errors(args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code != 0
    assert "error: " in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the sample stage


def test_sample_stage_output_is_identical_across_runs_and_prompts_are_independent(workdir: Path) -> None:
    write_params(workdir, sample=SAMPLE_SECTION)
    report = workdir / "reports" / "samples.md"
    sample_stage.main()
    first = report.read_bytes()
    sample_stage.main()
    assert report.read_bytes() == first
    text = first.decode("utf-8")
    assert text.startswith("# Samples")
    for needle in (
        "steps | 123",
        "temperature | 0.8",
        "top_k | 10",
        "top_p | 0.95",
        "max_new_tokens | 20",
        "1337",
    ):
        assert needle in text
    assert "## Prompt 1\n\nPrompt: `ROMEO:`" in text and "## Prompt 2\n\nPrompt: `JULIET:`" in text

    # seeded per prompt: JULIET's completion is the same without ROMEO before it
    juliet = text[text.index("## Prompt 2") :].split("```")[1]
    write_params(workdir, sample=SAMPLE_SECTION | {"prompts": ["JULIET:"]})
    sample_stage.main()
    alone = report.read_text(encoding="utf-8")
    assert alone[alone.index("## Prompt 1") :].split("```")[1] == juliet


def test_info_shows_what_auto_would_pick_once_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCORE_CACHE_DIR", str(tmp_path / "cache"))
    shape = _train_shape() | {"dtype": "auto", "compile": False, "threads": 1}

    def info(*flags: str, **changes: object) -> str:
        write_params(tmp_path, train={"batch_size": 4, "grad_accum_steps": 1} | shape | changes)
        main(["info", *flags])
        return capsys.readouterr().out

    before = info()
    assert "auto: not measured yet" in before and "gptcore info --measure" in before
    measured = info("--measure")
    row = re.search(
        r"precision \(dtype, compile, attention\)\s+(eager (?:fp32|bf16 autocast), (?:sdpa|explicit) attention) "
        r"\(measured\)",
        measured,
    )
    assert row, measured
    # fp32 and bf16, each with the fused and the explicit attention kernel, all eager (compile: false)
    # four candidates, each timed or (bf16, where its matmuls are slow) ruled out with the figure
    assert measured.count("ms/step") + measured.count("ruled out: a bf16 autocast matmul") == 4
    # the next look reads the same figures from the cache, timing nothing
    assert f"{row.group(1)} (cache)" in info()
    forced = info(dtype="float32", attention="sdpa")
    assert re.search(
        r"precision \(dtype, compile, attention\)\s+eager fp32, sdpa attention \(params\)", forced
    )
