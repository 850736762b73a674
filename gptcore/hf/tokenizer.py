"""gptcore vocabularies as Hugging Face `tokenizers` files (tokenizer.json) and back.

Written and read as JSON by hand: exporting needs neither `tokenizers` nor `transformers`.

- `bpe` / `tiktoken`: a byte-level BPE model. tiktoken merges, at each step, the adjacent pair
  whose concatenation has the lowest rank, and takes a whole pre-token that is in the vocabulary
  as is; the exported tokenizer does the same with merges ordered by the rank of what they make
  (the conversion transformers itself applies to tiktoken files) and `ignore_merges`. The
  pre-tokenizer splits with the vocabulary's own regex, then maps bytes to GPT-2's printable
  characters. Ids are the ranks, so they equal gptcore's.
- `char`: a word-level model over single characters, <|unk|> for characters outside it.

In both, `<|endoftext|>` is a special token (eos): text `doc + "<|endoftext|>"` encodes to
gptcore's `encode(doc) + [eot_id]`, which is what the tokenize stage writes for each document.
Unlike gptcore's `encode`, which treats the literal string as text, a transformers tokenizer
turns `<|endoftext|>` in the text into the special id, as GPT-2's own tokenizer does.

The way back (`tokenizer_from_hf`) reads these files, and GPT-2's own tokenizer.json, into a
gptcore tokenizer for `gptcore chat --model <folder>`; other tokenizers are refused by name.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from gptcore.errors import DataError, parse_json
from gptcore.tokenizer import EOT, UNK, BpeTokenizer, CharTokenizer, Tokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
# read whole: real ones (a 256k vocabulary with its merges) are tens of MB
MAX_TOKENIZER_BYTES = 1 << 28

# what transformers' byte-level pre-tokenizer splits with when it carries no regex of its own
# (GPT-2's tokenizer.json): GPT-2's pattern, as in tiktoken's r50k_base
GPT2_BYTELEVEL_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (byte-level BPE's alphabet):
    printable Latin-1 bytes stand for themselves, the others take code points from 256 up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _token_string(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def _merges(ranks: dict[bytes, int]) -> list[list[str]]:
    """BPE merges equivalent to tiktoken's ranks: every split of each token into two known, lower
    ranked parts, ordered by the token's rank (ties by the parts' ranks)."""
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [[_token_string(left), _token_string(right)] for _, _, _, left, right in merges]


def _added(specials: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {
            "id": token_id,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for name, token_id in sorted(specials.items(), key=lambda kv: kv[1])
    ]


def tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer.json of a gptcore vocabulary (bpe, tiktoken or char)."""
    if isinstance(tokenizer, BpeTokenizer):
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": _added(tokenizer.special_tokens),
            "normalizer": None,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": tokenizer.pattern},
                        "behavior": "Isolated",
                        "invert": False,
                    },
                    {
                        "type": "ByteLevel",
                        "add_prefix_space": False,
                        "trim_offsets": True,
                        "use_regex": False,
                    },
                ],
            },
            "post_processor": None,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": True,  # a whole pre-token in the vocabulary is one token, as in tiktoken
                "vocab": {_token_string(token): rank for token, rank in tokenizer.ranks.items()},
                "merges": _merges(tokenizer.ranks),
            },
        }
    if isinstance(tokenizer, CharTokenizer):
        vocab = {ch: i for i, ch in enumerate(tokenizer.chars)}
        vocab.update({UNK: tokenizer.unk_id, EOT: tokenizer.eot_id})
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": _added({UNK: tokenizer.unk_id, EOT: tokenizer.eot_id}),
            "normalizer": None,
            # one pre-token per character (a code point, newlines included)
            "pre_tokenizer": {
                "type": "Split",
                "pattern": {"Regex": r"[\s\S]"},
                "behavior": "Isolated",
                "invert": False,
            },
            "post_processor": None,
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
        }
    raise DataError(f"cannot export a tokenizer of kind {tokenizer.kind!r} (exportable: bpe, tiktoken, char)")


def tokenizer_files(tokenizer: Tokenizer, max_length: int) -> dict[str, dict[str, Any]]:
    """Every tokenizer file of an exported folder, by name: what AutoTokenizer reads."""
    specials = {"bos_token": EOT, "eos_token": EOT}
    if isinstance(tokenizer, CharTokenizer):
        specials["unk_token"] = UNK
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        # GPT-2's model would add token-type embeddings for token_type_ids: never hand them out
        "model_input_names": ["input_ids", "attention_mask"],
    }
    return {
        TOKENIZER_FILE: tokenizer_json(tokenizer),
        TOKENIZER_CONFIG_FILE: config,
        SPECIAL_TOKENS_FILE: specials,
    }


# --- the way back --------------------------------------------------------------------------------


def tokenizer_from_hf(folder: Path) -> Tokenizer:
    """A gptcore tokenizer equivalent to `folder`'s tokenizer.json: byte-level BPE whose ids follow
    its merges (ours, GPT-2's), or our character-level export."""
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: the folder has no tokenizer (fetch tokenizer.json beside config.json)"
        )
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise DataError(
            f"{path}: the file is {size:,} bytes, over the limit {MAX_TOKENIZER_BYTES:,} for its kind"
        )
    try:
        spec = parse_json(path.read_bytes(), str(path))
        model = spec["model"]
        kind = model["type"]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a tokenizers file: {exc}") from None
    specials = {t["content"]: int(t["id"]) for t in spec.get("added_tokens") or [] if t.get("special")}
    if EOT not in specials:
        raise DataError(f"{path}: no {EOT} special token; gptcore needs it to end documents")
    if kind == "BPE":
        return _bpe_from_hf(path, spec, model, specials)
    if kind == "WordLevel":
        return _char_from_hf(path, model, specials)
    raise DataError(
        f"{path}: a {kind} tokenizer is not supported (supported: byte-level BPE, gptcore's char export)"
    )


def _pattern(path: Path, pre: Any) -> str:
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    split = [s for s in steps if isinstance(s, dict) and s.get("type") == "Split"]
    byte_level = [s for s in steps if isinstance(s, dict) and s.get("type") == "ByteLevel"]
    if len(byte_level) != 1 or byte_level[0].get("add_prefix_space"):
        raise DataError(f"{path}: only byte-level BPE without an added prefix space is supported")
    if split and isinstance(split[0].get("pattern"), dict) and "Regex" in split[0]["pattern"]:
        return split[0]["pattern"]["Regex"]
    if byte_level[0].get("use_regex", True):
        return GPT2_BYTELEVEL_PATTERN
    raise DataError(f"{path}: the pre-tokenizer has no regex gptcore can use")


def _bpe_from_hf(
    path: Path, spec: dict[str, Any], model: dict[str, Any], specials: dict[str, int]
) -> Tokenizer:
    decode = {ch: b for b, ch in byte_to_unicode().items()}
    try:
        ranks = {bytes(decode[ch] for ch in token): int(i) for token, i in model["vocab"].items()}
    except KeyError:
        raise DataError(
            f"{path}: the vocabulary is not byte-level (a token has a character outside it)"
        ) from None
    merged = [("".join(m) if isinstance(m, list) else m.replace(" ", "", 1)) for m in model.get("merges", [])]
    ids = [model["vocab"].get(token) for token in merged]
    # tiktoken merges by id: that is the tokenizer's own order only if ids grow with the merges
    if any(i is None for i in ids) or any(a > b for a, b in zip(ids, ids[1:], strict=False)):
        raise DataError(f"{path}: its token ids do not follow its merge order, which gptcore's BPE needs")
    ranks = {token: i for token, i in ranks.items() if i not in specials.values()}
    try:
        return BpeTokenizer(ranks, _pattern(path, spec.get("pre_tokenizer")), specials)
    except DataError as exc:  # special ids among the merges' ids, a regex tiktoken cannot compile
        raise DataError(f"{path}: {exc}") from None


def _char_from_hf(path: Path, model: dict[str, Any], specials: dict[str, int]) -> Tokenizer:
    vocab = model.get("vocab") or {}
    chars = sorted((i, ch) for ch, i in vocab.items() if ch not in (UNK, EOT))
    if (
        UNK not in vocab
        or [i for i, _ in chars] != list(range(len(chars)))
        or any(len(ch) != 1 for _, ch in chars)
    ):
        raise DataError(f"{path}: a word-level tokenizer other than gptcore's char export is not supported")
    tokenizer = CharTokenizer([ch for _, ch in chars])
    if (tokenizer.unk_id, tokenizer.eot_id) != (vocab[UNK], vocab[EOT]):
        raise DataError(
            f"{path}: {UNK} and {EOT} must follow the characters, as gptcore's char export has them"
        )
    return tokenizer
