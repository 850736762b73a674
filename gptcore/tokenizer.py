"""Tokenizers: the `Tokenizer` interface, the character-level tokenizer, and their on-disk format.

A vocabulary is saved as a folder (`data/vocab/`) holding `tokenizer.json`:

    {
      "format_version": 1,
      "kind": "char",                      # which class reads the rest
      "vocab_size": 67,
      "eot_id": 66,
      "special_tokens": {"<|unk|>": 65, "<|endoftext|>": 66},
      "chars": ["\\n", " ", "!", ...],     # kind-specific fields
      "identity": {"kind": "char", "vocab_size": 67, "sha256": "..."}
    }

Every kind writes `format_version`, `kind`, `vocab_size`, `eot_id`, `special_tokens` and `identity`;
the other fields belong to the kind. Kinds whose tables are large keep them in a file beside
tokenizer.json (a `bpe` vocabulary: tiktoken's rank file, named by a field such as `"ranks_file"`)
and override `save` / `_load_folder`; a `tiktoken` kind names its pretrained encoding. `to_dict()`
is always self-contained (it inlines such tables), so it can be embedded in a model checkpoint and
rebuilt with `tokenizer_from_dict` without the vocab folder.

`identity` = {kind, vocab_size, sha256 of the canonical JSON of `to_dict()`}: token files and
models record it, and readers compare it to refuse tokens made with another vocabulary.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gptcore import bpe
from gptcore.atomic import write_text
from gptcore.errors import DataError, GptcoreError
from gptcore.params import VocabParams

FORMAT_VERSION = 1
METADATA_FILE = "tokenizer.json"
EOT = "<|endoftext|>"
UNK = "<|unk|>"
# What decode shows for <|unk|>: the replacement character, as a UTF-8 decoder shows bytes it
# cannot map; one character for one unknown character keeps decoded text aligned with the input.
UNK_DECODED = "\ufffd"


def canonical_json(obj: Any) -> bytes:
    """The one serialisation that identity hashes are taken over: sorted keys, no spaces, ASCII."""
    # ensure_ascii makes the bytes independent of how any non-ASCII character would be encoded
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class Tokenizer(ABC):
    """Maps text to token ids and back. Subclasses set `kind` and implement the abstract methods."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids, specials included: ids are 0 .. vocab_size - 1."""

    @property
    @abstractmethod
    def eot_id(self) -> int:
        """Id of <|endoftext|>, the separator appended after each document."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. Special-token strings in the text are ordinary text."""

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text as a uint32 array; kinds override it where batching is faster."""
        return [np.array(self.encode(text), dtype=np.uint32) for text in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; special ids decode to their names (`<|endoftext|>`)."""

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of `text` that encode to <|unk|>, in order of appearance; none
        for byte-level kinds, which encode any text."""
        return []

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable, self-contained description: `tokenizer_from_dict` rebuilds it."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Rebuild from `to_dict()` output; raise DataError when a field is missing or invalid."""

    @cached_property
    def identity(self) -> dict[str, Any]:
        """{kind, vocab_size, sha256}: what token files and models record about their vocabulary."""
        digest = hashlib.sha256(canonical_json(self.to_dict())).hexdigest()
        return {"kind": self.kind, "vocab_size": self.vocab_size, "sha256": digest}

    def save(self, folder: Path | str) -> None:
        """Write the vocabulary into `folder` (the caller makes it atomic, e.g. with atomic_dir)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, **self.to_dict(), "identity": self.identity}
        write_text(folder / METADATA_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def _load_folder(cls, folder: Path, meta: dict[str, Any]) -> Tokenizer:
        """Rebuild from a saved folder; kinds with side files (bpe ranks) override this."""
        return cls.from_dict(meta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, sha256={self.identity['sha256'][:12]})"


class CharTokenizer(Tokenizer):
    """One id per character of the training text (sorted by code point), then <|unk|>, <|endoftext|>.

    Characters outside the vocabulary encode to <|unk|>, which decodes to U+FFFD; so
    `decode(encode(s)) == s` exactly when every character of `s` is in the vocabulary.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise DataError(f"char vocabulary: {ch!r} is not a single character")
        if len(set(chars)) != len(chars):
            raise DataError("char vocabulary: characters repeat")
        self.chars = chars
        self.unk_id = len(chars)
        self._eot_id = len(chars) + 1
        self._strings = [*chars, UNK_DECODED, EOT]
        # code point -> id lookup table; the last entry catches every code point above the
        # vocabulary's highest (np.minimum clamps to it), so the table is only as big as needed
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        size = int(codes.max()) + 2 if len(codes) else 1
        self._table = np.full(size, self.unk_id, dtype=np.uint32)
        self._table[codes] = np.arange(len(chars), dtype=np.uint32)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """The sorted distinct characters of `texts` (streamed, one text in memory at a time)."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise DataError("cannot build a char vocabulary: the training text is empty")
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 2

    @property
    def eot_id(self) -> int:
        return self._eot_id

    def _encode_array(self, text: str) -> np.ndarray:
        # UTF-32 gives one uint32 code point per character, so the whole text is one table
        # lookup in numpy; surrogatepass keeps lone surrogates (legal in a str) as code points
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        return self._table[np.minimum(codes, len(self._table) - 1)]

    def encode(self, text: str) -> list[int]:
        return self._encode_array(text).tolist()

    def unknown_characters(self, text: str) -> list[str]:
        known = self._known
        return [ch for ch in dict.fromkeys(text) if ch not in known]

    @cached_property
    def _known(self) -> frozenset[str]:
        return frozenset(self.chars)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        # one lookup over the joined texts beats thousands of small numpy calls on short documents
        if not texts:
            return []
        ids = self._encode_array("".join(texts))
        return np.split(ids, np.cumsum([len(text) for text in texts[:-1]], dtype=np.int64))

    def decode(self, ids: Iterable[int]) -> str:
        # tolist() turns a numpy array or torch tensor into Python ints in one call
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        strings = self._strings
        # checked up front: a negative id would silently index from the end of the list
        if ids and not (min(ids) >= 0 and max(ids) < len(strings)):
            bad = next(i for i in ids if not 0 <= i < len(strings))
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{len(strings) - 1})")
        return "".join([strings[i] for i in ids])

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "special_tokens": {UNK: self.unk_id, EOT: self.eot_id},
            "chars": list(self.chars),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        chars = d.get("chars")
        if not isinstance(chars, list):
            raise DataError("char tokenizer: 'chars' must be a list of single characters")
        tokenizer = cls(chars)
        # the recorded sizes must agree with the characters, else the file was edited by hand
        expected = tokenizer.to_dict()
        for key in ("vocab_size", "eot_id", "special_tokens"):
            if d.get(key) != expected[key]:
                raise DataError(
                    f"char tokenizer: {key} = {d.get(key)!r}, but the characters give {expected[key]!r}"
                )
        return tokenizer


class BpeTokenizer(Tokenizer):
    """Byte-level BPE learned from the train split (gptcore.bpe), encoded by tiktoken.

    Ids 0..255 are the single bytes, then the learned tokens in merge order, then <|endoftext|>.
    Every string encodes (any text is bytes), and `decode(encode(s)) == s` for any string without
    lone surrogates. The ranks live in tiktoken's format beside tokenizer.json (`bpe.tiktoken`);
    `to_dict()` inlines them (base64, by rank) so a model file carries its whole vocabulary.
    """

    kind = "bpe"

    def __init__(
        self,
        ranks: dict[bytes, int],
        pattern: str = bpe.GPT2_PATTERN,
        special_tokens: dict[str, int] | None = None,
    ) -> None:
        self.ranks = ranks
        self.pattern = pattern
        self.special_tokens = dict(special_tokens) if special_tokens is not None else {EOT: len(ranks)}
        if EOT not in self.special_tokens:
            raise DataError(f"{self.kind} tokenizer: no {EOT} among the special tokens {self.special_tokens}")
        self._eot_id = self.special_tokens[EOT]
        self._vocab_size = max(len(ranks), max(self.special_tokens.values()) + 1)
        try:
            self.encoding = bpe.make_encoding(
                f"gptcore-{self.kind}-{len(ranks)}", ranks, self.special_tokens, pattern
            )
        except ValueError as exc:  # colliding special ids, a regex tiktoken cannot compile
            raise DataError(f"{self.kind} tokenizer: {exc}") from None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
        """Learn merges from `texts` (streamed) up to `vocab_size` ids, <|endoftext|> included."""
        counts = bpe.count_pretokens(texts)
        if not counts:
            raise DataError("cannot learn a bpe vocabulary: the training text is empty")
        return cls(bpe.train_bpe(counts, vocab_size, n_special=1))

    @property
    def ranks_file(self) -> str:
        return "bpe.tiktoken"

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eot_id(self) -> int:
        return self._eot_id

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.array(self.encoding.encode_ordinary(text), dtype=np.uint32) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        if ids and not (min(ids) >= 0 and max(ids) < self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        if self._vocab_size > len(self.ranks) + len(self.special_tokens):  # ids no token owns (cl100k)
            owned = set(self.special_tokens.values())
            ids = [i for i in ids if i < len(self.ranks) or i in owned]
        # a cut inside a multi-byte character (a sampled prefix) shows as U+FFFD, never an error
        return self.encoding.decode(ids, errors="replace")

    def to_dict(self) -> dict[str, Any]:
        tokens = sorted(self.ranks, key=self.ranks.__getitem__)
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "special_tokens": dict(sorted(self.special_tokens.items(), key=lambda kv: kv[1])),
            "pattern": self.pattern,
            "ranks": [base64.b64encode(token).decode("ascii") for token in tokens],
        }

    @classmethod
    def _fields(cls, d: dict[str, Any]) -> tuple[str, dict[str, int]]:
        pattern, specials = d.get("pattern"), d.get("special_tokens")
        if not isinstance(pattern, str):
            raise DataError(f"{cls.kind} tokenizer: 'pattern' must be a regex string")
        if not isinstance(specials, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in specials.items()
        ):
            raise DataError(f"{cls.kind} tokenizer: 'special_tokens' must map names to ids")
        return pattern, specials

    @classmethod
    def _build(cls, d: dict[str, Any], ranks: dict[bytes, int]) -> BpeTokenizer:
        pattern, specials = cls._fields(d)
        return cls(ranks, pattern, specials)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BpeTokenizer:
        encoded = d.get("ranks")
        if not isinstance(encoded, list):
            raise DataError(f"{cls.kind} tokenizer: 'ranks' must be a list of base64 tokens")
        try:
            ranks = {base64.b64decode(token, validate=True): rank for rank, token in enumerate(encoded)}
        except (binascii.Error, TypeError, ValueError):
            raise DataError(f"{cls.kind} tokenizer: 'ranks' holds a token that is not base64") from None
        if len(ranks) != len(encoded):
            raise DataError(f"{cls.kind} tokenizer: 'ranks' repeats a token")
        return cls._checked(cls._build(d, ranks), d)

    @classmethod
    def _checked(cls, tokenizer: BpeTokenizer, d: dict[str, Any]) -> BpeTokenizer:
        expected = tokenizer.to_dict()
        for key in ("vocab_size", "eot_id"):
            if d.get(key) != expected[key]:
                raise DataError(
                    f"{cls.kind} tokenizer: {key} = {d.get(key)!r}, but the ranks give {expected[key]!r}"
                )
        return tokenizer

    def save(self, folder: Path | str) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        bpe.write_ranks(folder / self.ranks_file, self.ranks)
        meta = {k: v for k, v in self.to_dict().items() if k != "ranks"}
        meta = {
            "format_version": FORMAT_VERSION,
            **meta,
            "ranks_file": self.ranks_file,
            "identity": self.identity,
        }
        write_text(folder / METADATA_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def _load_folder(cls, folder: Path, meta: dict[str, Any]) -> BpeTokenizer:
        name = meta.get("ranks_file")
        if not isinstance(name, str) or "/" in name or "\\" in name:
            raise DataError(f"{cls.kind} tokenizer: 'ranks_file' must name a file in the vocab folder")
        return cls._checked(cls._build(meta, bpe.read_ranks(folder / name)), meta)


class TiktokenTokenizer(BpeTokenizer):
    """A pretrained tiktoken encoding (`r50k_base` is GPT-2's vocabulary; `cl100k_base`,
    `o200k_base`), read from a rank file on disk: `vocab.file`, or tiktoken's own cache. Nothing is
    downloaded; a missing file is an error that says which file to get and where to put it."""

    kind = "tiktoken"

    def __init__(
        self, name: str, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int]
    ) -> None:
        self.name = name
        super().__init__(ranks, pattern, special_tokens)

    @classmethod
    def pretrained(cls, name: str, file: str | None) -> TiktokenTokenizer:
        spec = bpe.pretrained_spec(name)
        ranks = bpe.read_pretrained_ranks(spec, file)
        return cls(name, ranks, spec["pat_str"], spec["special_tokens"])

    @property
    def ranks_file(self) -> str:
        return f"{self.name}.tiktoken"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "encoding": self.name}

    @classmethod
    def _build(cls, d: dict[str, Any], ranks: dict[bytes, int]) -> TiktokenTokenizer:
        pattern, specials = cls._fields(d)
        name = d.get("encoding")
        if not isinstance(name, str) or not name:
            raise DataError("tiktoken tokenizer: 'encoding' must name the encoding (e.g. r50k_base)")
        return cls(name, ranks, pattern, specials)


KINDS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "bpe": BpeTokenizer,
    "tiktoken": TiktokenTokenizer,
}


def _kind_class(d: Any) -> type[Tokenizer]:
    if not isinstance(d, dict):
        raise DataError(f"a tokenizer description must be a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer kind {kind!r} (known: {', '.join(KINDS)})")
    version = d.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise DataError(
            f"tokenizer format_version {version!r} is not supported (this gptcore reads {FORMAT_VERSION})"
        )
    return KINDS[kind]


def _check_identity(tokenizer: Tokenizer, d: dict[str, Any], where: str) -> None:
    recorded = d.get("identity")
    if recorded is not None and recorded != tokenizer.identity:
        raise DataError(
            f"{where}: recorded identity {recorded} does not match its contents {tokenizer.identity}: "
            "the vocabulary was edited or is corrupt; re-run build_vocab"
        )


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_dict()` output (an `identity` field, if any, is checked)."""
    tokenizer = _kind_class(d).from_dict(d)
    _check_identity(tokenizer, d, "tokenizer description")
    return tokenizer


def load_tokenizer(folder: Path | str) -> Tokenizer:
    """Read a vocabulary folder written by `Tokenizer.save` (e.g. data/vocab/)."""
    path = Path(folder) / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the build_vocab stage first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); re-run build_vocab") from None
    try:
        tokenizer = _kind_class(meta)._load_folder(Path(folder), meta)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    _check_identity(tokenizer, meta, str(path))
    return tokenizer


def train_tokenizer(params: VocabParams, texts: Iterable[str]) -> Tokenizer:
    """Build the vocabulary that `params.kind` names from the training texts (streamed)."""
    if params.kind == "char":
        return CharTokenizer.train(texts)
    if params.kind == "bpe":
        return BpeTokenizer.train(texts, params.vocab_size)
    if params.kind == "tiktoken":
        return TiktokenTokenizer.pretrained(params.encoding, params.file)
    raise GptcoreError(f"vocab.kind = {params.kind!r} is not implemented (known: {', '.join(KINDS)})")
