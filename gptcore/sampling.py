"""Sampling settings: one type and one check for every door a setting comes in by.

params.yaml's `sample` section, the `gptcore chat | sample` flags, chat's `/commands` (and a
server's request fields) all build a `Sampling`; its check is the only place the rules are
written, so a bad value gets the same message whichever door it came through. Torch-free, so
validating params does not import torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gptcore.errors import GptcoreError


class SamplingError(GptcoreError, ValueError):
    """A sampling setting outside its range; `field`, `value` and `rule` say which and why."""

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field} = {_shown(value)} is invalid: {rule}")


def _shown(value: Any, limit: int = 100) -> str:
    """A setting's value as a message shows it: its repr (a tuple as the list it was given as),
    cut at `limit` characters, since a value from a request may be any size or depth."""
    try:
        text = repr(list(value) if isinstance(value, tuple) else value)
    except RecursionError:
        return "(a value nested too deeply to show)"
    return text if len(text) <= limit else text[:limit] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# field -> (holds?, the rule as users read it); a value is checked by type and range at once, so
# a request field of the wrong type gets the same kind of message as one out of range
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (
        lambda v: _number(v) and math.isfinite(v) and v >= 0,
        "must be a finite number >= 0 (0 is greedy)",
    ),
    "top_k": (lambda v: _whole(v) and v >= 0, "must be a whole number >= 0 (0 is off)"),
    "top_p": (lambda v: _number(v) and 0 < v <= 1, "must be a number in (0, 1] (1 is off)"),
    "max_new_tokens": (lambda v: _whole(v) and v >= 1, "must be a whole number >= 1"),
    "stop": (
        lambda v: isinstance(v, tuple) and all(isinstance(s, str) and s for s in v),
        "must be non-empty strings",
    ),
    # torch's generators take seeds of 64 bits, signed or not
    "seed": (
        lambda v: v is None or (_whole(v) and -(2**63) <= v < 2**64),
        "must be a whole number that fits in 64 bits (or none: a random seed)",
    ),
}


def check_setting(field: str, value: Any) -> None:
    """Raise SamplingError when `value` breaks the rule of sampling setting `field`."""
    holds, rule = RULES[field]
    if not holds(value):
        raise SamplingError(field, value, rule)


@dataclass(frozen=True)
class Sampling:
    """How to draw tokens: the settings every sampler in gptcore takes. The defaults are plain
    sampling (softmax at temperature 1, no filtering), what the CLI uses outside a checkout.

    Order at each step: divide the logits by the temperature, keep the top-k, then the top-p
    nucleus of what is left, then draw; temperature 0 is greedy argmax. Every value the checks
    pass is well defined: the logits are divided after their largest is moved to 0, which stays 0
    whatever the temperature, so a tiny temperature tends to argmax (tied tokens share the draw)
    and a huge one to uniform, never to NaN (`gptcore.generate.sample_next`). A completion ends
    after max_new_tokens, or just before the first stop string. `seed` None means a fresh random
    seed (the CLI draws one and reports it)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 200
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, list):  # YAML and JSON give lists; the settings keep a tuple
            object.__setattr__(self, "stop", tuple(self.stop))
        for field in dataclasses.fields(self):
            check_setting(field.name, getattr(self, field.name))

    def describe(self) -> str:
        stop = f", stop {list(self.stop)!r}" if self.stop else ""
        return (
            f"temperature {self.temperature:g}, top_k {self.top_k}, top_p {self.top_p:g}, "
            f"max_new_tokens {self.max_new_tokens}, seed {self.seed}{stop}"
        )
