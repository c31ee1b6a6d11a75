"""The allowed ranges of the numbers a user sets (sampler steps, DDIM's eta, batch sizes, seeds, the editing
hyper-parameters), and the one check every layer uses.

The library speaks of parameters: :func:`check` raises :class:`ParameterError` whose message starts with the
parameter's name (``steps 0 is out of range; use 1 to 1000 (50 as released)``). Where the value came from a
flag or a config key, the caller renames it (:meth:`ParameterError.renamed`, :func:`ldm.cli.flag_names`):
``--steps 0 is out of range; ...`` on the command line, ``sample.steps = 0 is out of range; ...`` in a config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

from ldm.errors import UserError


# How each parameter is set on the command line (and in the app's messages, which name the same flags).
FLAGS = {
    "steps": "--steps", "eta": "--eta", "sampler": "--sampler", "spacing": "--spacing", "batch_size": "--batch-size",
    "seed": "--seed", "preset": "--preset", "embed_steps": "--embed-steps", "embed_lr": "--embed-lr",
    "finetune_steps": "--finetune-steps", "finetune_lr": "--finetune-lr", "alphas": "--alphas", "strength": "--strength",
}


class ParameterError(UserError, ValueError):
    """A bad value of a named parameter: the message is ``"{parameter}{sep}{detail}"``, where ``@name`` in
    ``detail`` (for each name in ``refs``) stands for another parameter and is renamed with it."""

    def __init__(self, parameter: str, detail: str, sep: str = " ", refs: tuple[str, ...] = (),
                 names: Mapping[str, str] = {}):
        self.parameter, self.detail, self.sep, self.refs = parameter, detail, sep, refs
        text = detail
        for ref in refs:
            text = text.replace(f"@{ref}", names.get(ref, ref))
        super().__init__(f"{names.get(parameter, parameter)}{sep}{text}")

    def renamed(self, names: Mapping[str, str] = FLAGS) -> "ParameterError":
        """The same error naming each parameter by ``names`` (flags, by default); names not in it are kept."""
        return ParameterError(self.parameter, self.detail, self.sep, self.refs, names)


@dataclass(frozen=True)
class Range:
    low: Union[int, float]
    high: Union[int, float]
    text: str  # how the message says it: "1 to 1000 (50 as released)"
    open_low: bool = False  # (low, high] instead of [low, high]

    def __contains__(self, value: Union[int, float]) -> bool:
        return (self.low < value if self.open_low else self.low <= value) and value <= self.high


STEPS = Range(1, 1000, "1 to 1000 (50 as released)")
ETA = Range(0.0, 1.0, "0 (deterministic) to 1 (as released)")
BATCH_SIZE = Range(1, 1024, "1 to 1024")
SEED = Range(0, 2**31 - 1, "0 to 2^31 - 1")
EMBED_STEPS = Range(0, 100_000, "0 to 100000 (500 as released)")
FINETUNE_STEPS = Range(0, 100_000, "0 to 100000 (1000 as released)")
LEARNING_RATE = Range(0.0, 1.0, "a learning rate in (0, 1]", open_low=True)
STRENGTH = Range(0.0, 1.0, "a fraction of the schedule in (0, 1] (1 as released: stage C starts from pure noise)", open_low=True)
MAX_ABS_ALPHA = 10.0  # |alpha| beyond this extrapolates the embedding far outside anything the model saw


def check(parameter: str, value: Union[int, float], allowed: Range) -> None:
    """Raise :class:`ParameterError` ``"{parameter} {value} is out of range; use {allowed.text}"`` unless in range."""
    if value not in allowed:
        raise ParameterError(parameter, f"{value} is out of range; use {allowed.text}")


def check_alphas(alphas) -> None:
    """An edit's alpha sweep: not empty, each |alpha| <= MAX_ABS_ALPHA, no repeats."""
    if not alphas:
        raise ParameterError("alphas", "is empty; give a comma list such as 0,0.5,1")
    bad = [a for a in alphas if not abs(a) <= MAX_ABS_ALPHA]
    if bad:
        raise ParameterError("alphas", f"{bad} out of range; use values with |alpha| <= {MAX_ABS_ALPHA:g} (released: -1 to 2.5)")
    if len(set(alphas)) != len(alphas):
        raise ParameterError("alphas", f"{list(alphas)} repeats a value; give each alpha once")


def check_edit(embed_steps=None, embed_lr=None, finetune_steps=None, finetune_lr=None, alphas=None, strength=None) -> None:
    """The editing hyper-parameters that are given (None: not given), in this order."""
    if embed_steps is not None:
        check("embed_steps", embed_steps, EMBED_STEPS)
    if finetune_steps is not None:
        check("finetune_steps", finetune_steps, FINETUNE_STEPS)
    for name, lr in (("embed_lr", embed_lr), ("finetune_lr", finetune_lr)):
        if lr is not None:
            check(name, lr, LEARNING_RATE)
    if alphas is not None:
        check_alphas(alphas)
    if strength is not None:
        check("strength", strength, STRENGTH)
