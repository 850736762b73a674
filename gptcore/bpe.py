"""Byte-level BPE: count pre-tokens, learn merges, and store them in tiktoken's rank format.

The vocabulary is a table of mergeable ranks, as tiktoken reads it: the 256 single bytes get ranks
0..255 (in byte order), then every learned token gets the next rank in the order it was learned.
tiktoken encodes a pre-token by repeatedly merging the adjacent pair whose concatenation has the
lowest rank, so ranks given in merge order make it apply the learned merges in the order they were
learned; `tests/test_bpe.py` checks that tiktoken's ids equal a plain replay of the merges.

Training works on distinct pre-tokens (the pieces the GPT-2 regex cuts text into, which no token
ever crosses) with their counts, so its memory and time grow with the vocabulary of the corpus,
not its size. Each step merges the most frequent adjacent pair, ties going to the smallest
(left id, right id); only the words holding that pair are touched:

    words[i]   token ids of distinct pre-token i          freqs[i]  its count in the corpus
    pairs      (left, right) -> occurrences, weighted by freqs
    where      (left, right) -> indices of the words that hold it
    heap       (-count, left, right), stale entries skipped when popped (counts only ever fall,
               except for pairs with the new token, which are pushed afresh)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import regex
import tiktoken

from gptcore.atomic import atomic_file
from gptcore.errors import DataError

# tiktoken's r50k_base / GPT-2 pattern in its faster, equivalent form: contractions, letters,
# digits and other symbols (each with one optional leading space), then whitespace runs, which
# leave their last space to the word that follows. Possessive quantifiers need `regex`, not `re`.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

N_BYTES = 256
SLICE_CHARS = 1 << 20  # a longer text is pre-tokenized a slice at a time (see piece_ends)
CUT_SEARCH = 1 << 16  # how far back from a slice's end piece_ends looks for a space to end before
# Training counts distinct pre-tokens, so its memory grows with how many there are and how long,
# and each merge costs the length of the words that hold its pair. Real text repeats short words;
# random or binary-like text (a 1 GiB run of letters) does not, and would hold the corpus in memory
# twice over. So a pre-token longer than MAX_PRETOKEN_CHARS is counted as chunks of that length (no
# learned token is longer: long runs of spaces or dashes lose a few tokens), and once the distinct
# pre-tokens hold more than MAX_DISTINCT_CHARS characters the rarest are dropped (count 1, then 2,
# ...) until they hold half of it, as trainers with a minimum frequency do. Neither changes the
# default vocabulary (the plays: 35,111 distinct pre-tokens of up to 27 characters; the same ranks).
MAX_PRETOKEN_CHARS = 16
MAX_DISTINCT_CHARS = 1 << 22


def count_pretokens(texts: Iterable[str], pattern: str = GPT2_PATTERN) -> Counter[bytes]:
    """How often each distinct pre-token occurs in `texts`, as UTF-8 bytes.

    Texts are streamed one at a time, and a long one a slice of SLICE_CHARS at a time; the distinct
    pre-tokens kept are bounded (MAX_PRETOKEN_CHARS, MAX_DISTINCT_CHARS), so memory is bounded
    whatever the corpus or its longest document. A lone surrogate (legal in a str, not in UTF-8) becomes U+FFFD, as tiktoken's encode
    makes it.
    """
    split = regex.compile(pattern).findall
    counts: Counter[str] = Counter()
    check_at = 0  # the number of distinct pre-tokens at which they might first exceed the limit
    for text in texts:
        start = 0
        for end in piece_ends(text, SLICE_CHARS) if len(text) > SLICE_CHARS else [len(text)]:
            pieces = split(text[start:end] if end - start < len(text) else text)
            start = end
            if pieces and max(map(len, pieces)) > MAX_PRETOKEN_CHARS:
                pieces = [chunk for piece in pieces for chunk in _chunks(piece, MAX_PRETOKEN_CHARS)]
            counts.update(pieces)  # Counter.update of a list counts in C
            if len(counts) > check_at:  # summing the lengths is cheap, but not at every slice
                room = MAX_DISTINCT_CHARS - _prune(counts, MAX_DISTINCT_CHARS)
                check_at = len(counts) + max(room // MAX_PRETOKEN_CHARS, 1)
    out: Counter[bytes] = Counter()
    for piece, n in counts.items():
        out[_utf8(piece)] += n  # += : two pieces with different surrogates may map to one
    return out


def piece_ends(text: str, limit: int) -> list[int]:
    """Where a long text is cut into pieces of at most `limit` characters that pre-tokenize as the
    whole does: a piece ends just before a space that sits between two non-space characters, where
    every pre-tokenizer we use (GPT-2's regex and its successors, and the char kind) starts a new
    pre-token; a stretch of `limit` without such a space (a base64 blob) is cut at `limit`.

    Returns the end offsets of the pieces, the last being len(text)."""
    ends: list[int] = []
    start, n = 0, len(text)
    while n - start > limit:
        end = start + limit
        cut = end
        lo = max(start + 1, end - CUT_SEARCH)
        i = text.rfind(" ", lo, end)
        while i > lo:
            if not text[i - 1].isspace() and not text[i + 1].isspace():
                cut = i
                break
            i = text.rfind(" ", lo, i)
        ends.append(cut)
        start = cut
    ends.append(n)
    return ends


def _chunks(piece: str, size: int) -> list[str]:
    return [piece[i : i + size] for i in range(0, len(piece), size)] if len(piece) > size else [piece]


def _prune(counts: Counter[str], limit: int) -> int:
    """Drop the rarest pre-tokens, count 1 first, until the rest hold at most limit // 2 characters;
    nothing when they hold at most `limit`. Returns the characters they hold."""
    total = sum(map(len, counts))
    if total <= limit:
        return total
    threshold = 0
    while total > limit // 2:
        threshold += 1
        for piece in [piece for piece, n in counts.items() if n <= threshold]:
            total -= len(piece)
            del counts[piece]
    return total


def _utf8(piece: str) -> bytes:
    try:
        return piece.encode("utf-8")
    except UnicodeEncodeError:
        return piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def learn_merges(counts: Mapping[bytes, int], n_tokens: int) -> list[tuple[bytes, bytes]]:
    """The merges, in the order learned, that add `n_tokens` tokens to the 256 single bytes.

    Fewer come back only when no adjacent pair is left, i.e. every pre-token is a single token:
    pairs seen once are still merged, since the caller asked for a vocabulary of that size.
    A merge whose result already is a token (the same bytes split another way, `a|aa` after
    `aa|a`) would be listed but add no token, its words taking the existing token's id, as
    tiktoken, which ranks bytes and not pairs, would encode them. Left-to-right merging seems to
    rule this out (it never happened on Shakespeare or on 90,000 random corpora of runs such
    as `aabaaa`), but a silent duplicate would corrupt the rank table, so it is handled.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    words: list[list[int]] = []
    freqs: list[int] = []
    for piece, n in counts.items():
        if n < 0:
            raise ValueError(f"pre-token {piece!r} has a negative count {n}")
        if n and len(piece) > 1:  # a single byte has no pair to merge
            words.append(list(piece))
            freqs.append(n)

    pairs: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for i, (word, n) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(word):
            pairs[pair] = pairs.get(pair, 0) + n
            where.setdefault(pair, set()).add(i)
    heap = [(-n, a, b) for (a, b), n in pairs.items()]
    heapq.heapify(heap)

    token_bytes = [bytes([i]) for i in range(N_BYTES)]
    ids = {t: i for i, t in enumerate(token_bytes)}
    merges: list[tuple[bytes, bytes]] = []
    while len(token_bytes) - N_BYTES < n_tokens and heap:
        neg, a, b = heapq.heappop(heap)
        count = pairs.get((a, b), 0)
        if count != -neg:  # stale: the count fell since this entry was pushed
            if count:
                heapq.heappush(heap, (-count, a, b))
            continue
        merged = token_bytes[a] + token_bytes[b]
        merges.append((token_bytes[a], token_bytes[b]))
        new = ids.get(merged)
        if new is None:
            new = ids[merged] = len(token_bytes)
            token_bytes.append(merged)
        del pairs[a, b]
        changed: set[tuple[int, int]] = set()
        for i in where.pop((a, b)):
            old = words[i]
            word = _merge_word(old, a, b, new)
            words[i] = word
            n = freqs[i]
            old_pairs = list(pairwise(old))
            new_pairs = list(pairwise(word))
            for pair in old_pairs:
                if pair != (a, b):
                    pairs[pair] -= n
                    changed.add(pair)
            for pair in new_pairs:
                pairs[pair] = pairs.get(pair, 0) + n
                changed.add(pair)
            old_set, new_set = set(old_pairs), set(new_pairs)
            old_set.discard((a, b))
            for pair in old_set - new_set:
                where[pair].discard(i)
            for pair in new_set - old_set:
                where.setdefault(pair, set()).add(i)
        # every pair a merge adds holds `new`; all other counts only fell, and their old heap
        # entries are re-pushed with the true count when popped
        for pair in changed:
            n = pairs[pair]
            if not n:
                del pairs[pair], where[pair]
            elif new in pair:
                heapq.heappush(heap, (-n, *pair))
    return merges


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    """`word` with every (a, b), scanned left to right, replaced by `new` (so `aaa` -> `aa a`)."""
    out: list[int] = []
    i, last = 0, len(word) - 1
    while i <= last:
        if i < last and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(counts: Mapping[bytes, int], vocab_size: int, n_special: int) -> dict[bytes, int]:
    """Mergeable ranks for a vocabulary of `vocab_size` ids, `n_special` of them special tokens.

    The 256 single bytes take ranks 0..255, learned tokens the ranks after, so the table has
    `vocab_size - n_special` entries, or fewer if the pre-tokens run out of pairs to merge (see
    `learn_merges`). The same counts and sizes give the same ranks on every run and machine.
    """
    if n_special < 0:
        raise ValueError(f"n_special must be >= 0, got {n_special}")
    n_ranks = vocab_size - n_special
    if n_ranks < N_BYTES:
        raise ValueError(
            f"vocab_size {vocab_size} leaves {n_ranks} ids after {n_special} special tokens; "
            f"a byte-level BPE needs at least {N_BYTES} (one per byte), so vocab_size >= {N_BYTES + n_special}"
        )
    ranks = {bytes([i]): i for i in range(N_BYTES)}
    for left, right in learn_merges(counts, n_ranks - N_BYTES):
        ranks.setdefault(left + right, len(ranks))
    return ranks


def write_ranks(path: Path | str, ranks: Mapping[bytes, int]) -> None:
    """Write `ranks` in tiktoken's format, atomically: `base64(token) rank` per line, by rank."""
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("ranks must be exactly 0 .. len(ranks) - 1")
    lines = [
        f"{base64.b64encode(token).decode('ascii')} {rank}\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    ]
    with atomic_file(path) as tmp:
        tmp.write_bytes("".join(lines).encode("ascii"))


def read_ranks(path: Path | str) -> dict[bytes, int]:
    """Read a tiktoken rank file, refusing one tiktoken would take but encode wrongly.

    Raises DataError naming the file and line for a malformed line, a repeated token or rank, or
    a rank outside 0..n-1 for n lines; and naming a byte that has no token of its own, since a
    byte-level vocabulary could not encode text holding it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    ranks: dict[bytes, int] = {}
    rank_line: dict[int, int] = {}
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start another
    for lineno, line in enumerate(lines, 1):
        fields = line.rstrip(b"\r").split(b" ")
        where = f"{path}, line {lineno}"
        if len(fields) != 2:
            raise DataError(f"{where}: expected '<base64 token> <rank>', got {line[:80]!r}")
        try:
            token = base64.b64decode(fields[0], validate=True)
        except binascii.Error:
            raise DataError(f"{where}: {fields[0][:80]!r} is not base64") from None
        if not token:
            raise DataError(f"{where}: empty token")
        if not (fields[1].isdigit() and fields[1].isascii()):
            raise DataError(f"{where}: rank {fields[1][:80]!r} is not a non-negative integer")
        rank = int(fields[1])
        if token in ranks:
            first = rank_line[ranks[token]]
            raise DataError(f"{where}: token {token!r} repeats (first on line {first})")
        if rank in rank_line:
            raise DataError(f"{where}: rank {rank} repeats (first on line {rank_line[rank]})")
        ranks[token] = rank
        rank_line[rank] = lineno
    if not ranks:
        raise DataError(f"{path}: no tokens")
    n = len(ranks)
    for rank, lineno in sorted(rank_line.items()):
        if rank >= n:
            missing = next(r for r in range(n) if r not in rank_line)
            raise DataError(
                f"{path}, line {lineno}: rank {rank} is out of range for {n} tokens "
                f"(ranks must be 0..{n - 1}; {missing} is missing)"
            )
    missing_bytes = [i for i in range(N_BYTES) if bytes([i]) not in ranks]
    if missing_bytes:
        raise DataError(
            f"{path}: byte 0x{missing_bytes[0]:02x} has no token ({len(missing_bytes)} bytes lack one); "
            "a byte-level vocabulary needs all 256"
        )
    return ranks


def make_encoding(
    name: str, ranks: dict[bytes, int], special_tokens: dict[str, int], pattern: str = GPT2_PATTERN
) -> tiktoken.Encoding:
    """A tiktoken Encoding of `ranks` and `special_tokens`, which must take the ids after the ranks.

    tiktoken itself accepts a special id that collides with a rank and then decodes it wrongly.
    """
    ids = sorted(special_tokens.values())
    if len(set(ids)) != len(ids) or (ids and ids[0] < len(ranks)):
        raise ValueError(
            f"special token ids {special_tokens} must be distinct and >= {len(ranks)} (the number of ranks)"
        )
    return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens)


# -- pretrained tiktoken encodings, read offline


def pretrained_spec(name: str) -> dict[str, Any]:
    """What tiktoken knows of a pretrained encoding, without fetching its ranks.

    Returns tiktoken's constructor fields (`pat_str`, `special_tokens`, ...) plus `blobpath`, the
    address tiktoken would download the rank file from, and `expected_hash`, its sha256. The
    constructor is run with tiktoken's loader swapped for one that only notes what it was asked.
    """
    import tiktoken_ext.openai_public as public

    constructors = public.ENCODING_CONSTRUCTORS
    if name not in constructors:
        raise DataError(
            f"vocab.encoding = {name!r} is not a tiktoken encoding (known: {', '.join(constructors)})"
        )
    asked: dict[str, Any] = {}

    def note(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        asked.update(blobpath=blobpath, expected_hash=expected_hash)
        return {}

    original = public.load_tiktoken_bpe
    public.load_tiktoken_bpe = note
    try:
        spec = constructors[name]()
    finally:
        public.load_tiktoken_bpe = original
    if not asked:  # gpt2 reads two files of another format; r50k_base holds the same vocabulary
        raise DataError(
            f"vocab.encoding = {name!r} has no single rank file; use r50k_base for GPT-2's vocabulary"
        )
    return {**spec, **asked}


def tiktoken_cache_path(blobpath: str) -> Path:
    """Where tiktoken caches the file at `blobpath` (its own rule: the sha1 of the address)."""
    folder = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    folder = folder or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(folder) / hashlib.sha1(blobpath.encode()).hexdigest()


def read_pretrained_ranks(spec: dict[str, Any], file: str | Path | None) -> dict[bytes, int]:
    """The ranks of a pretrained encoding from `file` (vocab.file) or tiktoken's cache, checked
    against the encoding's sha256. Never downloads; a missing file says what to fetch and where."""
    cache = tiktoken_cache_path(spec["blobpath"])
    path = Path(file).expanduser() if file else cache
    if not path.is_file():
        where = f"vocab.file ({path})" if file else f"tiktoken's cache ({path})"
        raise DataError(
            f"vocab.encoding {spec['name']}: no rank file in {where}. On a machine with internet, "
            f"download {spec['blobpath']} and set vocab.file to its path, or copy it to {cache}"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = spec.get("expected_hash")
    if expected and digest != expected:
        raise DataError(
            f"{path}: sha256 {digest} is not that of {spec['name']}'s rank file ({expected}): "
            "a different or damaged file"
        )
    return read_ranks(path)
