"""Tests of gptcore.tokenizer: the char vocabulary, encode/decode, identity, save and load."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gptcore.errors import DataError
from gptcore.params import VocabParams
from gptcore.tokenizer import (
    EOT,
    METADATA_FILE,
    BpeTokenizer,
    CharTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer.train([TEXT, "All:\nSpeak, speak.\n"])


def test_char_vocabulary_is_sorted_characters_then_unk_and_eot(tok: CharTokenizer) -> None:
    chars = sorted(set(TEXT + "All:\nSpeak, speak.\n"))
    assert tok.chars == chars
    assert tok.vocab_size == len(chars) + 2
    assert (tok.unk_id, tok.eot_id) == (len(chars), len(chars) + 1)
    assert tok.kind == "char"


def test_char_round_trip(tok: CharTokenizer) -> None:
    ids = tok.encode(TEXT)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert len(ids) == len(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.decode(np.array(ids, dtype=np.uint16)) == TEXT
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_characters_beyond_the_basic_plane_round_trip() -> None:
    text = "naïve 😀 café ☃ \u0000 end"
    tok = CharTokenizer.train([text])
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text)


def test_unknown_characters_map_to_unk(tok: CharTokenizer) -> None:
    ids = tok.encode("hear Z😀é me")
    assert ids[5:8] == [tok.unk_id] * 3
    assert tok.decode(ids) == "hear \ufffd\ufffd\ufffd me"


def test_endoftext_string_in_text_is_plain_text() -> None:
    tok = CharTokenizer.train(["<|endoftext|> a b"])
    ids = tok.encode("a <|endoftext|> b")
    assert tok.eot_id not in ids
    assert len(ids) == len("a <|endoftext|> b")
    assert tok.decode(ids) == "a <|endoftext|> b"


def test_special_ids_decode_to_their_names(tok: CharTokenizer) -> None:
    assert tok.decode([tok.eot_id]) == EOT
    assert tok.decode([tok.unk_id]) == "\ufffd"


def test_decode_refuses_ids_outside_the_vocabulary(tok: CharTokenizer) -> None:
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode([0, -1])
    with pytest.raises(ValueError, match=f"token id {tok.vocab_size}"):
        tok.decode([tok.vocab_size])


def test_encode_batch_matches_encode(tok: CharTokenizer) -> None:
    texts = [TEXT, "", "speak", "Z unknown", "\n"]
    assert [ids.tolist() for ids in tok.encode_batch(texts)] == [tok.encode(t) for t in texts]
    assert tok.encode_batch([]) == []


def test_tokenizer_dict_round_trip(tok: CharTokenizer) -> None:
    d = json.loads(json.dumps(tok.to_dict()))
    again = tokenizer_from_dict(d)
    assert isinstance(again, CharTokenizer)
    assert again.identity == tok.identity
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert tokenizer_from_dict({**d, "identity": tok.identity}).identity == tok.identity


def test_save_and_load_round_trip(tok: CharTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    meta = json.loads((tmp_path / METADATA_FILE).read_text(encoding="utf-8"))
    assert meta["kind"] == "char" and meta["vocab_size"] == tok.vocab_size and meta["eot_id"] == tok.eot_id
    assert meta["chars"] == tok.chars and meta["identity"] == tok.identity and meta["format_version"] == 1
    loaded = load_tokenizer(tmp_path)
    assert loaded.identity == tok.identity
    assert loaded.decode(loaded.encode(TEXT)) == TEXT


def test_identity_depends_only_on_the_vocabulary(tok: CharTokenizer) -> None:
    same = CharTokenizer(list(tok.chars))
    other = CharTokenizer([*tok.chars, "~"])
    assert same.identity == tok.identity
    assert other.identity["sha256"] != tok.identity["sha256"]
    assert set(tok.identity) == {"kind", "vocab_size", "sha256"}
    assert len(tok.identity["sha256"]) == 64


def test_train_tokenizer_follows_params_kind(tok: CharTokenizer) -> None:
    built = train_tokenizer(
        VocabParams(kind="char", vocab_size=4096, encoding="r50k_base", file=None),
        iter([TEXT, "All:\nSpeak, speak.\n"]),
    )
    assert built.identity == tok.identity
    bpe = train_tokenizer(
        VocabParams(kind="bpe", vocab_size=300, encoding="r50k_base", file=None), iter([TEXT] * 3)
    )
    assert isinstance(bpe, BpeTokenizer) and bpe.vocab_size == 300


# -- bpe


BPE_TEXT = (TEXT + " The king, the queen and the knave; 1234 crowns!\n\n") * 20


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return BpeTokenizer.train([BPE_TEXT, "caf\u00e9 na\u00efve \U0001f642"], 330)


def test_bpe_reaches_its_size_with_eot_last(bpe: BpeTokenizer) -> None:
    assert bpe.vocab_size == 330 and bpe.eot_id == 329
    assert len(bpe.encode(BPE_TEXT)) < len(BPE_TEXT.encode()) / 2  # it learned to compress


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain words",
        "emoji \U0001f469\u200d\U0001f4bb and flags \U0001f1eb\U0001f1f7",
        "e\u0301\u0301",
        "NUL\x00byte",
        "\u05e9\u05dc\u05d5\u05dd RTL",
        " \t\n\n   \r\n",
        "\u4e2d\u6587 123",
    ],
)
def test_bpe_round_trips_any_text(bpe: BpeTokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_eot_is_one_special_id_that_text_never_produces(bpe: BpeTokenizer) -> None:
    ids = bpe.encode("before <|endoftext|> after")
    assert bpe.eot_id not in ids
    assert bpe.decode(ids) == "before <|endoftext|> after"
    assert bpe.decode([bpe.eot_id]) == "<|endoftext|>"


def test_bpe_saves_tiktoken_ranks_and_loads_back_identical(bpe: BpeTokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe.tiktoken", "tokenizer.json"]
    meta = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert "ranks" not in meta and meta["ranks_file"] == "bpe.tiktoken"
    again = load_tokenizer(tmp_path)
    assert isinstance(again, BpeTokenizer) and again.identity == bpe.identity
    assert again.encode(BPE_TEXT) == bpe.encode(BPE_TEXT)
    rebuilt = tokenizer_from_dict(json.loads(json.dumps(bpe.to_dict())))  # as embedded in a model
    assert rebuilt.identity == bpe.identity


def test_bpe_with_edited_ranks_is_refused(bpe: BpeTokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    ranks = (tmp_path / "bpe.tiktoken").read_text().splitlines()
    ranks[-1], ranks[-2] = (
        ranks[-2].split()[0] + " " + ranks[-1].split()[1],
        ranks[-1].split()[0] + " " + ranks[-2].split()[1],
    )
    (tmp_path / "bpe.tiktoken").write_text("\n".join(ranks) + "\n")
    with pytest.raises(DataError, match="identity"):
        load_tokenizer(tmp_path)


def test_bpe_training_is_deterministic(tmp_path: Path) -> None:
    a = BpeTokenizer.train([BPE_TEXT], 350)
    b = BpeTokenizer.train(iter([BPE_TEXT]), 350)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    for name in ("bpe.tiktoken", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bpe_pieces_of_a_long_text_encode_as_the_whole(bpe: BpeTokenizer) -> None:
    from gptcore.data.encode import piece_ends

    text = BPE_TEXT * 5 + "  double  spaces\t\ttabs \u00e9t\u00e9 " * 50
    whole = bpe.encode(text)
    for limit in (97, 500, 4096):
        ends, start, pieces = piece_ends(text, limit), 0, []
        for end in ends:
            pieces += bpe.encode(text[start:end])
            start = end
        assert pieces == whole, limit


def test_empty_training_text_is_refused() -> None:
    with pytest.raises(DataError, match="empty"):
        CharTokenizer.train(["", ""])


def test_edited_vocabulary_is_refused(tok: CharTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    path = tmp_path / METADATA_FILE
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["chars"][0], meta["chars"][1] = meta["chars"][1], meta["chars"][0]
    path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match="edited or is corrupt"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "wordpiece"}, "unknown tokenizer kind 'wordpiece'"),
        ({"format_version": 99}, "format_version 99"),
        ({"vocab_size": 3}, "vocab_size = 3"),
        ({"chars": ["a", "a"]}, "repeat"),
        ({"chars": ["ab"]}, "not a single character"),
        ({"chars": None}, "'chars' must be a list"),
    ],
)
def test_invalid_tokenizer_description_is_a_clear_error(
    tok: CharTokenizer, change: dict[str, object], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        tokenizer_from_dict({**tok.to_dict(), **change})


def test_missing_or_corrupt_tokenizer_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found: run the build_vocab stage"):
        load_tokenizer(tmp_path)
    (tmp_path / METADATA_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / METADATA_FILE).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="must be a JSON object"):
        load_tokenizer(tmp_path)


def test_bpe_stops_short_of_its_size_when_every_pre_token_is_one_token() -> None:
    small = BpeTokenizer.train(["ab ab ab"], 4096)
    assert small.vocab_size < 4096 and small.encode("ab ab") == [256, 257]  # "ab", " ab"


# -- tiktoken: pretrained encodings, read offline


def write_tiny_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gap: bool = False) -> Path:
    """A small rank file standing in for a pretrained encoding named tiny_base (no network)."""
    from gptcore import bpe

    ranks = bpe.train_bpe(bpe.count_pretokens([BPE_TEXT]), 300, n_special=1)
    path = tmp_path / "tiny_base.tiktoken"
    bpe.write_ranks(path, ranks)
    specials = {EOT: len(ranks)} if not gap else {EOT: len(ranks), "<|fim_prefix|>": len(ranks) + 5}
    spec = {
        "name": "tiny_base",
        "pat_str": bpe.GPT2_PATTERN,
        "special_tokens": specials,
        "blobpath": "test://encodings/tiny_base.tiktoken",
        "expected_hash": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    real = bpe.pretrained_spec
    monkeypatch.setattr(
        bpe, "pretrained_spec", lambda name: dict(spec) if name == "tiny_base" else real(name)
    )
    return path


def tiktoken_params(file: Path | str | None, encoding: str = "tiny_base") -> VocabParams:
    return VocabParams(
        kind="tiktoken", vocab_size=4096, encoding=encoding, file=None if file is None else str(file)
    )


def test_gpt2s_encoding_is_described_without_fetching_it() -> None:
    from gptcore import bpe

    spec = bpe.pretrained_spec("r50k_base")
    assert spec["special_tokens"] == {EOT: 50256}
    assert spec["blobpath"].endswith("r50k_base.tiktoken") and len(spec["expected_hash"]) == 64
    assert (
        bpe.tiktoken_cache_path(spec["blobpath"]).name == hashlib.sha1(spec["blobpath"].encode()).hexdigest()
    )


def test_an_unknown_encoding_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(DataError, match=r"r50k_base.*cl100k_base"):
        train_tokenizer(tiktoken_params(None, encoding="gpt5_base"), iter([]))


def test_tiktoken_kind_reads_vocab_file_and_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tiny_encoding(tmp_path, monkeypatch)
    tok = train_tokenizer(tiktoken_params(path), iter([]))
    assert isinstance(tok, TiktokenTokenizer) and tok.vocab_size == 300 and tok.eot_id == 299
    text = "The king, the queen \U0001f642 <|endoftext|>"
    assert tok.eot_id not in tok.encode(text) and tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "vocab")
    assert (tmp_path / "vocab" / "tiny_base.tiktoken").read_bytes() == path.read_bytes()
    again = load_tokenizer(tmp_path / "vocab")
    assert isinstance(again, TiktokenTokenizer) and again.identity == tok.identity
    assert tokenizer_from_dict(json.loads(json.dumps(tok.to_dict()))).identity == tok.identity


def test_tiktoken_kind_reads_tiktokens_cache_when_no_file_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptcore import bpe

    path = write_tiny_encoding(tmp_path, monkeypatch)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    cached = bpe.tiktoken_cache_path("test://encodings/tiny_base.tiktoken")
    cached.parent.mkdir()
    shutil.copy(path, cached)
    assert train_tokenizer(tiktoken_params(None), iter([])).vocab_size == 300


def test_a_missing_rank_file_says_what_to_download_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_encoding(tmp_path, monkeypatch)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError) as info:
        train_tokenizer(tiktoken_params(None), iter([]))
    message = str(info.value)
    assert "test://encodings/tiny_base.tiktoken" in message and "vocab.file" in message
    assert str(tmp_path / "empty-cache") in message
    with pytest.raises(DataError, match="no rank file in vocab.file"):
        train_tokenizer(tiktoken_params(tmp_path / "nowhere.tiktoken"), iter([]))


def test_a_rank_file_of_another_encoding_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tiny_encoding(tmp_path, monkeypatch)
    other = tmp_path / "other.tiktoken"
    lines = path.read_text().splitlines()
    other.write_text("\n".join(lines[:-1]) + "\n")  # one token fewer
    with pytest.raises(DataError, match="is not that of tiny_base's rank file"):
        train_tokenizer(tiktoken_params(other), iter([]))


def test_ids_between_ranks_and_specials_decode_to_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tiny_encoding(tmp_path, monkeypatch, gap=True)  # like cl100k_base: unused ids
    tok = train_tokenizer(tiktoken_params(path), iter([]))
    assert tok.vocab_size == 305 and tok.eot_id == 299
    assert tok.decode([*tok.encode("ab"), 301, tok.eot_id]) == "ab<|endoftext|>"
