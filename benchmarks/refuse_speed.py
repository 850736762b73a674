"""How long gptcore takes to refuse each kind of hostile model file or folder.

Every loader (`gptcore.checkpoint.load_model` for a model file, `gptcore.hf.convert.load_folder`
or `read_folder` for a Hugging Face folder: what `sample`, `chat`, `info`, `export`, `serve` and
`train.init_from` call) checks a file before it allocates the model it describes. This script
builds the cases of tests/test_model_file_hostile.py from a tiny 2-layer llama model (a file and
its exported folder), each tampered with in one way, and times the call that refuses it, from the
call to the `DataError`: the time the command spends on a hostile file once it has started (Python
and torch start-up not counted). A case that is not refused stops the script.

Reported per case: the median and the largest of `--rounds` refusals (ms), in one process, after
one untimed refusal of each. The "model bigger than the memory" case replaces
`gptcore.limits.available_memory` with 0.1 MB, as the test does, since a real model that large
cannot be built here.

    python benchmarks/refuse_speed.py
    python benchmarks/refuse_speed.py --rounds 50
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import platform
import statistics
import struct
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import gptcore.checkpoint as checkpoint
import gptcore.limits as limits
from gptcore.checkpoint import contents_sha256, load_model, save_model
from gptcore.errors import DataError
from gptcore.hf.convert import export_folder, load_folder, read_folder
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nROMEO: JULIET:\n"
BILLIONS = 2_000_000_000


def tiny_model(path: Path) -> Path:
    tok = CharTokenizer.train([TEXT])
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32, arch="llama")
    save_model(path, GPT(config), tok, {"steps": 1})
    return path


def forge(source: Path, target: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """`source`'s payload changed and saved with its sha256 recomputed, as anyone can."""
    payload = torch.load(source, map_location="cpu", weights_only=True)
    change(payload)
    payload["sha256"] = contents_sha256(payload)
    torch.save(payload, target)
    return target


def set_config(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload["config"].update(changes)


def folder_copy(folder: Path, target: Path, **config_changes: Any) -> Path:
    target.mkdir()
    for item in folder.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    if config_changes:
        config = json.loads((target / "config.json").read_text())
        config.update(config_changes)
        (target / "config.json").write_text(json.dumps(config))
    return target


def rezip_deflated(source: Path, target: Path) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for member in old.infolist():
            new.writestr(member.filename, old.read(member))
    return target


def save_raw(path: Path, meta: object) -> Path:
    payload = {"format": checkpoint.MODEL_FORMAT, "version": checkpoint.MODEL_VERSION, "meta": meta}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # for the pickler that writes a deep payload
    try:
        torch.save(payload, path)
    finally:
        sys.setrecursionlimit(limit)
    return path


def build_cases(tmp: Path) -> dict[str, Callable[[], object]]:
    """Case name -> a call that must raise DataError."""
    model = tiny_model(tmp / "llama.pt")
    loaded, tok, _ = load_model(model)
    folder = export_folder(loaded, tok, tmp / "hf")
    cases: dict[str, Callable[[], object]] = {}

    long = forge(model, tmp / "long.pt", set_config(block_size=BILLIONS))
    cases["model file: block_size 2e9"] = lambda: load_model(long)
    f = folder_copy(folder, tmp / "positions", max_position_embeddings=BILLIONS)
    cases["folder: max_position_embeddings 2e9"] = lambda: load_folder(f)
    layers = folder_copy(folder, tmp / "layers", num_hidden_layers=100_000)
    cases["folder: 100,000 layers"] = lambda: read_folder(layers)
    more = folder_copy(folder, tmp / "more", num_hidden_layers=1000)
    cases["folder: 1,000 layers, weights hold 2"] = lambda: read_folder(more)
    wide = folder_copy(folder, tmp / "wide", hidden_size=2**20, head_dim=None, num_key_value_heads=None)
    cases["folder: hidden_size 2^20"] = lambda: read_folder(wide)

    def too_big() -> object:
        real = limits.available_memory
        limits.available_memory = lambda: (100_000, "available memory")
        try:
            return load_model(model)
        finally:
            limits.available_memory = real

    cases["model file: needs more memory than available"] = too_big

    buffer = io.BytesIO()
    torch.save(
        {
            "format": checkpoint.MODEL_FORMAT,
            "version": checkpoint.MODEL_VERSION,
            "meta": torch.zeros(1 << 23),
        },
        buffer,
    )
    (tmp / "plain.pt").write_bytes(buffer.getvalue())
    bomb = rezip_deflated(tmp / "plain.pt", tmp / "bomb.pt")
    cases["model file: compressed zip member (32 MiB of zeros)"] = lambda: load_model(bomb)
    data = bytearray(model.read_bytes())
    entry = data.index(b"archive/data/0", data.index(b"PK\x01\x02")) - 46
    data[entry + 20 : entry + 28] = struct.pack("<II", 1 << 30, 1 << 30)
    (tmp / "overlapping.pt").write_bytes(bytes(data))
    cases["model file: zip members larger than the file"] = lambda: load_model(tmp / "overlapping.pt")

    nan = forge(model, tmp / "nan.pt", set_config(norm_eps=float("nan")))
    cases["model file: norm_eps NaN"] = lambda: load_model(nan)
    nan_json = folder_copy(folder, tmp / "nanjson")
    text = (nan_json / "config.json").read_text()
    eps = json.loads(text)["rms_norm_eps"]
    (nan_json / "config.json").write_text(text.replace(f'"rms_norm_eps": {eps}', '"rms_norm_eps": NaN'))
    cases["folder: NaN in config.json"] = lambda: read_folder(nan_json)

    def poison(payload: dict[str, Any]) -> None:
        payload["state_dict"]["h.1.mlp.c_fc.weight"][3, 5] = float("nan")

    poisoned = forge(model, tmp / "poisoned.pt", poison)
    cases["model file: a NaN weight"] = lambda: load_model(poisoned)
    inf = folder_copy(folder, tmp / "inf")
    tensors = load_file(inf / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"][0, 0] = float("inf")
    save_file(tensors, inf / "model.safetensors")
    cases["folder: an infinite weight"] = lambda: load_folder(inf)

    torch.save({"format": checkpoint.MODEL_FORMAT, "handle": pickle.PickleError}, tmp / "object.pt")
    cases["model file: pickle naming a global"] = lambda: load_model(tmp / "object.pt")
    binary = folder_copy(folder, tmp / "bin")
    (binary / "model.safetensors").unlink()
    (binary / "pytorch_model.bin").write_bytes(pickle.dumps({"w": pickle.PickleError}, protocol=4))
    cases["folder: pytorch_model.bin naming a global"] = lambda: read_folder(binary)

    node: list[Any] = []
    for _ in range(22):  # 2**22 lists as a tree, 22 in the file
        node = [node, node]
    shared = save_raw(tmp / "shared.pt", node)
    cases["model file: one list referenced 2^22 times"] = lambda: load_model(shared)
    deep: list[Any] = []
    for _ in range(3000):
        deep = [deep]
    nested = save_raw(tmp / "deep.pt", deep)
    cases["model file: nested 3,000 levels"] = lambda: load_model(nested)
    view = save_raw(tmp / "view.pt", {"t": torch.zeros(1).expand(10**6, 10**6)})
    cases["model file: a 4 TB view of 4 bytes"] = lambda: load_model(view)
    return cases


def refusal_ms(call: Callable[[], object], name: str) -> float:
    start = time.perf_counter()
    try:
        call()
    except DataError:
        return (time.perf_counter() - start) * 1e3
    raise SystemExit(f"{name}: not refused")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="refusals per case (median and max quoted)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        cases = build_cases(Path(tmp))
        for name, call in cases.items():  # untimed: imports and first-call costs
            refusal_ms(call, name)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, call in cases.items():
                times[name].append(refusal_ms(call, name))
    width = max(map(len, cases))
    print(f"{'case':<{width}}  median ms  max ms")
    for name, values in times.items():
        print(f"{name:<{width}}  {statistics.median(values):9.2f}  {max(values):6.2f}")
    medians = [statistics.median(v) for v in times.values()]
    print(f"medians range from {min(medians):.2f} to {max(medians):.2f} ms")


if __name__ == "__main__":
    main()
