"""What the app's buttons do, as plain methods on one object (the Gradio page only wires them up).

:class:`AppService` holds the loaded model, the face parser and the session store. Each method takes the
page's values (pictures as arrays, files as paths, the session's id) and returns plain results or raises a
:class:`~ldm.errors.UserError` whose line the page shows. The model is shared by all sessions: sampling only
reads it, and an edit fine-tunes private copies of the experts it edits.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch.nn as nn
from PIL import Image

from ldm.app import mask_editor
from ldm.app.edit import EditRequest, ModelSource, alpha_gallery, execute, prepare_run
from ldm.app.generate import GenerateRequest, GenerateResult, available_methods, run_generate
from ldm.app.sessions import SessionStore, check_upload
from ldm.editing import MODES
from ldm.config import SampleSettings
from ldm.errors import DataError, UserError
from ldm.face_parsing import FaceParsingModel, parse_face, read_photo

logger = logging.getLogger(__name__)

MAX_UPLOAD_MB = 10


class StartMask(NamedTuple):
    """A mask to start editing from: the editor's picture and, where it comes with one, a caption."""

    picture: np.ndarray  # uint8 RGB [EDITOR_SIZE, EDITOR_SIZE, 3] in the palette colours
    caption: Optional[str]
    message: str


class EditOutcome(NamedTuple):
    gallery: list[tuple[Path, str]]  # (α image, "α = a")
    grid: Path
    out_dir: Path
    command: str
    message: str


@dataclass
class AppService:
    model: nn.Module
    source: ModelSource
    store: SessionStore
    parser: Optional[FaceParsingModel] = None
    faceworld: mask_editor.FaceWorldSource = mask_editor.FaceWorldSource()
    defaults: SampleSettings = field(default_factory=SampleSettings)  # the page's initial sampler settings
    max_upload_bytes: int = MAX_UPLOAD_MB * 2**20
    _edit_locks: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- what the page offers

    def methods(self) -> list[str]:
        return available_methods(self.model)

    def edit_modes(self) -> list[str]:
        """The edits this model can run: one per expert, and collaborative where it can sample collaboratively."""
        modes = ["collaborative"] if "collaborative" in self.methods() else []
        return modes + [m for m in ("text", "mask") if MODES[m][0] in self.model.experts]

    def describe(self) -> str:
        experts = ", ".join(self.model.experts)
        diffusers = "dynamic diffusers" if getattr(self.model, "diffusers", None) else "no dynamic diffusers"
        parser = self.parser.name if self.parser is not None else "none (photo -> mask is off)"
        res = self.model.vae.resolution
        return (f"Model `{self.source.config}` + `{self.source.ckpt}` on {self.source.device}: experts {experts}, "
                f"{diffusers}, {res}x{res} images. Face parser: {parser}.")

    # ---- start masks

    def start_blank(self) -> StartMask:
        index = mask_editor.blank_face()
        return StartMask(mask_editor.index_to_editor(index), None, "Started from a blank face: " + mask_editor.mask_summary(index))

    def start_faceworld(self, sample: Any) -> StartMask:
        if sample is None or str(sample).strip() == "":
            raise UserError("choose a FaceWorld test sample first")
        try:
            number = int(str(sample).split(":")[0])
        except ValueError:
            raise UserError(f"FaceWorld sample {sample!r} is not a number; pick one from the list") from None
        index, caption = mask_editor.faceworld_test_mask(self.faceworld, number)
        return StartMask(mask_editor.index_to_editor(index), caption, f"FaceWorld test sample {number}; its caption is in the caption box")

    def start_upload(self, path: Optional[str]) -> StartMask:
        if not path:
            raise UserError("no mask file; upload a mask PNG (class ids 0-18, or the 19 palette colours)")
        name = Path(path).name
        check_upload(path, self.max_upload_bytes, f"mask {name}")
        index = mask_editor.read_mask_file(path, where=name)
        return StartMask(mask_editor.index_to_editor(index), None, f"Mask {name} ({index.shape[1]}x{index.shape[0]}): "
                         + mask_editor.mask_summary(index))

    def parse_photo(self, path: Optional[str]) -> tuple[np.ndarray, Image.Image]:
        """The class ids (``EDITOR_SIZE`` square) of the face in an uploaded photo, and the photo."""
        if self.parser is None:
            raise UserError("photo -> mask is off: start the app with the FaceWorld parser present or --bisenet-weights")
        if not path:
            raise UserError("no photo; upload a face photo first")
        name = Path(path).name
        check_upload(path, self.max_upload_bytes, f"photo {name}")
        photo = read_photo(path, name)
        return parse_face(photo, self.parser, mask_editor.EDITOR_SIZE, where=name), photo

    def start_photo(self, path: Optional[str]) -> StartMask:
        index, _ = self.parse_photo(path)
        return StartMask(mask_editor.index_to_editor(index), None,
                         f"Parsed with the {self.parser.name}: " + mask_editor.mask_summary(index))

    # ---- Generate

    def editor_mask(self, value: Optional[Mapping[str, Any]], where: str = "mask editor") -> np.ndarray:
        """The editor's value ({"background", "layers", "composite"}) -> class ids."""
        if not value or value.get("background") is None:
            raise DataError(f"{where} is empty; start from a blank face, a FaceWorld mask, a mask PNG or a photo")
        return mask_editor.editor_to_index(value["background"], value.get("layers") or [], where)

    def generate(self, session: str, editor: Optional[Mapping[str, Any]], request: GenerateRequest,
                 on_method: Optional[Callable[[int, int, str], None]] = None) -> GenerateResult:
        request.check(self.model)  # before the mask, so a bad caption or steps fail first
        index = self.editor_mask(editor)
        out = self.store.new_run(session, "generate")
        return run_generate(self.model, request, index, out, on_method)

    # ---- Edit

    def _edit_lock(self, session: str) -> threading.Lock:
        with self._lock:
            return self._edit_locks.setdefault(session, threading.Lock())

    def edit(self, session: str, photo_path: Optional[str], editor: Optional[Mapping[str, Any]], request: EditRequest,
             on_step: Optional[Callable[[str, int, int], None]] = None) -> EditOutcome:
        """Run (or resume) an edit in the session's folder; one edit at a time per session (a new one waits until
        a cancelled one has stopped)."""
        if not photo_path:
            raise UserError("no face; upload the face photo to edit")
        name = Path(photo_path).name
        check_upload(photo_path, self.max_upload_bytes, f"face {name}")
        photo = read_photo(photo_path, name)
        mask = None
        if request.mode in ("mask", "collaborative"):
            mask = self.editor_mask(editor, "target mask editor")
        run = prepare_run(self.store.folder(session) / "edit", photo, mask, request, self.source)
        cancel = self.store.cancel_flag(session)
        with self._edit_lock(session):
            cancel.clear()
            result = execute(self.model, run, on_step, cancel)
        resumed = f" (resumed: {len(result.skipped)} finished stages reused)" if result.skipped else ""
        message = f"Edited: {len(result.images)} α images{resumed}. Run directory: {run.out_dir}"
        return EditOutcome(alpha_gallery(result, run.options.alphas), result.grid, run.out_dir, run.command, message)

    def cancel(self, session: str) -> str:
        self.store.cancel_flag(session).set()
        return "Cancelling: the edit stops after its current step; finished stages are kept (run it again to resume)."

    def forget(self, session: str) -> None:
        self.store.forget(session)
        with self._lock:
            self._edit_locks.pop(session, None)


def parse_number(value: Any, what: str, kind: type = int) -> Any:
    """A number typed into the page, or a UserError naming the field."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} {value!r} is not a number") from None
    if kind is int and float(value) != number:
        raise UserError(f"{what} {value!r} must be a whole number")
    return number


def methods_from_page(values: Optional[Sequence[str]]) -> tuple[str, ...]:
    from ldm.app.generate import parse_methods

    return parse_methods(values or [])
