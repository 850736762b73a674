"""Duplicate documents dropped before the split: exact copies, and optionally near copies.

`drop_duplicates(documents, params, stats)` passes a stream of documents through, leaving out every
document that repeats an earlier one; the first copy in corpus order stays. It runs before the
train/val split, so no text lands in both splits.

- **Exact** (`data.dedup.exact`): two documents are the same when their texts are, once every run
  of whitespace is one space and the ends are stripped. Each text is hashed (64-bit blake2b) into
  `HashSet`, one flat array of 8-byte slots kept at most 2/3 full: 12 to 24 bytes a document (36
  while the array doubles), whatever the documents hold, so a corpus far larger than memory fits.
  Two different texts share a 64-bit hash with probability about n^2 / 2^65 over n documents
  (one in 37 for a billion documents); the later of such a pair would be dropped, nothing worse.
- **Near** (`data.dedup.near`): a document's shingles are its runs of `shingle_words` consecutive
  words (lowercased, whitespace normalised; a shorter document is one shingle); its MinHash
  signature (datasketch, `num_perm` values) estimates the Jaccard similarity of two shingle sets as
  the share of values on which two signatures agree. A locality-sensitive index (datasketch's
  MinHashLSH, its bands and rows chosen by datasketch for `threshold` and LSH_WEIGHTS) of the
  documents kept so far proposes candidates; a candidate whose signature agrees on at least
  `threshold` of its values makes the document a near duplicate, and the best such candidate is
  named in the report. The index holds
  signatures, never text: memory grows by a few KB a document (docs/data.md, "Duplicates"). A
  long document is shingled a slice at a time, so memory never holds its words all at once.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gptcore.data.split import Document
from gptcore.params import DedupParams, ParamsError

if TYPE_CHECKING:
    from datasketch import MinHash

NAMES_KEPT = 100  # exact duplicates named in the report
PAIRS_KEPT = 10  # near-duplicate pairs named in the report
MINHASH_SEED = 1  # fixes datasketch's permutations: the same corpus drops the same documents
SHINGLE_SLICE_CHARS = 1 << 18  # a long text is shingled a slice of about this many characters at a time
SHINGLE_BATCH = 1 << 13  # shingles hashed into a signature at a time: bounds the (batch, num_perm) array
SIGNATURE_CHUNK = 1 << 14  # signatures stored per array, so storing one never copies the others
# how datasketch weighs a pair wrongly proposed against one missed when it chooses bands and rows:
# a proposed pair is checked against the signatures, a missed one is lost, so misses weigh more
LSH_WEIGHTS = (0.2, 0.8)
_SPACE = re.compile(r"\s")
# one odd 64-bit multiplier per word position of a shingle (a fixed generator: the same shingle
# hashes the same way in every run); a shingle's hash is the top 32 bits of the weighted sum
_MULTIPLIERS = np.random.default_rng(20261203).integers(1, 2**63, size=32, dtype=np.uint64) * 2 + 1
_BASE = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_INVERSE_BASE = np.uint64(pow(0x100000001B3, -1, 2**64))


@dataclass
class DedupStats:
    """What `drop_duplicates` dropped; complete once its iterator is exhausted."""

    exact: int = 0  # documents dropped as exact duplicates
    exact_bytes: int = 0  # UTF-8 bytes of their text
    exact_names: list[str] = field(default_factory=list)  # the first NAMES_KEPT of them
    near: int = 0  # documents dropped as near duplicates
    near_bytes: int = 0
    # the first PAIRS_KEPT of them: {"dropped": name, "kept": name, "similarity": estimate}
    near_pairs: list[dict[str, Any]] = field(default_factory=list)

    def report(self, params: DedupParams) -> dict[str, Any]:
        """The `duplicates` entry of reports/data.json (a kind that is off is null)."""
        exact = {"dropped": self.exact, "bytes": self.exact_bytes, "names": self.exact_names}
        near = {
            "dropped": self.near,
            "bytes": self.near_bytes,
            "threshold": params.threshold,
            "pairs": self.near_pairs,
        }
        return {"exact": exact if params.exact else None, "near": near if params.near else None}


def drop_duplicates(
    documents: Iterable[Document], params: DedupParams, stats: DedupStats
) -> Iterator[Document]:
    """Yield `documents` in order without the exact (and, if asked, near) duplicates of earlier ones."""
    seen = HashSet() if params.exact else None
    near = NearDuplicates(params) if params.near else None
    for doc in documents:
        if seen is not None and not seen.add(text_hash(doc.text)):
            stats.exact += 1
            stats.exact_bytes += _utf8_size(doc.text)
            if len(stats.exact_names) < NAMES_KEPT:
                stats.exact_names.append(doc.name)
            continue
        if near is not None:
            match = near.match_or_add(doc)
            if match is not None:
                stats.near += 1
                stats.near_bytes += _utf8_size(doc.text)
                if len(stats.near_pairs) < PAIRS_KEPT:
                    kept, similarity = match
                    stats.near_pairs.append({"dropped": doc.name, "kept": kept, "similarity": similarity})
                    if len(stats.near_pairs) == PAIRS_KEPT:
                        near.forget_names()
                continue
        yield doc


def normalise_whitespace(text: str) -> str:
    """Every run of whitespace as one space, none at the ends: what exact duplicates share."""
    return " ".join(text.split())


def text_hash(text: str) -> int:
    """A 64-bit hash of the whitespace-normalised text (never 0: HashSet's mark of an empty slot)."""
    digest = hashlib.blake2b(normalise_whitespace(text).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little") or 1


class HashSet:
    """A set of non-zero 64-bit hashes in one flat array (open addressing, linear probing).

    A Python set of ints costs several times as much a member; this costs 8 bytes a slot, with
    between 1.5 and 3 slots a member (doubled once 2/3 are taken, so probes stay short).
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        if capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity}")
        self._slots = array("Q", bytes(8 * capacity))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return len(self._slots) * self._slots.itemsize

    def add(self, h: int) -> bool:
        """Add `h`; True if it was not there yet."""
        if not 0 < h < 2**64:
            raise ValueError(f"hash must be a non-zero 64-bit value, got {h}")
        slots = self._slots
        mask = len(slots) - 1
        i = h & mask
        while slots[i]:
            if slots[i] == h:
                return False
            i = (i + 1) & mask
        slots[i] = h
        self._count += 1
        if 3 * self._count > 2 * len(slots):
            self._grow()
        return True

    def _grow(self) -> None:
        old, self._slots = self._slots, array("Q", bytes(16 * len(self._slots)))
        slots = self._slots
        mask = len(slots) - 1
        for h in old:
            if h:
                i = h & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = h


class NearDuplicates:
    """The documents kept so far as MinHash signatures in an LSH index, and the check of a new one."""

    def __init__(self, params: DedupParams) -> None:
        # imported here: datasketch brings scipy, which costs extract_split time and memory even
        # when near-duplicate search is off (the default)
        from datasketch import MinHash, MinHashLSH

        self._minhash = MinHash
        self.threshold = params.threshold
        self.num_perm = params.num_perm
        self.shingle_words = params.shingle_words
        try:
            self._lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, weights=LSH_WEIGHTS)
        except ValueError as exc:  # too few bands for this threshold and signature length
            raise ParamsError(
                f"params.yaml: data.dedup.threshold = {params.threshold} with data.dedup.num_perm = "
                f"{params.num_perm} cannot be indexed ({exc}): raise num_perm or lower threshold"
            ) from None
        self._permutations = MinHash(num_perm=params.num_perm, seed=MINHASH_SEED).permutations
        self._signatures: list[np.ndarray] = []  # chunks of SIGNATURE_CHUNK rows, one per kept document
        self._names: list[str] | None = []  # kept documents' names, while pairs are still being named
        self._kept = 0

    def signature(self, text: str) -> MinHash:
        """The MinHash of `text`'s word shingles."""
        minhash = self._minhash(
            num_perm=self.num_perm, hashfunc=int, permutations=self._permutations, scheme="affine32"
        )
        for hashes in _shingle_hashes(text, self.shingle_words):
            for start in range(0, len(hashes), SHINGLE_BATCH):
                minhash.update_batch(hashes[start : start + SHINGLE_BATCH].tolist())
        return minhash

    def match_or_add(self, doc: Document) -> tuple[str, float] | None:
        """The kept document that `doc` nearly duplicates (its name, or "" once names are forgotten)
        and their estimated similarity; or None, once `doc` is added to the kept documents."""
        minhash = self.signature(doc.text)
        values = np.asarray(minhash.hashvalues, dtype=np.uint32)
        matches = []
        for key in self._lsh.query(minhash):
            similarity = float(np.count_nonzero(self._stored(key) == values)) / self.num_perm
            if similarity >= self.threshold:
                matches.append((similarity, -key))
        if matches:
            similarity, key = max(matches)  # the most similar; of equals, the earliest
            return (self._names[-key] if self._names is not None else ""), round(similarity, 4)
        self._store(values)
        self._lsh.insert(self._kept, minhash, check_duplication=False)
        if self._names is not None:
            self._names.append(doc.name)
        self._kept += 1
        return None

    def forget_names(self) -> None:
        """Let go of the kept documents' names: no more pairs will be named."""
        self._names = None

    def _stored(self, key: int) -> np.ndarray:
        return self._signatures[key // SIGNATURE_CHUNK][key % SIGNATURE_CHUNK]

    def _store(self, values: np.ndarray) -> None:
        row = self._kept % SIGNATURE_CHUNK
        if row == 0:
            self._signatures.append(np.empty((SIGNATURE_CHUNK, self.num_perm), dtype=np.uint32))
        self._signatures[-1][row] = values


def _shingle_hashes(text: str, k: int) -> Iterator[np.ndarray]:
    """32-bit hashes (as uint64) of the runs of `k` consecutive words of `text`, lowercased, a slice
    of the text at a time; a text of fewer than `k` words is one shingle, an empty one none."""
    carry = np.empty(0, dtype=np.uint64)  # the last k - 1 words' hashes, for shingles across slices
    shingled = False
    start, n = 0, len(text)
    while start < n:
        end = n
        if n - start > SHINGLE_SLICE_CHARS:
            space = _SPACE.search(text, start + SHINGLE_SLICE_CHARS)  # never cut inside a word
            end = space.start() if space else n
        words = text[start:end].lower().split()
        start = end
        hashes = np.concatenate([carry, _word_hashes(words)])
        if len(hashes) >= k:
            yield _combine(hashes, k)
            shingled = True
            hashes = hashes[len(hashes) - (k - 1) :] if k > 1 else hashes[:0]
        carry = hashes
    if not shingled and len(carry):
        yield _combine(carry, len(carry))


def _word_hashes(words: list[str]) -> np.ndarray:
    """A 64-bit hash of each word, all at once: a polynomial in a fixed odd base over the word's
    UTF-8 bytes, taken from prefix sums over the words joined by spaces (a Python loop over the
    words, hashing each, cost about as much as all of datasketch's MinHash arithmetic)."""
    if not words:
        return np.empty(0, dtype=np.uint64)
    data = np.frombuffer(" ".join(words).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    # prefix[i]: the sum of (byte + 1) * base**j over the first i bytes, modulo 2**64 (uint64 wraps)
    prefix = np.zeros(len(data) + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + np.uint64(1)) * _powers(_BASE, len(data)), out=prefix[1:])
    spaces = np.flatnonzero(data == ord(" "))
    starts = np.concatenate([[0], spaces + 1])
    ends = np.concatenate([spaces, [len(data)]])
    # a word's sum shifted back to start at base**0: the same hash wherever the word stands
    return (prefix[ends] - prefix[starts]) * _powers(_INVERSE_BASE, len(data))[starts]


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**j modulo 2**64 for j < n (uint64 products wrap)."""
    return np.cumprod(
        np.concatenate([np.ones(1, np.uint64), np.full(n - 1, base, np.uint64)]), dtype=np.uint64
    )


def _combine(word_hashes: np.ndarray, k: int) -> np.ndarray:
    """One hash for each run of `k` consecutive word hashes (len - k + 1 of them)."""
    count = len(word_hashes) - k + 1
    total = np.zeros(count, dtype=np.uint64)
    for j in range(k):
        total += word_hashes[j : j + count] * _MULTIPLIERS[j]  # wraps modulo 2**64, as meant
    return total >> np.uint64(32)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
