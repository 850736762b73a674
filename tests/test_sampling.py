"""Tests of gptcore.sampling: one settings type whose check every door shares."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from support_models import save_tiny_model

from gptcore.checkpoint import load_model
from gptcore.cli import main
from gptcore.cli.chat import chat_command
from gptcore.errors import GptcoreError
from gptcore.generate import complete, sample_next
from gptcore.params import ParamsError, load_section
from gptcore.sampling import Sampling, SamplingError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

# (setting, chat command, flag, value as typed, value as params.yaml holds it, the message)
BAD = [
    ("temperature", "temperature", "--temperature", "inf", float("inf"), "temperature = inf is invalid"),
    ("temperature", "temperature", "--temperature", "nan", float("nan"), "temperature = nan is invalid"),
    ("temperature", "temperature", "--temperature", "-0.5", -0.5, "temperature = -0.5 is invalid"),
    ("top_k", "top_k", "--top-k", "-1", -1, "top_k = -1 is invalid"),
    ("top_p", "top_p", "--top-p", "0", 0.0, "top_p = 0.0 is invalid"),
    ("top_p", "top_p", "--top-p", "1.5", 1.5, "top_p = 1.5 is invalid"),
    ("max_new_tokens", "max_tokens", "--max-new-tokens", "0", 0, "max_new_tokens = 0 is invalid"),
]


def _params_message(tmp_path: Path, key: str, value: object) -> str:
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    raw["sample"][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ParamsError) as info:
        load_section("sample", path)
    return str(info.value)


def _flag_message(flag: str, text: str, capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as info:
        main(["sample", "--prompt", "x", "--model", "nowhere.pt", flag, text])
    assert info.value.code == 2  # argparse's usage error, before any model is loaded
    return capsys.readouterr().err


def _chat_message(command: str, text: str) -> str:
    with pytest.raises(GptcoreError) as info:
        chat_command(f"/{command} {text}", Sampling())
    return str(info.value)


@pytest.mark.parametrize(("field", "command", "flag", "text", "value", "message"), BAD)
def test_a_bad_setting_gets_the_same_message_through_params_flags_and_chat(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    field: str,
    command: str,
    flag: str,
    text: str,
    value: object,
    message: str,
) -> None:
    with pytest.raises(SamplingError) as info:
        Sampling(**{field: value})
    rule = info.value.rule
    full = f"{message}: {rule}"
    assert str(info.value) == full
    assert _params_message(tmp_path, field, value) == f"params.yaml: sample.{full}"
    assert f"argument {flag}: {full}" in _flag_message(flag, text, capsys)
    assert _chat_message(command, text) == f"/{command}: {full}"


def test_a_seed_beyond_64_bits_is_refused_alike_in_params_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    full = f"seed = {2**64} is invalid: must be a whole number that fits in 64 bits (or none: a random seed)"
    assert _params_message(tmp_path, "seed", 2**64) == f"params.yaml: sample.{full}"
    assert f"argument --seed: {full}" in _flag_message("--seed", str(2**64), capsys)
    for seed in (-(2**63), 2**64 - 1):  # the ends of what torch's generators take
        torch.Generator().manual_seed(Sampling(seed=seed).seed)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-40])
def test_a_temperature_too_small_for_floats_is_greedy_through_every_door(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, temperature: float
) -> None:
    # any temperature > 0 passes the check, so each must sample: a tiny one is argmax, not NaN
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0)) * 30
    drawn = sample_next(logits, Sampling(temperature=temperature, top_k=5, top_p=0.9), torch.Generator())
    assert torch.equal(drawn, logits.argmax(dim=-1))
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    raw["sample"]["temperature"] = temperature
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert load_section("sample", tmp_path / "params.yaml").sampling().temperature == temperature
    assert chat_command(f"/temperature {temperature!r}", Sampling())[0].temperature == temperature
    model = tmp_path / "model.pt"
    save_tiny_model(model)
    monkeypatch.chdir(tmp_path)
    main(
        ["sample", "--model", str(model), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--device", "cpu"]
        + ["--temperature", repr(temperature), "--seed", "1"]
    )
    model_obj, tokenizer, _ = load_model(model)
    assert (
        complete(model_obj, tokenizer, "ROMEO:", Sampling(temperature=0.0, max_new_tokens=12))
        in capsys.readouterr().out
    )


def test_a_huge_temperature_draws_uniformly() -> None:
    logits = torch.tensor([[30.0, 0.0, -30.0, 5.0]]).expand(4000, 4)
    drawn = sample_next(logits, Sampling(temperature=1e300), torch.Generator().manual_seed(0))
    assert torch.bincount(drawn, minlength=4).min() > 850  # about 1,000 each


def test_empty_stop_strings_are_refused_alike_in_params_and_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    full = "stop = [''] is invalid: must be non-empty strings"
    assert _params_message(tmp_path, "stop", [""]) == f"params.yaml: sample.{full}"
    assert f"argument --stop: {full}" in _flag_message("--stop", "", capsys)


def test_a_value_that_is_not_a_number_names_the_setting_and_the_rule() -> None:
    assert _chat_message("top_k", "many") == (
        "/top_k: top_k = 'many' is invalid: must be a whole number >= 0 (0 is off)"
    )


def test_request_fields_of_the_wrong_type_are_refused_like_out_of_range_ones() -> None:
    # what a server hands over from JSON: strings, bools and lists where numbers belong
    for field, value in (("temperature", "0.7"), ("top_k", True), ("top_k", 2.5), ("seed", "7")):
        with pytest.raises(SamplingError, match=f"^{field} = "):
            Sampling(**{field: value})
    assert Sampling(stop=["\n\n"]).stop == ("\n\n",)  # JSON lists become the tuple the type keeps


def test_valid_settings_pass_and_describe_themselves() -> None:
    sampling = Sampling(temperature=0, top_k=5, top_p=0.9, max_new_tokens=3, stop=("x",), seed=1)
    assert sampling.describe() == ("temperature 0, top_k 5, top_p 0.9, max_new_tokens 3, seed 1, stop ['x']")


def test_sample_params_hand_over_the_same_settings() -> None:
    params = load_section("sample", REPO_PARAMS)
    sampling = params.sampling()
    assert (sampling.temperature, sampling.top_k, sampling.top_p) == (
        params.temperature,
        params.top_k,
        params.top_p,
    )
    assert (sampling.max_new_tokens, sampling.seed, sampling.stop) == (
        params.max_new_tokens,
        params.seed,
        tuple(params.stop),
    )
