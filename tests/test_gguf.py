"""GGUF export: llama.cpp itself (through llama-cpp-python) loads the file and decodes greedily the
tokens `gptcore sample --temperature 0` prints, at f32, for the llama, Qwen3 (QK-norm) and GPT-2
families; at f16 and q8_0 the log-likelihood of held-out text agrees within 1%; transformers' GGUF
loader, a second reader, gets our logits back; the chat template renders as `gptcore serve`
does; what llama.cpp cannot run is refused, and no export leaves a partial file or replaces one
unasked."""

from __future__ import annotations

import contextlib
import itertools
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import jinja2
import numpy as np
import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from support_models import perturb_gains_and_biases

from gptcore.bpe import pretrained_spec
from gptcore.checkpoint import save_model
from gptcore.cli import main
from gptcore.errors import DataError, GptcoreError
from gptcore.finetune.instruct import TEMPLATES, PromptTemplate
from gptcore.generate import generate
from gptcore.hf.gguf import chat_template, check_output_file, export_gguf, rotate_half_to_pairs
from gptcore.model import GPT, GPTConfig, Rotary, apply_rotary
from gptcore.sampling import Sampling
from gptcore.serve.server import render_chat
from gptcore.tokenizer import BpeTokenizer, CharTokenizer, TiktokenTokenizer

# what pre-tokenizers trip on: contractions, digits, runs of spaces and newlines, tabs, punctuation
# runs, accents, CJK, emoji
TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\tSpeak, speak!  \n"
    "I'll tell you: 'tis 1,234 times -- we've said it ... Ça va? Naïve café, 東京 and 🙂🙂 ok   \n"
    "ROMEO: JULIET: don't, can't, won't; 42nd street\r\nend "
)
# what the models llama.cpp runs learn by heart, and text they never saw
CORPUS = (
    "The miller's daughter sang at dawn beside the river, and seven crows answered her from the old oak. "
    "By noon the baker had burned 3 loaves; he swore, laughed, and baked four more. "
    "Night came: lanterns, quiet streets, a grey cat asleep on the garden wall.\n"
)
HELD_OUT = "At dawn the baker sang to seven crows; the miller laughed by the river wall.\n"
PROMPT = "The miller's"
NEW_TOKENS = 48
FAMILIES = {
    "llama": {"arch": "llama", "tie_embeddings": False},
    "llama-qknorm": {"arch": "llama", "qk_norm": True},
    "gpt2": {"arch": "gpt2", "bias": True},
}
ARCHITECTURES = {"llama": "llama", "llama-qknorm": "qwen3", "gpt2": "gpt2"}


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return BpeTokenizer.train([TEXT, CORPUS] * 4, 400)


def tiny(vocab_size: int, family: str, seed: int = 0, **changes: object) -> GPT:
    """A random 2-layer model whose rows are whole q8_0 blocks (widths of 64), norms and biases
    moved off their initial values so that a gain applied to the wrong tensor shows."""
    torch.manual_seed(seed)
    shape = {"vocab_size": vocab_size, "block_size": 96, "n_layer": 2, "n_head": 4, "n_embd": 64}
    model = GPT(GPTConfig(**{**shape, **FAMILIES[family], **changes})).eval()
    perturb_gains_and_biases(model)
    return model


def header(path: Path) -> dict[str, object]:
    """The GGUF file's metadata, read by the gguf package."""
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


# --- the file and its metadata ---------------------------------------------------------------


def test_the_file_holds_the_tokenizer_context_length_and_architecture(
    bpe: BpeTokenizer, tmp_path: Path
) -> None:
    for family, arch in ARCHITECTURES.items():
        done = export_gguf(tiny(bpe.vocab_size, family), bpe, tmp_path / f"{family}.gguf")
        meta = header(done.path)
        assert meta["general.architecture"] == arch == done.architecture
        assert meta[f"{arch}.context_length"] == 96 and meta[f"{arch}.block_count"] == 2
        assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
        tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
        assert isinstance(tokens, list) and isinstance(types, list)
        assert len(tokens) == bpe.vocab_size and tokens[bpe.eot_id] == "<|endoftext|>"
        assert types[bpe.eot_id] == gguf.TokenType.CONTROL
        assert types.count(gguf.TokenType.NORMAL) == bpe.vocab_size - 1
        assert tokens[ord("A")] == "A" and tokens[ord(" ")] == "Ġ"  # GPT-2's spelling of bytes
        assert meta["tokenizer.ggml.eos_token_id"] == bpe.eot_id
        assert meta["tokenizer.ggml.add_bos_token"] is False
        assert "tokenizer.chat_template" not in meta  # a base model has none
        assert done.path.stat().st_size == done.bytes


def test_a_padded_vocabulary_is_written_at_its_true_size(bpe: BpeTokenizer, tmp_path: Path) -> None:
    model = tiny(bpe.vocab_size + 24, "llama")  # rows no token uses, e.g. rounded up for matmul speed
    done = export_gguf(model, bpe, tmp_path / "m.gguf")
    shapes = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(done.path).tensors}
    # GGUF lists a matrix's dimensions innermost first: (n_embd, rows)
    assert shapes["token_embd.weight"] == shapes["output.weight"] == [64, bpe.vocab_size]
    assert len(header(done.path)["tokenizer.ggml.tokens"]) == bpe.vocab_size  # type: ignore[arg-type]


def test_dtypes_convert_the_matrices_and_keep_the_vectors_in_f32(bpe: BpeTokenizer, tmp_path: Path) -> None:
    model = tiny(bpe.vocab_size, "gpt2")
    sizes = {}
    for dtype, matrix in (("f32", "F32"), ("f16", "F16"), ("q8_0", "Q8_0")):
        done = export_gguf(model, bpe, tmp_path / f"{dtype}.gguf", dtype=dtype)
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(done.path).tensors}
        assert types["blk.0.attn_qkv.weight"] == types["token_embd.weight"] == matrix
        assert types["blk.0.attn_norm.weight"] == types["blk.0.attn_qkv.bias"] == "F32"
        assert types["position_embd.weight"] == "F32"  # added to the embeddings as it is
        sizes[dtype] = done.bytes
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_a_matrix_whose_rows_are_not_whole_q8_0_blocks_is_written_f16(
    bpe: BpeTokenizer, tmp_path: Path
) -> None:
    model = tiny(bpe.vocab_size, "llama", n_embd=48, n_head=3)  # rows of 48: one and a half blocks
    done = export_gguf(model, bpe, tmp_path / "m.gguf", dtype="q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(done.path).tensors}
    assert types["blk.0.attn_q.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of the feed-forward width, 128


def test_the_permutation_makes_llama_cpps_neighbour_rotation_equal_ours() -> None:
    # llama.cpp's `llama` architecture rotates dimensions (2j, 2j + 1) of each head by angle
    # position * theta_j; gptcore rotates (j, j + head_dim/2). Applied to the permuted weights,
    # the first must give our rotated queries, in the permuted order.
    config = GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=16, arch="llama")
    head_dim, positions = config.head_dim, 16
    weight = torch.randn(config.n_embd, config.n_embd)
    x = torch.randn(positions, config.n_embd)
    cos, sin = Rotary(config)(0, positions)
    ours = apply_rotary((x @ weight.t()).view(positions, 2, head_dim).transpose(0, 1), cos, sin)
    q = (x @ rotate_half_to_pairs(weight, 2).t()).view(positions, 2, head_dim // 2, 2)
    # (positions, 1, head_dim/2): the angle of pair j at each position, the same for every head
    theta = cos[:, None, : head_dim // 2], sin[:, None, : head_dim // 2]
    even, odd = q[..., 0], q[..., 1]
    theirs = torch.stack((even * theta[0] - odd * theta[1], even * theta[1] + odd * theta[0]), dim=-1)
    permuted = rotate_half_to_pairs(ours.transpose(0, 1).reshape(positions, -1).t(), 2).t()
    assert torch.allclose(theirs.reshape(positions, -1), permuted, atol=1e-5)
    assert not torch.allclose(theirs.reshape(positions, -1), ours.transpose(0, 1).reshape(positions, -1))


# --- refusals ------------------------------------------------------------------------------------


def test_a_char_vocabulary_is_refused_naming_why_and_nothing_is_written(tmp_path: Path) -> None:
    tokenizer = CharTokenizer.train([TEXT])
    with pytest.raises(
        DataError, match=r"a char vocabulary cannot be written as GGUF: llama\.cpp's tokenizers"
    ):
        export_gguf(tiny(tokenizer.vocab_size, "llama"), tokenizer, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_vocabulary_split_by_a_regex_llama_cpp_cannot_run_is_refused(tmp_path: Path) -> None:
    learned = BpeTokenizer.train([TEXT] * 4, 400)
    cl100k = TiktokenTokenizer(
        "cl100k_base", learned.ranks, pretrained_spec("cl100k_base")["pat_str"], {"<|endoftext|>": 399}
    )
    with pytest.raises(DataError, match=r"splits text with the regex .* which llama\.cpp cannot run"):
        export_gguf(tiny(cl100k.vocab_size, "gpt2"), cl100k, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_an_export_onto_an_existing_file_needs_force(
    bpe: BpeTokenizer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    save_model(tmp_path / "a.pt", tiny(bpe.vocab_size, "llama"), bpe)
    save_model(tmp_path / "b.pt", tiny(bpe.vocab_size, "llama", seed=1), bpe)
    out = tmp_path / "model.gguf"
    main(["export", "--model", str(tmp_path / "a.pt"), "--out", str(out)])  # .gguf: the format follows
    assert "as GGUF llama (f32" in capsys.readouterr().out
    first = out.read_bytes()
    assert first[:4] == b"GGUF"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(tmp_path / "b.pt"), "--out", str(out)])
    assert exit_info.value.code == 1
    assert f"--out {out} exists: add --force to replace it" in capsys.readouterr().err
    assert out.read_bytes() == first
    main(["export", "--model", str(tmp_path / "b.pt"), "--out", str(out), "--force", "--dtype", "q8_0"])
    assert out.read_bytes() != first and header(out)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "model.gguf"]


@pytest.mark.parametrize(
    ("out", "flags", "message"),
    [
        ("a.pt", "--format gguf --force", r"a\.pt is .*a\.pt, which the export reads: name another file"),
        ("folder", "--format gguf --force", r"is a folder: a GGUF export is one file"),
        ("new.gguf", "--format hf --dtype q8_0", r"--dtype q8_0 is for --format gguf"),
    ],
    ids=["the-model-itself", "a-folder", "dtype-for-hf"],
)
def test_the_export_command_refuses_outputs_it_must_not_write(
    out: str, flags: str, message: str, bpe: BpeTokenizer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    save_model(tmp_path / "a.pt", tiny(bpe.vocab_size, "llama"), bpe)
    (tmp_path / "folder").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(tmp_path / "a.pt"), "--out", str(tmp_path / out), *shlex.split(flags)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "folder"]


def test_an_output_inside_a_folder_the_export_reads_is_refused_even_with_force(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"  # a LoRA adapter is a folder: its files are read too
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(GptcoreError, match=r"is inside .*adapter, which the export reads: name another file"):
        check_output_file(adapter / "adapter_model.safetensors", True, [tmp_path / "m.pt", adapter])
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"weights"


def test_a_failed_export_leaves_no_partial_file_and_the_old_one_whole(
    bpe: BpeTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny(bpe.vocab_size, "llama")
    real = gguf.GGUFWriter.write_tensors_to_file

    def fail_halfway(self: gguf.GGUFWriter, **kwargs: object) -> None:
        assert self.fout is not None
        self.fout[0].write(b"\0" * 4096)  # part of the weights, then the disk fails
        raise OSError("No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail_halfway)
    with pytest.raises(OSError):
        export_gguf(model, bpe, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", real)
    export_gguf(model, bpe, tmp_path / "m.gguf")
    before = (tmp_path / "m.gguf").read_bytes()
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail_halfway)
    with pytest.raises(OSError):
        export_gguf(tiny(bpe.vocab_size, "llama", seed=1), bpe, tmp_path / "m.gguf", force=True)
    assert (tmp_path / "m.gguf").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary file left


# --- the chat template -------------------------------------------------------------------------

CONVERSATIONS = [
    [("user", "Name a play.")],
    [("system", "Be brief."), ("user", "Name a play.")],
    [("system", "Be brief."), ("developer", "Answer in verse."), ("user", "Who is Juliet?")],
    [("user", "first"), ("assistant", "an answer"), ("user", "Second 'question' with \\ and {braces}")],
    [("system", "Translate."), ("user", "   ")],  # a blank input is left out, as render_prompt does
]
ODD = PromptTemplate(
    name="odd",
    preamble='It\'s "quoted" \\ {not a field}\t\n',
    instruction="[{instruction}] and again: {instruction}\r\n",
    input="<{input}>",
    response="\nÀ toi:\n",
    stops=("[",),
)


@pytest.mark.parametrize("template", [*TEMPLATES.values(), ODD], ids=lambda t: t.name)
def test_the_chat_template_renders_a_conversation_as_gptcore_serve_does(template: PromptTemplate) -> None:
    # the sandboxed environment transformers and llama-cpp-python render chat templates in
    jinja = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
    )
    compiled = jinja.from_string(chat_template(template.to_dict()))
    for conversation in CONVERSATIONS:
        messages = [{"role": role, "content": text} for role, text in conversation]
        assert compiled.render(messages=messages, add_generation_prompt=True) == render_chat(
            conversation, template
        )


def test_an_instruction_tuned_model_is_exported_with_its_chat_template(
    bpe: BpeTokenizer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    template = TEMPLATES["phi3"]
    save_model(tmp_path / "i.pt", tiny(bpe.vocab_size, "llama"), bpe, {"template": template.to_dict()})
    main(["export", "--model", str(tmp_path / "i.pt"), "--out", str(tmp_path / "i.gguf")])
    assert "chat template phi3" in capsys.readouterr().out
    assert header(tmp_path / "i.gguf")["tokenizer.chat_template"] == chat_template(template.to_dict())


# --- transformers' GGUF loader reads it back -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_reads_the_file_back_with_our_logits_and_token_ids(
    family: str, bpe: BpeTokenizer, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny(bpe.vocab_size, family)
    export_gguf(model, bpe, tmp_path / "m.gguf")
    # transformers 5.24's GGUF reader leaves two sizes at their defaults (Qwen3's head size, 128,
    # and GPT-2's 1,024 positions): a model of other sizes is read with them given
    extra = {
        "llama": {},
        "llama-qknorm": {"head_dim": model.config.head_dim},
        "gpt2": {"n_positions": model.config.block_size},
    }[family]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", **extra).eval()
    ids = torch.tensor([bpe.encode(TEXT)[:80]])
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf(ids).logits
    assert ours.std() > 0.1
    assert (ours - theirs).abs().max().item() <= 1e-4
    fast = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert fast(TEXT)["input_ids"] == bpe.encode(TEXT)
    assert fast.eos_token_id == bpe.eot_id


# --- llama.cpp runs it ---------------------------------------------------------------------------


@contextlib.contextmanager
def llama_cpp(path: Path, **options: object) -> Iterator:  # of llama_cpp.Llama
    """The file loaded by llama.cpp (llama-cpp-python's bindings), one thread, quiet."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=96, n_batch=96, n_threads=1, verbose=False, **options)
    try:
        yield llm
    finally:
        llm.close()


def memorised(model: GPT, tokenizer: BpeTokenizer, steps: int = 100) -> GPT:
    """`model` trained on CORPUS until it recites it: next tokens that depend on the context and
    on positions (a wrong rotary layout changes them), with margins between the likeliest ones
    far above the rounding of another runtime's arithmetic, as a trained model's are."""
    ids = torch.tensor(tokenizer.encode(CORPUS * 8))
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(len(ids) - 49, (8,), generator=generator)
        x = torch.stack([ids[i : i + 48] for i in starts])
        y = torch.stack([ids[i + 1 : i + 49] for i in starts])
        loss = model(x, y)[1]
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(bpe: BpeTokenizer) -> Callable[[str], GPT]:
    """A memorised model of each family, trained once for the tests that use it."""
    models: dict[str, GPT] = {}

    def of(family: str) -> GPT:
        if family not in models:
            models[family] = memorised(tiny(bpe.vocab_size, family), bpe)
        return models[family]

    return of


@pytest.mark.slow
def test_llama_cpp_tokenizes_as_gptcore_does(tmp_path: Path) -> None:
    # gptcore's own bpe, and a tiktoken vocabulary split by r50k_base's regex (GPT-2's; its ranks
    # learned here, as the real rank file is not available offline)
    learned = BpeTokenizer.train([TEXT] * 4, 600)
    r50k = TiktokenTokenizer(
        "r50k_base", learned.ranks, pretrained_spec("r50k_base")["pat_str"], {"<|endoftext|>": 600}
    )
    for tokenizer in (learned, r50k):
        export_gguf(tiny(tokenizer.vocab_size, "gpt2"), tokenizer, tmp_path / "m.gguf", force=True)
        with llama_cpp(tmp_path / "m.gguf", vocab_only=True) as llm:
            for text in (TEXT, TEXT[17:90], " leading and trailing  ", "12345678 x\n\n\n"):
                ids = llm.tokenize(text.encode(), add_bos=False, special=False)
                assert ids == tokenizer.encode(text), text
                assert llm.detokenize(ids).decode() == text
            assert llm.tokenize(b"<|endoftext|>", add_bos=False, special=True) == [tokenizer.eot_id]
            assert llm.token_eos() == tokenizer.eot_id


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_decodes_greedily_what_gptcore_sample_prints(
    family: str,
    bpe: BpeTokenizer,
    trained: Callable[[str], GPT],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    model = trained(family)
    save_model(tmp_path / "m.pt", model, bpe)
    monkeypatch.chdir(tmp_path)  # no params.yaml: the flags alone decide the sampling
    main(["export", "--model", "m.pt", "--out", "m.gguf"])  # f32
    capsys.readouterr()
    main(
        [
            "sample",
            "--model",
            "m.pt",
            "--prompt",
            PROMPT,
            "--temperature",
            "0",
            "--max-new-tokens",
            str(NEW_TOKENS),
        ]
    )
    printed = capsys.readouterr().out
    ours = generate(
        model, torch.tensor([bpe.encode(PROMPT)]), Sampling(max_new_tokens=NEW_TOKENS, temperature=0.0)
    )
    ours_new = ours[0, len(bpe.encode(PROMPT)) :].tolist()
    assert len(ours_new) == NEW_TOKENS and len(set(ours_new)) >= 20  # no loop of a few tokens
    with llama_cpp(tmp_path / "m.gguf") as llm:
        prompt = llm.tokenize(PROMPT.encode(), add_bos=False, special=False)
        assert prompt == bpe.encode(PROMPT)
        theirs = list(itertools.islice(llm.generate(prompt, temp=0.0, repeat_penalty=1.0), NEW_TOKENS))
        assert theirs == ours_new
        text = llm.create_completion(PROMPT, max_tokens=NEW_TOKENS, temperature=0.0, repeat_penalty=1.0)
    completion = PROMPT + text["choices"][0]["text"]
    assert printed == completion + ("" if completion.endswith("\n") else "\n")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_log_likelihood_of_held_out_text_agrees_within_one_percent(
    family: str, dtype: str, bpe: BpeTokenizer, trained: Callable[[str], GPT], tmp_path: Path
) -> None:
    model = trained(family)
    export_gguf(model, bpe, tmp_path / "m.gguf", dtype=dtype)
    ids = bpe.encode(HELD_OUT)
    targets = torch.tensor(ids[1:])[:, None]
    with torch.no_grad():
        ours = torch.log_softmax(model(torch.tensor([ids]))[0][0, :-1], dim=-1).gather(1, targets)
    with llama_cpp(tmp_path / "m.gguf", logits_all=True) as llm:
        llm.eval(ids)
        logits = torch.from_numpy(np.array(llm.scores[: len(ids) - 1], dtype=np.float32))
    theirs = torch.log_softmax(logits, dim=-1).gather(1, targets)
    assert ours.std() > 1.0  # the model tells likely tokens from unlikely ones: the test has teeth
    assert abs(theirs.mean() - ours.mean()) <= 0.01 * abs(ours.mean()), (theirs.mean(), ours.mean())


@pytest.mark.slow
def test_llama_cpp_renders_the_chat_template_as_gptcore_serve_does(bpe: BpeTokenizer, tmp_path: Path) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = TEMPLATES["alpaca"]
    export_gguf(tiny(bpe.vocab_size, "llama"), bpe, tmp_path / "m.gguf", template=template.to_dict())
    with llama_cpp(tmp_path / "m.gguf", vocab_only=True) as llm:
        jinja = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(jinja, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    for conversation in CONVERSATIONS:
        messages = [{"role": role, "content": text} for role, text in conversation]
        rendered = formatter(messages=messages)  # type: ignore[arg-type]
        assert rendered.prompt == render_chat(conversation, template)
