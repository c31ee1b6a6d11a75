"""The paper's real-data metrics, with weight files the user provides (nothing is downloaded).

* **FID** (pytorch-fid): :class:`~ldm.evaluation.fid_inception.FIDInceptionV3` loaded from
  ``pt_inception-2015-12-05-6726825d.pth`` (``--fid-weights``). Images are quantised to 8 bits first, as
  pytorch-fid reads saved PNGs; FID is the Fréchet distance of the 2,048-d pool features.
* **CLIP text-image similarity**: a ``transformers`` CLIP model saved in a local folder (``--clip-dir``,
  e.g. ``openai/clip-vit-base-patch32`` saved with ``save_pretrained``: ``config.json``, the weights, the
  tokenizer files and ``preprocessor_config.json``), read offline. Per sample: the cosine similarity of
  the image and caption embeddings (the paper reports its mean, 0.2451).
* **Mask accuracy with BiSeNet**: :class:`~ldm.evaluation.bisenet.BiSeNet` loaded from face-parsing.PyTorch's
  ``79999_iter.pth`` (``--bisenet-weights``), its classes remapped to the released order, measured as the
  FaceWorld parser is (:func:`ldm.evaluation.metrics.parser_mask_accuracy`).

A missing file raises :class:`ldm.errors.CheckpointError` naming it and the flag that gives it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.checkpoints import load_state_dict
from ldm.errors import CheckpointError
from ldm.evaluation.bisenet import BiSeNet
from ldm.evaluation.fid_inception import FIDInceptionV3

logger = logging.getLogger(__name__)

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
BISENET_WEIGHTS_FILE = "79999_iter.pth"
FID_SOURCE = "the pytorch-fid release (github.com/mseitzer/pytorch-fid, releases, fid_weights)"
BISENET_SOURCE = "face-parsing.PyTorch (github.com/zllrunning/face-parsing.PyTorch, its README's model link)"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def require_file(path: Optional[str | os.PathLike], what: str, name: str, flag: str, source: str) -> Path:
    """``path`` as a Path if it is a file, else a CheckpointError saying which file is missing and where it goes."""
    if path is None:
        raise CheckpointError(f"{what} needs the weight file {name}: download it from {source} and pass it with {flag} PATH")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what}: {p} does not exist; download {name} from {source} and pass its path with {flag}")
    return p


def load_strict_tolerant(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Strict load that accepts a file without BatchNorm ``num_batches_tracked`` counters (older files
    lack them; they do not affect inference) but nothing else missing, unexpected or misshaped."""
    own = module.state_dict()
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys
        )
        raise CheckpointError(f"{source} does not have the expected key layout ({detail}); is it the right file?")
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


def load_fid_inception(path: Optional[str | os.PathLike]) -> FIDInceptionV3:
    """The FID Inception network with the pytorch-fid weights (``--fid-weights``)."""
    file = require_file(path, "FID", FID_WEIGHTS_FILE, "--fid-weights", FID_SOURCE)
    return load_strict_tolerant(FIDInceptionV3(), load_state_dict(file), str(file))


def load_bisenet(path: Optional[str | os.PathLike]) -> BiSeNet:
    """BiSeNet with the face-parsing.PyTorch weights (``--bisenet-weights``)."""
    file = require_file(path, "BiSeNet mask accuracy", BISENET_WEIGHTS_FILE, "--bisenet-weights", BISENET_SOURCE)
    state = load_state_dict(file)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}  # saved from DataParallel
    return load_strict_tolerant(BiSeNet(), state, str(file))


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] on the 8-bit grid (what a saved PNG holds)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 255.0


@torch.no_grad()
def inception_features(network: FIDInceptionV3, images: torch.Tensor) -> torch.Tensor:
    """FID features [B, 2048] (float64 on the CPU) of images in [-1, 1]."""
    device = next(network.parameters()).device
    return network(quantize(images).to(device)).double().cpu()


class ClipSimilarity(nn.Module):
    """Cosine similarity of image and caption embeddings of a local transformers CLIP model."""

    def __init__(self, model: nn.Module, tokenizer, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's preprocessing in torch: bicubic resize of the short side, centre crop, normalise."""
        x = quantize(images).to(self.mean.device)
        h, w = x.shape[2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[:, :, top:top + self.image_size, left:left + self.image_size]
        return (x - self.mean) / self.std

    @staticmethod
    def _embedding(output) -> torch.Tensor:
        # transformers >= 5 returns a model output whose pooler_output is the projected embedding
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Per-sample cosine similarity [B] (float64 on the CPU)."""
        device = self.mean.device
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = self._embedding(self.model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                                            attention_mask=tokens["attention_mask"].to(device)))
        image = self._embedding(self.model.get_image_features(pixel_values=self.preprocess(images)))
        return F.cosine_similarity(image.float(), text.float(), dim=-1).double().cpu()


def load_clip(directory: Optional[str | os.PathLike]) -> ClipSimilarity:
    """A CLIP model and tokenizer saved with ``save_pretrained`` in ``directory`` (``--clip-dir``), offline."""
    how = ("save a CLIP model there with transformers (CLIPModel.from_pretrained('openai/clip-vit-base-patch32')"
           ".save_pretrained(DIR), and the same for its CLIPTokenizer and CLIPImageProcessor) on a machine with network access")
    if directory is None:
        raise CheckpointError(f"CLIP similarity needs a local CLIP model folder: {how}, then pass --clip-dir DIR")
    root = Path(directory)
    if not (root / "config.json").is_file():
        raise CheckpointError(f"CLIP similarity: {root / 'config.json'} does not exist; {how}, then pass --clip-dir {root}")
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(str(root), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"CLIP similarity: cannot load the model in {root} ({str(err).splitlines()[0][:160]}); {how}") from None
    size, mean, std = model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD
    processor = root / "preprocessor_config.json"
    if processor.is_file():
        cfg = json.loads(processor.read_text())
        crop = cfg.get("crop_size", size)
        size = int(crop.get("height", size) if isinstance(crop, dict) else crop)
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    return ClipSimilarity(model, tokenizer, size, mean, std)
