"""The Hugging Face round trip: gptcore models of every family export to folders that
transformers loads with no code of ours and that compute the same logits and greedy tokens; the
exported tokenizers give gptcore's ids; folders saved by transformers import back exactly; bad
folders are refused with an error naming what is wrong, and nothing half-written is left."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support_models import VARIANTS, CreatesMarkerWhenUnpickled, perturb_gains_and_biases
from support_train import BASE
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from gptcore.bpe import pretrained_spec
from gptcore.checkpoint import save_model
from gptcore.cli import main
from gptcore.errors import DataError
from gptcore.evaluate import seeded_batches
from gptcore.generate import complete, generate
from gptcore.hf.convert import check_vocabulary, export_folder, load_folder, read_folder
from gptcore.hf.tokenizer import tokenizer_from_hf
from gptcore.model import GPT, GPTConfig
from gptcore.sampling import Sampling
from gptcore.tokenizer import BpeTokenizer, CharTokenizer, TiktokenTokenizer
from gptcore.train import train

# text with what pre-tokenizers trip on: contractions, digits, runs of spaces and newlines, tabs,
# punctuation runs, accents, CJK, emoji (4-byte UTF-8), a trailing space
TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\tSpeak, speak!  \n"
    "I'll tell you: 'tis 1,234 times -- we've said it ... Ça va? Naïve café, 東京 and 🙂🙂 ok   \n"
    "ROMEO: JULIET: don't, can't, won't; 42nd street \u00a0nbsp\r\nend "
)
DOCS = [TEXT[i : i + n] for i, n in ((0, 40), (10, 90), (33, 200), (100, 120), (0, len(TEXT)))]


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return BpeTokenizer.train([TEXT] * 4, 400)


def tiny(tokenizer_size: int, variant: str, seed: int = 0, **changes: object) -> GPT:
    torch.manual_seed(seed)
    fields = {"vocab_size": tokenizer_size, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 32}
    model = GPT(GPTConfig(**{**fields, **VARIANTS[variant], **changes})).eval()
    perturb_gains_and_biases(model)
    return model


def ids_of(tokenizer: BpeTokenizer, n: int = 48) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(TEXT)[:n], tokenizer.encode(TEXT[50:])[:n]])


# --- export: transformers loads it and computes the same --------------------------------------------

EXPECTED_CLASS = {
    "gpt2": "GPT2LMHeadModel",
    "gpt2-untied": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "llama-untied": "LlamaForCausalLM",
    "llama-qknorm": "Qwen3ForCausalLM",
}


# every variant; GPT-2 with biases too (the llama family has none)
EXPORTED = [(v, False) for v in VARIANTS] + [("gpt2", True), ("gpt2-untied", True)]


@pytest.mark.parametrize(("variant", "bias"), EXPORTED)
def test_an_export_loads_in_transformers_with_the_same_logits_and_greedy_tokens(
    variant: str, bias: bool, bpe: BpeTokenizer, tmp_path: Path
) -> None:
    model = tiny(bpe.vocab_size, variant, bias=bias)
    export_folder(model, bpe, tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        ".gptcore-output.json",  # the marker that lets a later export replace these files
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == EXPECTED_CLASS[variant]
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    idx = ids_of(bpe)
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert ours.std() > 0.1  # logits that differ from token to token: the comparison has teeth
    assert (ours - theirs).abs().max().item() <= 1e-4
    prompt = idx[:, :5]
    greedy = generate(model, prompt, Sampling(max_new_tokens=30, temperature=0.0))
    hf_greedy = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False, pad_token_id=0
    )
    assert torch.equal(greedy, hf_greedy[:, : greedy.shape[1]])


def test_an_export_reads_back_into_gptcore_exactly(bpe: BpeTokenizer, tmp_path: Path) -> None:
    for variant in VARIANTS:
        model = tiny(bpe.vocab_size, variant)
        export_folder(model, bpe, tmp_path / variant)
        back, tokenizer, _ = load_folder(tmp_path / variant)
        # a bias-free gpt2 exports zero biases (GPT-2 has them) and comes back bias-free
        assert back.config == model.config
        assert tokenizer.ranks == bpe.ranks and tokenizer.special_tokens == bpe.special_tokens
        idx = ids_of(bpe)
        with torch.no_grad():
            assert torch.equal(back(idx)[0], model(idx)[0])


def test_a_padded_vocabulary_exports_at_its_true_size(bpe: BpeTokenizer, tmp_path: Path) -> None:
    padded = bpe.vocab_size + 24  # rows no token uses, e.g. rounded up for matmul speed
    for variant in ("gpt2", "llama-untied"):
        model = tiny(padded, variant)
        export_folder(model, bpe, tmp_path / variant)
        config = json.loads((tmp_path / variant / "config.json").read_text())
        assert config["vocab_size"] == bpe.vocab_size
        tensors = load_file(tmp_path / variant / "model.safetensors")
        assert all(
            t.shape[0] == bpe.vocab_size
            for k, t in tensors.items()
            if "wte" in k or "embed" in k or "lm_head" in k
        )
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / variant).eval()
        idx = ids_of(bpe)
        with torch.no_grad():
            diff = (model(idx)[0][..., : bpe.vocab_size] - hf(idx).logits).abs().max().item()
        assert diff <= 1e-4


def test_export_refuses_a_model_smaller_than_its_tokenizer_and_writes_nothing(
    bpe: BpeTokenizer, tmp_path: Path
) -> None:
    model = tiny(bpe.vocab_size - 1, "gpt2")
    with pytest.raises(DataError, match=f"the tokenizer has {bpe.vocab_size} ids but the model only"):
        export_folder(model, bpe, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_the_previous_folder_whole(
    bpe: BpeTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_folder(tiny(bpe.vocab_size, "gpt2"), bpe, tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError):
        export_folder(tiny(bpe.vocab_size, "llama", seed=1), bpe, tmp_path / "hf")
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folder left


# --- tokenizers ----------------------------------------------------------------------------------


def assert_same_ids(tokenizer, folder: Path) -> None:
    fast = AutoTokenizer.from_pretrained(folder)
    assert fast.eos_token == "<|endoftext|>" and fast.eos_token_id == tokenizer.eot_id
    for doc in DOCS:
        # the token stream the tokenize stage writes: each document, then <|endoftext|>
        assert fast(doc + "<|endoftext|>")["input_ids"] == [*tokenizer.encode(doc), tokenizer.eot_id], doc
        assert fast.decode(tokenizer.encode(doc)) == tokenizer.decode(tokenizer.encode(doc))


def test_an_exported_bpe_tokenizer_gives_gptcores_ids(bpe: BpeTokenizer, tmp_path: Path) -> None:
    export_folder(tiny(bpe.vocab_size, "gpt2"), bpe, tmp_path / "hf")
    assert_same_ids(bpe, tmp_path / "hf")


def test_an_exported_tiktoken_tokenizer_gives_gptcores_ids_with_its_encodings_regex(tmp_path: Path) -> None:
    # r50k_base's own pattern and special token; the ranks learned here (its rank file is not
    # available offline, the benchmark runs the real one when it is)
    spec = pretrained_spec("r50k_base")
    learned = BpeTokenizer.train([TEXT] * 4, 600)
    tokenizer = TiktokenTokenizer(
        "r50k_base", learned.ranks, spec["pat_str"], {"<|endoftext|>": len(learned.ranks)}
    )
    export_folder(tiny(tokenizer.vocab_size, "llama"), tokenizer, tmp_path / "hf")
    assert_same_ids(tokenizer, tmp_path / "hf")
    assert tokenizer_from_hf(tmp_path / "hf").ranks == tokenizer.ranks


def test_an_exported_char_tokenizer_gives_gptcores_ids_unknown_characters_included(tmp_path: Path) -> None:
    tokenizer = CharTokenizer.train([TEXT[:120]])  # the later characters are unknown to it
    export_folder(tiny(tokenizer.vocab_size, "gpt2"), tokenizer, tmp_path / "hf")
    fast = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for doc in DOCS:
        assert fast(doc + "<|endoftext|>")["input_ids"] == [*tokenizer.encode(doc), tokenizer.eot_id]
    assert tokenizer.unk_id in tokenizer.encode(TEXT)
    back = tokenizer_from_hf(tmp_path / "hf")
    assert back.chars == tokenizer.chars


def test_gpt2_style_tokenizer_json_reads_into_a_gptcore_tokenizer(tmp_path: Path) -> None:
    # a byte-level BPE as GPT-2's own tokenizer.json lays it out (regex inside ByteLevel, merges as
    # "a b" strings, <|endoftext|> in the vocabulary), made by the tokenizers library
    from tokenizers import ByteLevelBPETokenizer

    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator([TEXT] * 4, vocab_size=400, show_progress=False)
    trained.add_special_tokens(["<|endoftext|>"])  # after the merges, as GPT-2's id 50256
    trained.save(str(tmp_path / "tokenizer.json"))
    ours = tokenizer_from_hf(tmp_path)
    for doc in DOCS:
        assert ours.encode(doc) == trained.encode(doc).ids
    assert ours.eot_id == trained.token_to_id("<|endoftext|>")


# --- import: folders saved by transformers ---------------------------------------------------------


def saved_by_transformers(
    kind: str, folder: Path, vocab_size: int = 96, tie: bool = True, **extra: object
) -> torch.nn.Module:
    torch.manual_seed(3)
    if kind == "gpt2":  # GPT-2's own settings: biases, the tanh GELU
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            tie_word_embeddings=tie,
            **extra,
        )
        model = GPT2LMHeadModel(config)
    else:
        cls, config_cls = (
            (LlamaForCausalLM, LlamaConfig) if kind == "llama" else (Qwen3ForCausalLM, Qwen3Config)
        )
        config = config_cls(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=8,
            max_position_embeddings=64,
            tie_word_embeddings=tie,
            **extra,
        )
        model = cls(config)
    perturb_gains_and_biases(model)
    model.save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen3"])
def test_a_model_saved_by_transformers_imports_with_the_same_logits(
    kind: str, tie: bool, tmp_path: Path
) -> None:
    hf = saved_by_transformers(kind, tmp_path / "hf", tie=tie)
    config, state = read_folder(tmp_path / "hf")
    assert config.arch == ("gpt2" if kind == "gpt2" else "llama")
    assert config.qk_norm == (kind == "qwen3") and config.tie_embeddings == tie
    model = GPT(config)
    if tie:
        state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state, strict=True)
    idx = torch.randint(96, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.eval()(idx)[0] - hf(idx).logits).abs().max().item() <= 1e-4


def test_a_pickled_state_dict_imports_through_weights_only(tmp_path: Path) -> None:
    hf = saved_by_transformers("gpt2", tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    config, loaded = read_folder(tmp_path / "hf")
    assert torch.equal(loaded["wte.weight"], hf.transformer.wte.weight.detach())


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    saved_by_transformers("gpt2", tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(tmp_path / "hf" / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"wte.weight": CreatesMarkerWhenUnpickled(marker)}, fh)
    with pytest.raises(
        DataError, match=r"pytorch_model\.bin is not a state dict of tensors: it holds pickled data"
    ) as refused:
        read_folder(tmp_path / "hf")
    assert not marker.exists()
    assert "weights_only" not in str(refused.value)


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_bad_folders_are_refused_naming_what_is_wrong(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    saved_by_transformers("llama", folder)
    weights = folder / "model.safetensors"
    with pytest.raises(DataError, match=r"is not a folder"):
        read_folder(tmp_path / "nowhere")

    edit_config(folder, architectures=["MistralForCausalLM"], model_type="mistral")
    with pytest.raises(
        DataError,
        match=r"architecture MistralForCausalLM is not supported \(supported: GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM\)",
    ):
        read_folder(folder)
    edit_config(folder, architectures=["LlamaForCausalLM"], model_type="llama", num_key_value_heads=2)
    with pytest.raises(
        DataError, match=r"num_key_value_heads = 2 is not supported \(no grouped-query attention"
    ):
        read_folder(folder)
    edit_config(folder, num_key_value_heads=4, hidden_size=48, head_dim=12)
    with pytest.raises(
        DataError,
        match=r"model\.embed_tokens\.weight has shape \(96, 32\), but config\.json implies \(96, 48\)",
    ):
        read_folder(folder)
    edit_config(folder, hidden_size=32, head_dim=8)
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if "layers.1.mlp.up_proj" not in k}, weights)
    with pytest.raises(DataError, match=r"no tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        read_folder(folder)
    save_file({**tensors, "model.layers.0.extra.weight": torch.zeros(2)}, weights)
    with pytest.raises(DataError, match=r"tensor model\.layers\.0\.extra\.weight has no place"):
        read_folder(folder)
    weights.unlink()
    with pytest.raises(DataError, match=r"has no weights: expected model\.safetensors"):
        read_folder(folder)
    weights.write_bytes(b"not safetensors at all")
    with pytest.raises(DataError, match=r"the safetensors weights cannot be read"):
        read_folder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(DataError, match=r"config\.json not found"):
        read_folder(folder)


# --- chat and sample on a folder -------------------------------------------------------------------


def test_sample_and_chat_accept_a_hugging_face_folder(
    bpe: BpeTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    model = tiny(bpe.vocab_size, "llama-qknorm")
    export_folder(model, bpe, tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    main(shlex.split("sample --model hf --prompt ROMEO: --max-new-tokens 12 --temperature 0 --device cpu"))
    expected = "ROMEO:" + complete(model, bpe, "ROMEO:", Sampling(max_new_tokens=12, temperature=0.0))
    assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("ROMEO:\n"))
    main(shlex.split("chat --model hf --max-new-tokens 12 --temperature 0 --device cpu"))
    assert capsys.readouterr().out.startswith(
        complete(model, bpe, "ROMEO:", Sampling(max_new_tokens=12, temperature=0.0)).rstrip("\n")
    )


def test_the_export_command_writes_a_folder_transformers_loads(
    bpe: BpeTokenizer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tiny(bpe.vocab_size, "llama-untied")
    save_model(tmp_path / "model.pt", model, bpe)
    main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "hf")])
    assert "as LlamaForCausalLM (untied head, bpe tokenizer" in capsys.readouterr().out
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = ids_of(bpe)
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)[0]).abs().max().item() <= 1e-4


def test_the_export_command_refuses_a_missing_model_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "hf")])
    assert exit_info.value.code == 1
    assert "none.pt not found" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


# --- train.init_from -------------------------------------------------------------------------------


def test_training_starts_from_the_weights_of_an_imported_gpt2(stores, tmp_path: Path) -> None:
    train_store, val_store = stores
    hf = saved_by_transformers("gpt2", tmp_path / "hf", vocab_size=train_store.vocab_size)
    p = dataclasses.replace(
        BASE, init_from=str(tmp_path / "hf"), n_layer=2, n_head=4, n_embd=32, bias=True, max_iters=4
    )
    logged: list[tuple[int, dict[str, float]]] = []
    result = train(p, train_store, val_store, on_eval=lambda s, m: logged.append((s, m)), progress=False)
    # the first evaluation is of GPT-2's weights as transformers computes them
    batches = list(seeded_batches(val_store, p.eval_iters, p.batch_size, p.block_size, p.seed + 1))
    with torch.no_grad():
        expected = sum(
            torch.nn.functional.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten()).item()
            for x, y in batches
        ) / len(batches)
    assert logged[0][0] == 0 and logged[0][1]["val/loss"] == pytest.approx(expected, abs=1e-5)
    config = result.model.config
    assert (config.activation, config.bias, config.block_size) == ("gelu_tanh", True, p.block_size)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"n_layer": 1},
            r"train\.n_layer = 1 contradicts .*config\.json, whose model has n_layer = 2: set train\.n_layer: 2",
        ),
        ({"bias": False}, r"train\.bias = False contradicts .* set train\.bias: True"),
        ({"arch": "llama", "bias": False}, r"train\.arch = 'llama' contradicts .* set train\.arch: 'gpt2'"),
        ({"block_size": 65}, r"train\.block_size = 65 exceeds the 64 positions"),
    ],
)
def test_params_that_contradict_the_initial_model_are_refused_naming_the_key(
    changes: dict, message: str, stores, tmp_path: Path
) -> None:
    saved_by_transformers("gpt2", tmp_path / "hf", vocab_size=stores[0].vocab_size)
    p = dataclasses.replace(BASE, init_from=str(tmp_path / "hf"), n_layer=2, n_head=4, n_embd=32, bias=True)
    with pytest.raises(DataError, match=message):
        train(dataclasses.replace(p, **changes), *stores, progress=False)


def test_tokens_of_another_vocabulary_are_refused_with_the_vocabulary_to_use(stores, tmp_path: Path) -> None:
    saved_by_transformers("gpt2", tmp_path / "hf", vocab_size=stores[0].vocab_size + 1)
    p = dataclasses.replace(BASE, init_from=str(tmp_path / "hf"), n_layer=2, n_head=4, n_embd=32, bias=True)
    with pytest.raises(
        DataError, match=r"token ids but the token files .*vocab: \{kind: tiktoken, encoding: r50k_base\}"
    ):
        train(p, *stores, progress=False)


def test_a_folder_whose_tokenizer_is_not_the_datas_is_refused(bpe: BpeTokenizer, tmp_path: Path) -> None:
    export_folder(tiny(bpe.vocab_size, "gpt2"), bpe, tmp_path / "hf")
    check_vocabulary(tmp_path / "hf", bpe)  # the same vocabulary: fine
    other = BpeTokenizer.train([TEXT[::-1]] * 4, bpe.vocab_size)
    with pytest.raises(
        DataError, match=r"its tokenizer is not the vocabulary of data/vocab \(bpe, \d+ ids\)"
    ):
        check_vocabulary(tmp_path / "hf", other)


@pytest.mark.slow
def test_gptcore_never_imports_transformers_at_run_time() -> None:
    # transformers is a test dependency: the package, the CLI and the train loop run without it
    code = (
        "import sys, gptcore, gptcore.cli, gptcore.train, gptcore.hf.convert, gptcore.hf.tokenizer; "
        "print(sorted(m for m in ('transformers', 'tokenizers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert out.stdout.strip() == "[]"


def test_info_sizes_up_a_hugging_face_folder(
    bpe: BpeTokenizer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tiny(bpe.vocab_size, "llama-untied")
    export_folder(model, bpe, tmp_path / "hf")
    main(["info", "--model", str(tmp_path / "hf")])
    out = capsys.readouterr().out
    assert f"{model.num_params(non_embedding=False):,}" in out and "arch=llama" in out


def test_a_config_without_architectures_is_read_by_its_model_type(tmp_path: Path) -> None:
    saved_by_transformers("qwen3", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert read_folder(tmp_path / "hf")[0].qk_norm
    edit_config(tmp_path / "hf", model_type="mistral")
    with pytest.raises(DataError, match=r"architecture mistral is not supported"):
        read_folder(tmp_path / "hf")


def test_a_llama_with_another_rotary_base_imports_and_exports_with_it(
    bpe: BpeTokenizer, tmp_path: Path
) -> None:
    hf = saved_by_transformers(
        "llama", tmp_path / "hf", rope_parameters={"rope_type": "default", "rope_theta": 500000.0}
    )
    config, state = read_folder(tmp_path / "hf")
    assert config.rope_theta == 500000.0
    model = GPT(config)
    model.load_state_dict({**state, "lm_head.weight": state["wte.weight"]})
    idx = torch.randint(96, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.eval()(idx)[0] - hf(idx).logits).abs().max().item() <= 1e-4
    edit_config(
        tmp_path / "hf", rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    )
    with pytest.raises(DataError, match=r"rope_parameters\.rope_type = 'llama3' is not supported"):
        read_folder(tmp_path / "hf")
