"""LPIPS perceptual distance (Zhang et al. 2018) with a VGG-16 trunk, built without torchvision.

d(x, y) = sum_l mean_hw( w_l . (f_l(x) - f_l(y))^2 ), where f_l are channel-normalised VGG-16
activations at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 and w_l are learned 1x1 linear heads.

Weights come from two standard files:
- ``vgg16-397923af.pth`` (torchvision's ImageNet VGG-16; keys ``features.{0,2,5,...}.weight``),
- ``vgg.pth`` of the ``lpips`` package, v0.1 (keys ``lin{0..4}.model.1.weight``).
:meth:`LPIPS.from_pretrained` finds them (given paths, then the torch hub cache, then an installed
``lpips`` package), downloads them when allowed, or raises :class:`ldm.errors.CheckpointError`
saying which file to put where. ``LPIPS()`` alone builds random weights (tests).

Module names follow the released VAE checkpoints (``net.slice{1..5}.{N}``, ``lin{k}.model.1``,
``scaling_layer.{shift,scale}``) so that their ``loss.perceptual_loss.*`` keys load strictly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ldm.config import loads_weights
from ldm.errors import CheckpointError

logger = logging.getLogger(__name__)

VGG_FILE = "vgg16-397923af.pth"
VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LIN_FILE = "lpips_vgg_v0.1.pth"  # our cache name for the lpips package's weights/v0.1/vgg.pth
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"

# VGG-16 ``features``: conv widths, "M" for max-pool. Index i of torchvision's Sequential is
# preserved as the module name, so file key ``features.{i}.weight`` is ``net.slice{s}.{i}.weight``.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
SLICE_ENDS = [4, 9, 16, 23, 30]  # slice s covers features[SLICE_ENDS[s-1]:SLICE_ENDS[s]]: ends after relu{1_2,...,5_3}
CHANNELS = [64, 128, 256, 512, 512]


# ----------------------------------------------------------------------------------------------
# Network


def vgg16_features() -> list[nn.Module]:
    """torchvision's ``vgg16().features[:30]`` (everything up to relu5_3), as a flat list."""
    layers: list[nn.Module] = []
    width = 3
    for item in VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(width, item, 3, padding=1), nn.ReLU(inplace=True)]
            width = item
    return layers


class VGG16Slices(nn.Module):
    """Five consecutive pieces of VGG-16 ``features``; returns the activation after each."""

    def __init__(self):
        super().__init__()
        layers = vgg16_features()
        start = 0
        for s, end in enumerate(SLICE_ENDS, start=1):
            piece = nn.Sequential()
            for i in range(start, end):
                piece.add_module(str(i), layers[i])
            self.add_module(f"slice{s}", piece)
            start = end

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for s in range(1, len(SLICE_ENDS) + 1):
            x = getattr(self, f"slice{s}")(x)
            feats.append(x)
        return feats


class ScalingLayer(nn.Module):
    """Maps [-1, 1] images to the ImageNet statistics LPIPS was trained with."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class LinearHead(nn.Module):
    """A 1x1 conv without bias. ``model.1`` keeps the released key; index 0 was a Dropout, which is
    the identity for a frozen metric and is an Identity here."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def normalize_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """``LPIPS()(x, y) -> [B, 1, 1, 1]`` distance between images in [-1, 1]. Always frozen."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices()
        for k, channels in enumerate(CHANNELS):
            self.add_module(f"lin{k}", LinearHead(channels))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        feats_x = self.net(self.scaling_layer(x))
        feats_y = self.net(self.scaling_layer(y))
        dist = 0.0
        for k, (fx, fy) in enumerate(zip(feats_x, feats_y)):
            diff = (normalize_channels(fx) - normalize_channels(fy)) ** 2  # [B, C_k, h_k, w_k]
            dist = dist + getattr(self, f"lin{k}")(diff).mean(dim=[2, 3], keepdim=True)
        return dist  # [B, 1, 1, 1]

    # ------------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(
        cls, vgg_path: Optional[str] = None, lin_path: Optional[str] = None, offline: bool = False
    ) -> "LPIPS":
        """Build LPIPS with the VGG-16 and v0.1 linear-head weights.

        Files are looked up at the given paths, then in the torch hub cache
        (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``) and, for the
        heads, an installed ``lpips`` package. Missing files are downloaded into the cache unless
        ``offline`` or ``HF_HUB_OFFLINE`` is set or the network is unreachable.
        """
        model = cls()
        vgg_file = find_weight_file("VGG-16", vgg_path, VGG_FILE, VGG_URL, [], offline)
        lin_file = find_weight_file("LPIPS v0.1 linear heads", lin_path, LIN_FILE, LIN_URL,
                                    lpips_package_files(), offline)
        missing = [f"download {url} and save it as {hub_checkpoint_dirs()[0] / name}"
                   for found, url, name in ((vgg_file, VGG_URL, VGG_FILE), (lin_file, LIN_URL, LIN_FILE))
                   if found is None]
        if missing:
            raise CheckpointError(f"LPIPS weights are missing: {'; '.join(missing)} (or pass their paths)")
        vgg = read_state_dict(vgg_file)
        lin = read_state_dict(lin_file)
        state = {}
        for key in model.state_dict():
            if key.startswith("net."):  # net.slice{s}.{i}.weight <- features.{i}.weight
                _, _, index, name = key.split(".")
                state[key] = take(vgg, f"features.{index}.{name}", vgg_file)
        for k in range(len(CHANNELS)):
            state[f"lin{k}.model.1.weight"] = take(lin, f"lin{k}.model.1.weight", lin_file)
        state.update({f"scaling_layer.{n}": b for n, b in model.scaling_layer.named_buffers()})
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1].strip()
            raise CheckpointError(
                f"LPIPS weights in {vgg_file} / {lin_file} have the wrong shapes ({first}); "
                f"replace them with the standard {VGG_FILE} and lpips v0.1 vgg.pth"
            ) from None
        return model


@loads_weights
def pretrained_lpips(
    vgg_path: Optional[str] = None, lin_path: Optional[str] = None, offline: bool = False, load_weights: bool = True
) -> LPIPS:
    """Config factory (``{target: ldm.modules.lpips.pretrained_lpips}``): :meth:`LPIPS.from_pretrained`,
    or with ``load_weights=False`` (summaries, or before loading a full checkpoint) an untrained LPIPS."""
    if not load_weights:
        return LPIPS()
    return LPIPS.from_pretrained(vgg_path, lin_path, offline=offline)


def hub_checkpoint_dirs() -> list[Path]:
    dirs = [Path(torch.hub.get_dir()) / "checkpoints", Path.home() / ".cache" / "torch" / "hub" / "checkpoints"]
    return list(dict.fromkeys(dirs))  # drop the duplicate when TORCH_HOME is unset


def lpips_package_files() -> list[Path]:
    """``weights/v0.1/vgg.pth`` of an installed ``lpips`` package, located without importing it
    (importing lpips imports torchvision, which this project never loads)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) / "weights" / "v0.1" / "vgg.pth" for location in spec.submodule_search_locations]


def network_allowed(offline: bool, url: str) -> bool:
    if offline or os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no"):
        return False
    try:
        with socket.create_connection((urlparse(url).hostname, 443), timeout=3):
            return True
    except OSError:
        return False


def find_weight_file(
    what: str, given: Optional[str], cache_name: str, url: str, extra: list[Path], offline: bool
) -> Optional[Path]:
    """The given path, else the first cached copy, else a fresh download; None when none of these works."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{what} weights not found at {path}; fix the path or pass None to use the cache")
        return path
    for path in [d / cache_name for d in hub_checkpoint_dirs()] + extra:
        if path.is_file():
            return path
    if not network_allowed(offline, url):
        return None
    target = hub_checkpoint_dirs()[0] / cache_name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s weights from %s to %s", what, url, target)
        torch.hub.download_url_to_file(url, str(target), progress=False)
        return target
    except Exception as err:  # any network or disk failure ends in the same instruction
        logger.warning("download of %s failed: %s", url, err)
        return None


def read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise CheckpointError(f"cannot read {path} ({reason}); delete it and fetch it again") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state_dict; replace it with the standard file")
    return state


def take(state: dict[str, Tensor], key: str, path: Path) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{path} has no key {key!r}; it is not the expected weight file, replace it")
    return state[key]
