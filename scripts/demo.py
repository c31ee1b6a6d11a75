"""The demo: sample faces for FaceWorld test-split (mask, caption) pairs with the collaborative sampler
beside the composable and uni-modal results for the same seeds, plus the influence-map figure of the
first pair.

With the shipped FaceWorld models (checkpoints/faceworld/, made by `make train-faceworld`) it samples
from them (under a minute on a CPU) and also writes ``overview.png``: one column per pair, rows = mask,
caption, collaborative, composable, text only, mask only. Without them (or with --tiny) it builds a
96-image FaceWorld at 32x32 and trains the tiny chain (VAE -> text and mask experts -> dynamic diffusers)
for a few steps first: those pictures show that every stage runs, not what trained models produce.
Everything is written under --out and the paths are printed.

Examples:
  python scripts/demo.py                       # what `make demo` runs
  python scripts/demo.py --out outputs/demo --pairs 6 --steps 50
  python scripts/demo.py --tiny --train-steps 40 --pairs 3
"""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import main_guard, make_parser, setup_logging, writable_dir  # noqa: E402
from ldm.config import load_config  # noqa: E402
from ldm.data.celeba import PreprocessedFaces  # noqa: E402
from ldm.data import faceworld  # noqa: E402
from ldm.data.faceworld import make_faceworld  # noqa: E402
from ldm.data.masks import index_mask_to_onehot  # noqa: E402
from ldm.diffusion.collaborative import CollaborativeOptions  # noqa: E402
from ldm.figures import condition_tiles, write_comparison  # noqa: E402
from ldm.images import grid, save_png, to_uint8  # noqa: E402
from ldm.pipeline import load_model  # noqa: E402
from ldm.training import LaunchOptions, train  # noqa: E402

logger = logging.getLogger("demo")
CHAIN = ("vae", "text", "mask", "codiff")
METHODS = ["collaborative", "composable", "text", "mask"]
SHIPPED = ("codiff.yaml", "codiff.safetensors", "text.safetensors", "mask.safetensors", "vae.safetensors", "recipe.json")


def chain_overrides(name: str, data_root: Path, runs: Path) -> list[str]:
    """Point a tiny config at the demo's data and at the checkpoints of the earlier links of the chain."""
    vae_ckpt, text_ckpt, mask_ckpt = (runs / n / "checkpoints" / "last.ckpt" for n in ("vae", "text", "mask"))
    overrides = [f"data.train.params.root={data_root}"]
    if name in ("text", "mask"):
        overrides.append(f"model.params.vae.params.ckpt={vae_ckpt}")
    if name == "codiff":
        overrides += [
            f"model.params.vae.params.ckpt={vae_ckpt}",
            f"model.params.experts.text.params.ckpt={text_ckpt}",
            f"model.params.experts.seg_mask.params.ckpt={mask_ckpt}",
        ]
    return overrides


def test_pairs(seed: int, num: int, count: int) -> list[tuple[str, str, object]]:
    """``count`` test-split pairs (name, caption, one-hot mask [19, 1024]) of the FaceWorld (seed, num),
    regenerated on their own (FaceWorld samples are pure functions of (seed, index)); greedily chosen so that
    their (gender, age, beard) differ where possible."""
    test = range(num - max(1, num // 10), num)
    chosen, seen = [], set()
    for strict in (True, False):
        for i in test:
            f = faceworld.sample_factors(seed, i)
            key = (f.gender, f.age, f.beard)
            if len(chosen) < count and i not in chosen and (key not in seen or not strict):
                chosen.append(i)
                seen.add(key)
    out = []
    for i in chosen:
        mask = index_mask_to_onehot(faceworld.render_sample(seed, i, 64).mask)
        out.append((str(i), faceworld.make_caption(faceworld.sample_factors(seed, i)), mask))
    return out


def shipped_demo(args, out: Path, ckpt_dir: Path) -> list[Path]:
    """Sample from the shipped FaceWorld models; returns the figures written."""
    recipe = json.loads((ckpt_dir / "recipe.json").read_text())
    data = recipe["stages"]["data"]
    model = load_model(ckpt_dir / "codiff.yaml", ckpt_dir / "codiff.safetensors", "cpu")
    pairs = test_pairs(int(data.get("seed", 0)), int(data["num"]), args.pairs)
    written, columns = [], []
    options = CollaborativeOptions.from_preset(args.preset)
    for i, (name, caption, mask) in enumerate(pairs):
        conditions = {"seg_mask": mask.unsqueeze(0).repeat(args.samples, 1, 1), "text": [caption] * args.samples}
        pair_dir = out / f"pair{i}_{name}"
        written += write_comparison(
            model, conditions, METHODS, pair_dir, steps=args.steps, eta=1.0, seed=args.seed, options=options,
            save_influence=i == 0, progress=False,
        )
        columns.append(condition_tiles(conditions, 0, 64) + [load_first(pair_dir, m, args.seed) for m in METHODS])
    rows = [list(r) for r in zip(*columns)]  # one row per condition / method, one column per pair
    path = out / "overview.png"
    save_png(grid(rows, 64, labels=["mask", "caption"] + [m if m != "text" else "text only" for m in METHODS[:3]] + ["mask only"]), path)
    return written + [path]


def load_first(pair_dir: Path, method: str, seed: int):
    from PIL import Image
    import numpy as np

    return np.asarray(Image.open(pair_dir / f"{method}_seed{seed}_000.png").convert("RGB"))


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
            steps=20, eta=1.0, seed=args.seed, options=CollaborativeOptions.from_preset("paper"),
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
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (shipped models; the tiny chain uses 20)")
    p.add_argument("--preset", default="paper", choices=["paper", "official"], help="collaborative sampler preset (shipped models)")
    p.add_argument("--train-steps", type=int, default=30, help="optimiser steps for each tiny model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging()
    out = writable_dir(args.out)
    ckpt_dir = Path(args.checkpoints)
    if not args.tiny and all((ckpt_dir / f).is_file() for f in SHIPPED):
        logger.info("sampling from the shipped FaceWorld models in %s", ckpt_dir)
        written = shipped_demo(args, out, ckpt_dir)
    else:
        logger.info("no shipped FaceWorld models in %s (make train-faceworld); training the tiny chain", ckpt_dir)
        written = tiny_demo(args, out)
    for path in written:
        if path.name in ("grid.png", "influence_seg_mask.png", "influence_text.png", "overview.png"):
            print(path)
    return 0

if __name__ == "__main__":
    sys.exit(main())
