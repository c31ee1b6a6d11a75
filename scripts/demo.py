"""The demo: sample faces for FaceWorld test-split (mask, caption) pairs with the collaborative sampler
beside the composable and uni-modal results for the same seeds, plus the influence-map figure of the
first pair. Sampling uses the recommended fewer-step sampler (ldm.diffusion.samplers.RECOMMENDED; measured against
the released DDIM 50 in docs/samplers.md) unless --sampler/--steps say otherwise (--sampler ddim --steps 50:
as released).

With the shipped FaceWorld models (checkpoints/faceworld/, made by `make train-faceworld`) it samples
from them (under a minute on a CPU) and also writes ``overview.png``: one column per pair, rows = mask,
caption, the FaceWorld test image the pair comes from (what following both conditions looks like),
collaborative, composable, text only, mask only. Without them (or with --tiny) it builds a
96-image FaceWorld at 32x32 and trains the tiny chain (VAE -> text and mask experts -> dynamic diffusers)
for a few steps first: those pictures show that every stage runs, not what trained models produce.
Everything is written under --out and the paths are printed.

Examples:
  python scripts/demo.py                       # what `make demo` runs
  python scripts/demo.py --out outputs/demo --pairs 6 --sampler ddim --steps 50     # the released sampler
  python scripts/demo.py --tiny --train-steps 40 --pairs 3
"""

import json
import logging
import sys
from pathlib import Path

import torch

from ldm.checkpoints import pretrained_overrides
from ldm.cli import add_sampler_arguments, main_guard, make_parser, sampler_options, setup_logging, writable_dir
from ldm.config import load_config
from ldm.data.celeba import PreprocessedFaces
from ldm.data.faceworld import make_faceworld
from ldm.diffusion.collaborative import CollaborativeOptions
from ldm.diffusion.samplers import RECOMMENDED
from ldm.figures import condition_tiles, write_comparison
from ldm.images import grid, save_png, to_uint8
from ldm.paper_figures import GenerationSettings, faceworld_pairs, influence_figure
from ldm.pipeline import load_model
from ldm.training import LaunchOptions, train

logger = logging.getLogger("demo")
CHAIN = ("vae", "text", "mask", "codiff")
METHODS = ["collaborative", "composable", "text", "mask"]
TINY_STEPS = 20  # the tiny chain's steps unless --steps is given
OVERVIEW_TILE = 128  # px per overview tile: a whole caption fits, and 64-px images scale by a whole 2x
SHIPPED = ("codiff.yaml", "codiff.safetensors", "text.safetensors", "mask.safetensors", "vae.safetensors", "recipe.json")


def chain_overrides(name: str, data_root: Path, runs: Path) -> list[str]:
    """Point a tiny config at the demo's data and at the checkpoints of the earlier links of the chain."""
    ckpts = {n: runs / n / "checkpoints" / "last.ckpt" for n in ("vae", "text", "mask")}
    return [f"data.train.params.root={data_root}", *pretrained_overrides(name, ckpts)]


def shipped_demo(args, out: Path, ckpt_dir: Path) -> list[Path]:
    """Sample from the shipped FaceWorld models; returns the figures written.

    Every method samples all pairs in one batch (same seed for every method), which is what keeps this under
    a minute on a CPU; the per-pair grids and the first pair's influence figures are cut from those batches."""
    from ldm.figures import GRID_TILE, sample_grid, save_influence_figures
    from ldm.pipeline import sample

    recipe = json.loads((ckpt_dir / "recipe.json").read_text())
    data = recipe["stages"]["data"]
    model = load_model(ckpt_dir / "codiff.yaml", ckpt_dir / "codiff.safetensors", "cpu")
    # FaceWorld test pairs, rendered on their own, (gender, age, beard) differing where possible, with their images
    pairs = faceworld_pairs(int(data.get("seed", 0)), int(data["num"]), args.pairs)
    k = args.samples
    conditions = {
        "seg_mask": torch.cat([p.seg_mask.unsqueeze(0).repeat(k, 1, 1) for p in pairs]),  # [P*k, 19, 1024]
        "text": [p.text for p in pairs for _ in range(k)],
    }
    options = CollaborativeOptions.from_preset(args.preset)
    images, written = {}, []
    for method in METHODS:
        result = sample(
            model, conditions, method=method, **args.sampling.to_dict(), generator=torch.Generator().manual_seed(args.seed),
            options=options, record_trace=method == "collaborative", progress=False,
        )
        images[method] = result.images
        if result.trace is not None:
            decode = lambda z: model.decode_latents(z.to(model.device)).cpu()  # noqa: E731
            first = {"seg_mask": conditions["seg_mask"][:1], "text": conditions["text"][:1]}
            influence_dir = out / f"pair0_{pairs[0].name}" / "influence"
            written += save_influence_figures(result.trace, decode, first, result.images, influence_dir)
            # the same maps as a figure that explains itself: timesteps on the axis, one colour scale
            settings = GenerationSettings(sampling=args.sampling, preset=args.preset, seed=args.seed)
            figure = influence_figure(pairs[0], result.trace, 0, result.images[0], decode, settings, 128,
                                      "shipped FaceWorld models", "supplementary Fig. A4")
            save_png(figure.image, influence_dir / "influence.png")
            written.append(influence_dir / "influence.png")
    columns = []
    for i, pair in enumerate(pairs):
        pair_dir = out / f"pair{i}_{pair.name}"
        rows = {m: images[m][i * k:(i + 1) * k] for m in METHODS}
        for m, batch in rows.items():
            for j, image in enumerate(batch):
                path = pair_dir / f"{m}_seed{args.seed}_{j:03d}.png"
                save_png(to_uint8(image), path)
                written.append(path)
        pair_conditions = {key: value[i * k:(i + 1) * k] for key, value in conditions.items()}
        path = pair_dir / "grid.png"
        save_png(sample_grid(rows, pair_conditions, GRID_TILE), path)
        written.append(path)
        columns.append(condition_tiles(pair_conditions, 0, OVERVIEW_TILE) + [pair.image] + [to_uint8(rows[m][0]) for m in METHODS])
    path = out / "overview.png"  # one column per pair; rows: mask, caption, test image, each method's first sample
    labels = ["mask", "caption", "FaceWorld image", "collaborative", "composable", "text only", "mask only"]
    save_png(grid([list(r) for r in zip(*columns)], OVERVIEW_TILE, labels=labels), path)
    return written + [path]


def tiny_demo(args, out: Path) -> list[Path]:
    """Train the tiny chain on a 96-image FaceWorld, then sample from it; returns the figures written."""
    work = out / "work"
    data_root = make_faceworld(work / "faceworld", num=96, seed=args.seed, size=32, test_size=8, progress=False)
    runs = work / "runs"
    for name in CHAIN:
        if (runs / name / "checkpoints" / "last.ckpt").is_file():
            continue
        cfg = load_config(f"configs/tiny/{name}.yaml", chain_overrides(name, data_root, runs))
        train(cfg, name, LaunchOptions(accelerator="cpu", devices="1", max_steps=args.train_steps, run_dir=str(runs / name)))

    overrides = chain_overrides("codiff", data_root, runs)
    model = load_model("configs/tiny/codiff.yaml", runs / "codiff" / "checkpoints" / "last.ckpt", "cpu", overrides)
    test_set = PreprocessedFaces(str(data_root), split="test", resolution=32, keys=["text", "seg_mask"])
    written = []
    for i in range(min(args.pairs, len(test_set))):
        item = test_set[i]
        conditions = {"seg_mask": item["seg_mask"].unsqueeze(0).repeat(2, 1, 1), "text": [item["text"]] * 2}
        written += write_comparison(
            model, conditions, METHODS, out / f"pair{i}_{item['name']}",
            **{**args.sampling.to_dict(), "steps": args.steps or TINY_STEPS}, seed=args.seed,
            options=CollaborativeOptions.from_preset("paper"),
            save_influence=i == 0, progress=False,
        )
    return written


@main_guard
def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--out", default="outputs/demo", help="where the figures go")
    p.add_argument("--checkpoints", default="checkpoints/faceworld", help="the shipped FaceWorld models (used when present)")
    p.add_argument("--tiny", action="store_true", help="train and sample the tiny chain even when the shipped models are present")
    p.add_argument("--pairs", type=int, default=4, help="how many test (mask, caption) pairs to sample")
    p.add_argument("--samples", type=int, default=2, help="samples per pair and method (shipped models)")
    add_sampler_arguments(p, defaults=f"the recommended {RECOMMENDED.describe()} ({TINY_STEPS} steps for the tiny chain)")
    p.add_argument("--preset", default="paper", choices=["paper", "official"], help="collaborative sampler preset (shipped models)")
    p.add_argument("--train-steps", type=int, default=30, help="optimiser steps for each tiny model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging()
    args.sampling = sampler_options(args, RECOMMENDED)
    logger.info("sampler: %s", args.sampling.describe())
    out = writable_dir(args.out)
    ckpt_dir = Path(args.checkpoints)
    if not args.tiny and all((ckpt_dir / f).is_file() for f in SHIPPED):
        logger.info("sampling from the shipped FaceWorld models in %s", ckpt_dir)
        written = shipped_demo(args, out, ckpt_dir)
    else:
        logger.info("no shipped FaceWorld models in %s (make train-faceworld); training the tiny chain", ckpt_dir)
        written = tiny_demo(args, out)
    for path in written:
        if path.name in ("grid.png", "influence.png", "influence_seg_mask.png", "influence_text.png", "overview.png"):
            print(path)
    return 0

if __name__ == "__main__":
    sys.exit(main())
