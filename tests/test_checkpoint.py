"""Tests of gptcore.checkpoint: the model file round trip, safe loading, refusal of foreign or
altered files. (The training checkpoint's behaviour is tested in test_resume.py.)"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from support_models import CreatesMarkerWhenUnpickled

import gptcore.checkpoint as checkpoint
from gptcore.checkpoint import (
    MODEL_FORMAT,
    MODEL_VERSION,
    contents_sha256,
    load_model,
    read_model_file,
    save_model,
)
from gptcore.errors import DataError
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import CharTokenizer

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train([TEXT])


@pytest.fixture(scope="module")
def model(tokenizer: CharTokenizer) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model = GPT(config)
    with torch.no_grad():  # move the weights off their init so a fresh model would not pass
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path, model: GPT, tokenizer: CharTokenizer) -> Path:
    path = tmp_path / "models" / "model.pt"
    save_model(path, model, tokenizer, meta={"steps": 12, "tokens_seen": 3072})
    return path


def save_as_ours(payload: dict, path: Path) -> Path:
    """Write a payload with a matching digest: a file we might have written with a bug."""
    torch.save({**payload, "sha256": contents_sha256(payload)}, path)
    return path


class Opaque:
    """An ordinary user class: not something a model file may contain."""

    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


def test_round_trip_gives_identical_logits_tokenizer_and_meta(
    saved: Path, model: GPT, tokenizer: CharTokenizer
) -> None:
    loaded, loaded_tok, meta = load_model(saved)
    assert loaded.config == model.config
    assert not loaded.training
    idx = torch.tensor([tokenizer.encode("nobler in the mind")[:16]])
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert loaded_tok.identity == tokenizer.identity
    assert loaded_tok.encode(TEXT) == tokenizer.encode(TEXT)
    assert loaded_tok.decode(tokenizer.encode(TEXT)) == TEXT
    assert meta == {"steps": 12, "tokens_seen": 3072}


def test_loaded_model_keeps_its_head_tied_to_the_embedding(saved: Path) -> None:
    loaded, _, _ = load_model(saved)
    assert loaded.lm_head.weight is loaded.wte.weight


def test_model_file_loads_with_weights_only(saved: Path, model: GPT) -> None:
    payload = torch.load(saved, map_location="cpu", weights_only=True)
    assert payload["format"] == MODEL_FORMAT
    assert payload["config"] == model.config.to_dict()
    assert "lm_head.weight" not in payload["state_dict"]  # tied: stored once, as wte.weight
    assert torch.equal(payload["state_dict"]["wte.weight"], model.wte.weight)


def test_missing_file_is_a_data_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "models" / "model.pt"
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_model(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(DataError, match="is not a gptcore model file"):
        load_model(path)


def test_plain_state_dict_without_our_marker_is_refused(tmp_path: Path, model: GPT) -> None:
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "config": model.config.to_dict()}, path)
    with pytest.raises(DataError, match=f"no '{MODEL_FORMAT}' marker"):
        load_model(path)


def test_pickle_of_an_arbitrary_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"format": MODEL_FORMAT, "version": 1, "config": Opaque()}, protocol=2))
    with pytest.raises(DataError, match="is not a gptcore model file"):
        load_model(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_loading_never_executes_code_from_the_file(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"format": MODEL_FORMAT, "version": 1, "config": CreatesMarkerWhenUnpickled(marker)}
    path = tmp_path / "model.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    # the trap is armed: an ordinary unpickler runs it
    pickle.loads(pickle.dumps(CreatesMarkerWhenUnpickled(tmp_path / "armed"))).close()
    assert (tmp_path / "armed").exists()
    with pytest.raises(DataError):
        load_model(path)
    assert not marker.exists()


def test_other_format_version_is_refused(tmp_path: Path, saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["version"] = 99
    save_as_ours(payload, tmp_path / "v99.pt")
    with pytest.raises(DataError, match="version 99"):
        read_model_file(tmp_path / "v99.pt")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path, saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["config"]["n_embd"] = 32
    save_as_ours(payload, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="weights do not match the model config"):
        load_model(tmp_path / "bad.pt")


def test_a_model_file_with_one_weight_changed_is_refused_as_altered(tmp_path: Path, saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["state_dict"]["h.0.attn.c_attn.weight"][0, 0] += 1.0  # the digest is left as it was
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(DataError, match=r"tampered\.pt was altered or damaged after it was written"):
        load_model(tmp_path / "tampered.pt")


def test_a_model_file_with_its_meta_or_tokenizer_changed_is_refused(tmp_path: Path, saved: Path) -> None:
    for key, value in (("meta", {"steps": 10**6}), ("tokenizer", {"kind": "char", "chars": "ab"})):
        payload = torch.load(saved, weights_only=True)
        payload[key] = value
        torch.save(payload, tmp_path / f"{key}.pt")
        with pytest.raises(DataError, match="altered or damaged"):
            load_model(tmp_path / f"{key}.pt")


def test_a_flipped_byte_anywhere_in_the_weights_is_refused(tmp_path: Path, saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    # the tensors are stored raw inside the zip: flip a byte in the middle of the largest record
    weight = torch.load(saved, weights_only=True)["state_dict"]["wte.weight"].numpy().tobytes()
    at = bytes(data).index(weight[:64]) + len(weight) // 2
    data[at] ^= 0x01
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(DataError, match="flipped.pt"):
        load_model(tmp_path / "flipped.pt")


def test_a_model_file_without_a_digest_is_refused(tmp_path: Path, saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    del payload["sha256"]
    torch.save(payload, tmp_path / "nodigest.pt")
    with pytest.raises(DataError, match="altered or damaged"):
        load_model(tmp_path / "nodigest.pt")


def test_a_model_file_of_the_previous_version_names_both_versions(tmp_path: Path, saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["version"] = MODEL_VERSION - 1
    del payload["sha256"]  # version 1 files had none
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(
        DataError, match=rf"model file format version {MODEL_VERSION - 1}, this gptcore reads {MODEL_VERSION}"
    ):
        load_model(tmp_path / "old.pt")


def test_tokenizer_of_another_size_is_refused(tmp_path: Path, model: GPT) -> None:
    other = CharTokenizer.train(["abc"])
    save_model(tmp_path / "model.pt", model, other)
    with pytest.raises(DataError, match=f"tokenizer has {other.vocab_size} tokens"):
        load_model(tmp_path / "model.pt")


def test_save_is_atomic_and_leaves_no_temp_files(saved: Path, model: GPT, tokenizer: CharTokenizer) -> None:
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.pt"]
    save_model(saved, model, tokenizer)  # overwriting is fine too
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.pt"]


def test_failed_save_leaves_the_previous_file_and_no_temp_files(
    saved: Path, model: GPT, tokenizer: CharTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()

    def save_then_fail(obj: object, f: Any) -> None:
        f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_model(saved, model, tokenizer)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model.pt"]
    assert saved.read_bytes() == before


def test_the_same_weights_give_a_byte_identical_file(
    tmp_path: Path, model: GPT, tokenizer: CharTokenizer
) -> None:
    save_model(tmp_path / "a.pt", model, tokenizer, meta={"steps": 3})
    save_model(tmp_path / "b" / "model.pt", model, tokenizer, meta={"steps": 3})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def test_save_unwraps_a_compiled_model(tmp_path: Path, model: GPT, tokenizer: CharTokenizer) -> None:
    class Wrapper(torch.nn.Module):  # what torch.compile returns: the model under `_orig_mod`
        def __init__(self, inner: GPT) -> None:
            super().__init__()
            self._orig_mod = inner

    save_model(tmp_path / "model.pt", Wrapper(model), tokenizer)
    loaded, _, _ = load_model(tmp_path / "model.pt")
    assert torch.equal(loaded.wte.weight, model.wte.weight)


def _drop_embedding(payload: dict) -> None:
    del payload["state_dict"]["wte.weight"]


def _config_not_a_mapping(payload: dict) -> None:
    payload["config"] = [1, 2]


def _state_dict_not_a_mapping(payload: dict) -> None:
    payload["state_dict"] = [1, 2]


@pytest.mark.parametrize(
    "damage",
    [
        _drop_embedding,
        _config_not_a_mapping,
        _state_dict_not_a_mapping,
    ],
)
def test_damaged_file_with_our_marker_is_refused_with_data_error(tmp_path: Path, saved: Path, damage) -> None:
    payload = torch.load(saved, weights_only=True)
    damage(payload)
    save_as_ours(payload, tmp_path / "damaged.pt")
    with pytest.raises(DataError, match="damaged.pt"):
        load_model(tmp_path / "damaged.pt")


def test_a_forged_config_with_a_recomputed_hash_is_refused_before_any_allocation(
    tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["config"]["n_embd"] = 32768  # a 12 GB model, if it were built
    save_as_ours(payload, tmp_path / "forged.pt")  # the sha256 recomputed: it proves nothing
    built: list[GPTConfig] = []
    real_gpt = checkpoint.GPT

    def spy(config: GPTConfig) -> GPT:
        if torch.empty(0).device.type != "meta":  # a real build, not the meta-device shape check
            built.append(config)
        return real_gpt(config)

    monkeypatch.setattr(checkpoint, "GPT", spy)
    with pytest.raises(DataError, match=r"forged\.pt: weights do not match the model config: wte\.weight is"):
        load_model(tmp_path / "forged.pt")
    assert built == []


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("n_embd", "64", r"n_embd = '64' is not int"),
        ("n_layer", True, r"n_layer = True is not int"),
        ("intermediate_size", "wide", r"intermediate_size = 'wide' is not int \| None"),
        ("arch", None, r"arch = None is not str"),
        ("n_head", 0, r"n_head = 0 must be >= 1"),
        ("n_head", 3, r"n_embd \d+ is not a multiple of n_head 3"),
        ("dropout", 1.5, r"dropout = 1.5 must lie in \[0, 1\)"),
        ("n_layer", 10**9, r"n_layer = 1000000000 exceeds the limit 1024"),
        ("n_layer", 3, r"n_layer = 3, but the weights hold 2 layers"),
        ("block_size", 2 * 10**9, r"block_size = 2000000000 exceeds the limit 1048576"),
        ("norm_eps", float("nan"), r"norm_eps = nan must be a finite number >= 0"),
        ("flash", True, r"unknown model config key 'flash'"),
    ],
)
def test_config_values_are_checked_before_the_model_is_built(
    tmp_path: Path, saved: Path, key: str, value: object, said: str
) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["config"][key] = value
    save_as_ours(payload, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=rf"bad\.pt: (model config )?{said}"):
        load_model(tmp_path / "bad.pt")


def test_refusing_a_pickled_object_never_advises_weights_only_false(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"format": MODEL_FORMAT, "handle": pickle.PickleError}, path)
    with pytest.raises(DataError) as err:
        load_model(path)
    message = str(err.value)
    assert "weights_only" not in message and "\n" not in message
    assert message.endswith(
        "model.pt is not a gptcore model file: it holds a Python object (pickle.PickleError) that only "
        "running code could rebuild, and gptcore runs no code from a file"
    )
