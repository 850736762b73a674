"""The disk the data stages will need for the configured corpus, reckoned before any of them runs
(`gptcore info` prints it): the plan of each output, DVC's cache, and the free space.

- data/raw (download): the source's files. A local source is linked into it where the filesystem
  allows (gptcore.data.sources.Linker, tried here on a probe): no bytes more; otherwise a copy. A
  URL or pip source counts once it is downloaded (data/raw/manifest.json lists it); before that
  its size is unknown, and so is everything after it.
- data/split (extract_split): the documents' UTF-8 text, as zstd-compressed JSON Lines:
  SPLIT_PER_TEXT_BYTE of a text byte. The text is reckoned from what the files say of themselves,
  never by reading them: a Parquet file's footer (the uncompressed size of its text column), a
  zip's or wheel's directory (its selected members' sizes), a plain file's or tar's size; a
  compressed file (.gz, .xz, .zst, a compressed tar) counts at its own size, less than it holds,
  and the plan then says "at least". Otherwise the text is an upper bound: data.where, duplicates, binary files
  and data.max_docs only take documents away; data.max_bytes and a mixture's shares are applied
  (gptcore.data.mixture.plan).
- data/tokens (tokenize): tokens x 2 bytes (a vocabulary of at most 65,536 ids) or 4; tokens are
  the text over BYTES_PER_TOKEN of the vocabulary's kind, an assumption the plan names.
- DVC's cache, by `cache.type` in .dvc/config (and .dvc/config.local), as DVC 3 applies it here
  (tried on probes between data/ and the cache folder). DVC stores an output by a reflink
  whatever the type, where the filesystem makes them; else by a hard link if `hardlink` comes
  first; else it copies the output into the cache, then links the workspace to it by the first
  type that works, unless the list allows a copy (`copy`, or `reflink` where none can be made),
  when the workspace copy stays. So: reflinks, or `hardlink` first: the cache costs nothing more;
  `symlink` the first that works: the cache holds the only copy, the outputs are links to it;
  otherwise every output is stored twice, data/raw included (DVC's default, `reflink,copy`, on
  ext4).
- the free space on the filesystem of data/, against the sum.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gptcore.atomic import free_bytes
from gptcore.data import mixture
from gptcore.data.documents import glob_to_regex
from gptcore.data.raw import MANIFEST_NAME
from gptcore.data.sources import PIP_PREFIX, Linker, is_url
from gptcore.errors import DataError
from gptcore.params import DataParams, VocabParams

# Bytes of the split files a byte of text: measured on English text (docs/data.md, "The disk the
# data stages need"); JSON's quoting of the text and zstd (level 3) both count.
SPLIT_PER_TEXT_BYTE = 0.38
# Bytes of text a token, by vocabulary kind: what the plan divides the text by when no token is
# counted yet (docs/data.md says where each comes from). Fewer bytes a token, more tokens: each
# is at the low end of its kind, so the plan errs towards more disk.
BYTES_PER_TOKEN = {"char": 1.0, "bpe": 2.3, "tiktoken": 4.0}
UINT16_IDS = 1 << 16  # a vocabulary up to this many ids is stored in 2 bytes a token (tokenize)
# Files whose text the plan cannot see without decompressing them: counted at their own size.
COMPRESSED_SUFFIXES = (".gz", ".tgz", ".xz", ".txz", ".zst", ".tzst", ".bz2", ".lz4", ".7z")
ZIP_SUFFIXES = (".zip", ".whl")
JSON_LINES = re.compile(r"\.jsonl?\.[a-z0-9]+$")  # compressed JSON Lines (.jsonl.zst, Dolma's .json.gz)
PARQUET_MAGIC = b"PAR1"
PARQUET_LENGTH_PREFIX = 4  # bytes Parquet's plain encoding puts before each string value


@dataclass
class TextEstimate:
    """The UTF-8 text a source's files hold, as far as they say (rules: module docstring)."""

    files: int = 0  # the files download puts in data/raw
    raw_bytes: int = 0  # their size
    text_bytes: int = 0
    lower_bound: bool = False  # some file counted at its compressed size
    unknown: str | None = None  # why nothing is known (a URL not downloaded yet)
    # the local sources' files: (one of them, to try a link with; their bytes), a source each
    local: list[tuple[Path, int]] = field(default_factory=list)


@dataclass(frozen=True)
class CacheMode:
    """How DVC stores outputs here: `link` (the cache shares the outputs' blocks), `symlink` (the
    cache holds them, the outputs are links to it), `copy` (both hold them), or `none` (no DVC
    repository: the stages run by hand)."""

    kind: str
    types: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class DiskPlan:
    source: str  # what the corpus is, for the heading
    corpus: TextEstimate
    link: str | None  # how download brings the local files in: reflink or hardlink (None: copies)
    linked_bytes: int  # the local files download links (the rest of data/raw is new bytes)
    split_bytes: int | None
    tokens: int | None
    item_bytes: int  # a token in the token files
    bytes_per_token: float
    vocab_note: str
    cache: CacheMode
    free: int | None
    where: Path  # the folder whose filesystem holds data/

    @property
    def text_bytes(self) -> int | None:
        return None if self.corpus.unknown else self.corpus.text_bytes

    @property
    def token_bytes(self) -> int | None:
        return None if self.tokens is None else self.tokens * self.item_bytes

    @property
    def raw_bytes(self) -> int | None:
        return None if self.corpus.unknown else self.corpus.raw_bytes

    def workspace(self) -> dict[str, int | None]:
        """Bytes each data folder adds to the workspace (symlinks: none)."""
        if self.cache.kind == "symlink":
            return {"data/raw": 0, "data/split": 0, "data/tokens": 0}
        raw = self.raw_bytes
        if raw is not None and self.cache.kind in ("link", "none"):
            raw -= self.linked_bytes  # (DVC's copy mode copies linked files back out of its cache)
        return {"data/raw": raw, "data/split": self.split_bytes, "data/tokens": self.token_bytes}

    def cache_bytes(self) -> int | None:
        """Bytes DVC's cache adds beyond the workspace."""
        if self.cache.kind in ("link", "none"):
            return 0
        return _sum([self.raw_bytes, self.split_bytes, self.token_bytes])

    def total(self) -> int | None:
        return _sum([*self.workspace().values(), self.cache_bytes()])

    def fits(self) -> bool | None:
        total = self.total()
        return None if total is None or self.free is None else total <= self.free

    def rows(self) -> list[tuple[str, str]]:
        """The plan as (label, value) lines, for `gptcore info`."""
        corpus = self.corpus
        if corpus.unknown:
            heading = f"{self.source}: {corpus.unknown}"
        else:
            heading = f"{self.source}: {corpus.files:,} file(s), {_amount(corpus.raw_bytes)}"
        rows = [("disk plan (data stages)", heading)]
        space = self.workspace()
        rows.append(("  data/raw (download)", self._raw_row(space["data/raw"])))
        text = self.text_bytes
        if text is None or self.split_bytes is None:
            rows.append(("  data/split (extract_split)", "unknown: the text's size is unknown"))
        else:
            bound = "at least" if corpus.lower_bound else "at most"
            rows.append(
                (
                    "  data/split (extract_split)",
                    f"{_about(space['data/split'])}: {bound} {_amount(text)} of text, "
                    f"{SPLIT_PER_TEXT_BYTE:.2f} of a text byte as zstd JSON Lines"
                    + ("; symlinks into the cache" if self.cache.kind == "symlink" else ""),
                )
            )
        if self.tokens is None or self.token_bytes is None:
            rows.append(("  data/tokens (tokenize)", "unknown: the text's size is unknown"))
        else:
            rows.append(
                (
                    "  data/tokens (tokenize)",
                    f"{_about(space['data/tokens'])}: {_count(self.tokens)} tokens x "
                    f"{self.item_bytes} bytes, at {self.bytes_per_token:g} bytes "
                    f"of text a token ({self.vocab_note})"
                    + ("; symlinks into the cache" if self.cache.kind == "symlink" else ""),
                )
            )
        rows.append(("  DVC cache", self._cache_row()))
        rows.append(("  total", self.verdict()))
        return rows

    def verdict(self) -> str:
        total = self.total()
        if total is None:
            return "unknown until the corpus's size is known"
        if self.free is None:
            return f"{_about(total)} more; free space unknown ({self.where})"
        word = "fits" if total <= self.free else "does NOT fit"
        return f"{_about(total)} more: {word} in {_amount(self.free)} free (the filesystem of {self.where})"

    def _raw_row(self, added: int | None) -> str:
        if self.corpus.unknown or added is None:
            return f"unknown: {self.corpus.unknown}"
        if self.cache.kind == "symlink":
            return "0 bytes more: symlinks into DVC's cache, which holds the copy"
        local = sum(size for _, size in self.corpus.local)
        how = []
        if self.linked_bytes and self.cache.kind == "copy":
            how.append("DVC's cache.type copies the linked files back out of its cache")
        elif self.link == "hardlink":
            shared = (
                ", which DVC's cache then shares and makes read-only" if self.cache.kind == "link" else ""
            )
            how.append(f"hard links to the source's files{shared}")
        elif self.link == "reflink":
            how.append("clones (reflinks) of the source's files")
        if local > self.linked_bytes:
            how.append(
                "copies: the source cannot be linked into data/ (another filesystem, or links refused)"
            )
        if self.raw_bytes is not None and self.raw_bytes > local:
            how.append("the downloaded files")
        return f"{_amount(added) if added else '0 bytes'} more: {'; '.join(how)}"

    def _cache_row(self) -> str:
        cache = self.cache
        added = self.cache_bytes()
        if cache.kind == "none":
            return f"none: {cache.why}"
        if cache.kind == "link":
            return f"0 bytes more: cache.type {','.join(cache.types)}; {cache.why}"
        what = "the only copy of every output" if cache.kind == "symlink" else "a second copy of every output"
        amount = "unknown" if added is None else _about(added)
        return f"{amount} more: {what} (cache.type {','.join(cache.types)}; {cache.why})"


def plan_disk(data: DataParams, vocab: VocabParams, root: Path | str = ".") -> DiskPlan:
    """The disk plan of the data stages in the repository at `root` (rules: module docstring)."""
    root = Path(root)
    raw_dir = root / "data" / "raw"
    manifest = _read_manifest(raw_dir)
    if data.sources is None:
        assert data.source is not None  # checked: one of data.source and data.sources is given
        label = f"data.source {_name(data.source)}"
        corpus = _estimate(data.source, data.include, data.text_field, raw_dir, "", manifest)
        if not corpus.unknown and data.max_bytes is not None and corpus.text_bytes > data.max_bytes:
            corpus.text_bytes, corpus.lower_bound = data.max_bytes, False
    else:
        label = f"data.sources ({', '.join(entry.name for entry in data.sources)})"
        parts = [
            _estimate(entry.source, entry.include, entry.text_field, raw_dir, entry.name, manifest)
            for entry in data.sources
        ]
        corpus = _mixed(parts, data)
    anchor = _existing(root / "data")
    link, linked_bytes = None, 0
    for sample, size in corpus.local:
        method = None
        with contextlib.suppress(OSError):  # a folder we may not write: reckoned as a copy
            method = _probe(sample, anchor)
        if method is not None:
            link, linked_bytes = link or method, linked_bytes + size
    text = None if corpus.unknown else corpus.text_bytes
    bytes_per_token = BYTES_PER_TOKEN[vocab.kind]
    ids, vocab_note = _vocab_ids(vocab)
    tokens = None if text is None else math.ceil(text / bytes_per_token)
    return DiskPlan(
        source=label,
        corpus=corpus,
        link=link,
        linked_bytes=linked_bytes,
        split_bytes=None if text is None else math.ceil(text * SPLIT_PER_TEXT_BYTE),
        tokens=tokens,
        item_bytes=2 if ids is not None and ids <= UINT16_IDS else 4,
        bytes_per_token=bytes_per_token,
        vocab_note=vocab_note,
        cache=cache_mode(root),
        free=free_bytes(anchor),
        where=anchor,
    )


# -- the corpus


def _estimate(
    source: str | list[str],
    include: list[str],
    text_field: str,
    raw_dir: Path,
    folder: str,
    manifest: list[dict],
) -> TextEstimate:
    """What one data.source (or a mixture's entry, in data/raw/<folder>) holds."""
    estimate = TextEstimate()
    pattern = re.compile("|".join(f"(?:{glob_to_regex(g)})" for g in include))
    for src in [source] if isinstance(source, str) else source:
        if src.startswith(PIP_PREFIX) or is_url(src):
            prefix = f"{folder}/" if folder else ""
            entries = [
                e for e in manifest if e.get("source") == src and str(e.get("path", "")).startswith(prefix)
            ]
            if not entries:
                estimate.unknown = (
                    f"{src} is not downloaded yet: its size is known once `dvc repro download` has run"
                )
                return estimate
            files = [(str(e["path"])[len(prefix) :], raw_dir / str(e["path"])) for e in entries]
            if not all(file.is_file() for _, file in files):
                estimate.unknown = f"{raw_dir} lacks files its manifest lists: run `dvc repro download`"
                return estimate
        else:
            path = Path(src).expanduser()
            if not path.exists():
                estimate.unknown = f"{src}: no such file or folder"
                return estimate
            files = list(_local_files(path))
        sizes = [file.stat().st_size for _, file in files]
        if files and not (src.startswith(PIP_PREFIX) or is_url(src)):
            estimate.local.append((files[0][1], sum(sizes)))
        for (rel, file), size in zip(files, sizes, strict=True):
            estimate.files += 1
            estimate.raw_bytes += size
            text, exact = _text_bytes(file, rel, pattern, text_field, size)
            estimate.text_bytes += text
            estimate.lower_bound |= not exact
    return estimate


def _mixed(parts: Sequence[TextEstimate], data: DataParams) -> TextEstimate:
    """A mixture's corpus: every source's files, and the text its shares take (mixture.plan)."""
    assert data.sources is not None
    whole = TextEstimate()
    for part in parts:
        if part.unknown:
            whole.unknown = part.unknown
            return whole
        whole.files += part.files
        whole.raw_bytes += part.raw_bytes
        whole.lower_bound |= part.lower_bound
        whole.local += part.local
    targets = mixture.plan(
        [part.text_bytes for part in parts],
        [entry.weight for entry in data.sources],
        [entry.max_bytes for entry in data.sources],
        data.max_bytes,
    )
    whole.text_bytes = sum(targets)
    return whole


def _local_files(path: Path) -> Iterator[tuple[str, Path]]:
    """(path in data/raw, file) of a local source, as download takes them."""
    if path.is_file():
        yield path.name, path
        return
    for folder, dirs, files in os.walk(path):  # as download walks it: links to folders not followed
        dirs.sort()
        for name in sorted(files):
            file = Path(folder, name)
            if file.is_file():
                yield file.relative_to(path).as_posix(), file


def _text_bytes(
    file: Path, rel: str, pattern: re.Pattern[str], text_field: str, size: int
) -> tuple[int, bool]:
    """(text bytes the file gives extract_split, whether that figure is not an underestimate)."""
    name = rel.lower()
    if name.endswith(ZIP_SUFFIXES):  # archives are always opened: their members are matched
        return _zip_text(file, rel, pattern), True
    if name.endswith(".parquet") or (pattern.fullmatch(rel) and _is_parquet(file)):
        return (_parquet_text(file, text_field, size) if pattern.fullmatch(rel) else 0), True
    if name.endswith(".tar"):  # always opened; its members, uncompressed, fill it
        return size, True
    if name.endswith(COMPRESSED_SUFFIXES):
        if JSON_LINES.search(name) and not pattern.fullmatch(rel):
            return 0, True  # JSON Lines are selected by their file name, as a whole
        # a compressed document, or an archive of them (always opened): more text than bytes, unseen
        return size, False
    return (size if pattern.fullmatch(rel) else 0), True


def _zip_text(file: Path, rel: str, pattern: re.Pattern[str]) -> int:
    try:
        with zipfile.ZipFile(file) as archive:
            return sum(
                info.file_size
                for info in archive.infolist()
                if not info.is_dir()
                and (pattern.fullmatch(info.filename) or pattern.fullmatch(f"{rel}/{info.filename}"))
            )
    except (OSError, zipfile.BadZipFile):  # extract_split will say what is wrong with it
        return 0


def _is_parquet(file: Path) -> bool:
    try:
        with open(file, "rb") as fh:
            return fh.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
    except OSError:
        return False


def _parquet_text(file: Path, text_field: str, size: int) -> int:
    """The text column's uncompressed bytes, from the footer (less the length before each value)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(file).metadata
    except Exception:  # pyarrow's errors are of several kinds; extract_split names the problem
        return size
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema == text_field:
                total += max(column.total_uncompressed_size - PARQUET_LENGTH_PREFIX * column.num_values, 0)
    return total


def _read_manifest(raw_dir: Path) -> list[dict]:
    try:
        files = json.loads((raw_dir / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [entry for entry in files if isinstance(entry, dict)] if isinstance(files, list) else []


def _name(source: str | list[str]) -> str:
    return source if isinstance(source, str) else f"{source[0]} (+{len(source) - 1} more)"


# -- the vocabulary


def _vocab_ids(vocab: VocabParams) -> tuple[int | None, str]:
    """(the vocabulary's ids, if known before build_vocab, and how the plan sizes its tokens)."""
    kind = vocab.kind
    if kind == "bpe":
        return (
            vocab.vocab_size,
            "bpe: assumed, at the low end; more ids make longer tokens",
        )
    if kind == "tiktoken":
        from gptcore.bpe import pretrained_spec

        try:
            spec = pretrained_spec(vocab.encoding)
        except DataError:
            return None, f"tiktoken {vocab.encoding}: unknown encoding; assumed"
        ids = spec.get("explicit_n_vocab") or max(spec["special_tokens"].values(), default=0) + 1
        return ids, f"tiktoken {vocab.encoding}, {ids:,} ids: assumed, OpenAI's rule of thumb for English"
    # a char vocabulary is the train split's characters: a few hundred in a Western corpus
    return UINT16_IDS, "char: a character a token, a byte in English"


# -- DVC's cache and the filesystem


def cache_mode(root: Path | str = ".") -> CacheMode:
    """How DVC will store the outputs of the repository at `root` (rules: module docstring)."""
    root = Path(root)
    dvc = root / ".dvc"
    if not dvc.is_dir():
        return CacheMode("none", (), f"no DVC repository at {root}")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read([dvc / "config", dvc / "config.local"], encoding="utf-8")
    except configparser.Error as exc:
        return CacheMode(
            "copy", (), f"{dvc / 'config'} could not be read ({exc.__class__.__name__}): assumed"
        )
    raw = parser.get("cache", "type", fallback="reflink,copy").strip().strip("'\"[]")
    types = tuple(t.strip().strip("'\"") for t in raw.split(",") if t.strip())
    cache_dir = Path(parser.get("cache", "dir", fallback="cache").strip().strip("'\""))
    cache_dir = cache_dir if cache_dir.is_absolute() else dvc / cache_dir
    link = None
    with contextlib.suppress(OSError), _probe_file(_existing(root / "data")) as sample:
        link = _probe(sample, _existing(cache_dir))
    if link == "reflink":
        return CacheMode("link", types, "the filesystem clones files (reflinks), which DVC tries first")
    # DVC leaves an output that is a copy as it is when the list allows copies (copy, or reflink
    # where no clone can be made), and links it otherwise
    keeps_copies = bool({"copy", "reflink"} & set(types))
    if types[:1] == ("hardlink",) and link == "hardlink":
        why = "outputs are read-only hard links into the cache"
        if keeps_copies:
            why += "; an output a re-run makes again, byte for byte, stays a copy"
        return CacheMode("link", types, why)
    workable = [t for t in types if t in ("symlink", "copy") or (t == "hardlink" and link == "hardlink")]
    if workable[:1] == ["symlink"] and not keeps_copies:
        return CacheMode("symlink", types, "outputs become symlinks to it")
    if types[:1] == ("hardlink",):
        why = "no hard links between data/ and the cache here"
    elif types[:1] == ("reflink",):
        why = "no reflinks on this filesystem, and DVC then copies into its cache"
    else:
        why = "copies"
    return CacheMode("copy", types, f"{why}; `dvc config cache.type hardlink,symlink` stores them once")


def _probe(sample: Path, folder: Path) -> str | None:
    """How `sample` links into `folder` ("reflink", "hardlink" or None), tried on a temporary name."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".gptcore-link-probe-") as tmp:
        return Linker().link(sample, Path(tmp) / "probe")


@contextlib.contextmanager
def _probe_file(folder: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=folder, prefix=".gptcore-link-probe-") as tmp:
        sample = Path(tmp) / "sample"
        sample.write_bytes(b"probe\n")
        yield sample


def _existing(path: Path) -> Path:
    """`path`, or its nearest folder that exists: where it would be made."""
    path = path.absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


# -- figures


def _sum(values: Sequence[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _amount(n: int) -> str:
    return f"{n:,} bytes ({_human(n)})"


def _about(n: int | None) -> str:
    if n is None:
        return "unknown"
    return "0 bytes" if n == 0 else f"about {_human(n)}"


def _human(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def _count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:,.2f}{unit}"
    return f"{n:,}"
