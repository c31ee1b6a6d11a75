"""Small helpers shared by the command-line scripts in ``scripts/``.

Scripts stay thin: parse arguments, build through ``ldm``, run. Each script's ``main`` is wrapped by
:func:`main_guard`, which turns a :class:`~ldm.errors.UserError` into one line on stderr and exit code 2
(no traceback: the message already names the problem and the fix). Programming errors still raise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from ldm import ranges
from ldm.errors import UserError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main_guard(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a script's ``main(argv)``: UserError -> ``error: <message>`` on stderr, exit code 2."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            return int(main(argv) or 0)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the docstring's example commands as written and shows defaults."""


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argparse parser whose description is the script's docstring (with its example commands)."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)


def writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and check it can be written, or raise a UserError naming it."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"output directory {out} cannot be written ({err.strerror or err}); choose another with --out"
        ) from None
    return out


@contextlib.contextmanager
def flag_names(names: Mapping[str, str] = ranges.FLAGS) -> Iterator[None]:
    """Re-raise a :class:`~ldm.ranges.ParameterError` from the block naming the parameter's flag."""
    try:
        yield
    except ranges.ParameterError as err:
        raise err.renamed(names) from None


def check_batch_size(batch_size: int) -> None:
    """``--batch-size`` in 1..1024 (the range of every sampling script)."""
    with flag_names():
        ranges.check("batch_size", batch_size, ranges.BATCH_SIZE)


def existing_file(path: str | os.PathLike, what: str, flag: str) -> Path:
    """Return ``path`` as a Path if it is a file, else raise a UserError saying which flag to fix."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist; check {flag}")
    return p


# --------------------------------------------------------------------------------------------------
# The speed flags shared by generate.py and evaluate.py (docs/performance.md)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision``, ``--channels-last`` and ``--compile``: the fast path of the networks (:class:`ldm.speed.SpeedOptions`)."""
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast precision of the networks (default fp32; x_T and the sampler's update stay fp32)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for the convolutions")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNets (skipped with a warning where unavailable)")


def speed_options(args: argparse.Namespace):
    """The :class:`~ldm.speed.SpeedOptions` of :func:`add_speed_arguments`'s flags; ``None`` (the networks as
    built) when all are defaults."""
    from ldm.speed import SpeedOptions

    if args.precision == "fp32" and not args.channels_last and not args.compile:
        return None
    return SpeedOptions(precision=args.precision, channels_last=args.channels_last, compile=args.compile)


# --------------------------------------------------------------------------------------------------
# The sampler flags shared by generate.py, evaluate.py, edit.py and demo.py


def add_sampler_arguments(parser: argparse.ArgumentParser,
                          defaults: str = "the config's sample section (ddim, 50 steps, eta 1 in the shipped configs)") -> None:
    """``--sampler``, ``--steps``, ``--spacing`` and ``--eta``, all None unless given (:func:`sampler_options`
    fills them in); ``defaults`` says in the help where unset values come from."""
    from ldm.diffusion.samplers import sampler_names, spacing_names

    parser.add_argument("--sampler", default=None, choices=sampler_names(),
                        help=f"sampler, ddim as released; unset: {defaults}; see docs/samplers.md")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps, one network call each; unset: as for --sampler")
    parser.add_argument("--spacing", default=None, choices=spacing_names(),
                        help="timestep spacing; unset: the sampler's own (uniform for ddim, as released)")
    parser.add_argument("--eta", type=float, default=None,
                        help="DDIM's eta, 0 (deterministic) to 1 (as released), --sampler ddim only; unset: as for --sampler")


def sampler_options(args: argparse.Namespace, defaults=None):
    """The :class:`~ldm.diffusion.samplers.SamplerOptions` of the flags of :func:`add_sampler_arguments`, unset
    ones taken from ``defaults`` (a config's :class:`~ldm.config.SampleSettings`; None: the released DDIM 50,
    eta 1). The config's spacing and eta apply only to the config's sampler. Raises UserError naming the flag."""
    from ldm.diffusion.samplers import SamplerOptions, get_sampler

    name = args.sampler or (defaults.sampler if defaults is not None else "ddim")
    same = defaults is not None and name == defaults.sampler
    steps = args.steps if args.steps is not None else (defaults.steps if defaults is not None else 50)
    spacing = args.spacing if args.spacing is not None else (defaults.spacing if same else None)
    with flag_names():
        ranges.check("steps", steps, ranges.STEPS)
        if args.eta is not None and not get_sampler(name).has_eta:
            raise UserError(f"--eta applies to --sampler ddim only; {name} has no eta (drop --eta or use --sampler ddim)")
        if args.eta is not None:
            ranges.check("eta", args.eta, ranges.ETA)
        eta = args.eta if args.eta is not None else (defaults.eta if same and get_sampler(name).has_eta else None)
        try:
            return SamplerOptions(name, steps, spacing, eta)
        except ranges.ParameterError:
            raise
        except ValueError as err:
            raise UserError(str(err)) from None


# --------------------------------------------------------------------------------------------------
# The editing flags shared by edit.py and evaluate_editing.py


def add_edit_arguments(parser: argparse.ArgumentParser, alphas_help: Optional[str] = None) -> None:
    """``--embed-steps``, ``--finetune-steps``, ``--embed-lr``, ``--finetune-lr``, ``--alphas`` and ``--strength``, all None unless
    given (:func:`edit_values` fills them in from the config's ``edit:`` section, else the released values)."""
    from ldm.editing import EditOptions

    released = EditOptions()
    unset = "unset: the config's edit section, else"
    parser.add_argument("--embed-steps", type=int, default=None, help=f"stage A steps; {unset} {released.embed_steps} as released")
    parser.add_argument("--finetune-steps", type=int, default=None, help=f"stage B steps; {unset} {released.finetune_steps} as released")
    parser.add_argument("--embed-lr", type=float, default=None, help=f"stage A learning rate (Adam); {unset} {released.embed_lr:g} as released")
    parser.add_argument("--finetune-lr", type=float, default=None, help=f"stage B learning rate (Adam); {unset} {released.finetune_lr:g} as released")
    parser.add_argument("--alphas", default=None, help=alphas_help or f"comma list; {unset} the released sweep of the mode")
    parser.add_argument("--strength", type=float, default=None,
                        help=f"stage C starts from the input's latent noised to t < strength·T (SDEdit), 1 = pure noise; "
                             f"{unset} {released.strength:g} as released")


def edit_values(args: argparse.Namespace, cfg, mode: str, alphas: Optional[str] = None) -> dict:
    """The editing hyper-parameters: each flag that is given, else :func:`ldm.editing.edit_defaults` (the config's
    ``edit:`` section over the released values). ``alphas``: the script's own default sweep, if it has one."""
    from ldm.editing import EDIT_KEYS, edit_defaults, parse_alphas

    values = edit_defaults(cfg, mode)
    for key in EDIT_KEYS:
        given = getattr(args, key)
        if key == "alphas":
            given = given if given is not None else alphas
            if given is not None:
                values[key] = parse_alphas(given)
        elif given is not None:
            values[key] = given
    return values
