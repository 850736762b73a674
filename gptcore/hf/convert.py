"""Models in the Hugging Face layout: export a gptcore model to a folder that `transformers` loads
with no code of ours, and read such a folder (GPT-2, Llama, Qwen3) back as a gptcore model.

A folder holds `config.json`, the weights as `model.safetensors` (or, read only, sharded
safetensors or a `pytorch_model.bin` loaded with `weights_only=True`) and the tokenizer files
(gptcore.hf.tokenizer). Nothing here imports transformers: config.json is written and read by
hand, so exporting needs only `safetensors`.

A folder from elsewhere is checked before anything is allocated for it: its config against
gptcore.limits, the tensors its weights files list (safetensors headers, a torch file's mapped
tensors) against the config, and the memory loading needs against what is available.

Each family maps one-to-one onto a transformers architecture:

    gptcore          transformers        differences absorbed by the mapping
    gpt2             GPT2LMHeadModel     Conv1D weights are (in, out): transposed; bias: false
                                         exports zero biases (and imports back as bias: false)
    llama            LlamaForCausalLM    fused q/k/v and gate/up matrices split by rows
    llama + qk_norm  Qwen3ForCausalLM    as llama, plus each attention's q_norm and k_norm

The rotary layout (rotate-half) and the RMSNorm (gain times normalised x) are transformers' own,
so no weight is permuted. A vocabulary padded beyond the tokenizer's size exports at its true size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptcore.checkpoint import load_model, load_torch_file
from gptcore.errors import DataError, parse_json
from gptcore.hf.tokenizer import TOKENIZER_FILE, tokenizer_files, tokenizer_from_hf
from gptcore.limits import MAX_JSON_BYTES, check_config_values, check_finite, check_memory, model_bytes
from gptcore.model import GPT, GPTConfig, meta_device
from gptcore.output_folder import output_folder
from gptcore.params import TrainParams
from gptcore.tokenizer import BpeTokenizer, CharTokenizer, Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARDED_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHTS_FILE = "pytorch_model.bin"
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}
MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "qwen3": "qwen3"}  # when `architectures` is absent


@dataclass(frozen=True)
class Mapped:
    """One gptcore tensor and the transformers tensor(s) it is: `parts` are stacked by rows
    (q/k/v, gate/up); `transposed` for GPT-2's Conv1D; `bias` for GPT-2 biases a bias-free
    model exports as zeros."""

    ours: str
    theirs: tuple[str, ...]
    transposed: bool = False
    bias: bool = False


def weight_map(config: GPTConfig) -> list[Mapped]:
    """Every tensor of a model of `config`, named in gptcore and in transformers."""
    if config.arch == "gpt2":
        return _gpt2_map(config)
    return _llama_map(config)


def _gpt2_map(config: GPTConfig) -> list[Mapped]:
    t = "transformer."
    out = [Mapped("wte.weight", (t + "wte.weight",)), Mapped("wpe.weight", (t + "wpe.weight",))]
    for i in range(config.n_layer):
        for name, conv1d in (
            ("ln_1", False),
            ("attn.c_attn", True),
            ("attn.c_proj", True),
            ("ln_2", False),
            ("mlp.c_fc", True),
            ("mlp.c_proj", True),
        ):
            out.append(Mapped(f"h.{i}.{name}.weight", (f"{t}h.{i}.{name}.weight",), transposed=conv1d))
            out.append(Mapped(f"h.{i}.{name}.bias", (f"{t}h.{i}.{name}.bias",), bias=True))
    out += [Mapped("ln_f.weight", (t + "ln_f.weight",)), Mapped("ln_f.bias", (t + "ln_f.bias",), bias=True)]
    if not config.tie_embeddings:
        out.append(Mapped("lm_head.weight", ("lm_head.weight",)))
    return out


def _llama_map(config: GPTConfig) -> list[Mapped]:
    out = [Mapped("wte.weight", ("model.embed_tokens.weight",))]
    for i in range(config.n_layer):
        ours, theirs = f"h.{i}.", f"model.layers.{i}."
        attn = theirs + "self_attn."
        out += [
            Mapped(ours + "ln_1.weight", (theirs + "input_layernorm.weight",)),
            Mapped(ours + "attn.c_attn.weight", tuple(f"{attn}{p}_proj.weight" for p in "qkv")),
            Mapped(ours + "attn.c_proj.weight", (attn + "o_proj.weight",)),
            Mapped(ours + "ln_2.weight", (theirs + "post_attention_layernorm.weight",)),
            Mapped(
                ours + "mlp.c_fc.weight", (theirs + "mlp.gate_proj.weight", theirs + "mlp.up_proj.weight")
            ),
            Mapped(ours + "mlp.c_proj.weight", (theirs + "mlp.down_proj.weight",)),
        ]
        if config.qk_norm:
            out += [Mapped(f"{ours}attn.{w}_norm.weight", (f"{attn}{w}_norm.weight",)) for w in "qk"]
    out.append(Mapped("ln_f.weight", ("model.norm.weight",)))
    if not config.tie_embeddings:
        out.append(Mapped("lm_head.weight", ("lm_head.weight",)))
    return out


# --- export --------------------------------------------------------------------------------------


def hf_config(config: GPTConfig, vocab_size: int, eot_id: int) -> dict[str, Any]:
    """config.json for a model of `config` with `vocab_size` ids (its true, unpadded size)."""
    common = {"vocab_size": vocab_size, "bos_token_id": eot_id, "eos_token_id": eot_id, "dtype": "float32"}
    common["tie_word_embeddings"] = config.tie_embeddings
    common["initializer_range"] = 0.02
    if config.arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            **common,
            "n_positions": config.block_size,
            "n_embd": config.n_embd,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.ffn_hidden,
            # exact GELU, or the tanh form OpenAI's GPT-2 uses (torch's own, bit for bit)
            "activation_function": "gelu" if config.activation == "gelu" else "gelu_pytorch_tanh",
            "layer_norm_epsilon": config.norm_eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": 0.0,  # gptcore never drops attention weights
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    arch = "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM"
    out = {
        "architectures": [arch],
        "model_type": "qwen3" if config.qk_norm else "llama",
        **common,
        "hidden_size": config.n_embd,
        "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,  # where transformers 4.x reads it
        "attention_bias": False,
        "attention_dropout": 0.0,
    }
    if config.qk_norm:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer)
        out["layer_types"] = ["full_attention"] * config.n_layer
    else:
        out["mlp_bias"] = False
    return out


def hf_state_dict(model: GPT, vocab_size: int) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names and layouts, the vocabulary cut to `vocab_size`."""
    model = getattr(model, "_orig_mod", model)
    config = model.config
    if vocab_size > config.vocab_size:
        raise DataError(f"the tokenizer has {vocab_size} ids but the model only {config.vocab_size}")
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for m in weight_map(config):
        if m.ours in state:
            tensor = state[m.ours].detach().float()
        elif m.bias:  # a bias-free gpt2 model: GPT-2 has biases, zero ones change nothing
            tensor = torch.zeros(state[m.ours.removesuffix("bias") + "weight"].shape[0])
        else:
            raise DataError(f"the model has no tensor {m.ours}")
        if m.ours in ("wte.weight", "lm_head.weight"):
            tensor = tensor[:vocab_size]  # padding rows no token uses
        if m.transposed:
            tensor = tensor.t()
        for name, part in zip(m.theirs, tensor.chunk(len(m.theirs), dim=0), strict=True):
            # safetensors stores each tensor whole and apart: no views, no shared storage
            out[name] = part.contiguous().clone().cpu()
    return out


def export_folder(
    model: GPT,
    tokenizer: Tokenizer,
    folder: Path | str,
    *,
    force: bool = False,
    protect: Sequence[Path | str] = (),
) -> Path:
    """Write config.json, model.safetensors and the tokenizer files, which AutoModelForCausalLM and
    AutoTokenizer load as they are, into `folder`: a new or empty folder, or an earlier export, whose
    files alone are replaced (`output_folder` says what else is refused, and what `force` allows;
    `protect` lists paths the folder must not hold, such as the model file exported)."""
    from safetensors.torch import save_file  # the one runtime dependency of export

    folder = Path(folder)
    raw = getattr(model, "_orig_mod", model)
    files = tokenizer_files(tokenizer, raw.config.block_size)  # refuses a kind it cannot export
    config = hf_config(raw.config, tokenizer.vocab_size, tokenizer.eot_id)
    tensors = hf_state_dict(raw, tokenizer.vocab_size)
    names = [CONFIG_FILE, WEIGHTS_FILE, *files]
    with output_folder(folder, "hf", names, force=force, protect=protect) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        for name, content in files.items():
            (tmp / name).write_text(
                json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
    return folder


# --- import --------------------------------------------------------------------------------------


def _get(
    spec: dict[str, Any], path: Path, key: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    """config.json's `key`, checked to be of `kind` (a bool is not a number here)."""
    value = spec.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{path}: {key} = {value!r} is not a {names}")
    return value


def _require(path: Path, key: str, value: Any, expected: Any, why: str) -> None:
    if value != expected:
        raise DataError(f"{path}: {key} = {value!r} is not supported ({why}; gptcore needs {expected!r})")


# GPTConfig's fields as each family's config.json spells them, for the errors that name them
_CONFIG_KEYS = {
    "gpt2": {
        "vocab_size": "vocab_size",
        "block_size": "n_positions",
        "n_layer": "n_layer",
        "n_head": "n_head",
        "n_embd": "n_embd",
        "norm_eps": "layer_norm_epsilon",
    },
    "llama": {
        "vocab_size": "vocab_size",
        "block_size": "max_position_embeddings",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_embd": "hidden_size",
        "intermediate_size": "intermediate_size",
        "rope_theta": "rope_theta",
        "norm_eps": "rms_norm_eps",
    },
}


def _read_json(path: Path) -> Any:
    """A small JSON file of a folder (config.json, a shard index), refused unread when it is not small."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise DataError(f"{path}: the file is {size:,} bytes, over the limit {MAX_JSON_BYTES:,} for its kind")
    return parse_json(path.read_bytes(), str(path))


def read_config(folder: Path | str) -> GPTConfig:
    """The gptcore config of the model in `folder`'s config.json (GPT-2, Llama or Qwen3)."""
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).is_dir():
        raise DataError(
            f"{folder} is not a folder (a Hugging Face model folder holds config.json and weights)"
        )
    if not path.is_file():
        raise DataError(f"{path} not found: a Hugging Face model folder needs config.json beside its weights")
    spec = _read_json(path)
    if not isinstance(spec, dict):
        raise DataError(f"{path} must hold a JSON object")
    names = spec.get("architectures")
    if isinstance(names, list) and names:
        family = next((ARCHITECTURES[n] for n in names if isinstance(n, str) and n in ARCHITECTURES), None)
    else:
        names = [spec.get("model_type")]
        family = MODEL_TYPES.get(names[0]) if isinstance(names[0], str) else None
    if family is None:
        raise DataError(
            f"{path}: architecture {', '.join(map(str, names))} is not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    get = functools.partial(_get, spec, path)
    try:
        if family == "gpt2":
            return _gpt2_config(spec, path, get)
        return _llama_config(spec, path, get, qk_norm=family == "qwen3")
    except ValueError as exc:  # GPTConfig's own checks
        raise DataError(f"{path}: {exc}") from None


def _gpt2_config(spec: dict[str, Any], path: Path, get: Any) -> GPTConfig:
    n_embd = get("n_embd", int)
    inner = spec.get("n_inner")
    if inner is not None:
        _require(path, "n_inner", inner, 4 * n_embd, "GPT-2's feed-forward is 4x wide")
    activation = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(
        get("activation_function", str, "gelu_new")
    )
    if activation is None:
        raise DataError(
            f"{path}: activation_function = {spec.get('activation_function')!r} is not supported "
            "(supported: gelu, gelu_new, gelu_pytorch_tanh)"
        )
    for key, expected in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        _require(path, key, spec.get(key, expected), expected, "gptcore scales scores by 1/sqrt(head size)")
    _require(path, "add_cross_attention", spec.get("add_cross_attention", False), False, "a decoder only")
    keys = _CONFIG_KEYS["gpt2"]
    values = {
        "vocab_size": get(keys["vocab_size"], int),
        "block_size": get(keys["block_size"], int),
        "n_layer": get(keys["n_layer"], int),
        "n_head": get(keys["n_head"], int),
        "n_embd": n_embd,
        "norm_eps": get(keys["norm_eps"], (int, float), 1e-5),
    }
    check_config_values(str(path), values, keys)
    return GPTConfig(
        **{**values, "norm_eps": float(values["norm_eps"])},
        bias=True,  # GPT-2 has biases; read_folder turns all-zero ones (our export of bias: false) off
        arch="gpt2",
        tie_embeddings=get("tie_word_embeddings", bool, True),
        activation=activation,
    )


def _llama_config(spec: dict[str, Any], path: Path, get: Any, qk_norm: bool) -> GPTConfig:
    hidden, heads = get("hidden_size", int), get("num_attention_heads", int)
    if heads <= 0:
        raise DataError(f"{path}: num_attention_heads = {heads} must be > 0")
    _require(
        path,
        "num_key_value_heads",
        spec.get("num_key_value_heads") or heads,
        heads,
        "no grouped-query attention",
    )
    _require(
        path,
        "head_dim",
        spec.get("head_dim") or hidden // heads,
        hidden // heads,
        "head size = width / heads",
    )
    _require(path, "hidden_act", spec.get("hidden_act", "silu"), "silu", "SwiGLU")
    for key in ("attention_bias", "mlp_bias"):
        _require(path, key, spec.get(key, False), False, "the llama family has no biases")
    if spec.get("use_sliding_window"):
        _require(path, "use_sliding_window", True, False, "attention is over the whole context")
    rope = spec.get("rope_parameters") or spec.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else rope
    _require(path, "rope_parameters.rope_type", rope_type, "default", "plain rotary embeddings")
    keys = dict(_CONFIG_KEYS["llama"])
    if isinstance(rope, dict) and "rope_theta" in rope:
        keys["rope_theta"] = "rope_parameters.rope_theta"
        theta = rope["rope_theta"]
    else:
        theta = spec.get("rope_theta", 10000.0)
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise DataError(f"{path}: {keys['rope_theta']} = {theta!r} is not a number")
    values = {
        "vocab_size": get(keys["vocab_size"], int),
        "block_size": get(keys["block_size"], int),
        "n_layer": get(keys["n_layer"], int),
        "n_head": heads,
        "n_embd": hidden,
        "intermediate_size": get(keys["intermediate_size"], int),
        "rope_theta": theta,
        "norm_eps": get(keys["norm_eps"], (int, float), 1e-6),
    }
    check_config_values(str(path), values, keys)
    width = values.pop("intermediate_size")
    config = GPTConfig(
        **{**values, "rope_theta": float(theta), "norm_eps": float(values["norm_eps"])},
        arch="llama",
        tie_embeddings=get("tie_word_embeddings", bool, False),
        qk_norm=qk_norm,
    )
    # recorded only where it is not the width gptcore derives, so an export reads back as it was
    return config if width == config.ffn_hidden else dataclasses.replace(config, intermediate_size=width)


@dataclass(frozen=True)
class Stored:
    """A tensor as a weights file lists it, before any of it is read."""

    shape: tuple[int, ...]
    dtype: str
    floating: bool


def _weight_files(folder: Path) -> tuple[list[Path], bool]:
    """(the files holding `folder`'s weights, whether they are safetensors); a shard index names
    files of the folder only."""
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE], True
    if (folder / SHARDED_INDEX_FILE).is_file():
        path = folder / SHARDED_INDEX_FILE
        index = _read_json(path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
            raise DataError(f"{path}: weight_map must map tensor names to shard file names")
        shards = sorted(set(weight_map.values()))
        if any("/" in s or "\\" in s or s in ("", ".", "..") for s in shards):
            raise DataError(f"{path}: shards must lie in the folder")
        return [folder / shard for shard in shards], True
    if (folder / PICKLE_WEIGHTS_FILE).is_file():
        return [folder / PICKLE_WEIGHTS_FILE], False
    raise DataError(
        f"{folder} has no weights: expected {WEIGHTS_FILE}, {SHARDED_INDEX_FILE} or {PICKLE_WEIGHTS_FILE}"
    )


def _pickled_weights(path: Path) -> dict[str, torch.Tensor]:
    """pytorch_model.bin as data (`weights_only=True`), never as code; its tensors are mapped from
    the file, read as they are used."""
    state = load_torch_file(path, "a state dict of tensors", mmap=True)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise DataError(f"{path} does not hold a mapping of names to tensors")
    return state


def stored_tensors(folder: Path | str) -> dict[str, Stored]:
    """The tensors `folder`'s weights files list, by their transformers names, with none of their
    data read: from the safetensors headers, or a pytorch_model.bin's mapped tensors."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    files, safetensors = _weight_files(folder)
    if not safetensors:
        return {
            k: Stored(tuple(v.shape), str(v.dtype), v.is_floating_point())
            for k, v in _pickled_weights(files[0]).items()
        }
    out: dict[str, Stored] = {}
    try:
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                names = f.keys()  # a safe_open is not itself iterable
                for name in names:
                    part = f.get_slice(name)
                    dtype = part.get_dtype()
                    out[name] = Stored(tuple(part.get_shape()), dtype, dtype.startswith(("F", "BF")))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{folder}: the safetensors weights cannot be read: {exc}") from None
    return out


def read_weights(folder: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of `folder` by their transformers names: model.safetensors, sharded
    safetensors, or pytorch_model.bin read as data (`weights_only=True`), never as code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    files, safetensors = _weight_files(folder)
    if not safetensors:
        return _pickled_weights(files[0])
    try:
        return {k: v for file in files for k, v in load_file(str(file)).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{folder}: the safetensors weights cannot be read: {exc}") from None


# buffers older GPT-2 files carry (the causal mask), which gptcore computes instead
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _as_named(tensors: dict[str, Any], config: GPTConfig) -> dict[str, Any]:
    """A weights file's entries under the names `weight_map` gives: GPT-2's with their
    `transformer.` prefix, without the buffers gptcore computes or a tied head stored anyway."""
    if config.arch == "gpt2" and not any(k.startswith("transformer.") for k in tensors):
        tensors = {
            ("lm_head.weight" if k == "lm_head.weight" else "transformer." + k): v for k, v in tensors.items()
        }
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    return tensors


def check_stored(stored: dict[str, Stored], config: GPTConfig, where: Path) -> None:
    """Every tensor the config implies is listed, as a float tensor of the shape the config
    implies, and nothing else is; the layers are counted first, from the names alone, so that a
    config of many more layers than the weights is refused before anything is built for it."""
    stored = _as_named(stored, config)
    layers = len({found.group(1) for k in stored if (found := re.search(r"\.(?:h|layers)\.(\d+)\.", k))})
    if layers != config.n_layer:
        key = _CONFIG_KEYS[config.arch]["n_layer"]
        raise DataError(
            f"{where / CONFIG_FILE}: {key} = {config.n_layer}, but the weights hold {layers} layers"
        )
    mapped = weight_map(config)
    for m in mapped:
        missing = [name for name in m.theirs if name not in stored]
        if missing:
            raise DataError(f"{where}: the weights have no tensor {missing[0]}, which the config implies")
    extra = sorted(set(stored) - {name for m in mapped for name in m.theirs})
    if extra:
        raise DataError(f"{where}: tensor {extra[0]} has no place in a {config.arch} model of this config")
    expected = _shapes(config)
    for m in mapped:
        if m.ours not in expected:
            continue
        whole = expected[m.ours][::-1] if m.transposed else expected[m.ours]
        # the parts are stacked by rows (q/k/v, gate/up)
        part = (whole[0] // len(m.theirs), *whole[1:])
        for name in m.theirs:
            if stored[name].shape != part:
                raise DataError(
                    f"{where}: {name} has shape {stored[name].shape}, but {CONFIG_FILE} implies {part}"
                )
            if not stored[name].floating:
                raise DataError(f"{where}: {name} is {stored[name].dtype}, not a float tensor")


def state_from_hf(
    tensors: dict[str, torch.Tensor], config: GPTConfig, where: Path
) -> dict[str, torch.Tensor]:
    """gptcore's state dict (what GPT(config) loads) from transformers-named tensors; every tensor
    must be there with the shape the config implies, finite, and none left over."""
    check_stored(
        {k: Stored(tuple(v.shape), str(v.dtype), v.is_floating_point()) for k, v in tensors.items()},
        config,
        where,
    )
    tensors = _as_named(tensors, config)
    state: dict[str, torch.Tensor] = {}
    for m in weight_map(config):
        check_finite(str(where), {name: tensors[name] for name in m.theirs})
        parts = [tensors[name].float() for name in m.theirs]
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if m.transposed:
            tensor = tensor.t()
        state[m.ours] = tensor.contiguous()
    return state


def _shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    with meta_device():  # shapes only: no memory, no initialisation
        model = GPT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def read_folder(folder: Path | str) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The config and gptcore state dict of a Hugging Face folder; a GPT-2 whose biases are all
    zero (a gptcore export of bias: false) comes back bias-free."""
    folder = Path(folder)
    config = read_config(folder)
    check_stored(stored_tensors(folder), config, folder)
    # at the peak, the weights as read or in float32 beside the model built from them
    built = model_bytes(config)
    stored = sum(file.stat().st_size for file in _weight_files(folder)[0])
    check_memory(
        str(folder), max(stored, built) + built, "loading its model (weights as read, model as built)"
    )
    state = state_from_hf(read_weights(folder), config, folder)
    if config.arch == "gpt2" and all(not v.any() for k, v in state.items() if k.endswith("bias")):
        config = dataclasses.replace(config, bias=False)
        state = {k: v for k, v in state.items() if not k.endswith("bias")}
    return config, state


def load_folder(
    folder: Path | str, device: torch.device | str = "cpu"
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """(model in eval mode, tokenizer, meta) from a Hugging Face folder: what `gptcore chat` and
    `sample` need, as `gptcore.checkpoint.load_model` gives them for a model file."""
    folder = Path(folder)
    config, state = read_folder(folder)
    tokenizer = tokenizer_from_hf(folder)
    if tokenizer.vocab_size != config.vocab_size:
        raise DataError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} ids but config.json says vocab_size {config.vocab_size}"
        )
    model = GPT(config)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), tokenizer, {"source": str(folder)}


# --- starting a training run from a folder (train.init_from) -------------------------------------

# train params that must say what the folder's config.json says (the model's shape and family)
_MUST_MATCH = ("arch", "tie_embeddings", "qk_norm", "bias", "n_layer", "n_head", "n_embd")


def initial_weights(params: TrainParams, vocab_size: int) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The config and weights train.init_from names, for data of `vocab_size` ids. The train
    params must not contradict the folder's config (an error names the key and the value to set);
    a shorter train.block_size keeps the first positions of a GPT-2 position table."""
    folder = Path(params.init_from or "")
    where = f"train.init_from = {params.init_from!r}"
    try:
        config, state = read_folder(folder)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    trained = config_for_training(config, params)
    if trained.bias and not config.bias:
        # all-zero biases (a fresh GPT-2, an export of bias: false) were left out on reading;
        # training with biases starts them at zero, the same function
        zeros = {k: torch.zeros(shape) for k, shape in _shapes(trained).items() if k.endswith("bias")}
        state = {**zeros, **state}
    for key in _MUST_MATCH:
        if getattr(params, key) != getattr(trained, key):
            raise DataError(
                f"params.yaml: train.{key} = {getattr(params, key)!r} contradicts {folder / CONFIG_FILE}, "
                f"whose model has {key} = {getattr(trained, key)!r}: set train.{key}: {getattr(trained, key)!r}"
            )
    if params.block_size > config.block_size:
        raise DataError(
            f"params.yaml: train.block_size = {params.block_size} exceeds the {config.block_size} positions "
            f"of {folder / CONFIG_FILE}: set it to at most {config.block_size}"
        )
    if vocab_size != config.vocab_size:
        raise DataError(
            f"{where}: its model has {config.vocab_size} token ids but the token files {vocab_size}: "
            "train on tokens of the model's own vocabulary (for GPT-2's weights, "
            "vocab: {kind: tiktoken, encoding: r50k_base})"
        )
    if "wpe.weight" in state:
        state["wpe.weight"] = state["wpe.weight"][: params.block_size].clone()
    if trained.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"]
    return trained, state


def config_for_training(config: GPTConfig, params: TrainParams) -> GPTConfig:
    """A folder's model config as train.init_from trains it: the params' block_size and dropout,
    and a GPT-2 without biases given zero ones when train.bias asks for them. The one rule, for
    the run's plan (gptcore.train.planned_config) and for the weights it loads."""
    bias = config.bias or (params.bias and config.arch == "gpt2")
    return dataclasses.replace(config, block_size=params.block_size, dropout=params.dropout, bias=bias)


def check_vocabulary(folder: Path | str, tokenizer: Tokenizer) -> None:
    """Refuse to continue training a model of `folder` on tokens of another vocabulary, when the
    folder has a tokenizer to compare (same tokens, same ids, same special tokens)."""
    folder = Path(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        return  # weights only: read_folder's vocabulary-size check is all there is
    if _table(tokenizer) != _table(tokenizer_from_hf(folder)):
        raise DataError(
            f"train.init_from = {str(folder)!r}: its tokenizer is not the vocabulary of data/vocab "
            f"({tokenizer.kind}, {tokenizer.vocab_size} ids): the model would read other tokens than it "
            "learned; build the vocabulary it was trained with (for GPT-2: vocab.kind tiktoken, "
            "vocab.encoding r50k_base)"
        )


def _table(tokenizer: Tokenizer) -> tuple[Any, ...]:
    """What decides a vocabulary's ids: the byte tokens and special ids, or the characters."""
    if isinstance(tokenizer, BpeTokenizer):  # tiktoken's pretrained encodings too
        return ("bpe", tokenizer.ranks, tokenizer.special_tokens)
    if isinstance(tokenizer, CharTokenizer):
        return ("char", tokenizer.chars)
    return (tokenizer.kind, tokenizer.to_dict())


def load_any(path: Path | str, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """A gptcore model file, or a Hugging Face folder (exported here or from elsewhere)."""
    path = Path(path)
    return load_folder(path, device) if path.is_dir() else load_model(path, device)
