"""Configs are data, checked when loaded.

A config is a YAML file with these top-level sections (nothing else is accepted):

``model``  (required) a *node* ``{target: ldm.<module>.<Name>, params: {...}}`` building the model
``data``   (optional) ``{train: node, validation: node}`` datasets
``train``  (optional) :class:`TrainSettings` -- batch size, learning rate, steps, logging, checkpoints
``sample`` (optional) :class:`SampleSettings` -- sampler, steps, spacing, DDIM eta, collaborative preset

A node's ``target`` must name a class or function under ``ldm.``; its ``params`` are checked against the
target's signature and type annotations *before anything is built*: an unknown key, a missing required
argument, a wrong type or a target outside ``ldm`` fails with a :class:`~ldm.errors.ConfigError` naming the
key path (``model.params.expert.params.unet.params.num_heads``). A param may itself be a node (a network
handed to a constructor) or a mapping of nodes (one per modality).

Relative paths in configs (``configs/256_vae.yaml``, ``checkpoints/...``) are relative to the working
directory; run scripts from the repository root.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm import ranges
from ldm.errors import ConfigError
from ldm.fileio import atomic_write_bytes

NODE_KEYS = {"target", "params"}


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, except that floats follow YAML 1.2: ``1e-4`` and ``1e30`` are numbers
    (PyYAML's YAML 1.1 rules need ``1.0e-4``/``1.0e+30`` and would read them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


@dataclass
class TrainSettings:
    """The ``train:`` section. Learning rate follows the released rule when ``scale_lr`` is true:
    lr = base_learning_rate x batch_size x devices x accumulate_grad_batches (x nodes)."""

    seed: int = 23
    batch_size: int = 8
    num_workers: int = 2
    base_learning_rate: float = 2.0e-6
    scale_lr: bool = True
    max_steps: int = -1
    max_epochs: Optional[int] = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    precision: str = "32-true"
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 1000
    keep_checkpoints: Optional[int] = None  # the newest step checkpoints kept beside last.ckpt; null: all of them
    val_check_interval: Optional[int] = None
    logger: str = "tensorboard"
    run_dir: str = "runs"
    ema_decay: Optional[float] = None  # an exponential moving average of the weights (ldm.callbacks.EMA); null: none, as released
    lr_schedule: str = "constant"  # constant (released) or cosine: decay to lr_min_ratio x lr by max_steps (ldm.callbacks.LearningRateSchedule)
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps (0: none, as released)
    lr_min_ratio: float = 0.1  # the cosine schedule's final learning rate as a fraction of the peak
    cache_latents: bool = False  # experts and diffusers: encode each training image once (ldm.models.latent_cache); off as released
    fused_optimizer: bool = False  # torch's fused Adam/AdamW kernel (ldm.models.common.AdamOptions); off: torch's default, as released


@dataclass
class SampleSettings:
    """The ``sample:`` section: defaults for the sampling scripts (flags override them). ``sampler`` is one of
    :func:`ldm.diffusion.samplers.sampler_names` (``ddim``, as released, by default); ``spacing`` ``null`` takes
    the sampler's own; ``eta`` is DDIM's (the other samplers ignore it)."""

    steps: int = 50
    eta: float = 1.0
    method: str = "collaborative"
    preset: str = "paper"
    batch_size: int = 4
    sampler: str = "ddim"
    spacing: Optional[str] = None

    def check(self, where: str = "sample") -> None:
        """Raise ConfigError naming the first key whose value is out of range or unknown."""
        from ldm.diffusion.collaborative import PRESETS
        from ldm.diffusion.samplers import sampler_names, spacing_names

        if self.sampler not in sampler_names():
            raise ConfigError(f"{where}.sampler = {self.sampler!r} is unknown; choose one of {', '.join(sampler_names())}")
        if self.spacing is not None and self.spacing not in spacing_names():
            raise ConfigError(f"{where}.spacing = {self.spacing!r} is unknown; choose one of {', '.join(spacing_names())} or null")
        try:
            ranges.check("steps", self.steps, ranges.STEPS)
            ranges.check("eta", self.eta, ranges.ETA)
            if self.preset not in PRESETS:
                raise ConfigError(f"{where}.preset = {self.preset!r} is unknown; choose one of {', '.join(PRESETS)}")
            ranges.check("batch_size", self.batch_size, ranges.BATCH_SIZE)
        except ranges.ParameterError as err:
            raise ConfigError(f"{where}.{err.parameter} = {err.detail}") from None


@dataclass
class EditSettings:
    """The optional ``edit:`` section: this model's defaults for the Imagic edits (``scripts/edit.py``,
    ``scripts/evaluate_editing.py``). A key that is set overrides :class:`ldm.editing.EditOptions`' released
    value (:func:`ldm.editing.edit_defaults`); flags override both. The paper configs have none."""

    embed_steps: Optional[int] = None
    embed_lr: Optional[float] = None
    finetune_steps: Optional[int] = None
    finetune_lr: Optional[float] = None
    alphas: Optional[list[float]] = None
    strength: Optional[float] = None

    def check(self, where: str = "edit") -> None:
        """Raise ConfigError naming the first key whose value is out of range."""
        try:
            ranges.check_edit(self.embed_steps, self.embed_lr, self.finetune_steps, self.finetune_lr, self.alphas,
                              self.strength)
        except ranges.ParameterError as err:
            raise ConfigError(f"{where}.{err.parameter} = {err.detail}") from None


SECTIONS: dict[str, Any] = {"model": None, "data": None, "train": TrainSettings, "sample": SampleSettings,
                            "edit": EditSettings}
REQUIRED_SECTIONS = ("model",)


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read ``path``, apply ``key=value`` overrides (dotted keys), validate, and return the config.

    Raises ConfigError for a missing or unparsable file and for anything :func:`validate` rejects.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file with --config")
    try:
        raw = _yaml(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; pass a YAML config (configs/*.yaml)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping with a 'model' section")
    cfg = OmegaConf.create(raw)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    validate(cfg, source=str(path))
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Merge ``a.b.c=value`` strings into ``cfg`` (values parsed as YAML: numbers, lists, null...)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.batch_size=4)")
        key, value = item.split("=", 1)
        try:
            parsed = _yaml(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        try:
            OmegaConf.update(cfg, key.strip(), parsed, merge=True, force_add=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"override '{item}' could not be applied: {err}".replace("\n", " ")) from None
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    atomic_write_bytes(Path(path), text.encode())


def train_settings(cfg: DictConfig) -> TrainSettings:
    return TrainSettings(**OmegaConf.to_container(cfg.get("train", {}), resolve=True))


def sample_settings(cfg: DictConfig) -> SampleSettings:
    return SampleSettings(**OmegaConf.to_container(cfg.get("sample", {}), resolve=True))


def edit_settings(cfg: Optional[DictConfig]) -> EditSettings:
    """The config's ``edit:`` section (every key None where the config has none)."""
    section = cfg.get("edit") if cfg is not None else None
    return EditSettings(**OmegaConf.to_container(section, resolve=True)) if section else EditSettings()


# --------------------------------------------------------------------------------------------------
# Validation


def validate(cfg: DictConfig, source: str = "config") -> None:
    """Check every section, node, key and type. Raises ConfigError naming the first problem."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:  # e.g. an interpolation ${...} naming a key that does not exist
        raise ConfigError(f"{source}: {err}".replace("\n", " ")) from None
    unknown = sorted(set(data) - set(SECTIONS), key=str)
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {unknown}; allowed sections are {sorted(SECTIONS)}"
        )
    for name in REQUIRED_SECTIONS:
        if name not in data:
            raise ConfigError(f"{source}: missing required section '{name}' (a {{target, params}} node)")
    validate_node(data["model"], "model")
    if "data" in data:
        sec = data["data"]
        if not isinstance(sec, dict):
            raise ConfigError(f"{source}: 'data' must map split names (train, validation) to nodes")
        for split, node in sec.items():
            if split not in ("train", "validation"):
                raise ConfigError(f"{source}: unknown key data.{split}; use data.train and data.validation")
            validate_node(node, f"data.{split}")
    for name, schema in SECTIONS.items():
        if schema is not None and name in data:
            _validate_dataclass(schema, data[name], name)
    if "sample" in data:
        SampleSettings(**data["sample"]).check()
    if data.get("edit") is not None:
        EditSettings(**data["edit"]).check()


def _validate_dataclass(schema: type, values: Any, where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"'{where}' must be a mapping of settings, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {where}.{key}; allowed: {sorted(fields)}")
        _check_type(value, hints[key], f"{where}.{key}")


def is_node(value: Any) -> bool:
    return isinstance(value, Mapping) and "target" in value


# Modules renamed since configs were first written: the resolved configs saved beside existing checkpoints
# still name the old modules, and load through this map (old module -> new module).
RENAMED_MODULES = {
    "ldm.models.autoencoder": "ldm.models.autoencoder_module",
    "ldm.models.collaborative": "ldm.models.collaborative_diffusion",
    "ldm.models.evaluators": "ldm.models.faceworld_evaluators",
}


def resolve_target(target: Any, where: str) -> Callable:
    """Import ``ldm.x.y.Name``; refuse anything outside the ``ldm`` package. Old module names
    (:data:`RENAMED_MODULES`) resolve to their new ones."""
    if not isinstance(target, str) or not target.startswith("ldm."):
        raise ConfigError(f"{where}.target = {target!r} is outside the ldm package; targets must start with 'ldm.'")
    module_name, _, attr = target.rpartition(".")
    module_name = RENAMED_MODULES.get(module_name, module_name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where}.target = {target!r}: module {module_name} cannot be imported ({err})") from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise ConfigError(f"{where}.target = {target!r}: {module_name} has no class or function {attr!r}")
    defined_in = getattr(obj, "__module__", None) or ""
    if defined_in != "ldm" and not defined_in.startswith("ldm."):  # e.g. ldm.training.DataLoader (torch's)
        raise ConfigError(
            f"{where}.target = {target!r} is defined in {defined_in or 'an unknown module'}, outside the ldm "
            "package; targets must be classes or functions defined under 'ldm.'"
        )
    return obj


def validate_node(node: Any, where: str, injected: Sequence[str] = ()) -> None:
    """Check one ``{target, params}`` node (recursively) against its target's signature."""
    if not is_node(node):
        raise ConfigError(f"'{where}' must be a node with 'target' (and optional 'params')")
    extra = sorted(set(node) - NODE_KEYS)
    if extra:
        raise ConfigError(f"unknown key(s) {extra} in {where}; a node has only 'target' and 'params'")
    fn = resolve_target(node["target"], where)
    params = node.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}.params must be a mapping of argument names to values")
    sig, hints = _signature(fn)
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for key, value in params.items():
        where_key = f"{where}.params.{key}"
        if key not in sig.parameters:
            if accepts_kwargs:
                continue
            allowed = [n for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            raise ConfigError(f"unknown key {where_key}; {node['target']} accepts {allowed}")
        if key in hints:
            _check_type(value, hints[key], where_key)
        elif is_node(value):
            validate_node(value, where_key)
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not inspect.Parameter.empty:
            continue
        if name not in params and name not in injected:
            raise ConfigError(f"missing required key {where}.params.{name} for {node['target']}")


def _signature(fn: Callable) -> tuple[inspect.Signature, dict[str, Any]]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to no type checks
        hints = {}
    hints.pop("return", None)
    return sig, hints


def _check_type(value: Any, tp: Any, where: str) -> None:
    """A small structural type check for the annotation kinds our constructors use."""
    if tp is Any or tp is inspect.Parameter.empty:
        if is_node(value):
            validate_node(value, where)
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                _check_type(value, option, where)
                return
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if is_node(value):
        if origin is None and inspect.isclass(tp) and tp in (int, float, bool, str):
            raise ConfigError(f"{where} must be a {tp.__name__}, not a target node")
        validate_node(value, where)
        return
    if origin in (list, Sequence, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        for i, item in enumerate(value):
            _check_type(item, inner, f"{where}[{i}]")
        return
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        for k, item in value.items():
            _check_type(item, inner, f"{where}.{k}")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return
    if inspect.isclass(tp) and value is not None and not isinstance(value, (dict, list)):
        # A network or object argument given as a plain value.
        raise ConfigError(f"{where} must be a {{target, params}} node building a {tp.__name__}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Building


def instantiate(node: Any, *, load_weights: bool = True, **injected: Any) -> Any:
    """Build a validated node (recursively). ``injected`` kwargs go to the top-level target only.

    Targets that load weights from files (marked with :func:`loads_weights`) receive
    ``load_weights``; with ``load_weights=False`` they build the network without reading files (used by
    ``summarize.py`` on the meta device, and before loading a full checkpoint).
    """
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if is_node(node):
        fn = resolve_target(node["target"], "node")
        params = {k: instantiate(v, load_weights=load_weights) for k, v in (node.get("params") or {}).items()}
        if getattr(fn, "loads_weights", False):
            params["load_weights"] = load_weights
        params.update(injected)
        try:
            return fn(**params)
        except ValueError as err:  # a constructor rejecting a value, e.g. an unknown time_injection
            raise ConfigError(f"{node['target']}: {err}") from None
    if isinstance(node, Mapping):
        return {k: instantiate(v, load_weights=load_weights) for k, v in node.items()}
    if isinstance(node, list):
        return [instantiate(v, load_weights=load_weights) for v in node]
    return node


def loads_weights(fn: Callable) -> Callable:
    """Mark a factory function whose ``load_weights: bool`` argument :func:`instantiate` controls."""
    fn.loads_weights = True  # type: ignore[attr-defined]
    return fn


def node_to_dict(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node
