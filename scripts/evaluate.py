"""Evaluate the paper's claim: collaborative vs composable vs uni-modal generation on held-out conditions.

For the first N (mask, caption) pairs of the test split, every method generates from the same seeds, and:
  mask acc   pixel accuracy at 32x32 of a face parser on the image against the condition mask
  age/beard  accuracy of an attribute classifier on the image against the caption's labels (labels.json);
             text acc is their mean, joint acc the per-sample mask acc x text acc, averaged
  FD         Fréchet distance of the parser's features against the same N real test images
  HF energy  residual noise: mean squared difference between each image and its 3x3 blur, beside the real
             images' value (a method should be within 1.3x of it)
The table also scores the real test images themselves and their VAE reconstructions (encoded and decoded by
the model's VAE): the latter is the ceiling of any latent diffusion model over that VAE.
On a FaceWorld (a folder with labels.json) the parser and classifier are the FaceWorld evaluators
(--parser, --classifier); their own accuracy on the real test images is printed first, with a warning
below 95%. With the user's weight files it also measures the paper's real-data metrics: FID (pytorch-fid
Inception, --fid-weights), CLIP similarity (--clip-dir) and mask accuracy with BiSeNet (--bisenet-weights);
on real data (no labels.json) only those are measured.

Writes OUT/results.json, OUT/results.md and the per-sample scores OUT/records.json (and
docs/faceworld_results.md with --write-doc). The sampler, its steps, spacing and eta come from the config's
sample section unless flags say otherwise (DDIM 50, eta 1 in every shipped config); scripts/compare_samplers.py
puts several such runs side by side (docs/samplers.md).

Sharding: under torchrun / srun, or with --shard i/n in each of n processes, every process generates its
block of batches and writes OUT/shards/rank{i}.json; the last one to finish merges them (OUT must be shared).

Examples:
  python scripts/evaluate.py --config checkpoints/faceworld/codiff.yaml --ckpt checkpoints/faceworld/codiff.safetensors
  python scripts/evaluate.py --config C --ckpt K --num 100 --steps 20 --methods collaborative,composable
  python scripts/evaluate.py --config C --ckpt K --methods collaborative --sampler unipc --steps 15 --out outputs/samplers/unipc_15
  torchrun --nproc-per-node 4 scripts/evaluate.py --config C --ckpt K --device cuda       # 4 GPUs
  python scripts/evaluate.py --config configs/256_codiff_mask_text.yaml --ckpt checkpoints/256_codiff_mask_text.ckpt \\
      --data data/celeba --num 3000 --fid-weights pt_inception-2015-12-05-6726825d.pth \\
      --clip-dir clip-vit-base-patch32 --bisenet-weights 79999_iter.pth
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm import distributed  # noqa: E402
from ldm.cli import (  # noqa: E402
    add_sampler_arguments,
    existing_file,
    main_guard,
    make_parser,
    sampler_options,
    setup_logging,
    writable_dir,
)
from ldm.config import load_config, sample_settings  # noqa: E402
from ldm.data import celeba  # noqa: E402
from ldm.data.faceworld import LABELS_FILE, load_labels  # noqa: E402
from ldm.diffusion.collaborative import CollaborativeOptions  # noqa: E402
from ldm.errors import UserError  # noqa: E402
from ldm.evaluation import evaluators, metrics, real_metrics, report  # noqa: E402
from ldm.pipeline import load_model, sample  # noqa: E402

logger = logging.getLogger("evaluate")
METHODS = "text,mask,composable,collaborative"
DOC = Path("docs/faceworld_results.md")
RECONSTRUCTION = "VAE reconstruction"  # the table row of the real test images encoded and decoded by the model's VAE
WARNING = "metrics are meaningless; retrain the evaluators"
PROGRESS = os.environ.get("LDM_PROGRESS", "1") != "0"


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="collaborative model config")
    p.add_argument("--ckpt", required=True, help="its checkpoint (ours or released)")
    p.add_argument("--num", type=int, default=500, help="number of held-out (mask, caption) pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and the sampler's noise (the same for every method)")
    add_sampler_arguments(p)
    p.add_argument("--methods", default=METHODS, help="comma list of collaborative, composable, text, mask")
    p.add_argument("--preset", default="paper", help="collaborative preset: paper or official")
    p.add_argument("--parser", default=str(evaluators.DEFAULT_DIR / "parser.safetensors"), help="FaceWorld face parser")
    p.add_argument("--classifier", default=str(evaluators.DEFAULT_DIR / "classifier.safetensors"), help="FaceWorld attribute classifier")
    p.add_argument("--data", default=None, help="data folder (preprocessed layout); default: the config's data.train root")
    p.add_argument("--resolution", type=int, default=None, help="image size in the data folder (default: meta.json's size, else 256)")
    p.add_argument("--batch-size", type=int, default=50, help="images generated at once (a batch is also the unit of sharding)")
    p.add_argument("--out", default="outputs/evaluate", help="output directory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fid-weights", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (enables FID)")
    p.add_argument("--clip-dir", default=None, help="local transformers CLIP folder (enables CLIP similarity)")
    p.add_argument("--bisenet-weights", default=None, help="face-parsing.PyTorch's 79999_iter.pth (enables BiSeNet mask accuracy)")
    p.add_argument("--shard", default=None, help="RANK/WORLD_SIZE of this process (default: torchrun / SLURM environment)")
    p.add_argument("--merge-only", action="store_true", help="only merge the shards already under OUT/shards")
    p.add_argument("--write-doc", nargs="?", const=str(DOC), default=None, metavar="PATH",
                   help=f"also write the table, the command and the evaluators' accuracy to PATH (default {DOC})")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------
# Set-up


def check_args(args) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ("collaborative", "composable", "text", "mask")]
    if unknown or not methods:
        raise UserError(f"--methods {args.methods!r}: unknown {unknown}; choose from {METHODS}")
    if args.num < 2:
        raise UserError(f"--num {args.num}: need at least 2 pairs (a Fréchet distance needs 2 samples)")
    args.sampling = sampler_options(args, sample_settings(load_config(args.config, args.overrides)))
    if not 1 <= args.batch_size <= 1024:
        raise UserError(f"--batch-size {args.batch_size} is out of range; use 1 to 1024")
    return methods


def data_root(args) -> Path:
    if args.data:
        return Path(args.data)
    cfg = load_config(args.config, args.overrides)
    try:
        return Path(cfg.data.train.params.root)
    except Exception:  # no data section in the config
        raise UserError(f"{args.config} names no data folder (data.train.params.root); pass --data DIR") from None


def test_pairs(root: Path, resolution, num: int) -> celeba.PreprocessedFaces:
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


def batch_seed(seed: int, unit: int) -> int:
    """The seed of global batch ``unit``: every method and every world size draws the same noise for it."""
    return int(np.random.SeedSequence([seed, unit]).generate_state(1, np.uint64)[0]) >> 1  # shift a Python int: numpy 1.x has no uint64 >> int


class Evaluators:
    """The networks that score images: the FaceWorld parser and classifier, and the optional real-data ones."""

    def __init__(self, args, faceworld: bool, device: str):
        self.parser = self.classifier = self.inception = self.clip = self.bisenet = None
        if faceworld:
            self.parser = evaluators.load_evaluator(args.parser, "parser", device)
            self.classifier = evaluators.load_evaluator(args.classifier, "classifier", device)
        if args.fid_weights is not None:
            self.inception = real_metrics.load_fid_inception(args.fid_weights).to(device)
        if args.clip_dir is not None:
            self.clip = real_metrics.load_clip(args.clip_dir).to(device)
        if args.bisenet_weights is not None:
            self.bisenet = real_metrics.load_bisenet(args.bisenet_weights).to(device)
        if not (faceworld or self.inception or self.clip or self.bisenet):
            raise UserError(
                f"{args.data or 'the data folder'} has no {LABELS_FILE} (not a FaceWorld), so only the real-data metrics "
                "apply; pass at least one of --fid-weights, --clip-dir, --bisenet-weights"
            )

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


def generate_shard(args, methods, dataset, labels, scorer, shard, units, device):
    model = load_model(args.config, args.ckpt, device, args.overrides)
    options = CollaborativeOptions.from_preset(args.preset)
    records, features = [], {}
    bar = tqdm(total=len(units) * len(methods), desc=f"generate (rank {shard})", unit="batch", disable=not PROGRESS)
    for unit in units:
        indices = range(unit * args.batch_size, min((unit + 1) * args.batch_size, len(dataset)))
        batch = batch_of(dataset, indices)
        lab = evaluators.label_tensors(labels, batch["name"]) if labels is not None else None
        conditions = {"seg_mask": batch["seg_mask"], "text": batch["text"]}
        for method in methods:
            generator = torch.Generator().manual_seed(batch_seed(args.seed, unit))
            images = sample(model, conditions, method=method, **args.sampling.to_dict(), generator=generator, options=options).images
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


def reproducing_argv(argv: list[str]) -> list[str]:
    """The command line without --merge-only and --shard: the results do not depend on the sharding."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--shard":
            skip = True
        elif a != "--merge-only" and not a.startswith("--shard="):
            out.append(a)
    return out


def write_results(args, settings, summary, checks, out: Path, records=None) -> str:
    caption = (f"N = {settings['num']} held-out pairs, seed {args.seed}, {args.sampling.describe()}, "
               f"preset {args.preset}; `{args.ckpt}`")
    table = report.markdown_table(summary, caption)
    claim = report.claim_checks(summary, records)
    claim_md = ("\nThe paper's claim (collaborative within 5 points of each uni-modal model on its modality, better than "
                "composable on joint accuracy and FD):\n\n" + "\n".join(f"- {c}" for c in claim) + "\n") if claim else ""
    noise = report.noise_checks(summary)
    claim_md += ("\nResidual noise (high-frequency energy against the real test images'):\n\n"
                 + "\n".join(f"- {c}" for c in noise) + "\n") if noise else ""
    (out / "results.json").write_text(json.dumps({"settings": settings, "evaluator_check": checks, "claim": claim, "noise": noise, "results": summary}, indent=2))
    (out / "results.md").write_text(table + claim_md + "\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    if records is not None:
        (out / "records.json").write_text(json.dumps(records, indent=0))
    if args.write_doc:
        command = " ".join(["python scripts/evaluate.py", *reproducing_argv(args.argv)])
        doc = Path(args.write_doc)
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(
            "# FaceWorld results\n\nWritten by `scripts/evaluate.py --write-doc`; re-run it to update this page.\n\n"
            f"```\n{command}\n```\n\n{table}{claim_md}\nEvaluators on the real test images:\n\n"
            + "\n".join(f"- {c}" for c in checks) + "\n"
        )
    return table + claim_md


@main_guard
def main(argv=None):
    args = parse(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    methods = check_args(args)
    shard = distributed.shard_from_env(args.shard)
    device = distributed.device_for(shard, args.device)
    out = writable_dir(args.out)
    existing_file(args.ckpt, "checkpoint", "--ckpt")
    root = data_root(args)
    dataset = test_pairs(root, args.resolution, args.num)
    labels = load_labels(root) if (root / LABELS_FILE).is_file() else None
    scorer = Evaluators(args, labels is not None, device)
    n = len(dataset)
    num_units = -(-n // args.batch_size)
    settings = {"config": args.config, "ckpt": str(args.ckpt), "data": str(root), "num": n, "seed": args.seed,
                **args.sampling.to_dict(), "methods": methods, "preset": args.preset, "batch_size": args.batch_size,
                "parser": args.parser if labels is not None else None, "classifier": args.classifier if labels is not None else None,
                "fid_weights": args.fid_weights, "clip_dir": args.clip_dir, "bisenet_weights": args.bisenet_weights,
                "overrides": list(args.overrides)}
    signature = distributed.run_signature(settings)

    real_avg, real_features, checks = None, {}, []
    if shard.rank == 0 or args.merge_only:
        real_avg, real_features = score_real(scorer, dataset, labels, args.batch_size)
        checks = evaluator_check(real_avg)
        for line in checks:
            (logger.warning if line.startswith("WARNING") else logger.info)(line)
            print(line, flush=True)

    if not args.merge_only:
        units = distributed.shard_range(num_units, shard)
        records, features = generate_shard(args, methods, dataset, labels, scorer, shard, units, device)
        distributed.write_shard(out, shard, signature, num_units, units, records, features)
    gathered = distributed.try_gather(out, signature, shard.world_size, num_units)
    if gathered is None:
        if args.merge_only:
            raise UserError(f"{out}/shards does not hold all {shard.world_size} shards of this run (same settings and --shard n)")
        print(f"rank {shard}: wrote {distributed.shard_path(out, shard.rank)}; the last rank to finish merges the results")
        return 0
    if real_avg is None:  # this rank merges but did not score the real images
        real_avg, real_features = score_real(scorer, dataset, labels, args.batch_size)
        checks = evaluator_check(real_avg)
    summary = summarize(gathered, [*methods, RECONSTRUCTION], real_avg, real_features, n)
    table = write_results(args, settings, summary, checks, out, gathered.records)
    print(table)
    for line in checks:
        print(line)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}" + (f" and {args.write_doc}" if args.write_doc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
