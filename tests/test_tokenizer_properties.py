"""Properties every vocabulary keeps on arbitrary text (hypothesis): exact round trips, a special
token that text never produces, and long documents encoded in pieces exactly as a whole."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gptcore import bpe
from gptcore.data.encode import piece_ends
from gptcore.tokenizer import EOT, UNK_DECODED, BpeTokenizer, CharTokenizer, TiktokenTokenizer

CORPUS = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune \u2014 caf\u00e9, na\u00efve, \U0001f642!\n"
) * 30

BPE = BpeTokenizer.train([CORPUS], 400)
# a pretrained-style encoding (cl100k_base's pattern, a gap before a second special), built here
TIKTOKEN = TiktokenTokenizer(
    "tiny_base",
    bpe.train_bpe(bpe.count_pretokens([CORPUS]), 350, n_special=1),
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    {EOT: 349, "<|fim_prefix|>": 355},
)
CHAR = CharTokenizer.train([CORPUS])

# arbitrary unicode (no lone surrogates: a Python str may hold them, UTF-8 text cannot), with the
# awkward cases made common: emoji sequences, combining marks, NUL, right-to-left, whitespace runs
AWKWARD = st.sampled_from(
    [
        "\U0001f469\u200d\U0001f4bb",
        "\U0001f1eb\U0001f1f7",
        "e\u0301",
        "\u0300\u0301",
        "\x00",
        "\u05e9\u05dc",
        "\u202e",
        "   ",
        "\t\t",
        "\r\n",
        "\n\n\n",
        "\u00a0",
        "<|endoftext|>",
        "'s",
        "123456",
    ]
)
TEXT = st.lists(
    st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), AWKWARD), max_size=30
).map("".join)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_byte_level_kinds_round_trip_any_text(text: str) -> None:
    for tok in (BPE, TIKTOKEN):
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_text_never_produces_a_special_token(text: str) -> None:
    for tok in (BPE, TIKTOKEN):
        ids = tok.encode(text + EOT + text)
        assert not set(ids) & set(tok.special_tokens.values())
    assert CHAR.eot_id not in CHAR.encode(text + EOT)


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from(CHAR.chars), max_size=200))
def test_char_kind_round_trips_strings_of_known_characters(text: str) -> None:
    assert CHAR.decode(CHAR.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_char_kind_maps_each_unknown_character_to_one_unk(text: str) -> None:
    decoded = CHAR.decode(CHAR.encode(text))
    assert len(decoded) == len(text)
    assert all(
        d == c or (d == UNK_DECODED and c not in CHAR.chars) for d, c in zip(decoded, text, strict=True)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(AWKWARD, st.sampled_from(["word", " word", "x", " ", "  "])), max_size=60).map(
        "".join
    ),
    st.integers(4, 40),
)
def test_a_long_document_encodes_in_pieces_exactly_as_a_whole(text: str, limit: int) -> None:
    ends = piece_ends(text, limit)
    # a stretch of `limit` characters without a space between two words is cut blindly (documented)
    # (a cut at the last character has no word after it: not such a cut either)
    assume(
        all(
            c + 1 < len(text) and text[c] == " " and not text[c - 1].isspace() and not text[c + 1].isspace()
            for c in ends[:-1]
        )
    )
    for tok in (BPE, TIKTOKEN):
        start, pieces = 0, []
        for end in ends:
            pieces += tok.encode(text[start:end])
            start = end
        assert pieces == tok.encode(text)
