"""Tests of gptcore.params: the repo's params.yaml loads, and every bad value is refused by name."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gptcore.errors import GptcoreError
from gptcore.params import SECTIONS, ParamsError, TrainParams, load_section

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
RAW: dict[str, Any] = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
DELETE = object()  # a change that removes the key


def write_params(tmp_path: Path, section: str, **changes: Any) -> Path:
    """The repo's params.yaml with `changes` applied to one section (a value of DELETE drops a key)."""
    raw = copy.deepcopy(RAW)
    for key, value in changes.items():
        if value is DELETE:
            del raw[section][key]
        else:
            raw[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def refused(tmp_path: Path, section: str, **changes: Any) -> str:
    path = write_params(tmp_path, section, **changes)
    with pytest.raises(ParamsError) as info:
        load_section(section, path)
    return str(info.value)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_repo_params_yaml_loads_every_section(name: str) -> None:
    params = load_section(name, REPO_PARAMS)
    assert isinstance(params, SECTIONS[name])
    assert dataclasses.asdict(params) == RAW[name]


def test_every_section_of_params_yaml_has_a_dataclass_and_back() -> None:
    assert set(RAW) == set(SECTIONS)


def test_params_error_is_a_user_error_and_a_value_error() -> None:
    assert issubclass(ParamsError, GptcoreError)
    assert issubclass(ParamsError, ValueError)


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path: Path) -> None:
    message = refused(tmp_path, "train", n_layers=4)
    assert "unknown key train.n_layers" in message
    assert "n_layer" in message and "learning_rate" in message


def test_missing_key_is_named(tmp_path: Path) -> None:
    assert "missing key train.dropout" in refused(tmp_path, "train", dropout=DELETE)


def test_missing_section_is_named(tmp_path: Path) -> None:
    raw = {k: v for k, v in RAW.items() if k != "sample"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ParamsError, match="missing section 'sample'"):
        load_section("sample", path)
    assert load_section("train", path).n_layer == RAW["train"]["n_layer"]


def test_section_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**RAW, "vocab": "char"}), encoding="utf-8")
    with pytest.raises(ParamsError, match="section 'vocab' must be a mapping"):
        load_section("vocab", path)


def test_missing_file_and_invalid_yaml_are_params_errors(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_section("train", tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_section("train", bad)


def test_unknown_section_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="no params section 'model'"):
        load_section("model", REPO_PARAMS)


def test_string_for_an_int_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "train", n_layer="six")
    assert "train.n_layer = 'six'" in message
    assert "must be int" in message


def test_short_exponent_float_is_refused_with_a_hint_to_write_a_dot(tmp_path: Path) -> None:
    # PyYAML reads `1e-3` (no dot) as the string '1e-3'; a user writes it by hand, unquoted
    text = REPO_PARAMS.read_text(encoding="utf-8")
    # the first learning_rate is train's (the fine-tuning sections come later)
    edited, count = re.subn(r"(?m)^(\s+learning_rate:)\s*\S+", r"\1 1e-3", text, count=1)
    assert count == 1
    path = tmp_path / "params.yaml"
    path.write_text(edited, encoding="utf-8")
    with pytest.raises(ParamsError) as info:
        load_section("train", path)
    message = str(info.value)
    assert "train.learning_rate = '1e-3'" in message
    assert "1.0e-3" in message


def test_an_int_is_a_fine_float(tmp_path: Path) -> None:
    path = write_params(tmp_path, "train", weight_decay=0, learning_rate=1)
    params = load_section("train", path)
    assert params.weight_decay == 0.0 and isinstance(params.weight_decay, float)
    assert params.learning_rate == 1.0 and isinstance(params.learning_rate, float)


@pytest.mark.parametrize(("key", "value"), [("n_layer", True), ("learning_rate", False)])
def test_bool_is_not_a_number(tmp_path: Path, key: str, value: bool) -> None:
    message = refused(tmp_path, "train", **{key: value})
    assert f"train.{key} = {value}" in message
    assert "must be" in message


def test_int_is_not_a_bool(tmp_path: Path) -> None:
    message = refused(tmp_path, "train", bias=1)
    assert "train.bias = 1" in message and "must be bool" in message


def test_n_embd_not_divisible_by_n_head_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "train", n_embd=100, n_head=6)
    assert "train.n_embd = 100" in message
    assert "divisible by train.n_head (6)" in message


@pytest.mark.parametrize("key", ["n_layer", "block_size", "batch_size", "max_iters", "eval_interval"])
def test_non_positive_sizes_are_refused(tmp_path: Path, key: str) -> None:
    for value in (-1, 0):
        message = refused(tmp_path, "train", **{key: value})
        assert f"train.{key} = {value}" in message and "must be > 0" in message


@pytest.mark.parametrize("key", ["warmup_iters", "weight_decay", "grad_clip", "threads"])
def test_negative_counts_and_rates_are_refused_and_zero_is_allowed(tmp_path: Path, key: str) -> None:
    message = refused(tmp_path, "train", **{key: -1})
    assert f"train.{key} = -1" in message and "must be >= 0" in message
    load_section("train", write_params(tmp_path, "train", **{key: 0}))


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.1])
def test_val_fraction_must_lie_strictly_between_0_and_1(tmp_path: Path, value: float) -> None:
    message = refused(tmp_path, "data", val_fraction=value)
    assert f"data.val_fraction = {value}" in message
    assert "strictly between 0 and 1" in message


def test_min_lr_above_learning_rate_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "train", learning_rate=1.0e-3, min_lr=2.0e-3)
    assert "train.min_lr = 0.002" in message
    assert "must not exceed train.learning_rate (0.001)" in message
    load_section("train", write_params(tmp_path, "train", learning_rate=1.0e-3, min_lr=1.0e-3))


@pytest.mark.parametrize("value", ["gpu", "cuda0", "tpu", ""])
def test_unknown_device_is_refused(tmp_path: Path, value: str) -> None:
    message = refused(tmp_path, "train", device=value)
    assert f"train.device = {value!r}" in message
    assert "auto, cpu, cuda, cuda:N, mps" in message


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_known_devices_are_accepted(tmp_path: Path, value: str) -> None:
    assert load_section("train", write_params(tmp_path, "train", device=value)).device == value


def test_unknown_dtype_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "train", dtype="float16")
    assert "train.dtype = 'float16'" in message and "auto, bfloat16, float32" in message


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("compile", "yes", "auto, true, false"),
        ("attention", "flash", "auto, sdpa, explicit"),
        ("optimizer", "sgd", "adamw, muon"),
        ("muon_learning_rate", 0.0, "> 0"),
    ],
)
def test_bad_compile_attention_optimizer_and_muon_values_are_refused(
    tmp_path: Path, key: str, value: object, allowed: str
) -> None:
    message = refused(tmp_path, "train", **{key: value})
    assert f"train.{key} = {value!r}" in message and allowed in message


@pytest.mark.parametrize("value", ["auto", True, False])
def test_compile_takes_auto_or_a_boolean(tmp_path: Path, value: object) -> None:
    assert load_section("train", write_params(tmp_path, "train", compile=value)).compile == value


@pytest.mark.parametrize(
    ("key", "value"), [("dropout", 1.0), ("beta1", 1.0), ("beta2", -0.1), ("muon_momentum", 1.0)]
)
def test_probabilities_out_of_range_are_refused(tmp_path: Path, key: str, value: float) -> None:
    message = refused(tmp_path, "train", **{key: value})
    assert f"train.{key} = {value}" in message and "[0, 1)" in message


def test_unknown_vocab_kind_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "vocab", kind="words")
    assert "vocab.kind = 'words'" in message
    assert "char" in message


def test_empty_prompts_are_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, "sample", prompts=[])
    assert "sample.prompts = []" in message and "at least one prompt" in message


def test_prompts_must_be_strings(tmp_path: Path) -> None:
    message = refused(tmp_path, "sample", prompts=["ROMEO:", 7])
    assert "sample.prompts" in message and "a list of str" in message


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_top_p_must_lie_in_0_exclusive_to_1(tmp_path: Path, value: float) -> None:
    message = refused(tmp_path, "sample", top_p=value)
    assert f"sample.top_p = {value}" in message and "(0, 1]" in message


def test_negative_temperature_and_top_k_are_refused(tmp_path: Path) -> None:
    assert "sample.temperature = -0.5" in refused(tmp_path, "sample", temperature=-0.5)
    assert "sample.top_k = -1" in refused(tmp_path, "sample", top_k=-1)


def test_data_source_may_be_a_list_and_sha256_must_be_hex(tmp_path: Path) -> None:
    urls = ["https://example.com/a.txt", "https://example.com/b.txt"]
    assert load_section("data", write_params(tmp_path, "data", source=urls)).source == urls
    assert "data.source" in refused(tmp_path, "data", source=[])
    assert "data.source" in refused(tmp_path, "data", source="  ")
    assert "data.sha256 = 'abc'" in refused(tmp_path, "data", sha256="abc")
    assert load_section("data", write_params(tmp_path, "data", sha256="A" * 64)).sha256 == "A" * 64


def test_empty_include_is_refused(tmp_path: Path) -> None:
    assert "data.include = []" in refused(tmp_path, "data", include=[])


@pytest.mark.parametrize("key", ["max_docs", "max_bytes"])
def test_corpus_limits_are_positive_ints_or_null(tmp_path: Path, key: str) -> None:
    assert getattr(load_section("data", write_params(tmp_path, "data", **{key: None})), key) is None
    assert getattr(load_section("data", write_params(tmp_path, "data", **{key: 10})), key) == 10
    assert f"data.{key} = 0" in refused(tmp_path, "data", **{key: 0})
    assert f"data.{key} = 1.5" in refused(tmp_path, "data", **{key: 1.5})


def test_pile_set_names_are_a_list_of_non_empty_names(tmp_path: Path) -> None:
    names = ["Pile-CC", "Wikipedia (en)"]
    assert load_section("data", write_params(tmp_path, "data", pile_set_names=names)).pile_set_names == names
    assert "data.pile_set_names" in refused(tmp_path, "data", pile_set_names="Pile-CC")
    assert "data.pile_set_names" in refused(tmp_path, "data", pile_set_names=[" "])


def test_tokenize_workers_must_not_be_negative(tmp_path: Path) -> None:
    assert load_section("tokenize", write_params(tmp_path, "tokenize", workers=3)).workers == 3
    assert "tokenize.workers = -1" in refused(tmp_path, "tokenize", workers=-1)


@pytest.mark.parametrize("key", ["batch_size", "max_tokens", "train_tokens"])
def test_evaluate_sizes_must_be_positive(tmp_path: Path, key: str) -> None:
    assert f"evaluate.{key} = 0" in refused(tmp_path, "evaluate", **{key: 0})


def test_train_params_are_frozen() -> None:
    params = load_section("train", REPO_PARAMS)
    assert isinstance(params, TrainParams)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.n_layer = 2  # type: ignore[misc]


@pytest.mark.parametrize("text", ["- train\n- data\n", "training\n", "42\n"])
def test_params_file_whose_top_level_is_not_a_mapping_is_a_params_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError):
        load_section("train", path)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "learning_rate", float("nan")),
        ("train", "learning_rate", float("inf")),
        ("train", "weight_decay", float("nan")),
        ("sample", "temperature", float("nan")),
    ],
)
def test_non_finite_rates_are_refused(tmp_path: Path, section: str, key: str, value: float) -> None:
    message = refused(tmp_path, section, **{key: value})
    assert f"{section}.{key}" in message


def test_no_param_is_named_size_or_nfiles() -> None:
    # DVC's run-cache key leaves out every key named `size` or `nfiles` (file metadata, to DVC), so
    # a param of that name could change and the stage still be "restored" from an older run's outputs
    # (dvc 3.67: `vocab.size: 4096` restored the vocabulary of `vocab.size: 1024`)
    def keys(node: object) -> list[str]:
        if isinstance(node, dict):
            return [k for k, v in node.items() for k in [k, *keys(v)]]
        return []

    assert not {"size", "nfiles"} & set(keys(RAW))


@pytest.mark.parametrize(
    ("changes", "key", "hint"),
    [
        ({"arch": "mamba"}, "train.arch = 'mamba'", "allowed: gpt2, llama"),
        ({"arch": "gpt2", "qk_norm": True}, "train.qk_norm = True", "needs train.arch: llama"),
        ({"arch": "llama", "bias": True}, "train.bias = True", "the llama family has no biases"),
        ({"arch": "llama", "n_embd": 96, "n_head": 32}, "train.n_head = 32", "even head size"),
    ],
)
def test_model_families_without_a_transformers_counterpart_are_refused(
    tmp_path: Path, changes: dict, key: str, hint: str
) -> None:
    message = refused(tmp_path, "train", **changes)
    assert key in message and hint in message


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("qk_norm", [True, False])
def test_every_llama_variant_is_accepted(tmp_path: Path, tie: bool, qk_norm: bool) -> None:
    path = write_params(tmp_path, "train", arch="llama", tie_embeddings=tie, qk_norm=qk_norm)
    loaded = load_section("train", path)
    assert (loaded.arch, loaded.tie_embeddings, loaded.qk_norm) == ("llama", tie, qk_norm)
