"""Hostile model files and folders: each is refused with one line naming the file, the key, the
value and the limit, before the model it describes is built or its data expanded; on the command
line as `error: ...` with no traceback.

Each case is a tiny real model, saved and then tampered with: a config asking for two billion
positions or a hundred thousand layers, a zip member that inflates far beyond its file, a NaN in
a config or a weight, a pickle that names a Python global. Where refusing late would allocate, the
test makes a late refusal fail instead (a GPT built for real, torch.load called at all), so a
missing bound fails fast rather than exhausting the machine."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from support_cli import run_cli
from support_models import CreatesMarkerWhenUnpickled, forge_model_file, save_tiny_model
from support_train import BASE

import gptcore.checkpoint as checkpoint
import gptcore.hf.convert as hf
import gptcore.limits as limits
from gptcore.checkpoint import load_model
from gptcore.cli import main
from gptcore.errors import DataError
from gptcore.hf.convert import export_folder, initial_weights, load_folder, read_folder
from gptcore.model import GPT, GPTConfig
from gptcore.presets import PRESETS
from gptcore.tokenizer import CharTokenizer

BILLIONS = 2_000_000_000


@pytest.fixture
def no_model_built(monkeypatch: pytest.MonkeyPatch) -> list[GPTConfig]:
    """Fail the test if a model is built for real (the meta-device shape checks may build one)."""
    built: list[GPTConfig] = []

    def refuse(config: GPTConfig) -> GPT:
        if torch.empty(0).device.type != "meta":
            built.append(config)
            raise AssertionError(f"a model of {config} was built before the file was refused")
        return GPT(config)

    for module in (checkpoint, hf):
        monkeypatch.setattr(module, "GPT", refuse)
    return built


@pytest.fixture
def llama_file(tmp_path: Path) -> Path:
    save_tiny_model(tmp_path / "llama.pt", arch="llama")
    return tmp_path / "llama.pt"


@pytest.fixture
def llama_folder(tmp_path: Path, llama_file: Path) -> Path:
    model, tokenizer, _ = load_model(llama_file)
    return export_folder(model, tokenizer, tmp_path / "hf")


def set_config(value_of: dict[str, Any]) -> Any:
    def change(payload: dict[str, Any]) -> None:
        payload["config"].update(value_of)

    return change


def edit_config_json(folder: Path, **changes: Any) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --- sizes: context length, layers ------------------------------------------------------------------


def test_a_llama_model_file_asking_for_two_billion_positions_is_refused_before_building(
    tmp_path: Path, llama_file: Path, no_model_built: list[GPTConfig]
) -> None:
    # no weight depends on a llama model's context length: only the limit stands in the way
    forged = forge_model_file(llama_file, tmp_path / "long.pt", set_config({"block_size": BILLIONS}))
    with pytest.raises(
        DataError, match=r"long\.pt: model config block_size = 2000000000 exceeds the limit 1048576"
    ):
        load_model(forged)
    assert no_model_built == []


def test_a_config_json_asking_for_two_billion_positions_is_refused_before_building(
    llama_folder: Path, no_model_built: list[GPTConfig]
) -> None:
    edit_config_json(llama_folder, max_position_embeddings=BILLIONS)
    said = r"config\.json: max_position_embeddings = 2000000000 exceeds the limit 1048576"
    with pytest.raises(DataError, match=said):
        load_folder(llama_folder)
    # train.init_from reads the folder the same way
    with pytest.raises(DataError, match=rf"train\.init_from = .*{said}"):
        initial_weights(dataclasses.replace(BASE, init_from=str(llama_folder)), 100)


def test_a_config_json_of_a_hundred_thousand_layers_is_refused_before_building(
    llama_folder: Path, no_model_built: list[GPTConfig]
) -> None:
    edit_config_json(llama_folder, num_hidden_layers=100_000)
    with pytest.raises(DataError, match=r"config\.json: num_hidden_layers = 100000 exceeds the limit 1024"):
        read_folder(llama_folder)
    with pytest.raises(DataError, match=r"train\.init_from = .*num_hidden_layers = 100000 exceeds the limit"):
        initial_weights(dataclasses.replace(BASE, init_from=str(llama_folder)), 100)


def test_more_layers_than_the_weights_hold_is_refused_from_their_names_alone(
    llama_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit_config_json(llama_folder, num_hidden_layers=1000)  # within the limit

    def no_build(config: GPTConfig) -> GPT:
        raise AssertionError("the layers were not counted before the shapes were built")

    monkeypatch.setattr(hf, "GPT", no_build)  # not even on the meta device
    with pytest.raises(
        DataError, match=r"config\.json: num_hidden_layers = 1000, but the weights hold 2 layers"
    ):
        read_folder(llama_folder)


def test_every_size_of_a_config_is_bounded(llama_folder: Path, no_model_built: list[GPTConfig]) -> None:
    for key, value, limit in (
        ("vocab_size", 10**9, limits.MAX_VOCAB),
        ("hidden_size", 2**20, limits.MAX_WIDTH),
        ("num_attention_heads", 4096, limits.MAX_HEADS),
        ("intermediate_size", 10**7, limits.MAX_FFN),
    ):
        original = json.loads((llama_folder / "config.json").read_text())
        edit_config_json(llama_folder, **{key: value, "head_dim": None, "num_key_value_heads": None})
        with pytest.raises(DataError, match=rf"config\.json: {key} = {value} exceeds the limit {limit}$"):
            read_folder(llama_folder)
        (llama_folder / "config.json").write_text(json.dumps(original))


def test_the_largest_real_shapes_are_within_the_limits() -> None:
    for name, preset in PRESETS.items():  # GPT-2's four and the seeds' two, with GPT-2's vocabulary
        limits.check_config_values(name, {**preset.keys(), "vocab_size": 50_257})
    # Llama 3.1 405B's depth, width, heads and feed-forward; Qwen3's vocabulary; 128k positions
    limits.check_config_values(
        "405b",
        {
            "vocab_size": 151_936,
            "block_size": 131_072,
            "n_layer": 126,
            "n_head": 128,
            "n_embd": 16_384,
            "intermediate_size": 53_248,
            "rope_theta": 500_000.0,
            "norm_eps": 1e-5,
        },
    )


def test_a_model_bigger_than_the_memory_available_is_refused_saying_how_much_is_needed(
    llama_file: Path, llama_folder: Path, monkeypatch: pytest.MonkeyPatch, no_model_built: list[GPTConfig]
) -> None:
    monkeypatch.setattr(limits, "available_memory", lambda: (100_000, "available memory"))
    config = GPTConfig(**torch.load(llama_file, weights_only=True)["config"])
    needed = f"{limits.model_bytes(config) / 1e6:,.1f}"
    with pytest.raises(
        DataError,
        match=rf"llama\.pt: its model \(parameters and buffers in float32\) needs {needed} MB of memory, "
        r"but 0\.1 MB is available \(available memory\)$",
    ):
        load_model(llama_file)
    with pytest.raises(
        DataError, match=r"hf: loading its model .* needs [\d.,]+ MB of memory, but 0\.1 MB is available"
    ):
        read_folder(llama_folder)


def test_a_classifier_file_asking_for_two_billion_positions_is_refused_on_reading(
    tmp_path: Path, llama_file: Path
) -> None:
    payload = torch.load(llama_file, weights_only=True)
    config = {**payload["config"], "block_size": BILLIONS}
    path = tmp_path / "classifier.pt"
    checkpoint.save_classifier(path, config, {}, payload["tokenizer"], ["no", "yes"], {})
    with pytest.raises(
        DataError, match=r"classifier\.pt: model config block_size = 2000000000 exceeds the limit 1048576$"
    ):
        checkpoint.read_classifier_file(path)


# --- a zip that expands beyond its file ----------------------------------------------------------------


def rezip(source: Path, target: Path, compression: int, extra: dict[str, bytes] | None = None) -> Path:
    """`source`'s members written again with `compression`, plus `extra` members."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", compression) as new:
        for member in old.infolist():
            new.writestr(member.filename, old.read(member))
        for name, data in (extra or {}).items():
            new.writestr(name, data)
    return target


@pytest.fixture
def torch_load_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load read a file that should have been refused from its zip directory")

    monkeypatch.setattr(checkpoint.torch, "load", refuse)


def test_a_compressed_model_file_is_refused_from_its_zip_directory_before_expanding(
    tmp_path: Path, torch_load_never_called: None
) -> None:
    # a tensor of zeros deflates a thousandfold: torch would inflate it whole before any check
    payload = {"format": checkpoint.MODEL_FORMAT, "version": checkpoint.MODEL_VERSION}
    buffer = io.BytesIO()
    torch.save({**payload, "meta": {"pad": torch.zeros(1 << 23)}}, buffer)
    (tmp_path / "plain.pt").write_bytes(buffer.getvalue())
    bomb = rezip(tmp_path / "plain.pt", tmp_path / "bomb.pt", zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size * 100 < (1 << 25)
    with pytest.raises(
        DataError,
        match=r"bomb\.pt is not a gptcore model file: zip member archive/data/0 is compressed "
        r"\([\d,]+ bytes that expand to 33,554,432\), and torch stores its records uncompressed$",
    ):
        load_model(bomb)


def test_zip_members_adding_up_to_more_than_the_file_are_refused(
    tmp_path: Path, torch_load_never_called: None
) -> None:
    save_tiny_model(tmp_path / "model.pt")
    data = bytearray((tmp_path / "model.pt").read_bytes())
    # the central directory's entry of the first tensor claims a gigabyte (sizes at offsets 20, 24)
    entry = data.index(b"archive/data/0", data.index(b"PK\x01\x02")) - 46
    data[entry + 20 : entry + 28] = struct.pack("<II", 1 << 30, 1 << 30)
    (tmp_path / "overlapping.pt").write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"overlapping\.pt is not a gptcore model file: its zip members add up to "
    ):
        load_model(tmp_path / "overlapping.pt")


# --- NaN and infinity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("norm_eps", float("nan"), r"model config norm_eps = nan must be a finite number >= 0"),
        ("rope_theta", float("nan"), r"model config rope_theta = nan must be a finite number >= 1"),
        ("rope_theta", float("inf"), r"model config rope_theta = inf must be a finite number >= 1"),
        ("norm_eps", 10**400, r"model config norm_eps = 1000\d+ must be a finite number >= 0"),
    ],
)
def test_a_model_file_with_a_config_float_not_finite_is_refused(
    tmp_path: Path, llama_file: Path, key: str, value: object, said: str, no_model_built: list[GPTConfig]
) -> None:
    forged = forge_model_file(llama_file, tmp_path / "nan.pt", set_config({key: value}))
    with pytest.raises(DataError, match=rf"nan\.pt: {said}$"):
        load_model(forged)


def test_a_config_json_with_a_float_not_finite_is_refused(llama_folder: Path) -> None:
    text = (llama_folder / "config.json").read_text()
    config = json.loads(text)
    (llama_folder / "config.json").write_text(
        text.replace(f'"rms_norm_eps": {config["rms_norm_eps"]}', '"rms_norm_eps": NaN')
    )
    with pytest.raises(DataError, match=r"config\.json: NaN is not a number JSON allows"):
        read_folder(llama_folder)
    # 1e999 is valid JSON, and a float too large for one: infinity
    (llama_folder / "config.json").write_text(
        text.replace(f'"rms_norm_eps": {config["rms_norm_eps"]}', '"rms_norm_eps": 1e999')
    )
    with pytest.raises(DataError, match=r"config\.json: rms_norm_eps = inf must be a finite number >= 0$"):
        read_folder(llama_folder)
    edit_config_json(
        llama_folder, rope_parameters={"rope_type": "default", "rope_theta": -1.0}, rms_norm_eps=1e-6
    )
    with pytest.raises(
        DataError, match=r"config\.json: rope_parameters\.rope_theta = -1\.0 must be a finite number >= 1$"
    ):
        read_folder(llama_folder)


def test_a_model_file_with_a_nan_weight_is_refused_naming_the_tensor(
    tmp_path: Path, llama_file: Path, no_model_built: list[GPTConfig]
) -> None:
    def poison(payload: dict[str, Any]) -> None:
        payload["state_dict"]["h.1.mlp.c_fc.weight"][3, 5] = float("nan")

    forged = forge_model_file(llama_file, tmp_path / "poisoned.pt", poison)
    with pytest.raises(
        DataError, match=r"poisoned\.pt: tensor h\.1\.mlp\.c_fc\.weight holds NaN or infinite values$"
    ):
        load_model(forged)


def test_a_folder_with_an_infinite_weight_is_refused_naming_the_tensor(llama_folder: Path) -> None:
    weights = llama_folder / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.0.self_attn.k_proj.weight"][0, 0] = float("inf")
    save_file(tensors, weights)
    with pytest.raises(
        DataError,
        match=r"hf: tensor model\.layers\.0\.self_attn\.k_proj\.weight holds NaN or infinite values$",
    ):
        load_folder(llama_folder)


# --- pickles that name Python globals ------------------------------------------------------------------


def assert_refused_without_the_advice(error: DataError, file: str) -> None:
    message = str(error)
    assert "weights_only" not in message and "\n" not in message and "trust" not in message
    assert f"{file} is not " in message


@pytest.mark.parametrize(
    "payload",
    [
        {"format": checkpoint.MODEL_FORMAT, "handle": pickle.PickleError},
        {"format": checkpoint.MODEL_FORMAT, "config": CreatesMarkerWhenUnpickled(Path("pwned"))},
    ],
    ids=["class", "reduce"],
)
def test_a_model_file_naming_a_global_is_refused_without_advising_weights_only_false(
    tmp_path: Path, payload: dict[str, Any]
) -> None:
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(
        DataError, match=r"it holds a Python object \([\w.]+\) that only running code could rebuild"
    ) as err:
        load_model(tmp_path / "model.pt")
    assert_refused_without_the_advice(err.value, "model.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 4", "pickle protocol 2"])
def test_a_pytorch_model_bin_naming_a_global_is_refused_without_advising_weights_only_false(
    tmp_path: Path, llama_folder: Path, writer: str
) -> None:
    (llama_folder / "model.safetensors").unlink()
    state = {"model.embed_tokens.weight": CreatesMarkerWhenUnpickled(tmp_path / "pwned")}
    path = llama_folder / "pytorch_model.bin"
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=int(writer[-1])))
    with pytest.raises(
        DataError, match=r"pytorch_model\.bin is not a state dict of tensors: it holds "
    ) as err:
        read_folder(llama_folder)
    assert_refused_without_the_advice(err.value, "pytorch_model.bin")
    assert not (tmp_path / "pwned").exists()


def test_the_advice_torch_gives_is_what_the_filter_removes(tmp_path: Path) -> None:
    # the premise of the tests above: torch's own message tells the user to turn the protection off
    torch.save({"handle": pickle.PickleError}, tmp_path / "object.pt")
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(tmp_path / "object.pt", weights_only=True)


# --- what a small file can describe -------------------------------------------------------------------


def test_a_payload_that_references_one_list_everywhere_is_refused_not_walked(tmp_path: Path) -> None:
    node: list[Any] = []
    for _ in range(22):  # 2**22 lists as a tree, 22 in the file
        node = [node, node]
    torch.save(
        {"format": checkpoint.MODEL_FORMAT, "version": checkpoint.MODEL_VERSION, "meta": node},
        tmp_path / "m.pt",
    )
    with pytest.raises(
        DataError, match=r"m\.pt is not a gptcore model file: its contents add up to more than"
    ):
        load_model(tmp_path / "m.pt")


def test_a_tensor_view_larger_than_its_storage_is_refused_not_copied(tmp_path: Path) -> None:
    huge = torch.zeros(1).expand(10**6, 10**6)  # 4 TB as a contiguous copy, 4 bytes in the file
    payload = {"format": checkpoint.MODEL_FORMAT, "version": checkpoint.MODEL_VERSION, "meta": {"t": huge}}
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(
        DataError, match=r"m\.pt is not a gptcore model file: its contents add up to more than"
    ):
        load_model(tmp_path / "m.pt")


def test_a_payload_nested_too_deep_is_refused(tmp_path: Path) -> None:
    node: list[Any] = []
    for _ in range(3000):  # deeper than Python's recursion limit
        node = [node]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # for the pickler that writes it
    try:
        torch.save(
            {"format": checkpoint.MODEL_FORMAT, "version": checkpoint.MODEL_VERSION, "meta": node},
            tmp_path / "m.pt",
        )
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(
        DataError, match=r"m\.pt is not a gptcore model file: its contents nest more than 32 levels"
    ):
        load_model(tmp_path / "m.pt")


# --- the command line: one line, no traceback ---------------------------------------------------------


@pytest.fixture
def hostile(tmp_path: Path, llama_file: Path, llama_folder: Path) -> dict[str, tuple[Path, str]]:
    """A hostile model file and folder of each kind, and what the error must say of each."""
    long = forge_model_file(llama_file, tmp_path / "long.pt", set_config({"block_size": BILLIONS}))
    nan = forge_model_file(llama_file, tmp_path / "nan.pt", set_config({"norm_eps": float("nan")}))
    torch.save({"format": checkpoint.MODEL_FORMAT, "handle": pickle.PickleError}, tmp_path / "object.pt")
    edit_config_json(llama_folder, num_hidden_layers=100_000)
    return {
        "positions": (long, "block_size = 2000000000 exceeds the limit 1048576"),
        "nan": (nan, "norm_eps = nan must be a finite number >= 0"),
        "pickle": (tmp_path / "object.pt", "holds a Python object (pickle.PickleError)"),
        "layers": (llama_folder, "num_hidden_layers = 100000 exceeds the limit 1024"),
    }


def assert_one_line_error(err: str, said: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], err
    assert "weights_only" not in err


# export reads model files only; the others model files and folders alike
COMMANDS_AND_CASES = [
    (command, case)
    for command in ("sample", "chat", "info", "export")
    for case in ("positions", "nan", "pickle", "layers")
    if (command, case) != ("export", "layers")
]


@pytest.mark.parametrize(("command", "case"), COMMANDS_AND_CASES)
def test_every_command_that_loads_a_model_refuses_it_in_one_line(
    command: str,
    case: str,
    hostile: dict[str, tuple[Path, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    model, said = hostile[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("ROMEO:\n"))
    args = {
        "sample": ["sample", "--prompt", "ROMEO:", "--device", "cpu"],
        "chat": ["chat", "--device", "cpu"],
        "info": ["info"],
        "export": ["export", "--out", str(tmp_path / "out")],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--model", str(model)])
    assert exit_info.value.code == 1
    assert_one_line_error(capsys.readouterr().err, said)


@pytest.mark.slow
def test_serve_refuses_a_hostile_model_at_startup_in_one_line(
    hostile: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    model, said = hostile["positions"]
    result = run_cli(["serve", "--model", str(model), "--port", "0", "--device", "cpu"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and said in errors[0], result.stderr


def test_a_real_tiny_model_still_loads(llama_file: Path, llama_folder: Path) -> None:
    model, tokenizer, _ = load_model(llama_file)
    back, _, _ = load_folder(llama_folder)
    idx = torch.tensor([tokenizer.encode("ROMEO:")])
    with torch.no_grad():
        assert torch.equal(model(idx)[0], back(idx)[0])
    assert isinstance(tokenizer, CharTokenizer)


def test_a_tokenizer_json_nested_too_deep_or_too_big_is_one_line(
    llama_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (llama_folder / "tokenizer.json").write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DataError, match=r"tokenizer\.json: JSON nested too deeply"):
        load_folder(llama_folder)
    monkeypatch.setattr("gptcore.hf.tokenizer.MAX_TOKENIZER_BYTES", 100)
    with pytest.raises(DataError, match=r"tokenizer\.json: the file is .* over the limit 100"):
        load_folder(llama_folder)


def test_a_kv_cache_the_memory_cannot_hold_is_refused_before_it_is_allocated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gptcore.generate import generate
    from gptcore.sampling import Sampling
    from gptcore.serve.batcher import Engine

    # a llama model's context is bounded by the limit alone: a small model may ask for a large cache
    model = GPT(
        GPTConfig(arch="llama", vocab_size=16, block_size=1 << 16, n_layer=2, n_head=2, n_embd=32)
    ).eval()
    cache_mb = 2 * 2 * 16 * 2 * (1 << 16) * 16 * 4 / 1e6  # k and v, layers, rows, heads, positions, head dim
    monkeypatch.setattr(limits, "available_memory", lambda: (cache_mb * 1e6 - 1, "available memory"))
    with pytest.raises(DataError, match=r"gptcore serve: a KV cache of 16 row\(s\) x 65,536 positions needs"):
        Engine(model, eot_id=0, max_batch=16)
    Engine(model, eot_id=0, max_batch=8)  # half the rows fit
    with pytest.raises(DataError, match=r"generation: a KV cache of 17 row\(s\) x 65,536 positions needs"):
        generate(model, torch.zeros(17, 1, dtype=torch.long), Sampling(max_new_tokens=1, temperature=0.0))
