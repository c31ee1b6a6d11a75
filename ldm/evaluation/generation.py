"""The generation evaluation (``scripts/evaluate.py``): every method generates from the same seeds on held-out
(mask, caption) pairs, and the evaluators score the images; the counterpart of :mod:`ldm.evaluation.edit_metrics`.

The pieces, in the order the script calls them: :func:`test_pairs` (the pairs), :class:`Evaluators` (the
networks that score images), :func:`score_real` and :func:`evaluator_check` (the evaluators on the real test
images), :func:`generate_shard` (one process's block of batches), :func:`summarize` (averages and Fréchet
distances of the merged shards) and :func:`write_results` (results.json / .md / records.json and the doc page).
The metric definitions are in :mod:`ldm.evaluation.metrics`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ldm.data import celeba
from ldm.diffusion.collaborative import CollaborativeOptions
from ldm.diffusion.samplers import SamplerOptions
from ldm.errors import UserError
from ldm.evaluation import evaluators, metrics, real_metrics, report
from ldm.pipeline import load_model, sample
from ldm.seeding import batch_seed
from ldm.speed import SpeedOptions

logger = logging.getLogger(__name__)

METHODS = ("text", "mask", "composable", "collaborative")
RECONSTRUCTION = report.RECONSTRUCTION
WARNING = "metrics are meaningless; retrain the evaluators"
PROGRESS = os.environ.get("LDM_PROGRESS", "1") != "0"

__all__ = ["METHODS", "RECONSTRUCTION", "GenerationRun", "Evaluators", "batch_seed", "test_pairs", "batch_of",
           "score_real", "evaluator_check", "generate_shard", "summarize", "write_results"]


@dataclass
class GenerationRun:
    """What the generated images depend on: the model, the seed, the sampler and the batching."""

    config: str
    ckpt: str
    sampling: SamplerOptions
    seed: int = 0
    preset: str = "paper"
    batch_size: int = 50
    overrides: list[str] = field(default_factory=list)
    speed: Optional[SpeedOptions] = None  # the networks' fast path (bf16 autocast, ...); None: as built, fp32


def test_pairs(root: Path, resolution: Optional[int], num: int) -> celeba.PreprocessedFaces:
    """The first ``num`` (image, caption, mask) triples of the test split of ``root``."""
    meta = celeba.read_meta(root) if root.is_dir() else {}
    resolution = resolution or int(meta.get("size", 256))
    dataset = celeba.PreprocessedFaces(str(root), split="test", resolution=resolution, keys=["image", "text", "seg_mask"])
    if num > len(dataset):
        logger.warning("--num %d exceeds the %d test pairs of %s; evaluating %d", num, len(dataset), root, len(dataset))
    dataset.names = dataset.names[:num]
    return dataset


def batch_of(dataset, indices) -> dict:
    items = [dataset[i] for i in indices]
    return {"image": torch.stack([x["image"] for x in items]), "text": [x["text"] for x in items],
            "seg_mask": torch.stack([x["seg_mask"] for x in items]), "name": [x["name"] for x in items]}


class Evaluators:
    """The networks that score images: the FaceWorld parser and classifier, and the optional real-data ones."""

    def __init__(self, faceworld: bool, device: str, *, parser: Optional[str] = None, classifier: Optional[str] = None,
                 fid_weights: Optional[str] = None, clip_dir: Optional[str] = None, bisenet_weights: Optional[str] = None):
        self.parser = self.classifier = self.inception = self.clip = self.bisenet = None
        if faceworld:
            self.parser = evaluators.load_evaluator(parser or evaluators.DEFAULT_DIR / "parser.safetensors", "parser", device)
            self.classifier = evaluators.load_evaluator(classifier or evaluators.DEFAULT_DIR / "classifier.safetensors", "classifier", device)
        if fid_weights is not None:
            self.inception = real_metrics.load_fid_inception(fid_weights).to(device)
        if clip_dir is not None:
            self.clip = real_metrics.load_clip(clip_dir).to(device)
        if bisenet_weights is not None:
            self.bisenet = real_metrics.load_bisenet(bisenet_weights).to(device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, batch: dict, labels) -> tuple[list[dict], dict[str, torch.Tensor]]:
        """Per-sample records (without method/index) and per-sample features of a batch of images."""
        n = images.shape[0]
        rows: list[dict] = [{"hf_energy": float(e)} for e in metrics.high_frequency_energy(images.cpu())]
        features: dict[str, torch.Tensor] = {}
        if self.parser is not None:
            m = evaluators.measure(self.parser, self.classifier, images, batch["seg_mask"], labels)
            for i in range(n):
                rows[i].update(mask_accuracy=float(m.mask_accuracy[i]), text_accuracy=float(m.text_accuracy[i]),
                               joint_accuracy=float(m.joint_accuracy[i]), **{a: float(c[i]) for a, c in m.correct.items()})
            features["parser"] = m.features
        if self.inception is not None:
            features["inception"] = real_metrics.inception_features(self.inception, images)
        if self.clip is not None:
            for i, s in enumerate(self.clip(images, batch["text"]).tolist()):
                rows[i]["clip_similarity"] = s
        if self.bisenet is not None:
            device = next(self.bisenet.parameters()).device
            acc = metrics.parser_mask_accuracy(self.bisenet(images.to(device)), batch["seg_mask"].to(device)).cpu()
            for i, a in enumerate(acc.tolist()):
                rows[i]["bisenet_mask_accuracy"] = a
        return rows, features


# ----------------------------------------------------------------------------------------------------
# Real images: the evaluators' own accuracy and the reference features


def score_real(scorer: Evaluators, dataset, labels, batch_size: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """The evaluators on the real test images of the pairs: averaged records and features."""
    records, features = [], {}
    for start in tqdm(range(0, len(dataset), batch_size), desc="real images", unit="batch", disable=not PROGRESS):
        batch = batch_of(dataset, range(start, min(start + batch_size, len(dataset))))
        lab = evaluators.label_tensors(labels, batch["name"]) if labels is not None else None
        rows, feats = scorer.score(batch["image"], batch, lab)
        records += [{**r, "method": "real"} for r in rows]
        for k, v in feats.items():
            features.setdefault(k, []).append(v)
    return report.average_records(records, ["real"])["real"], {k: torch.cat(v) for k, v in features.items()}


def evaluator_check(real: dict) -> list[str]:
    """Lines about the FaceWorld evaluators' accuracy on real images, with the warning where it is low."""
    lines = []
    for key, what in (("mask_accuracy", "face parser pixel accuracy (32x32)"), *((a, f"classifier {a} accuracy") for a in evaluators.ATTRIBUTES)):
        if key in real:
            low = real[key] < evaluators.ACCURACY_FLOOR
            lines.append(f"{'WARNING: ' if low else ''}{what} on real test images: {100 * real[key]:.1f}%"
                         + (f" < {100 * evaluators.ACCURACY_FLOOR:.0f}%: {WARNING}" if low else ""))
    return lines


# ----------------------------------------------------------------------------------------------------
# Generation and merging


def generate_shard(run: GenerationRun, methods: Sequence[str], dataset, labels, scorer: Evaluators, shard, units, device):
    """Generate and score the global batches ``units`` with every method: per-sample records and features."""
    model = load_model(run.config, run.ckpt, device, run.overrides)
    options = CollaborativeOptions.from_preset(run.preset)
    records, features = [], {}
    bar = tqdm(total=len(units) * len(methods), desc=f"generate (rank {shard})", unit="batch", disable=not PROGRESS)
    for unit in units:
        indices = range(unit * run.batch_size, min((unit + 1) * run.batch_size, len(dataset)))
        batch = batch_of(dataset, indices)
        lab = evaluators.label_tensors(labels, batch["name"]) if labels is not None else None
        conditions = {"seg_mask": batch["seg_mask"], "text": batch["text"]}
        for method in methods:
            generator = torch.Generator().manual_seed(batch_seed(run.seed, unit))
            images = sample(model, conditions, method=method, **run.sampling.to_dict(), generator=generator, options=options,
                            speed=run.speed).images
            rows, feats = scorer.score(images, batch, lab)
            records += [{"unit": unit, "index": i, "name": n, "method": method, **r} for i, n, r in zip(indices, batch["name"], rows)]
            for k, v in feats.items():
                features.setdefault(f"{k}/{method}", []).append(v)
            bar.update()
        # the ceiling of any latent model: the real images through the VAE (posterior mean, decoded)
        with torch.no_grad():
            images = model.vae.decode(model.vae.encode(batch["image"].to(device)).mean)
        rows, feats = scorer.score(images, batch, lab)
        records += [{"unit": unit, "index": i, "name": n, "method": RECONSTRUCTION, **r} for i, n, r in zip(indices, batch["name"], rows)]
        for k, v in feats.items():
            features.setdefault(f"{k}/{RECONSTRUCTION}", []).append(v)
    bar.close()
    return records, {k: torch.cat(v) for k, v in features.items()}


def summarize(gathered, methods, real_avg, real_features, n: int) -> dict:
    """Per-method averages of the merged records, with Fréchet distances against the real features."""
    summary = report.average_records(gathered.records, methods)
    for method in methods:
        indices = [r["index"] for r in gathered.records if r["method"] == method]
        if indices != list(range(n)):
            raise UserError(f"the merged results of {method} cover samples {indices[:5]}..., not 0..{n - 1}; delete OUT/shards and run again")
        if "parser" in real_features:
            summary[method]["frechet_distance"] = metrics.frechet_distance_features(gathered.tensors[f"parser/{method}"], real_features["parser"])
        if "inception" in real_features:
            summary[method]["fid"] = metrics.frechet_distance_features(gathered.tensors[f"inception/{method}"], real_features["inception"])
    return {**summary, report.REAL: real_avg}


def write_results(run: GenerationRun, settings: dict, summary: dict, checks: list[str], out: Path, records=None,
                  doc: Optional[str] = None, command: Optional[str] = None) -> str:
    """Write OUT/results.json, OUT/results.md (and OUT/records.json); with ``doc`` also the results page,
    headed by ``command``. Returns the markdown table and the claim checks."""
    speed = f", networks {run.speed.describe()}" if run.speed is not None else ""
    caption = (f"N = {settings['num']} held-out pairs, seed {run.seed}, {run.sampling.describe()}{speed}, "
               f"preset {run.preset}; `{run.ckpt}`")
    table = report.markdown_table(summary, caption)
    claim = report.claim_checks(summary, records)
    claim_md = ("\nThe paper's claim (collaborative within 5 points of each uni-modal model on its modality, better than "
                "composable on joint accuracy and FD):\n\n" + "\n".join(f"- {c}" for c in claim) + "\n") if claim else ""
    noise = report.noise_checks(summary)
    claim_md += ("\nResidual noise (high-frequency energy against the real test images'):\n\n"
                 + "\n".join(f"- {c}" for c in noise) + "\n") if noise else ""
    targets = report.faceworld_target_checks(summary, records)  # empty on real data (no FaceWorld metrics)
    claim_md += ("\nThe FaceWorld quality targets (docs/faceworld_recipe.md; the residual-noise lines above are one of them):\n\n"
                 + "\n".join(f"- {c}" for c in targets) + "\n") if targets else ""
    (out / "results.json").write_text(json.dumps({"settings": settings, "evaluator_check": checks, "claim": claim, "noise": noise,
                                                  "faceworld_targets": targets, "results": summary}, indent=2))
    (out / "results.md").write_text(table + claim_md + "\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    if records is not None:
        (out / "records.json").write_text(json.dumps(records, indent=0))
    if doc:
        path = Path(doc)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# FaceWorld results\n\nWritten by `scripts/evaluate.py --write-doc`; re-run it to update this page.\n\n"
            f"```\n{command}\n```\n\n{table}{claim_md}\nEvaluators on the real test images:\n\n"
            + "\n".join(f"- {c}" for c in checks) + "\n"
        )
    return table + claim_md
