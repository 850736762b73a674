"""Tests of gptcore.bpe: pre-token counts, merge learning, tiktoken rank files, and tiktoken agreement."""

from __future__ import annotations

import base64
import random
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import regex

from gptcore.bpe import (
    GPT2_PATTERN,
    count_pretokens,
    learn_merges,
    make_encoding,
    read_ranks,
    train_bpe,
    write_ranks,
)
from gptcore.errors import DataError

# Hamlet, III.i (public domain): long enough for a few hundred merges, short enough to train fast
TEXT = """\
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die—to sleep,
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to: 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep, perchance to dream—ay, there's the rub:
For in that sleep of death what dreams may come,
When we have shuffled off this mortal coil,
Must give us pause—there's the respect
That makes calamity of so long life.
"""
EOT = "<|endoftext|>"


def replay_merges(piece: bytes, merges: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The reference encoder: apply the learned merges to one pre-token, earliest merge first."""
    order = {pair: i for i, pair in enumerate(merges)}
    tokens = [bytes([b]) for b in piece]
    while True:
        found = [order[pair] for pair in pairwise(tokens) if pair in order]
        if not found:
            return tokens
        left, right = merges[min(found)]
        out, i = [], 0
        while i < len(tokens):
            if tokens[i : i + 2] == [left, right]:
                out.append(left + right)
                i += 2
            else:
                out.append(tokens[i])
                i += 1
        tokens = out


@pytest.fixture(scope="module")
def counts() -> Counter[bytes]:
    return count_pretokens([TEXT, TEXT.upper()])


def test_pattern_is_tiktokens_gpt2_pattern() -> None:
    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    assert openai_public.r50k_pat_str == GPT2_PATTERN


def test_count_pretokens_streams_texts_and_counts_utf8_pieces() -> None:
    def texts() -> Iterator[str]:  # a one-pass generator: the corpus is never a list
        yield "Hello world, hello"
        yield " world's  end\n"
        yield "café 42\ud800"

    counts = count_pretokens(texts())
    assert counts == Counter(
        {
            b"Hello": 1,
            b" world": 2,
            b",": 1,
            b" hello": 1,
            b"'s": 1,
            b" ": 1,  # of the two spaces, the last goes to " end"
            b" end": 1,
            b"\n": 1,
            "café".encode(): 1,
            b" 42": 1,
            "\ufffd".encode(): 1,  # a lone surrogate counts as U+FFFD, as tiktoken encodes it
        }
    )


def test_known_tiny_example_gives_expected_merges_and_stops_when_no_pair_is_left() -> None:
    # pairs: aa 5*2+2 = 12, ab 5+2 = 7 -> merge a|a; then aa|a 5, a|b 5, aa|b 2: the tie goes to
    # the smaller ids (97, 98) over (256, 97); then aa|ab 5, then aa|b 2; then nothing is left
    counts = {b"aaab": 5, b"aab": 2, b"b": 100}
    assert learn_merges(counts, 10) == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab"), (b"aa", b"b")]
    ranks = train_bpe(counts, vocab_size=300, n_special=1)
    assert len(ranks) == 260  # fewer than 299: every pre-token became one token
    assert [t for t, r in sorted(ranks.items(), key=lambda x: x[1])][256:] == [b"aa", b"ab", b"aaab", b"aab"]


def test_ties_go_to_the_smallest_pair_of_ids() -> None:
    assert learn_merges({b"cd": 3, b"ab": 3, b"ba": 3}, 1) == [(b"a", b"b")]


def test_single_bytes_take_ranks_0_to_255_and_vocab_size_is_reached(counts: Counter[bytes]) -> None:
    ranks = train_bpe(counts, vocab_size=400, n_special=2)
    assert len(ranks) == 398
    assert sorted(ranks.values()) == list(range(398))
    assert all(ranks[bytes([i])] == i for i in range(256))
    for left, right in learn_merges(counts, 398 - 256):  # a token ranks after its two parts
        assert ranks[left + right] > max(ranks[left], ranks[right])


@pytest.mark.parametrize(("vocab_size", "n_special"), [(255, 0), (256, 1), (1000, -1)])
def test_too_small_a_vocabulary_is_a_value_error(vocab_size: int, n_special: int) -> None:
    with pytest.raises(ValueError, match="vocab_size|n_special"):
        train_bpe({b"ab": 1}, vocab_size, n_special)


def test_training_is_deterministic_and_rank_files_are_byte_identical(
    counts: Counter[bytes], tmp_path: Path
) -> None:
    reordered = dict(sorted(counts.items(), reverse=True))  # insertion order must not matter
    first, second = train_bpe(counts, 350, 1), train_bpe(reordered, 350, 1)
    assert first == second
    assert list(first) == list(second)
    write_ranks(tmp_path / "a.tiktoken", first)
    write_ranks(tmp_path / "b.tiktoken", second)
    assert (tmp_path / "a.tiktoken").read_bytes() == (tmp_path / "b.tiktoken").read_bytes()


def test_rank_file_round_trip_in_tiktokens_format(counts: Counter[bytes], tmp_path: Path) -> None:
    ranks = train_bpe(counts, 300, 1)
    path = tmp_path / "vocab" / "ranks.tiktoken"
    write_ranks(path, ranks)
    lines = path.read_bytes().split(b"\n")
    assert lines[:2] == [b"AA== 0", b"AQ== 1"] and lines[-1] == b""  # "\n" ends every line
    assert len(lines) == len(ranks) + 1
    assert read_ranks(path) == ranks
    assert [p.name for p in path.parent.iterdir()] == ["ranks.tiktoken"]  # no temp file left
    tiktoken_load = pytest.importorskip("tiktoken.load")
    assert tiktoken_load.load_tiktoken_bpe(str(path)) == ranks


def test_write_ranks_refuses_ranks_with_gaps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="0 .. len"):
        write_ranks(tmp_path / "r", {b"a": 0, b"b": 2})
    assert not (tmp_path / "r").exists()


def _byte_lines(n: int = 256) -> list[str]:
    return [f"{base64.b64encode(bytes([i])).decode()} {i}" for i in range(n)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (_byte_lines()[:3] + ["QUI="] + _byte_lines()[3:], r"line 4: expected '<base64 token> <rank>'"),
        (_byte_lines() + ["QUI= 256 x"], r"line 257: expected"),
        (_byte_lines() + ["Q!I= 256"], r"line 257: .* is not base64"),
        (_byte_lines() + ["QUI= -1"], r"line 257: rank .* is not a non-negative integer"),
        (_byte_lines() + ["QUI= 2.5e2"], r"line 257: rank"),
        (_byte_lines() + [" 256"], r"line 257: empty token"),
        (_byte_lines() + ["AA== 256"], r"line 257: token b'\\x00' repeats \(first on line 1\)"),
        (_byte_lines() + ["QUI= 7"], r"line 257: rank 7 repeats \(first on line 8\)"),
        (_byte_lines() + ["QUI= 300"], r"line 257: rank 300 is out of range .* 256 is missing"),
        (_byte_lines()[1:] + ["QUI= 0"], r"byte 0x00 has no token"),
        ([], r"no tokens"),
    ],
)
def test_malformed_rank_files_are_refused_naming_file_and_line(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    path = tmp_path / "bad.tiktoken"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DataError, match=message) as info:
        read_ranks(path)
    assert str(path) in str(info.value)


def test_tiktoken_encodes_as_a_replay_of_the_learned_merges(counts: Counter[bytes]) -> None:
    merges = learn_merges(counts, 300)
    ranks = train_bpe(counts, 256 + 300 + 1, 1)
    assert len(ranks) == 556
    enc = make_encoding("test", ranks, {EOT: len(ranks)})
    # seen text, unseen words and case, and bytes the corpus never held
    text = TEXT + "Whether tis NOBLER? Sleeplessness; 1,234 dreams. Ça va? 東京\n\n  x"
    expected = [
        ranks[token]
        for piece in regex.findall(GPT2_PATTERN, text)
        for token in replay_merges(piece.encode(), merges)
    ]
    assert enc.encode_ordinary(text) == expected
    assert len(expected) < len(text.encode()) / 2  # the merges do compress


@pytest.mark.parametrize("seed", range(5))
def test_tiktoken_agrees_with_the_merges_on_runs_of_repeated_letters(seed: int) -> None:
    # runs like "aaaaa" are where a pair overlaps itself (a|a) and merge order matters most
    rng = random.Random(seed)
    words = ["".join(rng.choice("aab") for _ in range(rng.randint(2, 12))) for _ in range(40)]
    counts = count_pretokens([" ".join(words)])
    merges = learn_merges(counts, 1000)  # until no pair is left
    ranks = train_bpe(counts, 256 + 1000, 0)
    assert len(ranks) == 256 + len(merges) < 256 + 1000
    enc = make_encoding("test", ranks, {})
    for word in ["".join(rng.choice("ab") for _ in range(rng.randint(1, 20))) for _ in range(200)]:
        expected = [ranks[t] for t in replay_merges(word.encode(), merges)]
        assert enc.encode_ordinary(word) == expected, word


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain ascii, with punctuation!?",
        "emoji 👩‍👩‍👧 and 🏳️‍🌈 flags",
        "combining: e\u0301 a\u0308\u0323 Z̤͔ͧ̑̓",
        "nul \x00 and controls \x01\x7f\x1b[0m",
        "right to left: שלום עולם مرحبا",
        "whitespace   runs\t\t\n\n\n \r\n  \u00a0\u2003end   ",
        "mixed 東京 123 4567890 'll 's",
    ],
)
def test_decode_of_encode_is_the_identity(counts: Counter[bytes], text: str) -> None:
    enc = make_encoding("test", train_bpe(counts, 400, 1), {EOT: 399})
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert enc.encode(EOT, allowed_special={EOT}) == [399]


def test_make_encoding_refuses_special_ids_that_collide_with_ranks(counts: Counter[bytes]) -> None:
    ranks = train_bpe(counts, 300, 1)
    with pytest.raises(ValueError, match="special token ids"):
        make_encoding("test", ranks, {EOT: 10})
    with pytest.raises(ValueError, match="special token ids"):
        make_encoding("test", ranks, {EOT: 299, "<|unk|>": 299})
