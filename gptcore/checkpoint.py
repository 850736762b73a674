"""Files of tensors we write and read back: the model file and the training checkpoint.

Both hold plain containers and tensors only, so they load with `torch.load(..., weights_only=True)`:
a file from elsewhere is data, never code. Each carries a format marker, a version and a sha256 of
its own contents, so a file damaged after we wrote it (a flipped bit, a cut copy) is refused with an
error naming it instead of being half-used. The sha256 is a checksum, not a signature: anyone can
edit a file and recompute it. So nothing in a model file is trusted for being hashed: its config is
checked (types, the limits of gptcore.limits) and the shape of every tensor is compared with what
the config implies, on torch's meta device, before a model is built and any memory allocated for it;
the model it builds must fit the memory available, and its weights must be finite.

Before torch reads a file, its zip directory is checked: torch stores its records uncompressed, so
a compressed member (which could expand to any size) or members adding up to more than the file
are refused unread. The tensors of a model file are then mapped from the file, not read into
memory, so that its config and shapes are checked before its size costs anything.

- `models/model.pt`: weights, model config and tokenizer, what evaluate, sample and chat need.
- `models/classifier.pt`: a fine-tuned classifier (gptcore.finetune.classify): backbone and head weights,
  model config, tokenizer and the class labels in the order of the head's outputs.
- `models/checkpoint.pt`: everything `gptcore.train` needs to continue a run exactly where it
  stopped (weights, optimizer, step, RNG states, logged history, seconds so far), and the run's
  identity (its train params and token data), which a run must match to resume from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import random
import re
import typing
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptcore.atomic import atomic_file
from gptcore.errors import DataError
from gptcore.limits import check_config_values, check_finite, check_memory, model_bytes
from gptcore.model import GPT, GPTConfig, meta_device
from gptcore.params import TRAIN_KEYS_WITHOUT_OUTPUT, TrainParams
from gptcore.tokenizer import Tokenizer, tokenizer_from_dict

# where the train stage writes the model and evaluate, sample and the CLI read it (dvc.yaml: train's out)
MODEL_FILE = Path("models/model.pt")
MODEL_FORMAT = "gptcore.model"
MODEL_VERSION = 2  # 2: a sha256 of the contents
CHECKPOINT_FORMAT = "gptcore.checkpoint"
CHECKPOINT_VERSION = 1
CLASSIFIER_FORMAT = "gptcore.classifier"
CLASSIFIER_VERSION = 1
DIGEST_KEY = "sha256"


def contents_sha256(payload: dict[str, Any], budget: int | None = None) -> str:
    """sha256 over every key and value of `payload` but its own digest, tensors by dtype, shape
    and bytes. Independent of how torch lays the file out, so it checks what is loaded.

    `budget` bounds the work for a payload read from a file: the values, characters and tensor
    bytes visited may add up to no more than it (a ValueError says so). A pickle can reference one
    list from many places and a tensor view can claim more elements than its storage holds, so a
    small file can describe a payload that, read as a tree, has no end."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != DIGEST_KEY}, [budget], 0)
    return digest.hexdigest()


# a payload of ours nests a few levels deep; deeper is not ours, and would exhaust the recursion
_MAX_DEPTH = 32


def _feed(digest: Any, value: Any, budget: list[int | None], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"its contents nest more than {_MAX_DEPTH} levels deep")
    if budget[0] is not None:
        if isinstance(value, torch.Tensor):
            budget[0] -= value.nelement() * value.element_size()
        budget[0] -= 1 + (len(value) if isinstance(value, str) else 0)
        if budget[0] < 0:
            raise ValueError("its contents add up to more than the file holds (parts referenced repeatedly)")
    if isinstance(value, torch.Tensor):
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"D{len(value)};".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, k)):
            _feed(digest, key, budget, depth + 1)
            _feed(digest, value[key], budget, depth + 1)
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)};".encode())
        for item in value:
            _feed(digest, item, budget, depth + 1)
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"cannot digest a {type(value).__name__}: only containers, scalars and tensors")


def _save(path: Path | str, payload: dict[str, Any], sync: bool = False) -> None:
    """Write `payload` with its digest, atomically; `sync` also flushes it to disk before the rename."""
    payload = {**payload, DIGEST_KEY: contents_sha256(payload)}
    # saved through a file object: given a path, torch names the zip's records after the file, and
    # the temporary name would make every save of the same weights a different file
    with atomic_file(path, _tensor_bytes(payload)) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested payload: what its file needs on disk, give or take the
    pickled structure around them."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def _load(
    path: Path, fmt: str, version: int, what: str, missing_hint: str, mmap: bool = False
) -> dict[str, Any]:
    """Load one of our files safely and check its marker, version and digest; `mmap` maps its
    tensors from the file instead of reading them."""
    if not path.is_file():
        raise DataError(f"{path} not found: {missing_hint}")
    if not _is_zip(path):
        raise DataError(f"{path} is not a gptcore {what}: not a zip archive, the format torch.save writes")
    payload = load_torch_file(path, f"a gptcore {what}", mmap=mmap)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise DataError(f"{path} is not a gptcore {what} (no '{fmt}' marker)")
    if payload.get("version") != version:
        raise DataError(
            f"{path} has {what} format version {payload.get('version')}, this gptcore reads {version}"
        )
    try:
        # what a file of ours holds adds up to its size; twice that leaves room for the pickle's
        # own shared strings
        actual = contents_sha256(payload, budget=2 * path.stat().st_size + (1 << 20))
    except (TypeError, ValueError) as exc:  # ValueError: the budget, or an int too long to print
        raise DataError(f"{path} is not a gptcore {what}: {exc}") from None
    if payload.get(DIGEST_KEY) != actual:
        raise DataError(
            f"{path} was altered or damaged after it was written: its contents do not match its sha256"
        )
    return payload


def load_torch_file(path: Path, what: str, mmap: bool = False) -> Any:
    """What torch.save wrote to `path`, read as data (`weights_only=True`): tensors, containers
    and plain values, never code. A zip archive has its directory checked first (`_check_zip`);
    `mmap` maps its tensors from the file instead of reading them. `what` is what the file should
    be ("a gptcore model file"), for the error."""
    is_zip = _is_zip(path)
    if is_zip:
        _check_zip(path, what)
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol: the refusal says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except Exception as exc:  # pickle, zip and unpickler errors all mean "not a file of tensors"
        raise DataError(f"{path} is not {what}: {_load_problem(exc)}") from None


def _is_zip(path: Path) -> bool:
    """Whether torch reads `path` as a zip archive (torch.save's format) rather than its legacy
    one: by the same test torch makes, the first bytes."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _check_zip(path: Path, what: str) -> None:
    """Refuse a zip archive torch would expand beyond the file: torch stores its records
    uncompressed, so a compressed member (a small file that inflates to gigabytes) is not torch's,
    and members adding up to more bytes than the file (records that overlap, read again and again)
    are not either. Only the archive's directory is read."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not {what}: its zip directory cannot be read ({exc})") from None
    compressed = [member for member in members if member.compress_type != zipfile.ZIP_STORED]
    if compressed:
        member = max(compressed, key=lambda m: m.file_size)
        raise DataError(
            f"{path} is not {what}: zip member {member.filename} is compressed "
            f"({member.compress_size:,} bytes that expand to {member.file_size:,}), "
            "and torch stores its records uncompressed"
        )
    total = sum(member.file_size for member in members)
    if total > size:
        raise DataError(
            f"{path} is not {what}: its zip members add up to {total:,} bytes, more than the "
            f"file's {size:,} (members that overlap)"
        )


def _load_problem(exc: Exception) -> str:
    """Why torch refused a file, in one line and never with torch's advice to retry with
    weights_only=False: that would run whatever code the file holds, which is the point of
    refusing it. torch raises an UnpicklingError when its weights-only unpickler refuses a file,
    with that advice worded differently from version to version, so none of its words are shown
    for one: only the Python object or pickle instruction it names."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in message:
        found = re.search(r"GLOBAL ([\w.]{1,200})", message)
        if found:
            return (
                f"it holds a Python object ({found.group(1)}) that only running code could rebuild, "
                "and gptcore runs no code from a file"
            )
        found = re.search(r"Unsupported operand (\d+)", message)
        instruction = f" (pickle opcode {found.group(1)})" if found else ""
        return f"it holds pickled data beyond tensors and plain values{instruction}, which gptcore will not unpickle"
    lines = message.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _checked_config(path: Path, values: dict[str, Any], state: dict[str, Any]) -> GPTConfig:
    """The model config of a file, checked with its weights before anything is allocated for it."""
    config = _checked_values(path, values)
    # told by the tensors' names, before the meta build of n_layer blocks that compares shapes
    layers = len({found.group(1) for key in state if (found := re.match(r"h\.(\d+)\.", str(key)))})
    if config.n_layer != layers:
        raise DataError(
            f"{path}: model config n_layer = {config.n_layer}, but the weights hold {layers} layers"
        )
    _check_shapes(path, config, state)
    return config


def _checked_values(path: Path, values: Any) -> GPTConfig:
    """The model config of a file from its values, each of GPTConfig's type and within the limits."""
    if not isinstance(values, dict):
        raise DataError(f"{path}: the model config is not a mapping")
    hints = typing.get_type_hints(GPTConfig)
    fields = {f.name: f for f in dataclasses.fields(GPTConfig)}
    for name, value in values.items():
        if name not in fields:
            raise DataError(f"{path}: unknown model config key {name!r}")
        want = hints[name]
        allowed = typing.get_args(want) or (want,)  # int | None: (int, NoneType)
        if value is None:
            ok = type(None) in allowed
        elif float in allowed:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif int in allowed:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, tuple(kind for kind in allowed if isinstance(kind, type)))
        if not ok:
            raise DataError(
                f"{path}: model config {name} = {value!r} is not {getattr(want, '__name__', want)}"
            )
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise DataError(f"{path}: model config lacks {', '.join(missing)}")
    check_config_values(str(path), values, {name: f"model config {name}" for name in fields})
    if values["n_embd"] % values["n_head"]:
        raise DataError(
            f"{path}: model config n_embd {values['n_embd']} is not a multiple of n_head {values['n_head']}"
        )
    try:
        return GPTConfig(**values)
    except (TypeError, ValueError) as exc:  # a combination no family has (e.g. qk_norm on gpt2)
        raise DataError(f"{path} has an invalid model config: {exc}") from None


def _check_shapes(path: Path, config: GPTConfig, state: dict[str, Any]) -> None:
    """Every tensor the config implies is in `state`, with its shape, and nothing else is.
    The model is built on the meta device: shapes only, no memory."""
    with meta_device():
        expected = {k: v for k, v in GPT(config).state_dict().items() if k not in _derived(config)}
    for key, want in expected.items():
        got = state.get(key)
        if not isinstance(got, torch.Tensor):
            raise DataError(f"{path}: weights do not match the model config: {key} is missing")
        if tuple(got.shape) != tuple(want.shape) or not got.is_floating_point():
            raise DataError(
                f"{path}: weights do not match the model config: {key} is {got.dtype} {tuple(got.shape)}, "
                f"the config gives a float tensor of shape {tuple(want.shape)}"
            )
    if extra := sorted(map(str, set(state) - set(expected))):
        raise DataError(f"{path}: weights do not match the model config: unexpected {', '.join(extra[:3])}")


def _derived(config: GPTConfig) -> tuple[str, ...]:
    """Tensors a model file leaves out: a tied head is wte.weight, stored once."""
    return ("lm_head.weight",) if config.tie_embeddings else ()


def save_model(
    path: Path | str, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any] | None = None
) -> None:
    """Write the model file atomically; `meta` holds small facts about the run (steps, tokens)."""
    raw = getattr(model, "_orig_mod", model)  # a torch.compile wrapper prefixes every key
    state = {k: v.detach().to("cpu").clone() for k, v in raw.state_dict().items()}
    for key in _derived(raw.config):
        state.pop(key, None)
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "config": raw.config.to_dict(),
        "state_dict": state,
        "tokenizer": tokenizer.to_dict(),
        "meta": meta or {},
    }
    _save(path, payload)


def read_model_file(path: Path | str) -> dict[str, Any]:
    """Load and check the model file's payload without building the model; its tensors are mapped
    from the file, read as they are used."""
    path = Path(path)
    payload = _load(
        path,
        MODEL_FORMAT,
        MODEL_VERSION,
        "model file",
        "run the train stage first (dvc repro train)",
        mmap=True,
    )
    for key in ("config", "state_dict", "tokenizer"):
        if not isinstance(payload.get(key), dict):
            raise DataError(f"{path} is missing '{key}' or it is not a mapping")
    return payload


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Rebuild (model in eval mode, tokenizer, meta) from a model file."""
    path = Path(path)
    payload = read_model_file(path)
    state = dict(payload["state_dict"])
    config = _checked_config(path, payload["config"], state)
    tokenizer = tokenizer_from_dict(payload["tokenizer"])
    if tokenizer.vocab_size != config.vocab_size:
        raise DataError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}"
        )
    check_memory(str(path), model_bytes(config), "its model (parameters and buffers in float32)")
    check_finite(str(path), state)
    model = GPT(config)
    if config.tie_embeddings:
        state["lm_head.weight"] = state.get("wte.weight")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise DataError(f"{path}: weights do not match the model config: {exc}") from None
    return model.to(device).eval(), tokenizer, payload.get("meta", {})


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically and durably: a kill at any moment leaves the
    previous checkpoint or this one, whole."""
    _save(path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, sync=True)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load and check a training checkpoint; what is in it is `gptcore.train`'s business."""
    path = Path(path)
    return _load(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint", "nothing to resume")


# --- what a checkpoint must match, and the random states it carries -----------------------------

# train params a checkpoint written under other values of still continues: those that change no
# output, the process count (every rank draws from the same sampler, so the data stream is the
# same for any number of processes; only dropout draws differ), and how the processes hold the
# model (checkpoints are whole tensors in every mode, and recomputed activations are the same
# activations, so a run that ran out of memory may resume sharded or checkpointed)
RESUME_IGNORES = (
    *TRAIN_KEYS_WITHOUT_OUTPUT,
    "nproc_per_node",
    "nnodes",
    "parallel",
    "activation_checkpointing",
)


def run_identity(params: TrainParams, token_files: dict[str, str]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the train params and the token data
    (`token_files`: each token file's path and sha256)."""
    values = {k: v for k, v in dataclasses.asdict(params).items() if k not in RESUME_IGNORES}
    return {"params": values, "data": dict(token_files)}


def resume_mismatch(saved: Any, current: dict[str, Any]) -> str | None:
    """Why a checkpoint's run is not this run (the params and data that differ), or None."""
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), dict) for k in ("params", "data")):
        return "it records no run identity"
    reasons = []
    old, new = saved["params"], current["params"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            reasons.append(f"train.{key} was {old.get(key)!r}, is {new.get(key)!r}")
    for path, digest in current["data"].items():
        if saved["data"].get(path) != digest:
            reasons.append(f"{path} has other tokens")
    return "; ".join(reasons) or None


def device_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's own generators (dropout draws from them): torch's CPU one and CUDA's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def rng_states(batch_gen: torch.Generator, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Every random-number state a step can touch, as tensors and plain values; `per_rank` holds
    each rank's `device_rng_state`, the batch sampler is the same on every rank."""
    version, mt, gauss = random.getstate()
    legacy = typing.cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    _, keys, pos, has_gauss, cached = legacy
    return {
        "ranks": per_rank,
        "batches": batch_gen.get_state(),
        "python": [version, list(mt), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_states(
    states: dict[str, Any], batch_gen: torch.Generator, device: torch.device, rank: int
) -> None:
    """Restore `rng_states`; this rank's own generators only when it has a saved state."""
    if rank < len(states["ranks"]):
        own = states["ranks"][rank]
        torch.set_rng_state(own["torch"])
        if device.type == "cuda" and own["cuda"] is not None:
            torch.cuda.set_rng_state(own["cuda"], device)
    batch_gen.set_state(states["batches"])
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_classifier(
    path: Path | str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    tokenizer: dict[str, Any],
    labels: list[str],
    meta: dict[str, Any],
) -> None:
    """Write a classifier file atomically (see gptcore.finetune.classify for what the weights are)."""
    payload = {
        "format": CLASSIFIER_FORMAT,
        "version": CLASSIFIER_VERSION,
        "config": config,
        "state_dict": state_dict,
        "tokenizer": tokenizer,
        "labels": list(labels),
        "meta": meta,
    }
    _save(path, payload)


def read_classifier_file(path: Path | str) -> dict[str, Any]:
    """Load and check a classifier file's payload without building the model: its config as a
    model file's is checked (types, limits, the memory the model needs) and its weights finite."""
    path = Path(path)
    payload = _load(
        path,
        CLASSIFIER_FORMAT,
        CLASSIFIER_VERSION,
        "classifier file",
        "run the fine-tuning pipeline first (dvc repro finetune/dvc.yaml)",
        mmap=True,
    )
    for key in ("config", "state_dict", "tokenizer", "meta"):
        if not isinstance(payload.get(key), dict):
            raise DataError(f"{path} is missing '{key}' or it is not a mapping")
    labels = payload.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{path}: 'labels' must list at least two class names")
    config = _checked_values(path, payload["config"])
    check_memory(str(path), model_bytes(config), "its model (parameters and buffers in float32)")
    check_finite(str(path), payload["state_dict"])
    return payload
