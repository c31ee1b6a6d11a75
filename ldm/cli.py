"""Small helpers shared by the command-line scripts in ``scripts/``.

Scripts stay thin: parse arguments, build through ``ldm``, run. Each script's ``main`` is wrapped by
:func:`main_guard`, which turns a :class:`~ldm.errors.UserError` into one line on stderr and exit code 2
(no traceback: the message already names the problem and the fix). Programming errors still raise.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

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


def existing_file(path: str | os.PathLike, what: str, flag: str) -> Path:
    """Return ``path`` as a Path if it is a file, else raise a UserError saying which flag to fix."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist; check {flag}")
    return p
