"""Per-session folders and cancel flags, upload limits, and the page's error messages.

Every browser session (and every API client) has an id of its own; its files live under
``ROOT/sessions/<id>/`` and nowhere else, so users never see each other's pictures or runs. A session's
Generate results are numbered runs of which the last few are kept; its edits are run directories that stay
(an interrupted edit resumes from them).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import traceback
from pathlib import Path

from ldm.errors import DataError, UserError

logger = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KEEP_RUNS = 5  # Generate runs kept per session (older ones are deleted when a new one starts)


class Cancelled(Exception):
    """Raised inside a long job when its session asked to cancel it."""


class SessionStore:
    """The folders and cancel flags of the app's sessions, under ``root``."""

    def __init__(self, root: str | os.PathLike, keep_runs: int = KEEP_RUNS):
        self.root = Path(root)
        self.keep_runs = keep_runs
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}

    def folder(self, session_id: str) -> Path:
        """``root/sessions/<session_id>``, created; the id must be a plain token (no path tricks)."""
        if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
            raise ValueError(f"bad session id {session_id!r}")
        path = self.root / "sessions" / session_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_run(self, session_id: str, kind: str) -> Path:
        """A fresh numbered folder ``<session>/<kind>/<NNNN>``; all but the newest ``keep_runs`` are removed."""
        base = self.folder(session_id) / kind
        with self._lock:
            base.mkdir(parents=True, exist_ok=True)
            numbers = sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())
            run = base / f"{(numbers[-1] + 1) if numbers else 0:04d}"
            run.mkdir()
            for old in numbers[: max(0, len(numbers) + 1 - self.keep_runs)]:
                shutil.rmtree(base / f"{old:04d}", ignore_errors=True)
        return run

    def cancel_flag(self, session_id: str) -> threading.Event:
        with self._lock:
            return self._cancel.setdefault(session_id, threading.Event())

    def forget(self, session_id: str) -> None:
        """A session closed: drop its flag and its Generate runs (its edit runs stay for resuming)."""
        with self._lock:
            self._cancel.pop(session_id, None)
        if isinstance(session_id, str) and SESSION_ID.match(session_id):
            shutil.rmtree(self.root / "sessions" / session_id / "generate", ignore_errors=True)


def check_upload(path: str | os.PathLike, max_bytes: int, what: str = "upload") -> Path:
    """The uploaded file ``path``, or a DataError when it is missing or larger than ``max_bytes``."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        raise DataError(f"{what}: the uploaded file is gone; upload it again") from None
    if size > max_bytes:
        raise DataError(f"{what} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB: shrink it first")
    return p


def error_message(err: BaseException) -> str:
    """What the page shows for a failed request: the UserError's own line, or the kind of internal error
    (its traceback goes to the server's log, not to the page)."""
    if isinstance(err, UserError):
        return f"Error: {err}"
    if isinstance(err, Cancelled):
        return "Cancelled. Finished stages are kept: run it again to resume."
    logger.error("request failed:\n%s", "".join(traceback.format_exception(err)))
    return f"Internal error ({type(err).__name__}: {str(err)[:200]}); the app keeps running, details in its log"
