"""The metrics of the evaluation, as plain functions on tensors (no networks, no files).

**Mask accuracy** (the paper's "pixel accuracy" of a face parser against the condition): the parser's
argmax class map of the generated image is resized to 32x32 with nearest-neighbour sampling at pixel
centres (``nearest-exact``, which picks the same pixels as the PIL nearest resize that made the 32x32
condition), and compared with the condition's 32x32 index mask (``onehot_to_index`` of the [19, 1024]
one-hot). Per sample: the fraction of the 1,024 pixels whose classes agree.

**Attribute accuracy**: per sample and attribute (age, beard), 1 if the classifier's argmax equals the
caption's label, else 0. **Text accuracy** of a sample is the mean over the attributes (0, 1/2 or 1).

**Joint accuracy** of a sample is ``mask accuracy x text accuracy``: high only when the image follows the
mask *and* the caption at once. The reported number is its mean over samples (not the product of the two
means, which would credit a method that follows the mask on some samples and the caption on others).

**High-frequency energy** (residual noise) of an image: the mean over pixels and channels of the squared
difference between the image and its 3x3 box blur (replicate padding), in [-1, 1] units. Samples that keep
residual diffusion noise score far above real images; the table reports it per method beside the real
images' value.

**Fréchet distance** between Gaussian fits of two feature sets,
``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, in float64. The last trace equals
``tr((S1 S2)^1/2)`` (the two matrices are similar), but the symmetric form has real, non-negative
eigenvalues, so it needs only symmetric eigen-decompositions (clipping round-off negatives at 0), no
general matrix square root and no SciPy.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ldm.data.masks import MASK_SIZE, NUM_CLASSES


# --------------------------------------------------------------------------------------------------
# Masks


def condition_index_masks(seg_mask: torch.Tensor) -> torch.Tensor:
    """Condition one-hots [B, 19, 1024] -> index masks [B, 32, 32] (argmax over classes, row-major)."""
    if seg_mask.ndim != 3 or tuple(seg_mask.shape[1:]) != (NUM_CLASSES, MASK_SIZE * MASK_SIZE):
        raise ValueError(f"seg_mask must be [B, {NUM_CLASSES}, {MASK_SIZE ** 2}], got {list(seg_mask.shape)}")
    return seg_mask.argmax(dim=1).reshape(-1, MASK_SIZE, MASK_SIZE)


def resize_index_masks(index: torch.Tensor, size: int = MASK_SIZE) -> torch.Tensor:
    """Index masks [B, H, W] -> [B, size, size], nearest-neighbour at pixel centres (as PIL NEAREST)."""
    if index.shape[-2:] == (size, size):
        return index
    resized = F.interpolate(index[:, None].float(), size=(size, size), mode="nearest-exact")
    return resized[:, 0].round().long()


def mask_pixel_accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample fraction of equal pixels between two index masks [B, H, W] -> [B] (float)."""
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {list(pred.shape)} vs {list(target.shape)}")
    return (pred == target).flatten(1).float().mean(dim=1)


def parser_mask_accuracy(logits: torch.Tensor, seg_mask: torch.Tensor) -> torch.Tensor:
    """Mask accuracy of parser logits [B, 19, H, W] against condition one-hots [B, 19, 1024] -> [B]."""
    pred = resize_index_masks(logits.argmax(dim=1))
    return mask_pixel_accuracy(pred, condition_index_masks(seg_mask).to(pred.device))


# --------------------------------------------------------------------------------------------------
# Attributes


def attribute_correct(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{attribute: [B] float (1 right, 0 wrong)}`` for every attribute in ``labels``."""
    missing = [a for a in labels if a not in logits]
    if missing:
        raise ValueError(f"the classifier has no head for {missing} (it has {sorted(logits)})")
    return {a: (logits[a].argmax(dim=-1).cpu() == labels[a].cpu().long()).float() for a in labels}


def text_accuracy(correct: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean over attributes of per-sample correctness -> [B]."""
    return torch.stack(list(correct.values())).mean(dim=0)


def joint_accuracy(mask_acc: torch.Tensor, text_acc: torch.Tensor) -> torch.Tensor:
    """Per-sample ``mask accuracy x text accuracy`` -> [B] (average it over samples)."""
    return mask_acc * text_acc


# --------------------------------------------------------------------------------------------------
# Fréchet distance


def gaussian_fit(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64 (N >= 2)."""
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {list(x.shape)}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix through its eigen-decomposition."""
    sym = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64 throughout)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def frechet_distance_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets [N, D] and [M, D]."""
    return frechet_distance(*gaussian_fit(a), *gaussian_fit(b))


# --------------------------------------------------------------------------------------------------
# Residual noise


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared residual of a 3x3 box blur: ``[B]`` for images ``[B, C, H, W]`` in [-1, 1]."""
    images = images.float()
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (images - blurred).pow(2).mean(dim=(1, 2, 3))
