"""Typed pipeline parameters: one dataclass per params.yaml section, validated on load.

Defaults live in params.yaml, not here: every field is required, so a key missing from the file
is an error, as is an unknown key, a wrong type or a value out of range. Errors name the key, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from gptcore.errors import GptcoreError
from gptcore.presets import PRESETS, SHAPE_KEYS

PARAMS_FILE = Path("params.yaml")


class ParamsError(GptcoreError, ValueError):
    """A params.yaml value that the pipeline cannot use."""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ParamsError(f"params.yaml: {key} = {value!r} is invalid: {allowed}")


@dataclass(frozen=True)
class DataParams:
    source: str | list[str]
    sha256: str | None
    include: list[str]
    pile_set_names: list[str]
    max_docs: int | None
    max_bytes: int | None
    val_fraction: float
    seed: int

    def check(self) -> None:
        sources = [self.source] if isinstance(self.source, str) else self.source
        if not sources or any(not s.strip() for s in sources):
            _fail("data.source", self.source, "give a URL, a local path or pip:<requirement>")
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                _fail("data.sha256", self.sha256, "must be 64 hex digits or null")
        if not self.include:
            _fail("data.include", self.include, "must list at least one glob")
        if any(not name.strip() for name in self.pile_set_names):
            _fail("data.pile_set_names", self.pile_set_names, "names must not be empty (e.g. Pile-CC)")
        for key in ("max_docs", "max_bytes"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                _fail(f"data.{key}", value, "must be > 0, or null for no limit")
        if not 0.0 < self.val_fraction < 1.0:
            _fail("data.val_fraction", self.val_fraction, "must lie strictly between 0 and 1")


@dataclass(frozen=True)
class VocabParams:
    kind: str
    vocab_size: int
    encoding: str
    file: str | None

    def check(self) -> None:
        if self.kind not in ("char", "bpe", "tiktoken"):
            _fail("vocab.kind", self.kind, "allowed: char, bpe, tiktoken")
        if not self.encoding.strip():
            _fail("vocab.encoding", self.encoding, "name a tiktoken encoding, e.g. r50k_base (GPT-2)")
        if self.vocab_size < 257:
            _fail("vocab.vocab_size", self.vocab_size, "must be >= 257 (256 byte tokens and <|endoftext|>)")
        if self.vocab_size > 2**32:
            _fail("vocab.vocab_size", self.vocab_size, "must be <= 2**32")


@dataclass(frozen=True)
class TokenizeParams:
    workers: int

    def check(self) -> None:
        _non_negative("tokenize.workers", self.workers)


@dataclass(frozen=True)
class TrainParams:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    dropout: float
    bias: bool
    batch_size: int
    grad_accum_steps: int
    max_iters: int
    learning_rate: float
    min_lr: float
    warmup_iters: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    eval_interval: int
    eval_iters: int
    log_interval: int
    checkpoint_interval: int
    seed: int
    device: str
    dtype: str
    compile: bool
    threads: int
    nproc_per_node: int
    nnodes: int
    rdzv_endpoint: str
    parallel: str
    activation_checkpointing: bool
    preset: str | None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @staticmethod
    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        """The section with `preset`'s shape filled in: a shape key left null takes the preset's
        value, one that gives the same value is fine, one that gives another is an error naming
        both (a silent winner would train a model of a size nobody asked for)."""
        name = raw.get("preset")
        if name is None:
            for key in SHAPE_KEYS:
                if key in raw and raw[key] is None:
                    _fail(f"train.{key}", None, "give a number, or set train.preset to take it from a preset")
            return raw
        if name not in PRESETS:
            _fail("train.preset", name, f"allowed: {', '.join(PRESETS)}, or null")
        resolved = dict(raw)
        for key, value in PRESETS[name].keys().items():
            if key not in raw and key not in SHAPE_KEYS:
                continue  # a key these params do not have (the family, before there are two)
            given = raw.get(key)
            if given is None:
                resolved[key] = value
            elif given != value:
                raise ParamsError(
                    f"params.yaml: train.{key} = {given!r} contradicts train.preset = {name!r}, "
                    f"which sets train.{key} = {value!r}: set train.{key} to null (or {value!r}) to "
                    "use the preset, or train.preset to null to use your own shape"
                )
        return resolved

    def check(self) -> None:
        for key in (
            "nproc_per_node",
            "nnodes",
            "n_layer",
            "n_head",
            "n_embd",
            "block_size",
            "batch_size",
            "grad_accum_steps",
            "max_iters",
            "eval_interval",
            "eval_iters",
            "log_interval",
        ):
            _positive(f"train.{key}", getattr(self, key))
        for key in ("warmup_iters", "threads", "checkpoint_interval"):
            _non_negative(f"train.{key}", getattr(self, key))
        for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            _non_negative(f"train.{key}", getattr(self, key))
        if self.n_embd % self.n_head:
            _fail("train.n_embd", self.n_embd, f"must be divisible by train.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            _fail("train.dropout", self.dropout, "must lie in [0, 1)")
        if self.learning_rate <= 0.0:
            _fail("train.learning_rate", self.learning_rate, "must be > 0")
        if self.min_lr > self.learning_rate:
            _fail("train.min_lr", self.min_lr, f"must not exceed train.learning_rate ({self.learning_rate})")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                _fail(f"train.{key}", getattr(self, key), "must lie in [0, 1)")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            _fail("train.device", self.device, "allowed: auto, cpu, cuda, cuda:N, mps")
        if self.dtype not in ("auto", "bfloat16", "float32"):
            _fail("train.dtype", self.dtype, "allowed: auto, bfloat16, float32")
        if self.batch_size % self.world_size:
            _fail(
                "train.batch_size",
                self.batch_size,
                f"must be divisible by the number of processes, nproc_per_node x nnodes = {self.world_size}",
            )
        if self.parallel not in ("ddp", "fsdp"):
            _fail("train.parallel", self.parallel, "allowed: ddp, fsdp")
        if self.nnodes > 1 and ":" not in self.rdzv_endpoint:
            _fail(
                "train.rdzv_endpoint",
                self.rdzv_endpoint,
                "must be host:port of the first node when nnodes > 1",
            )


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    max_tokens: int
    train_tokens: int

    def check(self) -> None:
        for key in ("batch_size", "max_tokens", "train_tokens"):
            _positive(f"evaluate.{key}", getattr(self, key))


@dataclass(frozen=True)
class SampleParams:
    prompts: list[str]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: list[str]

    def check(self) -> None:
        if any(not s for s in self.stop):
            _fail("sample.stop", self.stop, "stop strings must not be empty")
        if not self.prompts:
            _fail("sample.prompts", self.prompts, "must list at least one prompt")
        _positive("sample.max_new_tokens", self.max_new_tokens)
        _non_negative("sample.temperature", self.temperature)
        _non_negative("sample.top_k", self.top_k)
        if not 0.0 < self.top_p <= 1.0:
            _fail("sample.top_p", self.top_p, "must lie in (0, 1]")


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "vocab": VocabParams,
    "tokenize": TokenizeParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "sample": SampleParams,
}


def _positive(key: str, value: float) -> None:
    _finite(key, value)
    if value <= 0:
        _fail(key, value, "must be > 0")


def _non_negative(key: str, value: float) -> None:
    _finite(key, value)
    if value < 0:
        _fail(key, value, "must be >= 0")


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        _fail(key, value, "must be a finite number")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {float: "a float (write 1.0e-3, not 1e-3)"}.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:  # an int is a fine float (lr: 0 is 0.0); a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def parse_section(name: str, raw: Any) -> Any:
    """Build and validate the dataclass of section `name` from its raw YAML mapping."""
    cls = SECTIONS[name]
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: section '{name}' must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key {name}.{unknown[0]} (allowed in '{name}': {', '.join(fields)})"
        )
    missing = [k for k in fields if k not in raw]
    if missing:
        raise ParamsError(f"params.yaml: missing key {name}.{missing[0]}")
    prepare = getattr(cls, "prepare", None)
    if prepare is not None:
        raw = prepare(raw)
    values = {}
    for key, value in raw.items():
        tp = hints[key]
        if not _matches(value, tp):
            _fail(f"{name}.{key}", value, f"must be {_type_name(tp)}")
        values[key] = float(value) if tp is float else value
    params = cls(**values)
    params.check()
    return params


def load_section(name: str, path: Path | str = PARAMS_FILE) -> Any:
    """Read params.yaml and return the validated dataclass of one section."""
    path = Path(path)
    if name not in SECTIONS:
        raise KeyError(f"no params section '{name}' (known: {', '.join(SECTIONS)})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the repository root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{path} must be a mapping of sections (data:, train:, ...), got {type(raw).__name__}"
        )
    if name not in raw:
        raise ParamsError(f"params.yaml: missing section '{name}'")
    return parse_section(name, raw[name])
