"""LoRA fine-tuning: adapters on the blocks' projections (built on peft), only they train, they
merge into the weights exactly, they are saved as a peft adapter folder that peft loads onto the
transformers export of the base model, and adapters of another base are refused; the stages with
method: lora, the export command's --adapter, and the memory plan of both methods."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO
from support_models import VARIANTS, perturb_gains_and_biases

from gptcore.checkpoint import load_model, save_model
from gptcore.cli import main as cli_main
from gptcore.errors import DataError
from gptcore.finetune import classify, lora
from gptcore.finetune.instruct import TEMPLATES
from gptcore.hf.convert import export_folder, load_folder
from gptcore.memory import peak_allocated, plan_memory
from gptcore.model import GPT, GPTConfig
from gptcore.params import ParamsError, load_section, parse_section
from gptcore.tokenizer import CharTokenizer

TEXT = "Reply as ROMEO to JULIET. Below is an instruction that describes a task.\n#:<|>"
TOKENIZER = CharTokenizer.train([TEXT])
ALL = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def tiny(variant: str = "llama", seed: int = 0, **changes: Any) -> GPT:
    torch.manual_seed(seed)
    shape = {"vocab_size": TOKENIZER.vocab_size, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}
    model = GPT(GPTConfig(**{**shape, **VARIANTS[variant], **changes})).eval()
    perturb_gains_and_biases(model)
    return model


def instruct_params(**changes: Any) -> Any:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["instruct"]
    return parse_section("instruct", {**raw, "method": "lora", "lora_dropout": 0.0, **changes})


def trained_adapters(model: GPT, targets: list[str] = ALL, rank: int = 4) -> tuple[Any, lora.Settings]:
    """Adapters on `model` whose B is no longer zero, as after some training."""
    modules = lora.target_modules(model, targets, "all", "instruct.lora_targets")
    settings = lora.Settings(rank=rank, alpha=8, dropout=0.0, modules=tuple(modules))
    torch.manual_seed(1)
    tuner = lora.add_adapters(model, settings)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    return tuner, settings


def ids(n: int = 24) -> torch.Tensor:
    return torch.tensor([TOKENIZER.encode(TEXT)[:n], TOKENIZER.encode(TEXT[20:])[:n]])


# --- adapters on the model ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["gpt2", "llama", "llama-qknorm"])
def test_fresh_adapters_change_nothing_and_alone_train(variant: str) -> None:
    model = tiny(variant)
    with torch.no_grad():
        before = model(ids())[0]
    modules = lora.target_modules(model, ALL, "all", "instruct.lora_targets")
    lora.add_adapters(model, lora.Settings(rank=4, alpha=8, dropout=0.0, modules=tuple(modules)))
    with torch.no_grad():
        assert torch.equal(model(ids())[0], before)  # B starts at zero: the base model's outputs
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(modules) == 2 * 4 * model.config.n_layer
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counted == lora.adapter_parameters(tiny(variant), modules, 4)
    # a step moves the adapters and nothing else
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    _, loss = model(ids()[:, :-1], ids()[:, 1:])
    assert loss is not None
    loss.backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    with torch.no_grad():
        assert not torch.equal(model.eval()(ids())[0], before)


@pytest.mark.parametrize("variant", ["gpt2", "llama", "llama-qknorm", "llama-untied"])
def test_merging_gives_the_adapted_outputs_in_a_plain_model(variant: str) -> None:
    model = tiny(variant)
    keys = list(model.state_dict())
    tuner, _ = trained_adapters(model)
    with torch.no_grad():
        adapted = model(ids())[0]
    merged = lora.merge(tuner)
    assert type(merged) is GPT and list(merged.state_dict()) == keys  # a model file saves it as ever
    assert all(p.requires_grad for p in merged.parameters())
    with torch.no_grad():
        out = merged(ids())[0]
    assert (out - adapted).abs().max().item() < 1e-5 and adapted.std() > 0.1


def test_targets_pick_modules_by_name_or_by_their_ending_in_the_last_blocks() -> None:
    model = tiny("llama", n_layer=3)
    assert lora.projections(model) == ALL
    assert lora.target_modules(model, ["c_proj"], "all", "k") == [
        f"h.{i}.{name}" for i in range(3) for name in ("attn.c_proj", "mlp.c_proj")
    ]
    assert lora.target_modules(model, ["attn.c_attn"], 1, "k") == ["h.2.attn.c_attn"]
    assert lora.target_modules(model, ALL, 5, "k") == lora.target_modules(model, ALL, "all", "k")


@pytest.mark.parametrize("target", ["q_proj", "attn", "h.0.attn.c_attn", "c_att", "wte"])
def test_a_target_that_names_no_module_lists_the_module_names(target: str) -> None:
    model = tiny("llama")
    with pytest.raises(ParamsError) as caught:
        lora.target_modules(model, ["mlp.c_fc", target], "all", "instruct.lora_targets")
    message = str(caught.value)
    assert f"instruct.lora_targets names {target!r}" in message
    assert "attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj" in message


# --- the adapter folder --------------------------------------------------------------------------------


def saved_adapter(folder: Path, variant: str = "llama") -> tuple[GPT, GPT, lora.Base]:
    """(base model, the same with trained adapters merged, the base's identity); the adapters saved
    in `folder`."""
    base_model = tiny(variant)
    base = lora.Base.of(base_model, "models/model.pt")
    model = tiny(variant)
    tuner, settings = trained_adapters(model)
    lora.save_adapter(
        folder, model, base, settings, "instruct", extra={"template": TEMPLATES["phi3"].to_dict()}
    )
    return base_model, lora.merge(tuner), base


@pytest.mark.parametrize("variant", ["gpt2", "llama", "llama-qknorm"])
def test_an_adapter_folder_is_small_and_merges_back_to_the_trained_model(
    variant: str, tmp_path: Path
) -> None:
    base_model, trained, base = saved_adapter(tmp_path / "adapter", variant)
    names = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", "gptcore_adapter.json"]
    weights = sum(p.numel() * 4 for p in base_model.parameters())
    assert (tmp_path / "adapter/adapter_model.safetensors").stat().st_size < weights / 2
    adapter = lora.read_adapter(tmp_path / "adapter")
    assert adapter.base == base and adapter.facts["template"]["name"] == "phi3"
    merged = lora.merged(base_model, tmp_path / "adapter", "models/model.pt")
    for (name, ours), theirs in zip(merged.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6), name


def test_adapters_for_another_base_model_are_refused(tmp_path: Path) -> None:
    saved_adapter(tmp_path / "adapter")
    adapter = lora.read_adapter(tmp_path / "adapter")
    other_shape = tiny("llama", n_embd=64)
    with pytest.raises(
        DataError, match=r"adapters for another base model than other\.pt \(n_embd 32 there, 64 here"
    ):
        lora.check_base(adapter, lora.Base.of(other_shape, "other.pt"))
    other_weights = tiny("llama", seed=7)  # the same shape, another run's weights
    with pytest.raises(DataError, match=r"adapters trained on other weights than those of other\.pt"):
        lora.merged(other_weights, tmp_path / "adapter", "other.pt")
    with pytest.raises(DataError, match="adapters for another base model"):
        lora.merged(tiny("gpt2"), tmp_path / "adapter", "other.pt")


def test_a_damaged_adapter_folder_is_refused_naming_what_is_wrong(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    saved_adapter(tmp_path / "adapter")
    folder = tmp_path / "adapter"
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
    save_file({**tensors, key: tensors[key][:, :-1].contiguous()}, str(weights))
    with pytest.raises(
        DataError, match=r"q_proj's adapter is \(4, 31\) x \(32, 4\), rank 4 on its base implies"
    ):
        lora.read_adapter(folder)
    save_file({**tensors, key: tensors[key] + 1}, str(weights))  # q's A no longer k's and v's
    with pytest.raises(DataError, match=r"the parts of h\.\d\.attn\.c_attn .* differ in lora_A"):
        lora.read_adapter(folder)
    (folder / "gptcore_adapter.json").unlink()
    with pytest.raises(
        DataError, match="is not an adapter folder of gptcore: gptcore_adapter.json not found"
    ):
        lora.read_adapter(folder)
    (folder / "gptcore_adapter.json").write_text('{"format": "gptcore.adapter", "version": 1, "rank": NaN}')
    with pytest.raises(DataError):
        lora.read_adapter(folder)


def hf_export(base_model: GPT, folder: Path) -> None:
    export_folder(base_model, TOKENIZER, folder)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gpt2", "llama", "llama-qknorm"])
def test_peft_loads_the_adapter_onto_the_transformers_export_and_computes_the_merged_model(
    variant: str, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model, merged, _ = saved_adapter(tmp_path / "adapter", variant)
    hf_export(base_model, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(ids()).logits
        ours = merged(ids())[0]
        base_logits = base_model(ids())[0]
    assert (ours - base_logits).abs().max().item() > 0.1  # the adapters change the outputs: teeth
    assert (ours - theirs).abs().max().item() <= 1e-4
    # and merged by peft, the exported weights are gptcore's merged ones
    merged_hf = peft_model.merge_and_unload()
    with torch.no_grad():
        assert (merged_hf(ids()).logits - ours).abs().max().item() <= 1e-4


# --- export --adapter ------------------------------------------------------------------------------------


def test_export_merges_an_adapter_and_refuses_one_of_another_base(tmp_path: Path) -> None:
    base_model, merged, _ = saved_adapter(tmp_path / "adapter")
    save_model(tmp_path / "model.pt", base_model, TOKENIZER)
    args = ["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "hf")]
    cli_main([*args, "--adapter", str(tmp_path / "adapter")])
    exported, _, _ = load_folder(tmp_path / "hf")
    with torch.no_grad():
        assert (exported(ids())[0] - merged(ids())[0]).abs().max().item() <= 1e-5
    save_model(tmp_path / "other.pt", tiny("llama", seed=3), TOKENIZER)
    other = ["export", "--model", str(tmp_path / "other.pt"), "--out", str(tmp_path / "hf2")]
    with pytest.raises(SystemExit):
        cli_main([*other, "--adapter", str(tmp_path / "adapter")])
    assert not (tmp_path / "hf2").exists()


# --- params ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "qlora"}, r"instruct\.method = 'qlora' is invalid: allowed: full .*, lora"),
        ({"lora_rank": 0}, r"instruct\.lora_rank = 0 is invalid: must be > 0"),
        ({"lora_alpha": 0}, r"instruct\.lora_alpha = 0 is invalid: must be > 0"),
        ({"lora_dropout": 1.0}, r"instruct\.lora_dropout = 1\.0 is invalid: must lie in \[0, 1\)"),
        ({"lora_targets": []}, r"instruct\.lora_targets = \[\] is invalid: must list module names"),
        ({"lora_targets": ["c_fc", "c_fc"]}, r"instruct\.lora_targets = .* names a module twice"),
        ({"method": "full", "lora_init": "a"}, r"instruct\.lora_init = 'a' is invalid: .*method: lora"),
    ],
)
def test_bad_lora_params_are_refused_naming_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        instruct_params(**changes)


def test_classify_refuses_lora_on_random_weights_and_on_no_block() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["classify"]
    with pytest.raises(ParamsError, match=r"classify\.init = 'random' is invalid: lora adapts pretrained"):
        parse_section("classify", {**raw, "method": "lora", "init": "random"})
    with pytest.raises(ParamsError, match=r"classify\.train_blocks = 0 is invalid: .* 0 adapts none"):
        parse_section("classify", {**raw, "method": "lora", "train_blocks": 0})
    assert load_section("classify", REPO / "params.yaml").method == "full"  # the default trains all
    assert load_section("instruct", REPO / "params.yaml").method == "full"


# --- the memory plan ------------------------------------------------------------------------------------


def test_the_plan_counts_gradients_and_optimizer_state_for_the_trained_parameters_only() -> None:
    model = tiny("llama")
    n = sum(p.numel() for p in model.parameters())
    full = plan_memory(model.config, 4)
    modules = lora.target_modules(model, ALL, "all", "k")
    adapters = lora.adapter_parameters(model, modules, 8)
    lora_plan = plan_memory(model.config, 4, trainable=adapters, adapters=adapters)
    assert (full.gradients, full.optimizer, full.weights) == (4 * n, 8 * n, 4 * n)
    assert (lora_plan.gradients, lora_plan.optimizer) == (4 * adapters, 8 * adapters)
    assert lora_plan.weights == 4 * (n + adapters)
    rows = dict(lora_plan.rows())
    assert f"{adapters:,} of {n + adapters:,}" in rows["  trainable parameters"]


@pytest.mark.parametrize("family", [{}, {"arch": "llama", "tie_embeddings": False}])
@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_the_lora_plan_matches_what_a_lora_step_allocates_within_10_percent(
    family: dict[str, Any], dropout: float
) -> None:
    config = GPTConfig(64, 64, 4, 4, 128, **family)
    x, y = torch.randint(0, 64, (2, 8, 64))

    def two_steps() -> None:
        model = GPT(config)
        lora.add_adapters(
            model, lora.Settings(8, 16, dropout, tuple(lora.target_modules(model, ALL, "all", "k")))
        )
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(2):
            _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    model = GPT(config)
    modules = lora.target_modules(model, ALL, "all", "k")
    adapters = lora.adapter_parameters(model, modules, 8)
    per_token = lora.activation_bytes_per_token(model, modules, 8, dropout)
    plan = plan_memory(config, 8, trainable=adapters, adapters=adapters, adapter_per_token=per_token)
    assert plan.total == pytest.approx(peak_allocated(two_steps), rel=0.1)


def test_info_shows_both_methods_trainable_parameters_and_optimizer_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny("llama")
    save_model(tmp_path / "model.pt", model, TOKENIZER)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["instruct"].update(lora_rank=4, lora_targets=["c_attn"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cli_main(["info", "--model", "model.pt"])
    out = capsys.readouterr().out
    n = sum(p.numel() for p in model.parameters())
    adapters = 2 * 4 * (32 + 3 * 32)  # two blocks' c_attn: r x (in + out)
    full = out[out.index("fine-tuning plan (instruct, method: full)") :]
    assert re.match(r"fine-tuning plan \(instruct, method: full\)\s+the params' method; every weight", full)
    adapted = full[full.index("fine-tuning plan (instruct, method: lora)") :]
    full = full[: len(full) - len(adapted)]
    assert "rank 4 adapters on c_attn of 2 blocks" in adapted
    for part, trained, total in ((full, n, n), (adapted, adapters, n + adapters)):
        assert re.search(rf"trainable parameters\s+{trained:,} of {total:,}", part)
        assert re.search(rf"gradients\s+{4 * trained:,} bytes", part)
        assert re.search(rf"optimizer \(AdamW\)\s+{8 * trained:,} bytes", part)
        assert re.search(r"peak\s+[\d.]+ \w+ per process fits in", part)


# --- the stages ------------------------------------------------------------------------------------------


def write_records(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for split, count in (("train", n), ("val", 4), ("test", 4)):
        rows = [
            {
                "instruction": f"Reply as ROMEO {i % 3}.",
                "input": "",
                "output": "Below is a task."[: 6 + i % 7],
            }
            for i in range(count)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def stage_workspace(path: Path, section: str, **changes: Any) -> Path:
    path.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["instruct"].update(
        template="phi3", epochs=1, batch_size=4, eval_interval=2, samples=1, max_new_tokens=4, threads=1
    )
    params["classify"].update(epochs=1, batch_size=4, eval_interval=2, threads=1)
    params[section]["learning_rate"] = 1.0e-2
    params[section].update(device="cpu", lora_rank=4, **changes)
    (path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    save_model(path / "models/model.pt", tiny("llama", block_size=64), TOKENIZER)
    write_records(path / "data/finetune/instruct", 12)
    classes = path / "data/finetune/classify"
    classes.mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = [{"text": "ROMEO " * (1 + i % 4), "label": "ab"[i % 2]} for i in range(8)]
        (classes / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_stage(ws: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.chdir(ws)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    importlib.import_module(f"stages.{name}").main()


@pytest.mark.slow
def test_the_instruct_stage_with_lora_saves_small_adapters_and_a_merged_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    ws = stage_workspace(tmp_path / "ws", "instruct", method="lora")
    run_stage(ws, "instruct", monkeypatch)
    report = json.loads((ws / "reports/instruct.json").read_text())
    base, _, _ = load_model(ws / "models/model.pt")
    n = sum(p.numel() for p in base.parameters())
    assert report["method"] == "lora" and 0 < report["trainable_parameters"] < n / 4
    assert report["test_response_loss"] < report["base_test_response_loss"]
    adapter = lora.read_adapter(ws / "models/instruct_adapter")
    assert adapter.base == lora.Base.of(base, "models/model.pt")
    assert adapter.facts["template"]["name"] == "phi3"
    # models/instruct.pt is the base with the saved adapters merged: what chat and export read
    tuned, _, meta = load_model(ws / "models/instruct.pt")
    assert meta["template"]["name"] == "phi3"
    expected = lora.merged(base, ws / "models/instruct_adapter", "models/model.pt")
    for ours, theirs in zip(tuned.state_dict().values(), expected.state_dict().values(), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)
    # the same params and data give the same adapter, byte for byte
    first = {p.name: p.read_bytes() for p in (ws / "models/instruct_adapter").iterdir()}
    run_stage(ws, "instruct", monkeypatch)
    assert {p.name: p.read_bytes() for p in (ws / "models/instruct_adapter").iterdir()} == first


@pytest.mark.slow
def test_lora_init_continues_its_adapters_and_refuses_another_bases_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    ws = stage_workspace(tmp_path / "ws", "instruct", method="lora")
    run_stage(ws, "instruct", monkeypatch)
    os.replace(ws / "models/instruct_adapter", ws / "earlier")
    first = json.loads((ws / "reports/instruct.json").read_text())
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["instruct"]["lora_init"] = "earlier"
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(ws, "instruct", monkeypatch)
    again = json.loads((ws / "reports/instruct.json").read_text())
    assert again["test_response_loss"] < first["test_response_loss"]  # it went on from there
    # a model trained anew is another base: refused before a step, nothing written
    save_model(ws / "models/model.pt", tiny("llama", seed=5, block_size=64), TOKENIZER)
    for output in ("models/instruct.pt", "reports/instruct.json"):
        (ws / output).unlink()
    logged = (ws / "dvclive/instruct/metrics.json").read_text()
    with pytest.raises(
        DataError, match="earlier holds adapters trained on other weights than those of models/model.pt"
    ):
        run_stage(ws, "instruct", monkeypatch)
    assert not (ws / "models/instruct.pt").exists() and not (ws / "reports/instruct.json").exists()
    assert (ws / "dvclive/instruct/metrics.json").read_text() == logged  # no step was taken


@pytest.mark.slow
def test_the_classify_stage_with_lora_trains_adapters_and_head_and_full_leaves_the_folder_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    ws = stage_workspace(tmp_path / "ws", "classify", method="lora", train_blocks=1, lora_targets=["c_fc"])
    run_stage(ws, "classify", monkeypatch)
    adapter = lora.read_adapter(ws / "models/classifier_adapter")
    assert adapter.settings.modules == ("h.1.mlp.c_fc",) and adapter.facts["labels"] == ["a", "b"]
    assert adapter.head is not None and set(adapter.head) == {"weight", "bias"}
    report = json.loads((ws / "reports/classify.json").read_text())
    head = 2 * 32 + 2  # and rank 4 on c_fc, 32 in, 2 x 128 out (SwiGLU gate and up)
    assert report["method"] == "lora" and report["trainable_parameters"] == head + 4 * (32 + 2 * 128)
    model, _, labels, _ = classify.load(ws / "models/classifier.pt")
    assert labels == ["a", "b"] and torch.equal(model.head.weight, adapter.head["weight"])
    base, _, _ = load_model(ws / "models/model.pt")
    merged = lora.merged(base, ws / "models/classifier_adapter", "models/model.pt")
    backbone = {k: v for k, v in model.backbone.state_dict().items()}
    assert all(torch.allclose(backbone[k], v, atol=1e-6) for k, v in merged.state_dict().items())
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["classify"]["method"] = "full"
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(ws, "classify", monkeypatch)
    assert list((ws / "models/classifier_adapter").iterdir()) == []


def test_a_lora_target_naming_no_module_stops_the_stage_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    ws = stage_workspace(tmp_path / "ws", "instruct", method="lora", lora_targets=["q_proj"])
    with pytest.raises(ParamsError, match="they hold attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj"):
        run_stage(ws, "instruct", monkeypatch)
    assert not (ws / "models/instruct.pt").exists() and not (ws / "dvclive").exists()


def test_settings_of_params_are_what_the_adapter_records() -> None:
    params = instruct_params(lora_rank=2, lora_alpha=4, lora_dropout=0.1)
    settings = lora.Settings.of(params, ["h.0.attn.c_attn"])
    assert dataclasses.astuple(settings) == (2, 4, 0.1, ("h.0.attn.c_attn",))
