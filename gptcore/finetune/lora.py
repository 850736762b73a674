"""LoRA fine-tuning (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): the
pretrained weights stay frozen, and each targeted projection W gets a trained low-rank update,

    y = x W^T + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r); B starts at zero

built on peft (its LoRA layers, injected into gptcore's GPT by module name). Only A and B train, so
gradients and AdamW's two moments exist for them alone. After training the update is merged into W
(`merge`): a plain GPT again, which every command reads. The adapters are also saved alone, small,
as a peft adapter folder named in transformers' modules, so that peft loads them onto the
`gptcore export` of the base model:

    models/instruct_adapter/
        adapter_config.json         peft's LoraConfig: r, lora_alpha, the transformers modules targeted
        adapter_model.safetensors   lora_A and lora_B of each of those modules
        gptcore_adapter.json        the base model (config, sha256 of its weights), gptcore's modules
        head.safetensors            a classifier's head, which trains whole

A fused gptcore projection is several transformers ones (q, k and v in c_attn; llama's gate and up
in c_fc): its B is split by rows and its A shared, which is the same update exactly. Adapters mean
something only on the weights they were trained with, so a folder records its base and is refused
on any other (`check_base`), before training continues from it or an export merges it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptcore.atomic import atomic_dir
from gptcore.checkpoint import contents_sha256
from gptcore.errors import DataError, parse_json
from gptcore.hf.convert import weight_map
from gptcore.limits import MAX_JSON_BYTES, check_finite
from gptcore.model import GPT, GPTConfig, meta_device
from gptcore.params import FinetuneParams, ParamsError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FACTS = "gptcore_adapter.json"
HEAD = "head.safetensors"
FORMAT = "gptcore.adapter"
VERSION = 1
ADAPTER_NAME = "default"  # peft's name for a model's one adapter
PEFT_PREFIX = "base_model.model."  # how peft's saved keys begin: PeftModel > LoraModel > the model
# config fields that change what the weights compute; dropout (a training setting, not kept by a
# transformers folder) does not
_NOT_BASE = ("dropout",)


def projections(model: GPT) -> list[str]:
    """The names, within a block, of the blocks' Linear layers: what lora_targets may name."""
    return [name for name, module in model.h[0].named_modules() if isinstance(module, nn.Linear)]


def _names(target: str, name: str) -> bool:
    # peft's rule for a target module: the name itself, or the end of a dotted name
    return name == target or name.endswith("." + target)


def target_modules(model: GPT, targets: list[str], blocks: str | int, key: str) -> list[str]:
    """The modules (`h.3.attn.c_attn`) that `targets` name in the last `blocks` blocks (all: every
    one). A target naming no projection is an error that lists them, before any training."""
    names = projections(model)
    for target in targets:
        if not any(_names(target, name) for name in names):
            raise ParamsError(
                f"params.yaml: {key} names {target!r}, which is no module of the model's blocks: "
                f"they hold {', '.join(names)} (a name's last parts pick every module they end: "
                "c_proj is attention's and the MLP's)"
            )
    chosen = [name for name in names if any(_names(t, name) for t in targets)]
    n_layer = model.config.n_layer
    first = 0 if blocks == "all" else n_layer - min(int(blocks), n_layer)
    return [f"h.{i}.{name}" for i in range(first, n_layer) for name in chosen]


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def adapter_parameters(model: GPT, modules: list[str], rank: int) -> int:
    """Parameters of rank-`rank` adapters on `modules`: r x (in + out) each."""
    found = _linears(model)
    return sum(rank * (found[m].in_features + found[m].out_features) for m in modules)


def activation_bytes_per_token(model: GPT, modules: list[str], rank: int, dropout: float) -> int:
    """Bytes a token of what the adapters on `modules` keep for the backward pass: each one's A x
    (r fp32 values) and, with dropout, its dropped input (in fp32 values) and the mask (in bytes)."""
    found = _linears(model)
    return sum(4 * rank + (5 * found[m].in_features if dropout > 0 else 0) for m in modules)


@dataclass(frozen=True)
class Base:
    """The model adapters are trained on: where it was read, its config, a sha256 of its weights."""

    source: str
    config: dict[str, Any]
    weights_sha256: str

    @classmethod
    def of(cls, model: GPT, source: Path | str) -> Base:
        state = {k: v.detach() for k, v in model.state_dict().items()}
        return cls(str(source), _base_config(model.config), contents_sha256({"weights": state}))


def _base_config(config: GPTConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_BASE}


@dataclass(frozen=True)
class Settings:
    """What an adapter is: rank, scale, dropout and the gptcore modules it adapts."""

    rank: int
    alpha: int
    dropout: float
    modules: tuple[str, ...]

    @classmethod
    def of(cls, params: FinetuneParams, modules: list[str]) -> Settings:
        return cls(params.lora_rank, params.lora_alpha, params.lora_dropout, tuple(modules))


def add_adapters(model: GPT, settings: Settings) -> Any:
    """Inject fresh adapters (A drawn from torch's generator, B zero) into `model` in place and
    freeze everything else in it; returns peft's tuner, whose `merge` ends the adaptation."""
    from peft import LoraConfig  # imported here: full fine-tuning never pays for peft's import
    from peft.tuners.lora import LoraModel

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.modules),
        bias="none",
    )
    return LoraModel(model, config, ADAPTER_NAME)


def adapter_tensors(model: GPT) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) of each adapted module of `model`, by gptcore module name."""
    state = model.state_dict()
    out = {}
    for key, a in state.items():
        if key.endswith(f".lora_A.{ADAPTER_NAME}.weight"):
            module = key.removesuffix(f".lora_A.{ADAPTER_NAME}.weight")
            b = state[f"{module}.lora_B.{ADAPTER_NAME}.weight"]
            out[module] = (a.detach().cpu().clone(), b.detach().cpu().clone())
    return out


def merge(tuner: Any) -> GPT:
    """The adapted model with each update added into its weight, the adapters gone: a plain GPT,
    whose parameters require gradients as they did before the adapters came."""
    model = tuner.merge_and_unload(safe_merge=True)  # safe_merge: a non-finite update is an error
    for p in model.parameters():
        p.requires_grad = True
    return model


# --- the adapter folder ---------------------------------------------------------------------------


def _hf_modules(config: GPTConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each gptcore projection's transformers module(s) and whether theirs is GPT-2's Conv1D (its
    weight (in, out), which peft's fan_in_fan_out means)."""
    out = {}
    for mapped in weight_map(config):
        if mapped.ours.endswith(".weight") and mapped.ours.startswith("h."):
            theirs = tuple(name.removesuffix(".weight") for name in mapped.theirs)
            out[mapped.ours.removesuffix(".weight")] = (theirs, mapped.transposed)
    return out


def save_adapter(
    folder: Path | str,
    model: GPT,
    base: Base,
    settings: Settings,
    task: str,
    head: nn.Linear | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `model`'s adapters as a peft adapter folder (the module doc), replacing `folder` whole."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    config = GPTConfig(**{**base.config, "dropout": 0.0})
    hf = _hf_modules(config)
    tensors, targets, conv1d = {}, [], False
    for module, (a, b) in adapter_tensors(model).items():
        theirs, conv1d = hf[module]
        for name, part in zip(theirs, b.chunk(len(theirs), dim=0), strict=True):
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous().clone()
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = part.contiguous().clone()
            targets.append(name)
    facts = {
        "format": FORMAT,
        "version": VERSION,
        "task": task,
        "base": dataclasses.asdict(base),
        "rank": settings.rank,
        "alpha": settings.alpha,
        "dropout": settings.dropout,
        "modules": list(settings.modules),
        **(extra or {}),
    }
    peft_config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=sorted(targets),  # whole names: exactly these modules, in any model
        fan_in_fan_out=conv1d,
        bias="none",
        task_type="CAUSAL_LM" if task == "instruct" else None,
        inference_mode=True,
    )
    with atomic_dir(folder) as tmp:
        peft_config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if head is not None:
            state = {k: v.detach().cpu().contiguous().clone() for k, v in head.state_dict().items()}
            save_file(state, str(tmp / HEAD), metadata={"format": "pt"})
        (tmp / FACTS).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_no_adapter(folder: Path | str) -> None:
    """The adapter folder of a run with method: full, which has none: empty."""
    with atomic_dir(folder):
        pass


@dataclass(frozen=True)
class Adapter:
    """An adapter folder as read: its facts, (A, B) of each gptcore module, a classifier's head."""

    folder: Path
    base: Base
    settings: Settings
    facts: dict[str, Any]
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    head: dict[str, torch.Tensor] | None


def read_adapter(folder: Path | str) -> Adapter:
    """Read and check an adapter folder that gptcore wrote: its facts, then each tensor's shape
    against the base model's config, before anything is built from it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    facts = _read_facts(folder)
    base = facts["base"]
    try:
        config = GPTConfig(**{**base["config"], "dropout": 0.0})
        with meta_device():  # shapes only
            shaped = GPT(config)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{folder / FACTS}: the base model's config is invalid: {exc}") from None
    settings = Settings(facts["rank"], facts["alpha"], float(facts["dropout"]), tuple(facts["modules"]))
    found = _linears(shaped)
    if unknown := [m for m in settings.modules if m not in found]:
        raise DataError(f"{folder / FACTS}: module {unknown[0]} is no projection of its base model")
    try:
        stored = load_file(str(folder / ADAPTER_WEIGHTS))
        head = load_file(str(folder / HEAD)) if (folder / HEAD).is_file() else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{folder}: the adapter weights cannot be read: {exc}") from None
    hf = _hf_modules(config)
    tensors, expected = {}, set()
    for module in settings.modules:
        linear = found[module]
        theirs, _ = hf[module]
        parts_a, parts_b = [], []
        for name in theirs:
            key = f"{PEFT_PREFIX}{name}"
            expected |= {f"{key}.lora_A.weight", f"{key}.lora_B.weight"}
            a, b = stored.get(f"{key}.lora_A.weight"), stored.get(f"{key}.lora_B.weight")
            rows = linear.out_features // len(theirs)
            if a is None or b is None:
                raise DataError(f"{folder / ADAPTER_WEIGHTS}: no adapter for {name}, which {FACTS} lists")
            if tuple(a.shape) != (settings.rank, linear.in_features) or tuple(b.shape) != (
                rows,
                settings.rank,
            ):
                raise DataError(
                    f"{folder / ADAPTER_WEIGHTS}: {name}'s adapter is {tuple(a.shape)} x {tuple(b.shape)}, "
                    f"rank {settings.rank} on its base implies {(settings.rank, linear.in_features)} x "
                    f"{(rows, settings.rank)}"
                )
            parts_a.append(a.float())
            parts_b.append(b.float())
        if any(not torch.equal(a, parts_a[0]) for a in parts_a[1:]):
            # a fused projection has one A: separate ones are another model's adapter
            raise DataError(
                f"{folder / ADAPTER_WEIGHTS}: the parts of {module} ({', '.join(theirs)}) differ in lora_A"
            )
        tensors[module] = (parts_a[0], torch.cat(parts_b, dim=0))
    if extra := sorted(set(stored) - expected):
        raise DataError(f"{folder / ADAPTER_WEIGHTS}: tensor {extra[0]} belongs to no module {FACTS} lists")
    check_finite(str(folder / ADAPTER_WEIGHTS), stored)
    if head is not None:
        check_finite(str(folder / HEAD), head)
    identity = Base(str(base["source"]), dict(base["config"]), str(base["weights_sha256"]))
    return Adapter(folder, identity, settings, facts, tensors, head)


def _read_facts(folder: Path) -> dict[str, Any]:
    path = folder / FACTS
    if not folder.is_dir():
        raise DataError(f"{folder} is not an adapter folder (one that a lora fine-tuning run writes)")
    if not path.is_file():
        raise DataError(
            f"{folder} is not an adapter folder of gptcore: {FACTS} not found (a run with method: full "
            "writes an empty folder; lora writes the adapters)"
        )
    if path.stat().st_size > MAX_JSON_BYTES:
        raise DataError(f"{path}: the file is over the limit of {MAX_JSON_BYTES:,} bytes for its kind")
    facts = parse_json(path.read_bytes(), str(path))
    if not isinstance(facts, dict) or facts.get("format") != FORMAT:
        raise DataError(f"{path} is not a gptcore adapter description (no '{FORMAT}' marker)")
    if facts.get("version") != VERSION:
        raise DataError(
            f"{path} has adapter format version {facts.get('version')!r}, this gptcore reads {VERSION}"
        )
    base = facts.get("base")
    checks = (
        isinstance(base, dict)
        and isinstance(base.get("config"), dict)
        and isinstance(base.get("weights_sha256"), str)
        and isinstance(base.get("source"), str),
        isinstance(facts.get("rank"), int) and not isinstance(facts["rank"], bool) and facts["rank"] > 0,
        isinstance(facts.get("alpha"), int) and not isinstance(facts["alpha"], bool) and facts["alpha"] > 0,
        isinstance(facts.get("dropout"), (int, float)) and not isinstance(facts["dropout"], bool),
        isinstance(facts.get("modules"), list) and all(isinstance(m, str) for m in facts["modules"]),
    )
    if not all(checks):
        raise DataError(
            f"{path}: base (config, weights_sha256, source), rank, alpha, dropout and modules are required"
        )
    return facts


def check_base(adapter: Adapter, base: Base) -> None:
    """Refuse adapters trained on another model than `base`: another shape or family, or other
    weights of the same shape (another training run)."""
    theirs, ours = adapter.base, base
    if theirs.config != ours.config:
        differ = sorted(
            k for k in set(theirs.config) | set(ours.config) if theirs.config.get(k) != ours.config.get(k)
        )
        detail = "; ".join(
            f"{k} {theirs.config.get(k)!r} there, {ours.config.get(k)!r} here" for k in differ[:4]
        )
        raise DataError(
            f"{adapter.folder} holds adapters for another base model than {ours.source} ({detail}): "
            f"use them with the model they were trained on ({theirs.source})"
        )
    if theirs.weights_sha256 != ours.weights_sha256:
        raise DataError(
            f"{adapter.folder} holds adapters trained on other weights than those of {ours.source} "
            f"(weights sha256 {theirs.weights_sha256[:12]}... there, {ours.weights_sha256[:12]}... here; "
            f"trained on {theirs.source}): adapters only mean something on the weights they were trained with"
        )


def attach(model: GPT, adapter: Adapter, base: Base, dropout: float | None = None) -> Any:
    """`adapter`'s adapters injected into `model`, whose identity is `base` (refused when it is not
    the adapters' base): peft's tuner, as `add_adapters` returns it, holding the saved A and B
    instead of fresh ones; `dropout` replaces the saved dropout (training goes on with its own)."""
    check_base(adapter, base)
    settings = adapter.settings if dropout is None else dataclasses.replace(adapter.settings, dropout=dropout)
    tuner = add_adapters(model, settings)
    layers = dict(model.named_modules())
    with torch.no_grad():
        for module, (a, b) in adapter.tensors.items():
            layer: Any = layers[module]  # peft's LoRA layer, holding its adapters by name
            layer.lora_A[ADAPTER_NAME].weight.copy_(a)
            layer.lora_B[ADAPTER_NAME].weight.copy_(b)
    return tuner


def adapt(
    model: GPT, params: FinetuneParams, section: str, base: Base, blocks: str | int = "all"
) -> tuple[Any, Settings, Adapter | None]:
    """For method: lora, adapters on the modules `section`.lora_targets names in the last `blocks`
    blocks: fresh ones, or those of `section`.lora_init, which must have been trained on `base`
    (refused otherwise, and when rank, scale or modules differ from the params'), read and checked
    before any training. Returns peft's tuner, the settings and the adapter folder read, if any."""
    modules = target_modules(model, params.lora_targets, blocks, f"{section}.lora_targets")
    settings = Settings.of(params, modules)
    if params.lora_init is None:
        return add_adapters(model, settings), settings, None
    adapter = read_adapter(params.lora_init)
    if adapter.facts.get("task") != section:
        raise DataError(
            f"{section}.lora_init = {params.lora_init!r} holds the adapters of a {adapter.facts.get('task')} "
            f"run, not of {section}"
        )
    saved = adapter.settings
    for key, ours, theirs in (
        ("lora_rank", settings.rank, saved.rank),
        ("lora_alpha", settings.alpha, saved.alpha),
        ("lora_targets", settings.modules, saved.modules),
    ):
        if ours != theirs:
            shown = (lambda v: ", ".join(v)) if key == "lora_targets" else repr
            raise ParamsError(
                f"params.yaml: {section}.{key} gives {shown(ours)}, but the adapters of {section}.lora_init "
                f"({params.lora_init}) have {shown(theirs)}: set it to theirs to continue them"
            )
    return attach(model, adapter, base, dropout=settings.dropout), settings, adapter


def load_head(head: nn.Linear, adapter: Adapter, labels: list[str]) -> None:
    """A classifier's head from the adapter folder it continues, which must have the same classes."""
    saved = adapter.facts.get("labels")
    if saved != labels:
        raise DataError(
            f"{adapter.folder} holds a classifier of the classes {saved!r}, not of this data's {labels!r}"
        )
    if adapter.head is None:
        raise DataError(f"{adapter.folder}: {HEAD} not found, which a classifier's adapters hold")
    try:
        head.load_state_dict(adapter.head, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{adapter.folder / HEAD} does not fit the classifier's head: {exc}") from None


def merged(model: GPT, folder: Path | str, source: Path | str) -> GPT:
    """`model` (read from `source`) with the adapters of `folder` merged into its weights: what
    `gptcore export --adapter` writes. Adapters trained on another model are refused."""
    return merge(attach(model, read_adapter(folder), Base.of(model, source)))
