"""The FaceWorld recipe: one command that makes FaceWorld, trains every model on it and ships the results.

Stages, in order (each writes ``<work>/runs/<stage>/done.json`` when finished and is skipped when re-run;
an interrupted training stage resumes from its last checkpoint):

1. ``data``       FaceWorld, 64x64 (default 10,000 samples; the last tenth is the test split)
2. ``parser``, ``classifier``, ``accuracy``   the evaluator networks, then their accuracy on the real test
                  split (first, so that an evaluator under the 95% bar shows up within minutes)
3. ``vae``        configs/faceworld/vae.yaml
   ``decoder``    configs/faceworld/decoder.yaml: its decoder trained further against a PatchGAN, encoder frozen
                  (the latents stay the VAE stage's)
4. ``scale``      scale_factor = 1 / std of the VAE's posterior samples on training images (as LDM does);
                  passed as an override to the experts and the collaborative model
5. ``text``, ``mask``   the two experts, over the frozen VAE
6. ``codiff``     the dynamic diffusers, over the frozen experts
   ``render``     configs/faceworld/render.yaml: the decoder stage's decoder trained further on latents the
                  collaborative model re-drew from training images (the sampler's latents), its reconstructions
                  anchored; the shipped ``vae.safetensors`` is this stage's VAE
7. ``usage``      how much each expert uses its condition (ε-MSE with true vs. mismatched conditions)
8. ``export``     ``<export>/{vae,text,mask,codiff,parser,classifier}.safetensors`` (float16; loaded into
                  float32 modules) with the resolved ``<name>.yaml`` beside each, whose pretrained nodes
                  point at the shipped files; ``codiff`` holds only ``diffusers.*``; ``recipe.json`` holds
                  the measured times, losses and accuracies.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.checkpoints import convert_file, load_state_dict, pretrained, pretrained_overrides
from ldm.config import RENAMED_MODULES, load_config, save_config
from ldm.data.celeba import PreprocessedFaces
from ldm.data.faceworld import LATEST_VERSION as FACEWORLD_VERSION
from ldm.data.faceworld import make_faceworld
from ldm.errors import UserError
from ldm.fileio import atomic_torch_save, atomic_write_bytes, safe_torch_load, save_safetensors
from ldm.training import LaunchOptions, train

logger = logging.getLogger(__name__)

CONFIGS = Path("configs/faceworld")
MODELS = ("vae", "text", "mask", "codiff", "parser", "classifier")  # the shipped files
TRAINED = ("vae", "decoder", "text", "mask", "codiff", "render", "parser", "classifier")  # the training stages
VAE_STAGES = ("decoder", "render")  # the stages after the VAE stage that train its decoder (the shipped VAE is render's)
RESOLUTION = 64
# what each trained stage is built on: a stage finished before one of these was (re)trained is stale
# (render reads the collaborative model only to draw its training latents: it is part of the VAE, reused with it)
BUILT_ON = {"scale": ("vae",), "decoder": ("vae",), "render": ("vae", "decoder"), "text": ("vae", "scale"), "mask": ("vae", "scale"), "codiff": ("vae", "scale", "text", "mask"),
            "usage": ("text", "mask")}
# config entries that change how a stage runs, not what it trains: a finished stage is not stale when only these differ
RUN_ONLY = ("train.cache_latents", "train.num_workers", "train.log_every_n_steps", "train.checkpoint_every_n_steps",
            "train.keep_checkpoints",
            "train.logger", "sample.", "edit.")


@dataclass(frozen=True)
class RecipeOptions:
    work: Path = Path("outputs/faceworld_train")  # FaceWorld, run directories, logs
    export: Path = Path("checkpoints/faceworld")  # the shipped files
    num: int = 10_000  # FaceWorld samples
    data_seed: int = 0
    steps: Optional[int] = None  # overrides every stage's train.max_steps (smoke tests)
    batch_size: Optional[int] = None  # overrides every stage's train.batch_size (smoke tests)
    workers: int = 2  # FaceWorld rendering processes
    eval_limit: Optional[int] = None  # test images for the evaluator accuracies (default: the whole split)
    accelerator: str = "cpu"  # where the training stages run: cpu (the shipped models) or gpu (one device)


class Recipe:
    def __init__(self, options: RecipeOptions):
        self.o = options
        self.data = options.work / "faceworld"
        self.runs = options.work / "runs"

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def done_file(self, stage: str) -> Path:
        return self.runs / stage / "done.json"

    def record(self, stage: str) -> Optional[dict]:
        path = self.done_file(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def finish(self, stage: str, info: dict) -> dict:
        path = self.done_file(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(info, indent=1).encode())
        logger.info("stage %s done: %s", stage, info)
        return info

    def ckpt(self, name: str) -> Path:
        return self.runs / name / "checkpoints" / "last.ckpt"

    # ---- configs ---------------------------------------------------------------------------------------
    def overrides(self, name: str, scale_factor: Optional[float] = None) -> list[str]:
        """Point a configs/faceworld config at this run's data, earlier checkpoints and scale factor."""
        out = [f"data.train.params.root={self.data}"]
        if self.o.steps is not None:
            # a warm-up longer than the run would leave no room for the schedule: scale it with the steps
            warmup = int(load_config(CONFIGS / f"{name}.yaml").train.get("warmup_steps", 0))
            out += [f"train.max_steps={self.o.steps}", f"train.warmup_steps={min(warmup, self.o.steps // 10)}"]
        if self.o.batch_size is not None:
            out.append(f"train.batch_size={self.o.batch_size}")
        if name in ("text", "mask", "codiff"):
            scale = scale_factor if scale_factor is not None else self.record("scale")["scale_factor"]
            out.append(f"model.params.scale_factor={scale}")
        if name == "render":  # the decoder stage's VAE and discriminator, this run's collaborative model
            decoder, codiff = self.ckpt("decoder"), self.runs / "codiff" / "checkpoints"
            out += [f"model.params.vae.params.ckpt={decoder}", f"model.params.loss.params.discriminator.params.ckpt={decoder}",
                    f"model.params.regenerate.params.model.params.config={codiff / 'config.yaml'}",
                    f"model.params.regenerate.params.model.params.ckpt={codiff / 'last.ckpt'}"]
        return out + pretrained_overrides(name, {n: self.ckpt(n) for n in ("vae", "text", "mask")})

    # ---- reusing shipped stages ---------------------------------------------------------------------------
    def reuse_shipped(self, stages: Sequence[str]) -> list[str]:
        """Rebuild the run directories of finished ``stages`` from the shipped files in ``export`` (weights, resolved
        configs and ``recipe.json``), so that a re-run trains only the others: e.g. ``vae, mask, parser,
        classifier`` retrains the text expert and the dynamic diffusers on the shipped VAE. Reusing the VAE reuses
        its scale factor and its decoder and render stages (the shipped VAE is the render stage's), and the parser
        with the classifier their accuracy record. A reused model is the float16
        shipped weights as float32, so a stage trained over it differs from a from-scratch run by that rounding.
        Returns the stages rebuilt. Raises UserError before writing anything when a stage cannot be reused."""
        stages = list(dict.fromkeys(stages))
        reusable = ("vae", "text", "mask", "parser", "classifier")
        unknown = [s for s in stages if s not in reusable]
        if unknown:
            raise UserError(f"--reuse-shipped {','.join(unknown)}: only {', '.join(reusable)} can be reused "
                            "(the dynamic diffusers are what a re-run is for)")
        summary_file = self.o.export / "recipe.json"
        if not summary_file.is_file():
            raise UserError(f"--reuse-shipped needs {summary_file} (the records of the shipped run); pass the --export "
                            "folder that holds the shipped models")
        records = json.loads(summary_file.read_text())["stages"]
        missing_deps = [f"{s} (built on {d})" for s in stages for d in BUILT_ON.get(s, ()) if d in MODELS
                        and d not in stages and not self.record(d)]
        if missing_deps:
            raise UserError(f"--reuse-shipped: {', '.join(missing_deps)}: a reused model must sit on the same "
                            "models it was trained on; reuse those too")
        extra = (["decoder", "render", "scale"] if "vae" in stages else []) + (["accuracy"] if {"parser", "classifier"} <= set(stages) else [])
        there = [str(self.runs / s) for s in (*stages, *extra) if (self.runs / s).exists()]
        if there:
            raise UserError(f"--reuse-shipped would overwrite {', '.join(there)}; move them aside first "
                            f"(e.g. mkdir -p {self.o.work}/old && mv {' '.join(there)} {self.o.work}/old/)")
        for s in (*stages, *extra):
            if not records.get(s):
                raise UserError(f"{summary_file} has no record of stage {s}; it cannot be reused")
        for s in stages:
            weights = self.o.export / f"{s}.safetensors"
            if not weights.is_file():
                raise UserError(f"--reuse-shipped {s}: {weights} does not exist")
        scale = (self.record("scale") or records["scale"])["scale_factor"] if self.record("scale") or "vae" in stages else None
        configs = {}
        for s in stages:  # every config checked before anything is written
            cfg = load_config(CONFIGS / f"{s}.yaml", self.overrides(s, scale_factor=scale))
            changed = [c for c in config_changes(load_config(self.o.export / f"{s}.yaml"), cfg)
                       if not c.startswith(("data.", "model.params.vae.params.", "model.params.experts."))]
            if changed:
                raise UserError(f"--reuse-shipped {s}: {self.o.export / f'{s}.yaml'} was trained with another config than "
                                f"configs/faceworld/{s}.yaml gives now ({'; '.join(changed)}); train it instead")
            configs[s] = cfg
        for s in (VAE_STAGES if "vae" in stages else ()):  # their training configs are kept in their records
            cfg = load_config(CONFIGS / f"{s}.yaml", self.overrides(s))
            changed = [c for c in config_changes(OmegaConf.create(records[s].get("config", {})), cfg)
                       if not c.startswith(("data.", "model.params.vae.params.", "model.params.loss.params.discriminator.params.",
                                            "model.params.regenerate.params.model.params."))]
            if changed:
                raise UserError(f"--reuse-shipped vae: the shipped VAE's {s} stage was trained with another config than "
                                f"configs/faceworld/{s}.yaml gives now ({'; '.join(changed)}); train it instead")
            configs[s] = cfg
        # in the recipe's order, so that every record is newer than the records it is built on
        order = ("parser", "classifier", "accuracy", "vae", "decoder", "render", "scale", "text", "mask")
        for s in (x for x in order if x in (*stages, *extra)):
            shipped = self.o.export / f"{'vae' if s in VAE_STAGES else s}.safetensors"
            if s in TRAINED:
                from safetensors.torch import load_file

                state = {k: v.float() if v.dtype == torch.float16 else v for k, v in load_file(shipped).items()}
                cfg = configs[s]
                (self.runs / s / "checkpoints").mkdir(parents=True, exist_ok=True)
                save_config(cfg, self.runs / s / "checkpoints" / "config.yaml")
                atomic_torch_save({"state_dict": state, "global_step": int(records[s]["steps"])}, self.ckpt(s))
            self.finish(s, {**records[s], "reused_from": str(shipped) if s in TRAINED else str(summary_file)})
        return [x for x in order if x in (*stages, *extra)]

    # ---- stages ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        torch.set_num_threads(max(torch.get_num_threads(), 1))
        total = time.time()
        self.stage_data()
        # the evaluators first: their accuracy on real test images is known (and checked) within minutes
        self.stage_train("parser")
        self.stage_train("classifier")
        self.stage_accuracy()
        self.stage_train("vae")
        self.stage_train("decoder")
        self.stage_scale()
        for name in ("text", "mask", "codiff", "render"):
            self.stage_train(name)
        self.stage_usage()
        summary = self.stage_export()
        logger.info("recipe finished in %.0f s (this invocation)", time.time() - total)
        return summary

    def stage_data(self) -> None:
        if self.record("data"):
            made = json.loads((self.data / "meta.json").read_text()).get("version") if (self.data / "meta.json").is_file() else None
            if made != FACEWORLD_VERSION:
                raise UserError(
                    f"{self.o.work} holds FaceWorld version {made}, but this code draws version {FACEWORLD_VERSION} "
                    "(its caption cues changed) and every stage after it would mix the two; delete that folder or pass "
                    "another --work, then run again"
                )
            return
        start = time.time()
        make_faceworld(self.data, num=self.o.num, seed=self.o.data_seed, size=RESOLUTION, workers=self.o.workers, progress=False,
                       version=FACEWORLD_VERSION)
        self.finish("data", {"num": self.o.num, "seed": self.o.data_seed, "seconds": round(time.time() - start, 1)})

    def check_current(self, stage: str) -> None:
        """Refuse to reuse a finished stage that no longer matches the recipe: one trained with another config than
        configs/faceworld/<stage>.yaml now gives, or one finished before a stage it is built on was (re)trained."""
        done = self.done_file(stage)
        changed = []
        if stage in TRAINED and (self.runs / stage / "checkpoints" / "config.yaml").is_file():
            trained = load_config(self.runs / stage / "checkpoints" / "config.yaml")
            changed = config_changes(trained, load_config(CONFIGS / f"{stage}.yaml", self.overrides(stage)))
        newer = [dep for dep in BUILT_ON.get(stage, ()) if self.done_file(dep).is_file()
                 and self.done_file(dep).stat().st_mtime > done.stat().st_mtime]
        if not changed and not newer:
            return
        later, frontier = set(), {stage}  # every stage built on this one, directly or not
        while frontier:
            frontier = {s for s, deps in BUILT_ON.items() if set(deps) & frontier} - later
            later |= frontier
        why = (f"configs/faceworld/{stage}.yaml changed since it was trained ({'; '.join(changed)})" if changed
               else f"it finished before {', '.join(f'runs/{d}' for d in newer)} was retrained")
        moves = " ".join(str(self.runs / s) for s in (stage, *sorted(later)) if (self.runs / s).exists())
        raise UserError(
            f"{self.runs / stage} is out of date: {why}. To train it again, move aside the stage and those built on it "
            f"(e.g. mkdir -p {self.o.work}/old && mv {moves} {self.o.work}/old/) and run again; to keep the trained "
            "models, restore the config"
        )

    def stage_train(self, name: str) -> None:
        if self.record(name):
            self.check_current(name)
            return
        cfg = load_config(CONFIGS / f"{name}.yaml", self.overrides(name))
        run_dir = self.runs / name
        resume = "last" if self.ckpt(name).is_file() else None
        first_step = int(safe_torch_load(self.ckpt(name))["global_step"]) if resume else 0
        start = time.time()
        train(cfg, name, LaunchOptions(accelerator=self.o.accelerator, devices="1", resume=resume, run_dir=str(run_dir)))
        seconds = time.time() - start
        steps = int(cfg.train.max_steps)
        per_step = seconds / max(steps - first_step, 1)
        self.finish(name, {
            "steps": steps, "batch_size": int(cfg.train.batch_size), "seconds_per_step": round(per_step, 3),
            "accelerator": self.o.accelerator, "threads": torch.get_num_threads(),
            # an interrupted stage resumed at first_step: its time is estimated at this invocation's rate
            "seconds": round(per_step * steps, 1), "resumed_at_step": first_step or None,
            "final_losses": final_losses(run_dir),
            # the decoder and render stages ship no config of their own (vae.yaml is the architecture): --reuse-shipped
            # checks these
            **({"config": OmegaConf.to_container(cfg, resolve=True)} if name in VAE_STAGES else {}),
        })

    def stage_scale(self) -> None:
        if self.record("scale"):
            self.check_current("scale")
            return
        vae = pretrained(str(CONFIGS / "vae.yaml"), "vae", str(self.ckpt("vae"))).eval()
        data = PreprocessedFaces(str(self.data), split="train", resolution=RESOLUTION, keys=["image"])
        loader = DataLoader(data, batch_size=64, shuffle=False)
        generator = torch.Generator().manual_seed(0)
        latents, seen = [], 0
        with torch.no_grad():
            for batch in loader:
                latents.append(vae.encode(batch["image"]).sample(generator=generator))
                seen += batch["image"].shape[0]
                if seen >= 512:
                    break
        std = torch.cat(latents).flatten().std().item()
        self.finish("scale", {"scale_factor": round(1.0 / std, 5), "latent_std": std, "images": seen})

    def stage_accuracy(self) -> None:
        if self.record("accuracy"):
            return
        from ldm.evaluation.evaluators import ACCURACY_FLOOR, classifier_accuracy, parser_pixel_accuracy

        parser = pretrained(str(CONFIGS / "parser.yaml"), "parser", str(self.ckpt("parser"))).eval()
        classifier = pretrained(str(CONFIGS / "classifier.yaml"), "classifier", str(self.ckpt("classifier"))).eval()
        test = PreprocessedFaces(str(self.data), split="test", resolution=RESOLUTION, keys=["image", "index_mask", "labels"])
        if self.o.eval_limit is not None:
            test.names = test.names[: self.o.eval_limit]
        loader = DataLoader(test, batch_size=100, shuffle=False)
        info = {
            "test_images": len(test),
            "parser_pixel_accuracy_32": round(parser_pixel_accuracy(parser, loader), 4),
            "classifier_accuracy": {k: round(v, 4) for k, v in classifier_accuracy(classifier, loader).items()},
        }
        self.finish("accuracy", info)
        low = {k: v for k, v in {"parser": info["parser_pixel_accuracy_32"], **info["classifier_accuracy"]}.items() if v < ACCURACY_FLOOR}
        if low:
            logger.warning("evaluator accuracy under %.0f%% on real test images: %s; the evaluation metrics that use them "
                           "are not trustworthy (train the evaluators longer)", 100 * ACCURACY_FLOOR, low)
        print(f"evaluator accuracy on {len(test)} real FaceWorld test images: parser pixel accuracy (32x32) "
              f"{info['parser_pixel_accuracy_32']:.4f}; classifier {info['classifier_accuracy']}", flush=True)

    def stage_usage(self, num: int = 128) -> None:
        """How much each expert uses its condition (:mod:`ldm.evaluation.condition_usage`) on test images."""
        if self.record("usage"):
            self.check_current("usage")
            return
        from ldm.evaluation.condition_usage import condition_usage, eps_error_profile
        from ldm.pipeline import load_model

        info = {"test_images": None}
        for name, key in (("text", "text"), ("mask", "seg_mask")):
            model = load_model(self.runs / name / "checkpoints" / "config.yaml", self.ckpt(name)).eval()
            test = PreprocessedFaces(str(self.data), split="test", resolution=RESOLUTION, keys=["image", key])
            batch = next(iter(DataLoader(test, batch_size=min(num, len(test)), shuffle=False)))
            info["test_images"] = int(batch["image"].shape[0])
            rows = condition_usage(model, batch["image"], batch[key], torch.Generator().manual_seed(0))
            info[name] = [{k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
            profile = eps_error_profile(model, batch["image"], batch[key], torch.Generator().manual_seed(1))
            info[f"{name}_profile"] = [{k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in r.items()} for r in profile]
        self.finish("usage", info)

    def stage_export(self) -> dict:
        export = self.o.export
        export.mkdir(parents=True, exist_ok=True)
        shipped = {name: export / f"{name}.safetensors" for name in MODELS}
        configs = {name: export / f"{name}.yaml" for name in MODELS}
        for name in MODELS:
            cfg = load_config(CONFIGS / f"{name}.yaml", self.overrides(name) + pretrained_overrides(name, shipped, configs))
            save_config(cfg, export / f"{name}.yaml")
            if name in ("parser", "classifier"):
                state = load_state_dict(self.ckpt(name))  # {"parser.*"} / {"classifier.*"}
                save_safetensors(half(state), shipped[name], metadata={"kind": "evaluator", "layout": "native"})
            else:
                tmp = export / f".{name}.full.safetensors"
                # the shipped VAE is the render stage's (same encoder, the decoder of the decoder and render stages)
                convert_file(self.ckpt("render" if name == "vae" else name), tmp, keep=["diffusers"] if name == "codiff" else None)
                from safetensors.torch import load_file

                state = load_file(tmp)
                if name == "vae":  # the discriminator is a training aid, not part of the model
                    state = {k: v for k, v in state.items() if not k.startswith("loss.discriminator.")}
                save_safetensors(half(state), shipped[name], metadata={"kind": {"vae": "vae", "codiff": "collaborative"}.get(name, "ldm"), "layout": "native"})
                tmp.unlink()
        records = {stage: self.record(stage) for stage in ("data", "scale", *TRAINED, "accuracy", "usage")}
        sizes = {p.name: p.stat().st_size for p in sorted(export.glob("*.safetensors"))}
        summary = {"stages": records, "file_bytes": sizes, "total_mb": round(sum(sizes.values()) / 2**20, 2)}
        atomic_write_bytes(export / "recipe.json", json.dumps(summary, indent=1).encode())
        atomic_write_bytes(export / "README.md", readme(summary).encode())
        logger.info("exported to %s (%.1f MB)", export, summary["total_mb"])
        return summary


def config_changes(trained, current) -> list[str]:
    """'key: old -> new' for every entry where two configs differ in what they train (:data:`RUN_ONLY` aside;
    old module names of targets count as their new ones)."""
    def flat(node, prefix=""):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                if key == "target" and isinstance(value, str):
                    module, _, attr = value.rpartition(".")
                    value = f"{RENAMED_MODULES.get(module, module)}.{attr}"
                out[prefix + key] = value
        return out

    old = flat(OmegaConf.to_container(trained, resolve=True))
    new = flat(OmegaConf.to_container(current, resolve=True))
    keys = sorted(k for k in old.keys() | new.keys()
                  if old.get(k) != new.get(k) and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RUN_ONLY))
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys]


def readme(summary: dict) -> str:
    """checkpoints/faceworld/README.md: how the files were made, from the recipe's own records."""
    st = summary["stages"]
    rows = []
    for name in TRAINED:
        r = st[name]
        losses = ", ".join(f"{k.removeprefix('train/')} {v:.4g}" for k, v in sorted(r["final_losses"].items())) or "-"
        rows.append(f"| `{name}` | configs/faceworld/{name}.yaml | {r['steps']} | {r['batch_size']} | {r['seconds'] / 60:.1f} | {r['seconds_per_step']:.2f} | {losses} |")
    acc = st["accuracy"]
    first = st["vae"]
    where = "GPU" if first.get("accelerator") == "gpu" else f"CPU with {first.get('threads', 2)} torch threads"
    train_minutes = sum(st[s]["seconds"] for s in ("data", *TRAINED)) / 60
    usage = st["usage"]
    usage_rows = "\n".join(
        f"| {name} | [{r['t_lo']}, {r['t_hi']}) | {r['true']:.4f} | {r['mismatched']:.4f} | {r['gain']:+.1%} |"
        for name in ("text", "mask") for r in usage[name]
    )
    profile_t = [r["t"] for r in usage["text_profile"]]
    profile_rows = "\n".join(
        f"| {name} | " + " | ".join(f"{r['model']:.2g}" for r in usage[f"{name}_profile"]) + " |" for name in ("text", "mask")
    ) + "\n| trivial x_t / sqrt(1 − ᾱ) | " + " | ".join(f"{r['trivial']:.2g}" for r in usage["text_profile"]) + " |"
    files = "\n".join(f"| `{n}` | {b / 2**20:.2f} |" for n, b in summary["file_bytes"].items())
    clf = ", ".join(f"{k} {v:.2%}" for k, v in acc["classifier_accuracy"].items())
    return f"""# FaceWorld models

Made by one command, `make train-faceworld` (= `python scripts/train_faceworld.py --work outputs/faceworld_train
--export checkpoints/faceworld`, stages in `ldm/faceworld_recipe.py`), on the {where} and fixed
seeds: FaceWorld ({st['data']['num']:,} samples at 64x64, seed {st['data'].get('seed', 0)}, the last tenth is the test
split) -> face parser and attribute classifier (and their accuracy) -> VAE -> its decoder against a PatchGAN
(encoder frozen) -> scale_factor -> text and mask experts -> dynamic diffusers -> the decoder trained further on latents
the collaborative model re-drew from training images (`render`; `vae.safetensors` is this stage's VAE).
Re-running skips finished stages (an interrupted stage resumes from its last checkpoint) and re-exports.

Weights are float16 safetensors (half the size; the modules load them as float32), each with its resolved config,
whose pretrained nodes point at the files here. `codiff.safetensors` is a partial checkpoint holding only the
dynamic diffusers (`diffusers.*`); the experts and the VAE come from `text`, `mask` and `vae`. `recipe.json` holds
every number below. scale_factor = 1 / std of the VAE latents = **{st['scale']['scale_factor']}** (measured on
{st['scale']['images']} training images after the VAE trained, passed to the experts and the collaborative model).

## Training: {train_minutes:.0f} min in all (FaceWorld rendering and every stage; measured wall-clock times)

| model | config | steps | batch | minutes | s/step | final training losses (mean of the last 4 logged) |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

FaceWorld rendering: {st['data']['seconds'] / 60:.1f} min. A stage that was interrupted and resumed has its minutes estimated as
steps x its measured s/step (`resumed_at_step` in `recipe.json`).{reused_note(st)}

## Evaluators on {acc['test_images']} real FaceWorld test images

- face parser: pixel accuracy at 32x32 (nearest resize of its argmax, as the condition) **{acc['parser_pixel_accuracy_32']:.2%}**
- attribute classifier: {clf}

## Do the experts use their conditions?

ε-MSE of each expert on {usage['test_images']} test images with their own condition and with another image's
(the batch rolled by one), same latents, t and ε (`ldm/evaluation/condition_usage.py`); gain = 1 − true /
mismatched, about 0 for an expert that ignores its condition.

| expert | t | ε-MSE, true condition | ε-MSE, mismatched | gain |
| --- | --- | --- | --- | --- |
{usage_rows}

ε-MSE at single timesteps beside the trivial predictor ε̂ = x_t / sqrt(1 − ᾱ_t), which is nearly exact at large t
(`eps_error_profile`). Where an expert is worse than it, DDIM's x_0 estimate carries that error times
1/sqrt(ᾱ_t) (80× at t = 999) and samples keep residual noise; a well-trained expert beats it at every t.

| expert | {" | ".join(f"t = {t}" for t in profile_t)} |
| --- |{" --- |" * len(profile_t)}
{profile_rows}

## Files (MB)

| file | MB |
| --- | --- |
{files}

Total: {summary['total_mb']:.1f} MB.

## What they score

The evaluation of the paper's claim with these files is in `docs/faceworld_results.md` (made by
`scripts/evaluate.py --write-doc`), the editing table in `docs/editing.md`, and what the numbers mean, which
quality targets they meet and what limits the rest in `docs/faceworld_analysis.md`.

## Use

```
make demo                                                    # samples from these models (outputs/demo/)
python scripts/generate.py --config checkpoints/faceworld/codiff.yaml --ckpt checkpoints/faceworld/codiff.safetensors \\
    --mask MASK.png --text "He has a short beard. He is in his thirties." --method collaborative,composable,text,mask
python scripts/evaluate.py ...                               # the evaluation table (see docs/evaluation.md)
```
"""


def reused_note(stages: dict) -> str:
    """A README sentence naming the stages taken from earlier shipped files (``--reuse-shipped``), if any."""
    reused = [name for name in TRAINED if stages[name].get("reused_from")]
    if not reused:
        return ""
    return (f"\n`{'`, `'.join(reused)}` were not trained by this invocation: `--reuse-shipped` took them from the files an "
            "earlier run of the same configs shipped (float16, read back as float32); their rows are that run's records.")


def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors -> float16 (halves the shipped size; modules load them back as float32)."""
    return {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}


def final_losses(run_dir: Path, last: int = 4) -> dict[str, float]:
    """Mean of the last ``last`` logged values of each train/* metric in the run's newest CSV log."""
    logs = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    values: dict[str, list[float]] = {}
    for path in logs:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                for key, value in row.items():
                    if key.startswith("train/") and value not in ("", None):
                        values.setdefault(key, []).append(float(value))
    return {k: round(sum(v[-last:]) / len(v[-last:]), 5) for k, v in values.items() if v and not math.isnan(v[-1])}
