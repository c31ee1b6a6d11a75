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
  torchrun --nproc-per-node 4 scripts/evaluate.py --config C --ckpt K --device cuda --num-pairs 500   # 4 GPUs
  python scripts/evaluate.py --config C --ckpt K --device cuda --precision bf16 --num 200   # bf16 autocast
  python scripts/evaluate.py --config configs/256_codiff_mask_text.yaml --ckpt checkpoints/256_codiff_mask_text.ckpt \\
      --data data/celeba --num 3000 --fid-weights pt_inception-2015-12-05-6726825d.pth \\
      --clip-dir clip-vit-base-patch32 --bisenet-weights 79999_iter.pth
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from ldm import distributed
from ldm.cli import (
    add_sampler_arguments,
    add_speed_arguments,
    check_batch_size,
    existing_file,
    main_guard,
    make_parser,
    sampler_options,
    setup_logging,
    speed_options,
    writable_dir,
)
from ldm.config import load_config, sample_settings
from ldm.data.faceworld import LABELS_FILE, load_labels
from ldm.errors import UserError
from ldm.evaluation import evaluators
from ldm.evaluation import generation as gen

logger = logging.getLogger("evaluate")
METHODS = ",".join(gen.METHODS)
DOC = Path("docs/faceworld_results.md")


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="collaborative model config")
    p.add_argument("--ckpt", required=True, help="its checkpoint (ours or released)")
    p.add_argument("--num", "--num-pairs", dest="num", type=int, default=500,
                   help="number of held-out (mask, caption) pairs (under torchrun write --num-pairs: torchrun reads --num as its own --numa-binding)")
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
    add_speed_arguments(p)
    p.add_argument("--fid-weights", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (enables FID)")
    p.add_argument("--clip-dir", default=None, help="local transformers CLIP folder (enables CLIP similarity)")
    p.add_argument("--bisenet-weights", default=None, help="face-parsing.PyTorch's 79999_iter.pth (enables BiSeNet mask accuracy)")
    p.add_argument("--shard", default=None, help="RANK/WORLD_SIZE of this process (default: torchrun / SLURM environment)")
    p.add_argument("--merge-only", action="store_true", help="only merge the shards already under OUT/shards")
    p.add_argument("--write-doc", nargs="?", const=str(DOC), default=None, metavar="PATH",
                   help=f"also write the table, the command and the evaluators' accuracy to PATH (default {DOC})")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def check_args(args) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in gen.METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {args.methods!r}: unknown {unknown}; choose from {METHODS}")
    if args.num < 2:
        raise UserError(f"--num {args.num}: need at least 2 pairs (a Fréchet distance needs 2 samples)")
    args.sampling = sampler_options(args, sample_settings(load_config(args.config, args.overrides)))
    check_batch_size(args.batch_size)
    return methods


def data_root(args) -> Path:
    if args.data:
        return Path(args.data)
    cfg = load_config(args.config, args.overrides)
    try:
        return Path(cfg.data.train.params.root)
    except Exception:  # no data section in the config
        raise UserError(f"{args.config} names no data folder (data.train.params.root); pass --data DIR") from None


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
    dataset = gen.test_pairs(root, args.resolution, args.num)
    labels = load_labels(root) if (root / LABELS_FILE).is_file() else None
    if labels is None and not (args.fid_weights or args.clip_dir or args.bisenet_weights):
        raise UserError(
            f"{args.data or 'the data folder'} has no {LABELS_FILE} (not a FaceWorld), so only the real-data metrics "
            "apply; pass at least one of --fid-weights, --clip-dir, --bisenet-weights"
        )
    scorer = gen.Evaluators(labels is not None, device, parser=args.parser, classifier=args.classifier,
                            fid_weights=args.fid_weights, clip_dir=args.clip_dir, bisenet_weights=args.bisenet_weights)
    run = gen.GenerationRun(config=args.config, ckpt=args.ckpt, sampling=args.sampling, seed=args.seed, preset=args.preset,
                            batch_size=args.batch_size, overrides=list(args.overrides), speed=speed_options(args))
    n = len(dataset)
    num_units = -(-n // args.batch_size)
    settings = {"config": args.config, "ckpt": str(args.ckpt), "data": str(root), "num": n, "seed": args.seed,
                **args.sampling.to_dict(), "methods": methods, "preset": args.preset, "batch_size": args.batch_size,
                "parser": args.parser if labels is not None else None, "classifier": args.classifier if labels is not None else None,
                "fid_weights": args.fid_weights, "clip_dir": args.clip_dir, "bisenet_weights": args.bisenet_weights,
                "overrides": list(args.overrides), "precision": args.precision, "channels_last": args.channels_last,
                "compile": args.compile}
    signature = distributed.run_signature(settings)

    real_avg, real_features, checks = None, {}, []
    if shard.rank == 0 or args.merge_only:
        real_avg, real_features = gen.score_real(scorer, dataset, labels, args.batch_size)
        checks = gen.evaluator_check(real_avg)
        for line in checks:
            (logger.warning if line.startswith("WARNING") else logger.info)(line)
            print(line, flush=True)

    if not args.merge_only:
        units = distributed.shard_range(num_units, shard)
        records, features = gen.generate_shard(run, methods, dataset, labels, scorer, shard, units, device)
        distributed.write_shard(out, shard, signature, num_units, units, records, features)
    gathered = distributed.try_gather(out, signature, shard.world_size, num_units)
    if gathered is None:
        if args.merge_only:
            raise UserError(f"{out}/shards does not hold all {shard.world_size} shards of this run (same settings and --shard n)")
        print(f"rank {shard}: wrote {distributed.shard_path(out, shard.rank)}; the last rank to finish merges the results")
        return 0
    if real_avg is None:  # this rank merges but did not score the real images
        real_avg, real_features = gen.score_real(scorer, dataset, labels, args.batch_size)
        checks = gen.evaluator_check(real_avg)
    summary = gen.summarize(gathered, [*methods, gen.RECONSTRUCTION], real_avg, real_features, n)
    command = " ".join(["python scripts/evaluate.py", *reproducing_argv(args.argv)])
    table = gen.write_results(run, settings, summary, checks, out, gathered.records, doc=args.write_doc, command=command)
    print(table)
    for line in checks:
        print(line)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}" + (f" and {args.write_doc}" if args.write_doc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
