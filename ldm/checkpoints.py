"""Checkpoints: reading any kind, strict key matching, released layouts, pre-trained parts of configs.

Three file kinds are read the same way by :func:`load_state_dict`:

* Lightning ``.ckpt`` files (ours and the authors' released ones) -- the ``state_dict`` entry;
* plain ``torch.save`` ``.pt``/``.pth`` state dicts;
* ``.safetensors`` files (what ``scripts/convert_checkpoint.py`` writes and what we ship).

Loading goes through :func:`ldm.fileio.safe_torch_load` (``weights_only``, and a restricted unpickler for
older Lightning files that also pickle hyper-parameter objects), writing through :mod:`ldm.fileio`'s
atomic writers, so no code from a file is ever run and no partial file is ever left.

**Layouts.** The authors' released checkpoints name modules differently from this package only in their
top-level prefixes (see ``docs/architecture.md``); :func:`to_native` and :func:`to_released` map between
the two and check the released schedule buffers against ours. Everything inside the UNet, the VAE and
the text encoder already uses the released names.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ldm.config import instantiate, load_config, loads_weights
from ldm.diffusion.schedule import RELEASED_BUFFER_NAMES
from ldm.errors import CheckpointError, ConfigError
from ldm.fileio import atomic_torch_save, safe_torch_load, save_safetensors

logger = logging.getLogger(__name__)

SCHEDULE_BUFFERS = RELEASED_BUFFER_NAMES  # the 12 buffers released LDM files store at top level

# Released prefix -> native prefix, per checkpoint kind. Order matters (longest first).
RELEASED_PREFIXES: dict[str, list[tuple[str, str]]] = {
    "vae": [
        ("encoder.", "vae.encoder."),
        ("decoder.", "vae.decoder."),
        ("quant_conv.", "vae.quant_conv."),
        ("post_quant_conv.", "vae.post_quant_conv."),
        ("loss.", "loss."),
    ],
    "ldm": [
        ("model.diffusion_model.", "expert.unet."),
        ("cond_stage_model.", "expert.cond_encoder."),
        ("first_stage_model.", "vae."),
    ],
}
COLLABORATIVE_MODALITIES = ("seg_mask", "text", "sketch")
RELEASED_PREFIXES["collaborative"] = [("first_stage_model.", "vae.")]
for _m in COLLABORATIVE_MODALITIES:
    RELEASED_PREFIXES["collaborative"] += [
        (f"model.{_m}_confidence_predictor.diffusion_model.", f"diffusers.{_m}.unet."),
        (f"model.{_m}_unet.diffusion_model.", f"experts.{_m}.unet."),
        (f"cond_stage_model.{_m}_cond_stage_model.", f"experts.{_m}.cond_encoder."),
    ]

# Keys some released files carry that no module of ours owns.
IGNORED_RELEASED_KEYS = re.compile(r"^(model_ema\.|logvar$|.*\.num_batches_tracked_unused$)")


def load_state_dict(path: str | Path, ema: bool = True) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file (any of the three kinds). Raises CheckpointError.

    A training checkpoint written with ``train.ema_decay`` holds the raw weights (``state_dict``, what a
    resumed run continues from) and their moving average (``ema_state_dict``); the average is the model,
    and is what this returns unless ``ema`` is false."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (see checkpoints/README.md)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = safe_torch_load(path)
    except CheckpointError:
        raise
    except Exception as err:  # truncated zip, bad header, not a checkpoint at all
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}: {_first_line(err)}); "
            "re-download or re-convert it, or resume from an earlier checkpoint"
        ) from None
    if ema and isinstance(obj, Mapping) and isinstance(obj.get("ema_state_dict"), Mapping):
        logger.info("%s: using its exponential moving average of the weights (ema_state_dict)", path)
        obj = obj["ema_state_dict"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors; is it a model checkpoint?")
    return dict(obj)


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if len(text) <= limit else text[: text.rfind(" ", 0, limit)] + " ..."


def detect_kind(state_dict: Mapping[str, Any]) -> tuple[str, str]:
    """Return (layout, kind): layout 'released' or 'native'; kind 'vae', 'ldm' or 'collaborative'."""
    keys = list(state_dict)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if any("_confidence_predictor." in k for k in keys):
        return "released", "collaborative"
    if has("model.diffusion_model."):
        return "released", "ldm"
    if has("encoder.") and has("decoder."):
        return "released", "vae"
    if has("diffusers.") or has("experts."):
        return "native", "collaborative"
    if has("expert."):
        return "native", "ldm"
    if has("vae."):
        return "native", "vae"
    return "unknown", "unknown"


def to_native(state_dict: Mapping[str, torch.Tensor], schedule_buffers: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """Map a released-layout state dict to native keys (a native one is returned unchanged).

    The released files store the 12 noise-schedule buffers; when ``schedule_buffers`` is given they must
    match ours (else the checkpoint was trained with another schedule) and are then dropped.
    """
    layout, kind = detect_kind(state_dict)
    if layout != "released":
        return dict(state_dict)
    table = RELEASED_PREFIXES[kind]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in SCHEDULE_BUFFERS:
            if schedule_buffers is not None and key in schedule_buffers:
                ours = schedule_buffers[key].to(value.dtype)
                if value.shape != ours.shape or not torch.allclose(value, ours, rtol=1e-4, atol=1e-7):
                    raise CheckpointError(
                        f"the checkpoint's '{key}' buffer differs from this config's noise schedule; set the "
                        "config's schedule (linear_start, linear_end, num_timesteps) to the checkpoint's"
                    )
            continue
        if IGNORED_RELEASED_KEYS.match(key):
            continue
        for old, new in table:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            out[key] = value  # left for the strict load to report as unexpected
    return out


def to_released(state_dict: Mapping[str, torch.Tensor], schedule_buffers: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """Map native keys to the released layout (inverse of :func:`to_native`), adding schedule buffers."""
    layout, kind = detect_kind(state_dict)
    if layout != "native":
        return dict(state_dict)
    table = RELEASED_PREFIXES[kind]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for old, new in sorted(table, key=lambda p: -len(p[1])):
            if key.startswith(new):
                out[old + key[len(new):]] = value
                break
        else:
            out[key] = value
    if kind != "vae" and schedule_buffers is not None:
        out.update({k: v.clone() for k, v in schedule_buffers.items()})
    return out


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def top_level(keys: Any) -> set[str]:
    """The first components of state-dict keys: {'vae', 'experts', 'diffusers'} for a collaborative model."""
    return {k.split(".", 1)[0] for k in keys}


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint", parts: Optional[set[str]] = None) -> None:
    """Load ``state_dict`` into ``module`` requiring exactly the same keys and shapes.

    With ``parts`` (top-level names such as ``{"diffusers"}``) only those parts are loaded, and they must
    match exactly; the rest of the module is left as it is. Raises CheckpointError listing missing and
    unexpected keys (and shape mismatches) by name.
    """
    own = module.state_dict()
    if parts is not None:
        own = {k: v for k, v in own.items() if k.split(".", 1)[0] in parts}
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_describe(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_describe(unexpected)}")
        if shapes:
            parts.append(
                "shape mismatch: "
                + _describe([f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in shapes], 4)
            )
        raise CheckpointError(
            f"{source} does not match the model built from the config ({'; '.join(parts)}); "
            "check that the config matches the checkpoint (resolution, sizes, modalities)"
        )
    module.load_state_dict(state_dict, strict=parts is None)


def read_checkpoint(path: str | Path, kind: str, schedule_buffers: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """Read ``path``, check it is a ``kind`` checkpoint and return its tensors under native keys."""
    state = load_state_dict(path)
    _, found = detect_kind(state)
    if found != kind:
        raise CheckpointError(
            f"{path} is a {found} checkpoint but a {kind} checkpoint is expected here; check --ckpt / the config"
        )
    return to_native(state, schedule_buffers)


def load_checkpoint_into(module: nn.Module, path: str | Path, kind: str, schedule_buffers: Optional[Mapping[str, torch.Tensor]] = None) -> None:
    """Read a ``kind`` checkpoint, map it to native keys and load it strictly into ``module``."""
    load_strict(module, read_checkpoint(path, kind, schedule_buffers), source=str(path))


@loads_weights
def pretrained(config: str, component: str, ckpt: Optional[str] = None, load_weights: bool = True) -> nn.Module:
    """Build ``model.params.<component>`` of another config and load its weights from ``ckpt``.

    This is how a config names a pre-trained part: the frozen VAE of a latent diffusion model
    (``config: configs/256_vae.yaml, component: vae``), or the frozen experts of the collaborative model
    (``config: configs/256_text.yaml, component: expert``). A dotted component is nested in its parent's params and
    keeps its dotted prefix in the checkpoint (``component: loss.discriminator``: a VAE run's discriminator). ``ckpt`` may be a released or native
    checkpoint of that config (or of any model that holds the component, e.g. an LDM file for the VAE).
    With ``load_weights=False`` (summaries, or before loading a full checkpoint) no file is read.
    """
    cfg = load_config(config)
    node, parts = cfg.model, component.split(".")  # a dotted component is nested, e.g. loss.discriminator
    for depth, part in enumerate(parts):
        params = node.get("params") or {}
        if part not in params:
            where = ".params.".join(parts[: depth + 1])
            raise ConfigError(f"{config} has no model.params.{where} to build a pre-trained {component} from")
        node = params[part]
    module = instantiate(node, load_weights=load_weights)
    if not load_weights:
        return module
    if ckpt is None:
        raise ConfigError(
            f"a pre-trained {component} is needed but no checkpoint is given; set its 'ckpt' in the config "
            f"(train one with the scripts, or point to the released file; see checkpoints/README.md)"
        )
    state = to_native(load_state_dict(ckpt))
    prefix = component + "."
    # An LDM file holds the VAE as 'vae.'; a VAE file too. The expert lives at 'expert.'.
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        _, kind = detect_kind(state)
        raise CheckpointError(f"{ckpt} holds no '{component}' weights (it is a {kind} checkpoint); check the config's ckpt")
    load_strict(module, sub, source=f"{ckpt} ({component})")
    return module


# The chain of pre-trained parts: which earlier models a config's pretrained nodes load, and where the nodes are.
CHAIN_LINKS = {"decoder": ("vae",), "text": ("vae",), "mask": ("vae",), "codiff": ("vae", "text", "mask")}
PRETRAINED_NODES = {"vae": "model.params.vae", "text": "model.params.experts.text", "mask": "model.params.experts.seg_mask"}


def pretrained_overrides(name: str, ckpts: Mapping[str, Any], configs: Optional[Mapping[str, Any]] = None) -> list[str]:
    """Config overrides that point the pretrained nodes of model ``name`` ("vae", "decoder", "text", "mask", "codiff") at
    the checkpoints ``ckpts[part]`` of the earlier links of the chain (vae -> decoder, vae -> experts -> codiff) and, with
    ``configs``, at their configs ``configs[part]``. A model without pretrained parts gets none."""
    out = []
    for part in CHAIN_LINKS.get(name, ()):
        node = PRETRAINED_NODES[part]
        if configs is not None:
            out.append(f"{node}.params.config={configs[part]}")
        out.append(f"{node}.params.ckpt={ckpts[part]}")
    return out


def convert_file(src: str | Path, dst: str | Path, layout: str = "native", config: Optional[str] = None, keep: Optional[Sequence[str]] = None) -> tuple[str, int]:
    """Read any checkpoint, map it to ``layout`` ('native' or 'released') and write ``dst``.

    ``.safetensors`` outputs carry the kind and layout in their metadata; ``.ckpt``/``.pt`` outputs are
    ``{"state_dict": ...}`` dicts. With ``config`` the native weights are first loaded strictly into the
    model that config builds. ``keep`` (native top-level names, e.g. ``["diffusers"]``) writes a partial
    checkpoint holding only those parts; :func:`ldm.pipeline.load_model` takes the rest from the files the
    config names. Returns (kind, number of tensors).
    """
    from ldm.diffusion.schedule import NoiseSchedule

    state = load_state_dict(src)
    _, kind = detect_kind(state)
    if kind == "unknown":
        raise CheckpointError(f"{src}: cannot tell which model these weights belong to (no VAE, LDM or collaborative keys)")
    native = to_native(state)
    schedule = NoiseSchedule()
    if config is not None:
        cfg = load_config(config)
        model = instantiate(cfg.model, load_weights=False)
        if getattr(model, "checkpoint_kind", "vae") != kind:
            raise CheckpointError(f"{src} is a {kind} checkpoint but {config} builds a {getattr(model, 'checkpoint_kind', 'vae')} model")
        if hasattr(model, "schedule"):
            schedule = model.schedule
            native = to_native(state, schedule.released_buffers())
        load_strict(model, native, source=str(src))
    if keep:
        unknown = sorted(set(keep) - top_level(native))
        if unknown:
            raise CheckpointError(f"--keep {unknown}: {src} has no such parts; it has {sorted(top_level(native))}")
        if layout != "native":
            raise CheckpointError("--keep writes a partial checkpoint, which exists only in the native layout")
        native = {k: v for k, v in native.items() if k.split(".", 1)[0] in keep}
    out = native if layout == "native" else to_released(native, schedule.released_buffers())
    dst = Path(dst)
    if dst.suffix == ".safetensors":
        save_safetensors(out, dst, metadata={"kind": kind, "layout": layout})
    elif dst.suffix in (".ckpt", ".pt", ".pth"):
        atomic_torch_save({"state_dict": out}, dst)
    else:
        raise CheckpointError(f"--out {dst}: use a .safetensors, .ckpt or .pt file name")
    return kind, len(out)
