"""GGUF files for llama.cpp and what is built on it (Ollama, LM Studio): a gptcore model written as
one file with its tokenizer, context length and, for an instruction-tuned model, chat template.

    gptcore          GGUF architecture   what differs from the Hugging Face export
    llama            llama               q and k rows permuted (below)
    llama + qk_norm  qwen3               none: llama.cpp rotates Qwen3's q and k as we do
    gpt2             gpt2                Linear layouts (transformers' Conv1D ones transposed back)

The tensors are the Hugging Face export's (gptcore.hf.convert.hf_state_dict: q/k/v and gate/up
split, zero biases for a bias-free gpt2, the vocabulary cut to the tokenizer's size), renamed to
llama.cpp's names by the `gguf` package's own table, so the two exports cannot drift apart.

Rotary layout. gptcore and transformers rotate each head's dimension i with i + head_dim/2
(rotate-half); llama.cpp's `llama` architecture rotates neighbours 2j and 2j + 1 (the layout of
Meta's original checkpoints). Reordering the q and k rows of every head so that row j moves to 2j
and row j + head_dim/2 to 2j + 1 makes llama.cpp rotate the same pairs by the same angles; q.k is
unchanged because both sides move alike. Its `qwen3` architecture rotates halves, as we do.

The tokenizer is byte-level BPE (`tokenizer.ggml.model: gpt2`): tokens and merges as in the
exported tokenizer.json, <|endoftext|> a control token and the end-of-sequence id, no token
added before a prompt. llama.cpp picks its pre-tokenizer by name, not by regex, so only
vocabularies split by GPT-2's regex (gptcore's bpe, tiktoken's r50k_base and p50k_base) are written;
a char vocabulary, another regex, or anything else llama.cpp cannot run as trained is refused
before any file is opened.

--dtype: f32 writes every tensor as trained; f16 and q8_0 (8-bit blocks of 32 with one scale,
llama.cpp's near-lossless format) convert the matrices and keep the vectors (norm gains, biases)
and the position table in f32, as llama.cpp's own converter does; a matrix whose rows are not a
whole number of q8_0 blocks is written f16.

`gguf` is imported inside the functions that use it: every `gptcore` command imports this module
(for the export command's flags), and only an export needs the package.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptcore.atomic import atomic_file
from gptcore.bpe import GPT2_PATTERN, pretrained_spec
from gptcore.errors import DataError, GptcoreError
from gptcore.hf.convert import hf_state_dict, weight_map
from gptcore.hf.tokenizer import GPT2_BYTELEVEL_PATTERN, tokenizer_json
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import BpeTokenizer, CharTokenizer, Tokenizer

DTYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # values per q8_0 block: a matrix row must be a whole number of them


def _gpt2_patterns() -> frozenset[str]:
    """The regexes that split text exactly as llama.cpp's `gpt-2` pre-tokenizer does."""
    patterns = {GPT2_PATTERN, GPT2_BYTELEVEL_PATTERN}
    for name in ("r50k_base", "p50k_base"):
        patterns.add(pretrained_spec(name)["pat_str"])
    return frozenset(patterns)


def gguf_architecture(config: GPTConfig) -> str:
    """The llama.cpp architecture a model of `config` is written as."""
    if config.arch == "gpt2":
        return "gpt2"
    return "qwen3" if config.qk_norm else "llama"


# --- the tokenizer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufVocab:
    """A vocabulary as GGUF's tokenizer keys hold it."""

    tokens: list[str]  # by id, in GPT-2's byte-to-character spelling
    types: list[int]  # gguf.TokenType per id
    merges: list[str]  # "left right", highest priority first
    eot_id: int
    pre: str  # llama.cpp's name for the pre-tokenizer


def gguf_vocab(tokenizer: Tokenizer) -> GgufVocab:
    """The GGUF form of a byte-level BPE vocabulary; a DataError naming why for any other."""
    import gguf

    if isinstance(tokenizer, CharTokenizer):
        raise DataError(
            "a char vocabulary cannot be written as GGUF: llama.cpp's tokenizers split bytes (BPE) "
            "or SentencePiece pieces, and none reads one id per character with <|unk|> for the "
            "others; train with vocab.kind: bpe (or export --format hf)"
        )
    if not isinstance(tokenizer, BpeTokenizer):
        raise DataError(f"a {tokenizer.kind} vocabulary cannot be written as GGUF (writable: bpe, tiktoken)")
    if tokenizer.pattern not in _gpt2_patterns():
        raise DataError(
            f"the {tokenizer.kind} vocabulary splits text with the regex {tokenizer.pattern!r}, which "
            "llama.cpp cannot run: it names its pre-tokenizers instead of reading a regex, and gptcore "
            "writes only GPT-2's (vocab.kind bpe, or tiktoken r50k_base / p50k_base)"
        )
    spec = tokenizer_json(tokenizer)["model"]
    tokens = [f"[PAD{i}]" for i in range(tokenizer.vocab_size)]  # ids no token owns (p50k_edit has some)
    types = [int(gguf.TokenType.UNUSED)] * tokenizer.vocab_size
    for text, token_id in spec["vocab"].items():
        tokens[token_id], types[token_id] = text, int(gguf.TokenType.NORMAL)
    for name, token_id in tokenizer.special_tokens.items():
        tokens[token_id], types[token_id] = name, int(gguf.TokenType.CONTROL)
    merges = [f"{left} {right}" for left, right in spec["merges"]]
    return GgufVocab(tokens, types, merges, tokenizer.eot_id, "gpt-2")


# --- the chat template --------------------------------------------------------------------------


def _literal(text: str) -> str:
    """A Jinja string literal of `text`, in the escapes that both Jinja2 and llama.cpp's own Jinja
    lexer read."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f"'{escaped}'"


def _filled(template: str, field: str, variable: str) -> str:
    """A Jinja expression: `template` with every `{field}` replaced by `variable`, as str.replace."""
    return f" ~ {variable} ~ ".join(_literal(piece) for piece in template.split("{" + field + "}"))


def chat_template(template: Mapping[str, Any]) -> str:
    """The Jinja chat template of an instruction-tuned model's prompt template (the `template` of
    its meta, `gptcore.finetune.instruct.PromptTemplate.to_dict()`).

    It renders a conversation as `gptcore serve` and `gptcore chat` do: the template holds one
    turn, whose instruction is the last user message, or, when there are system (or developer)
    messages, those messages joined by newlines, with the last user message as the input."""
    try:
        preamble, instruction, given, response = (
            str(template[k]) for k in ("preamble", "instruction", "input", "response")
        )
    except KeyError as exc:
        raise DataError(f"the model's prompt template has no {exc.args[0]!r}") from None
    return (
        "{%- set ns = namespace(system='', systems=false, user='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] in ['system', 'developer'] -%}"
        "{%- set ns.system = (ns.system ~ '\\n' if ns.systems else '') ~ message['content'] -%}"
        "{%- set ns.systems = true -%}"
        "{%- elif message['role'] == 'user' -%}"
        "{%- set ns.user = message['content'] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if ns.systems -%}{%- set instruction = ns.system -%}{%- set input = ns.user -%}"
        "{%- else -%}{%- set instruction = ns.user -%}{%- set input = '' -%}{%- endif -%}"
        f"{{{{- {_literal(preamble)} ~ {_filled(instruction, 'instruction', 'instruction')} -}}}}"
        f"{{%- if input | trim -%}}{{{{- {_filled(given, 'input', 'input')} -}}}}{{%- endif -%}}"
        f"{{{{- {_literal(response)} -}}}}"
    )


# --- the tensors --------------------------------------------------------------------------------


def rotate_half_to_pairs(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """q or k projection rows (n_head * head_dim, in) reordered per head so that row j becomes row
    2j and row j + head_dim/2 row 2j + 1: the pairs llama.cpp's `llama` rotary embedding rotates."""
    rows, columns = weight.shape
    half = rows // n_head // 2
    # (n_head * head_dim, in) -> (n_head, 2, head_dim/2, in) -> (n_head, head_dim/2, 2, in)
    return weight.reshape(n_head, 2, half, columns).transpose(1, 2).reshape(rows, columns)


def gguf_tensors(model: GPT, vocab_size: int) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's names and layouts (float32), the vocabulary cut to
    `vocab_size`."""
    import gguf

    config = model.config
    arch = gguf_architecture(config)
    names = gguf.get_tensor_name_map(_model_arch(arch), config.n_layer)
    transposed = {name for m in weight_map(config) if m.transposed for name in m.theirs}
    out: dict[str, torch.Tensor] = {}
    for theirs, tensor in hf_state_dict(model, vocab_size).items():
        name = names.get_name(theirs, try_suffixes=(".weight", ".bias"))
        if name is None:  # a tensor the table lacks: a gptcore change this module has not caught up with
            raise GptcoreError(f"no GGUF name for {theirs} in the gguf package's {arch} table")
        if theirs in transposed:
            tensor = tensor.t().contiguous()
        if arch == "llama" and theirs.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            tensor = rotate_half_to_pairs(tensor, config.n_head)
        out[name] = tensor
    return out


def _model_arch(arch: str) -> Any:
    import gguf

    return next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)


def _encoded(name: str, tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    """A tensor's data as written, and its GGML type (None: numpy's own, f32 or f16)."""
    import gguf

    data = tensor.detach().float().cpu().numpy()
    keep_f32 = data.ndim == 1 or name.startswith("position_embd")  # small, added as they are
    if dtype == "f32" or keep_f32:
        return data, None
    if dtype == "q8_0" and data.shape[-1] % Q8_0_BLOCK == 0:
        q8_0 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, q8_0), q8_0
    return data.astype(np.float16), None


# --- the file -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufExport:
    """What `export_gguf` wrote."""

    path: Path
    architecture: str
    dtype: str
    tensors: int
    bytes: int
    chat_template: bool


def check_output_file(
    path: Path, force: bool, protect: Sequence[Path | str] = (), flag: str = "--out"
) -> None:
    """Refuse an output path that is a folder or not a regular file, one of `protect` (the files
    the export reads), or an existing file unless `force`: what is there is never lost unasked."""
    resolved = path.expanduser().resolve()
    for held in protect:
        read = Path(held).expanduser().resolve()
        if read == resolved or read in resolved.parents:  # a folder read (an adapter's) holds files
            where = "is" if read == resolved else "is inside"
            raise GptcoreError(f"{flag} {path} {where} {held}, which the export reads: name another file")
    if path.is_dir():
        raise GptcoreError(
            f"{flag} {path} is a folder: a GGUF export is one file (e.g. {path / 'model.gguf'})"
        )
    if path.exists() or path.is_symlink():
        if not stat.S_ISREG(path.stat().st_mode if path.exists() else path.lstat().st_mode):
            raise GptcoreError(f"{flag} {path} exists and is not a regular file: gptcore never replaces it")
        if not force:
            raise GptcoreError(f"{flag} {path} exists: add --force to replace it")


def export_gguf(
    model: GPT,
    tokenizer: Tokenizer,
    path: Path | str,
    *,
    dtype: str = "f32",
    template: Mapping[str, Any] | None = None,
    name: str = "gptcore",
    force: bool = False,
    protect: Sequence[Path | str] = (),
) -> GgufExport:
    """Write `model` and `tokenizer` as the GGUF file `path`, which llama.cpp loads as it is.

    `template`: an instruction-tuned model's prompt template (its meta's), written as the chat
    template. Everything is checked before the file is opened, and the file is written under a
    temporary name and renamed when complete: a refusal or a failure leaves no file, and an
    existing one (replaced only with `force`) whole."""
    import gguf

    path = Path(path)
    if dtype not in DTYPES:
        raise GptcoreError(f"GGUF dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    raw = getattr(model, "_orig_mod", model)
    config = raw.config
    vocab = gguf_vocab(tokenizer)
    jinja = chat_template(template) if template is not None else None
    check_output_file(path, force, protect)
    tensors = gguf_tensors(raw, tokenizer.vocab_size)
    arch = gguf_architecture(config)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]

    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            writer.add_name(name)
            writer.add_file_type(int(file_type))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            writer.add_context_length(config.block_size)
            writer.add_embedding_length(config.n_embd)
            writer.add_block_count(config.n_layer)
            writer.add_feed_forward_length(config.ffn_hidden)
            writer.add_head_count(config.n_head)
            writer.add_head_count_kv(config.n_head)
            writer.add_vocab_size(tokenizer.vocab_size)
            if config.arch == "gpt2":
                writer.add_layer_norm_eps(config.norm_eps)
            else:
                writer.add_layer_norm_rms_eps(config.norm_eps)
                writer.add_key_length(config.head_dim)
                writer.add_value_length(config.head_dim)
                writer.add_rope_dimension_count(config.head_dim)
                writer.add_rope_freq_base(config.rope_theta)
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(vocab.pre)
            writer.add_token_list(vocab.tokens)
            writer.add_token_types(vocab.types)
            writer.add_token_merges(vocab.merges)
            writer.add_bos_token_id(vocab.eot_id)
            writer.add_eos_token_id(vocab.eot_id)
            # a gptcore model reads a prompt as it is: no <|endoftext|> before it, none after
            writer.add_add_bos_token(False)
            writer.add_add_eos_token(False)
            if jinja is not None:
                writer.add_chat_template(jinja)
            for tensor_name, tensor in tensors.items():
                data, raw_dtype = _encoded(tensor_name, tensor, dtype)
                writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        size = tmp.stat().st_size
    return GgufExport(path, arch, dtype, len(tensors), size, jinja is not None)
