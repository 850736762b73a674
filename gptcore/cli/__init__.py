"""The `gptcore` command: `chat` with a trained model, `sample` completions, `info` on a model's size,
`classify` texts with a fine-tuned classifier, `export` a model to the Hugging Face format, `serve`
a model over HTTP (an OpenAI-compatible API and a chat page; see gptcore.serve.server). `--model` takes a
model file or a Hugging Face folder.

Sampling options default to the `sample` section of params.yaml when the file is there (the same
settings the sample stage records, so `gptcore sample` reproduces reports/samples.md); outside a
gptcore checkout they default to plain sampling: temperature 1, no top-k or top-p, a random seed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from gptcore.autotune import Decision, cached_decision, decide
from gptcore.checkpoint import MODEL_FILE, load_model
from gptcore.device import resolve_device
from gptcore.errors import DataError, GptcoreError, run_main
from gptcore.finetune import classify
from gptcore.finetune.instruct import render_prompt, reply_stops, template_of
from gptcore.generate import complete_batch, seeded_generator, stream_completion
from gptcore.hf.convert import export_folder, load_any
from gptcore.memory import human_bytes
from gptcore.model import GPT, GPTConfig, flops_per_token
from gptcore.params import SampleParams, TrainParams, device_name_problem, load_section
from gptcore.sampling import RULES, Sampling, SamplingError, check_setting
from gptcore.tokenizer import Tokenizer, load_tokenizer
from gptcore.train import attention_kernels, memory_plan, planned_config, torch_threads

DEFAULT_CLASSIFIER = Path("models/classifier.pt")
DEFAULT_PARAMS = Path("params.yaml")
VOCAB_DIR = Path("data/vocab")
# Tokens given to a model whose vocabulary is not built yet: a byte-level alphabet, the size of
# a char vocabulary of a mostly-ASCII corpus rounded up; only the embedding rows depend on it.
PLACEHOLDER_VOCAB_SIZE = 256


# ---------------------------------------------------------------------------------------------
# arguments


def _typed(
    convert: Callable[[str], float], ok: Callable[[float], bool], allowed: str
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value

    return parse


_positive_int = _typed(int, lambda v: v > 0, "an integer > 0")


# how the text of a flag or a chat /command becomes each sampling setting's value
_CONVERT: dict[str, Callable[[str], Any]] = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "max_new_tokens": int,
    "seed": int,
}


def parse_setting(field: str, text: str) -> Any:
    """The value of sampling setting `field` written as `text`; SamplingError, with the message
    that params.yaml and the Sampling type give, when it is not one."""
    try:
        value = _CONVERT[field](text.strip())
    except ValueError:
        raise SamplingError(field, text.strip(), RULES[field][1]) from None
    check_setting(field, value)
    return value


def _flag(field: str) -> Callable[[str], Any]:
    """An argparse type for the flag of sampling setting `field`."""

    def parse(text: str) -> Any:
        try:
            return parse_setting(field, text)
        except SamplingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


# the sampling settings that have a flag, and what each does (--seed is chat's and sample's:
# a server seeds each request on its own)
_SAMPLING_FLAGS = {
    "temperature": "softmax temperature; 0 is greedy",
    "top_k": "keep the k most likely tokens; 0 is off",
    "top_p": "keep the smallest set of tokens whose probability reaches p; 1 is off",
    "max_new_tokens": "tokens generated per completion",
    "seed": "seeds sampling",
}


def _stop_flag(text: str) -> str:
    try:
        check_setting("stop", (text,))
    except SamplingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_sampling_flag(parser: argparse.ArgumentParser, field: str) -> None:
    """The flag of sampling setting `field`; its help shows the plain-sampling fallback."""
    plain = getattr(Sampling(), field)  # the default outside a checkout
    parser.add_argument(
        f"--{field.replace('_', '-')}",
        type=_flag(field),
        help=f"{_SAMPLING_FLAGS[field]} (default: sample.{field}, else {'random' if plain is None else plain})",
    )


def _device(text: str) -> str:
    problem = device_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: {problem}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptcore", description="Chat with, sample from and size up gptcore models."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{chat,sample,info,classify,export,serve}"
    )

    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument(
        "--model",
        type=Path,
        default=MODEL_FILE,
        help="model file or Hugging Face folder (default: %(default)s)",
    )
    sampling.add_argument(
        "--params",
        type=Path,
        help=f"params file whose sample section gives the defaults (default: {DEFAULT_PARAMS} if it exists)",
    )
    for field in _SAMPLING_FLAGS:
        if field != "seed":
            _add_sampling_flag(sampling, field)
    sampling.add_argument(
        "--stop",
        action="append",
        type=_stop_flag,
        metavar="TEXT",
        help="end a completion just before this text; repeat for several (default: sample.stop)",
    )
    sampling.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
    )

    chat = commands.add_parser(
        "chat", parents=[sampling], help="continue each line you type (or pipe in) with the model"
    )
    chat.add_argument(
        "--instruction",
        metavar="TEXT",
        help="instruction-tuned models: the instruction of every turn, each line then being its input "
        "(default: each line is the instruction)",
    )
    chat.set_defaults(run=cmd_chat)
    _add_sampling_flag(chat, "seed")

    sample = commands.add_parser("sample", parents=[sampling], help="print completions of prompts")
    sample.add_argument(
        "--prompt",
        action="append",
        dest="prompts",
        metavar="TEXT",
        help="prompt to complete; repeat for several (default: sample.prompts)",
    )
    sample.add_argument(
        "--num-samples",
        type=_positive_int,
        default=1,
        help="completions per prompt (default: %(default)s)",
    )
    _add_sampling_flag(sample, "seed")
    sample.set_defaults(run=cmd_sample)

    info = commands.add_parser(
        "info", help="parameters, FLOPs and memory of a model or of params.yaml's train section"
    )
    info.add_argument("--model", type=Path, help=f"model file (default: {MODEL_FILE} if it exists)")
    info.add_argument("--params", type=Path, help=f"params file (default: {DEFAULT_PARAMS} if it exists)")
    info.add_argument(
        "--measure",
        action="store_true",
        help="time the dtype/compile candidates now if this machine has no figures for them yet",
    )
    info.set_defaults(run=cmd_info)

    classify_cmd = commands.add_parser("classify", help="the label and class probabilities of texts")
    classify_cmd.add_argument(
        "texts", nargs="+", metavar="TEXT", help="text to classify; several for several"
    )
    classify_cmd.add_argument(
        "--model", type=Path, default=DEFAULT_CLASSIFIER, help="classifier file (default: %(default)s)"
    )
    classify_cmd.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    classify_cmd.set_defaults(run=cmd_classify)

    export = commands.add_parser(
        "export", help="write a model file as a Hugging Face folder (config, safetensors, tokenizer)"
    )
    export.add_argument("--model", type=Path, default=MODEL_FILE, help="model file (default: %(default)s)")
    export.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write: a new or empty one, or an earlier export (only its files are replaced)",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="write into an existing folder of other files too (none of them is replaced or removed)",
    )
    export.set_defaults(run=cmd_export)

    serve = commands.add_parser(
        "serve",
        parents=[sampling],
        help="an OpenAI-compatible HTTP API and a chat page; the sampling flags are the defaults of requests",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)"
    )
    serve.add_argument(
        "--port",
        type=_typed(int, lambda v: 0 <= v < 65536, "a port number"),
        default=8000,
        help="(default: %(default)s)",
    )
    serve.add_argument(
        "--name", default="gptcore", help="the model id clients ask for (default: %(default)s)"
    )
    serve.add_argument(
        "--api-key",
        help="require Authorization: Bearer KEY on every /v1 route (default: $GPTCORE_API_KEY, else none); "
        "an empty key is an error",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="without an API key, also answer requests whose Host is NAME (repeat for several; "
        "localhost, IP addresses and --host are always answered)",
    )
    for flag, default, what in (
        ("--max-tokens-limit", 2048, "largest max_tokens a request may ask for"),
        ("--max-batch", 16, "choices generated together, one forward pass per token for all; more wait"),
        ("--max-body-bytes", 1 << 20, "largest request body accepted, in bytes"),
        ("--max-choices", 16, "choices one request may ask for: its prompts x n"),
        ("--max-prompt-tokens", 32768, "tokens of one request's prompts together"),
        ("--max-waiting", 256, "choices waiting for a slot, across requests; past it requests get 503"),
    ):
        serve.add_argument(flag, type=_positive_int, default=default, help=f"{what} (default: %(default)s)")
    serve.add_argument(
        "--threads",
        type=_typed(int, lambda v: v >= 0, "an integer >= 0"),
        default=0,
        help="CPU threads for torch (0: torch's default, one per core)",
    )
    serve.set_defaults(run=cmd_serve)
    return parser


def _params_file(args: argparse.Namespace) -> Path | None:
    """--params when given (it must exist), else params.yaml when the current folder has one."""
    if args.params is not None:
        return args.params
    return DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else None


def resolve_sampling(args: argparse.Namespace) -> tuple[Sampling, SampleParams | None]:
    """Flags first, then params.yaml's sample section (when the file exists), then plain sampling."""
    params_file = _params_file(args)
    section: SampleParams | None = load_section("sample", params_file) if params_file else None

    sampling = section.sampling() if section is not None else Sampling()
    flags = {field: getattr(args, field, None) for field in _SAMPLING_FLAGS}  # serve has no --seed
    flags["stop"] = tuple(args.stop) if args.stop else None
    sampling = replace(sampling, **{k: v for k, v in flags.items() if v is not None})
    if sampling.seed is None:
        # a seed drawn here and reported, so that a run the user liked can be repeated
        sampling = replace(sampling, seed=int.from_bytes(os.urandom(4), "little") % 2**31)
    return sampling, section


def _load(args: argparse.Namespace) -> tuple[GPT, Tokenizer, dict, torch.device]:
    device = resolve_device(args.device, key="--device")
    model, tokenizer, meta = load_any(args.model, device)
    return model, tokenizer, meta, device


# ---------------------------------------------------------------------------------------------
# chat and sample


def _read_line(interactive: bool) -> str | None:
    """The next line of input without its line ending, or None at end of input."""
    if interactive:
        try:
            return input("> ")  # input() gives line editing and history where readline exists
        except EOFError:
            return None
    line = sys.stdin.readline()
    if not line:
        return None
    return line.rstrip("\r\n")


CHAT_HELP = """commands (a line that starts with /):
  /temperature X   softmax temperature; 0 is greedy
  /top_k N         keep the N most likely tokens; 0 keeps all
  /top_p P         keep the smallest set of tokens whose probability reaches P, in (0, 1]; 1 keeps all
  /max_tokens N    new tokens per reply
  /reset           forget the conversation so far
  /help            this list
The model sees the conversation so far (its last block_size tokens).
Ctrl-C stops a reply, or clears the line being typed; Ctrl-D quits."""

# chat /command -> the sampling setting it changes
_CHAT_SETTINGS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "max_tokens": "max_new_tokens",
}


def chat_command(line: str, sampling: Sampling) -> tuple[Sampling, str, bool]:
    """Apply one chat /command: (the settings after it, what to tell the user, whether to forget
    the conversation). An unknown command or a bad value raises GptcoreError (for a bad value,
    the Sampling type's message, as params.yaml and the flags give it) and changes nothing."""
    name, _, value = line[1:].strip().partition(" ")
    if name == "help":
        return sampling, CHAT_HELP, False
    if name == "reset":
        return sampling, "[conversation cleared]", True
    if name not in _CHAT_SETTINGS:
        raise GptcoreError(f"unknown command /{name}: /help lists them")
    field = _CHAT_SETTINGS[name]
    try:
        sampling = replace(sampling, **{field: parse_setting(field, value)})
    except SamplingError as exc:
        raise GptcoreError(f"/{name}: {exc}") from None
    return sampling, f"[{sampling.describe()}]", False


def _write_completion(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    sampling: Sampling,
    generator: torch.Generator | None,
    written: list[str],
) -> None:
    """Stream the completion of `prompt` to stdout as it is generated, appending each piece to
    `written` (so a reply stopped by Ctrl-C still knows what it said)."""
    for piece in stream_completion(model, tokenizer, prompt, sampling, generator=generator):
        sys.stdout.write(piece)
        sys.stdout.flush()
        written.append(piece)


def _note_unknown(tokenizer: Tokenizer, text: str, noted: set[str]) -> None:
    """Say, once per character, which characters of a prompt the vocabulary lacks."""
    new = [ch for ch in tokenizer.unknown_characters(text) if ch not in noted]
    if new:
        noted.update(new)
        shown = ", ".join(repr(ch) for ch in new[:10]) + (
            f" and {len(new) - 10} more" if len(new) > 10 else ""
        )
        print(f"note: {shown} not in the model's vocabulary: it reads each as <|unk|>", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    # Ctrl-C stops a reply: a process started in the background by a non-interactive shell
    # inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt; take it back
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sampling, _ = resolve_sampling(args)
    model, tokenizer, meta, device = _load(args)
    # an instruction-tuned model: every line is wrapped in its template, seen alone (the template
    # holds one turn), and the reply ends where the template says
    template = template_of(meta)
    if template is not None:
        sampling = replace(sampling, stop=sampling.stop + reply_stops(template))
    elif args.instruction is not None:
        raise GptcoreError(
            f"--instruction needs an instruction-tuned model; {args.model} has no prompt template"
        )
    interactive = sys.stdin.isatty()
    generator = seeded_generator(sampling)
    # the banner goes to stderr: stdout carries only the model's text, so a piped run's output
    # is exactly the completions
    if template is None:
        turns = "Each line continues the conversation"
    else:
        turns = f"Prompt template {template.name}: each line is a new " + (
            "input to the instruction" if args.instruction is not None else "instruction"
        )
    print(
        f"gptcore chat: {args.model} ({model.num_params(non_embedding=False):,} parameters, "
        f"{tokenizer.kind} tokenizer of {tokenizer.vocab_size} tokens) on {device}\n"
        f"{sampling.describe()}\n"
        f"{turns}; /help lists the commands. Ctrl-C stops a reply; Ctrl-D quits.",
        file=sys.stderr,
    )
    # the conversation as the model sees it: each line and its reply, as printed; kept to a tail
    # comfortably longer than the block_size tokens the model reads
    conversation = ""
    keep_chars = 16 * model.config.block_size
    noted: set[str] = set()
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:
            if interactive:  # Ctrl-C at the prompt drops what was typed, as in a shell; Ctrl-D quits
                print(file=sys.stderr)
                continue
            line = None  # a pipe has no line to clear: stop, as at its end
        if line is None:
            if interactive:
                print(file=sys.stderr)  # end the line the prompt is on
            return
        if line.startswith("/"):
            try:
                sampling, message, reset = chat_command(line, sampling)
            except GptcoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                continue
            conversation = "" if reset else conversation
            print(message, file=sys.stderr)
            continue
        _note_unknown(tokenizer, line, noted)
        written: list[str] = []
        if template is None:
            prompt = conversation + line
        elif args.instruction is not None:
            prompt = render_prompt(template, args.instruction, line)
        else:
            prompt = render_prompt(template, line)
        try:
            _write_completion(model, tokenizer, prompt, sampling, generator, written)
        except KeyboardInterrupt:  # Ctrl-C during a reply: drop the rest of it, back to the prompt
            sys.stdout.write("\n")
            print("[stopped]", file=sys.stderr)
            written.append("\n")
        reply = "".join(written)
        if not reply.endswith("\n"):
            sys.stdout.write("\n")
            reply += "\n"
        sys.stdout.flush()
        conversation = (conversation + line + reply)[-keep_chars:]


def cmd_sample(args: argparse.Namespace) -> None:
    sampling, section = resolve_sampling(args)
    prompts = args.prompts or (section.prompts if section is not None else None)
    if not prompts:
        raise GptcoreError(
            f"no prompt: pass --prompt TEXT (or run where {DEFAULT_PARAMS} lists sample.prompts)"
        )
    model, tokenizer, _, _ = _load(args)
    total = len(prompts) * args.num_samples
    count = 0
    noted: set[str] = set()
    for prompt in prompts:
        _note_unknown(tokenizer, prompt, noted)
        # seeded once per prompt, as the sample stage does: a prompt's completions do not depend
        # on which prompts came before it, and the first one matches reports/samples.md
        generator = seeded_generator(sampling)
        if args.num_samples == 1:  # streamed as it is generated
            count += 1
            if total > 1:
                print(f"--- sample {count} of {total} ---")
            written = [prompt]
            sys.stdout.write(prompt)
            _write_completion(model, tokenizer, prompt, sampling, generator, written)
            if not "".join(written).endswith("\n"):
                sys.stdout.write("\n")
            continue
        # several samples of a prompt: the rows of one batch, one forward pass per step for all
        texts = complete_batch(model, tokenizer, prompt, args.num_samples, sampling, generator=generator)
        for text in texts:
            count += 1
            print(f"--- sample {count} of {total} ---")
            full = prompt + text
            print(full, end="" if full.endswith("\n") else "\n")
    sys.stdout.flush()


def cmd_classify(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    model, tokenizer, labels, _ = classify.load(args.model, device)
    probs = classify.classify_texts(model, tokenizer, args.texts, device)
    for text, row in zip(args.texts, probs.tolist(), strict=True):
        if len(args.texts) > 1:
            print(f"--- {text[:60]!r}")
        print(labels[max(range(len(row)), key=row.__getitem__)])
        for label, p in sorted(zip(labels, row, strict=True), key=lambda lp: -lp[1]):
            print(f"  {label}: {p:.4f}")


def cmd_serve(args: argparse.Namespace) -> None:
    # imported here: the web stack is needed by this command only
    from gptcore.serve.server import ServeOptions, serve

    sampling, _ = resolve_sampling(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model.exists():
        raise DataError(f"{args.model} not found: train a model first (dvc repro train) or pass --model")
    options = ServeOptions(
        model_path=args.model,
        name=args.name,
        defaults=replace(sampling, seed=None),  # each request has its own seed
        device=str(resolve_device(args.device, key="--device")),
        max_tokens_limit=args.max_tokens_limit,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        api_key=_api_key(args.api_key),
        max_choices=args.max_choices,
        max_prompt_tokens=args.max_prompt_tokens,
        max_waiting=args.max_waiting,
        allowed_hosts=(*args.allow_host, args.host),
    )
    serve(options, args.host, args.port)


def _api_key(flag: str | None) -> str | None:
    """--api-key, else $GPTCORE_API_KEY, else None (no key). A key given but empty is an error, not
    "no key": `--api-key "$UNSET_VAR"` must not serve everyone."""
    key: str | None
    if flag is not None:
        key, where, instead = flag, "--api-key", "leave the flag out"
    else:
        key, where, instead = os.environ.get("GPTCORE_API_KEY"), "$GPTCORE_API_KEY", "unset it"
    if key is not None and not key.strip():
        raise GptcoreError(f"{where} is empty: give a key, or {instead} to serve without one")
    return key.strip() if key is not None else None


# ---------------------------------------------------------------------------------------------
# info


def _flops(n: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} FLOP"


def _scalar(value: object) -> str:
    """A meta value as text; "" for containers, which info leaves out."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return ""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


def _vocab_from_folder() -> tuple[int, str]:
    """(vocab size, how it was found) from data/vocab, or the placeholder when there is none."""
    if not (VOCAB_DIR / "tokenizer.json").is_file():
        return PLACEHOLDER_VOCAB_SIZE, (
            f"{PLACEHOLDER_VOCAB_SIZE} (placeholder: vocabulary unknown, {VOCAB_DIR}/tokenizer.json not found; "
            "run dvc repro build_vocab)"
        )
    tokenizer = load_tokenizer(VOCAB_DIR)
    return tokenizer.vocab_size, f"{tokenizer.vocab_size} ({tokenizer.kind} tokenizer in {VOCAB_DIR})"


def cmd_info(args: argparse.Namespace) -> None:
    params_file = _params_file(args)
    train: TrainParams | None = load_section("train", params_file) if params_file else None
    model_path = args.model if args.model is not None else (MODEL_FILE if MODEL_FILE.is_file() else None)
    rows: list[tuple[str, str]] = []
    if model_path is not None:
        model, tokenizer, meta = load_any(model_path, "cpu")
        config = model.config
        rows.append(("model file", str(model_path)))
        # small facts the training run recorded (steps, tokens seen, losses)
        rows += [(f"  {key}", _scalar(value)) for key, value in sorted(meta.items()) if _scalar(value)]
        rows.append(("tokenizer", f"{tokenizer.kind}, {tokenizer.vocab_size} tokens"))
    else:
        if train is None:
            raise DataError(
                f"no model file ({MODEL_FILE} not found) and no {DEFAULT_PARAMS} to size a model from"
            )
        vocab_size, vocab_note = _vocab_from_folder()
        config = planned_config(train, vocab_size)
        # the meta device builds the modules without allocating their weights: exact counts, no memory
        with torch.device("meta"):
            model = GPT(config)
        rows.append(("model file", f"none ({MODEL_FILE} not found): sizes from {params_file} train section"))
        rows.append(("vocab_size", vocab_note))

    total = model.num_params(non_embedding=False)
    non_embedding = model.num_params(non_embedding=True)
    rows.append(("config", " ".join(f"{k}={v}" for k, v in config.to_dict().items())))
    rows.append(("parameters (total)", f"{total:,}"))
    rows.append(
        ("parameters (non-embedding)", f"{non_embedding:,} (position table left out; FLOPs use this)")
    )
    fpt_train = flops_per_token(config, non_embedding, training=True)
    fpt_forward = flops_per_token(config, non_embedding, training=False)
    rows.append(("FLOPs per token (training)", f"{fpt_train:,} ({_flops(fpt_train)})"))
    rows.append(("FLOPs per token (forward)", f"{fpt_forward:,} ({_flops(fpt_forward)})"))
    rows.append(("weights (fp32)", f"{4 * total:,} bytes ({human_bytes(4 * total)})"))
    if train is None:
        rows.append(("memory plan", f"unknown: no {DEFAULT_PARAMS} to read train.batch_size from"))
    else:
        tokens_per_step = train.batch_size * config.block_size * train.grad_accum_steps
        rows.append(
            (
                "FLOPs per optimizer step",
                f"{_flops(fpt_train * tokens_per_step)} ({tokens_per_step:,} tokens)",
            )
        )
        if train.preset:
            rows.append(("preset", train.preset))
        first, *candidates = _precision_rows(train, config, args.measure)
        rows.append(("precision (dtype, compile, attention)", first))
        rows += [("", line) for line in candidates]
        rows += memory_plan(train, config, resolve_device(train.device)).rows()
    print(_table(rows))


def _precision_rows(train: TrainParams, config: GPTConfig, measure: bool) -> list[str]:
    """What train.dtype / train.compile / train.attention resolve to for this shape on the host
    (auto: the cached timings of gptcore.autotune; with --measure, timed now when there are none),
    among the candidates a training run would time."""
    device = resolve_device(train.device)
    threads = torch_threads(train, train.nproc_per_node)
    if threads:  # the cache is keyed by the thread count a training process runs with
        torch.set_num_threads(threads)
    micro_batch = train.batch_size // train.world_size
    kernels = attention_kernels(train, config, device)
    decision: Decision | None
    if measure:
        decision = decide(train, config, device, micro_batch, kernels=kernels)
    else:
        decision = cached_decision(train, config, device, micro_batch, kernels=kernels)
    if decision is None:
        return [
            f"auto: not measured yet for this shape on this {device.type} (the first training run "
            "times the candidates; `gptcore info --measure` does it now)"
        ]
    return decision.summary(train.max_iters * train.grad_accum_steps).splitlines()


# ---------------------------------------------------------------------------------------------
# export


def cmd_export(args: argparse.Namespace) -> None:
    model, tokenizer, _ = load_model(args.model, "cpu")
    export_folder(model, tokenizer, args.out, force=args.force, protect=[args.model])
    config = model.config
    family = {
        "gpt2": "GPT2LMHeadModel",
        "llama": "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM",
    }
    print(
        f"exported {args.model} to {args.out}/ as {family[config.arch]} "
        f"({'tied' if config.tie_embeddings else 'untied'} head, {tokenizer.kind} tokenizer of "
        f"{tokenizer.vocab_size} ids): load it with transformers' AutoModelForCausalLM.from_pretrained"
    )


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run_main(lambda: args.run(args))
    except BrokenPipeError:
        # the reader went away (`gptcore sample | head`): not an error of ours; point stdout at
        # /dev/null so that the interpreter's final flush does not report it either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
