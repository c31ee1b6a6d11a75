"""The demo: build a small FaceWorld, train the tiny chain (VAE -> text and mask experts -> dynamic
diffusers) on the CPU, and sample faces for test-split (mask, caption) pairs with the collaborative
sampler beside the composable and uni-modal results for the same seeds, plus influence-map figures.

The tiny models train for a few steps only: the pictures show that every stage runs end to end, not
what trained models produce. Everything is written under --out and the paths are printed.

Examples:
  python scripts/demo.py                       # what `make demo` runs
  python scripts/demo.py --out outputs/demo --train-steps 40 --pairs 3
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import main_guard, make_parser, setup_logging, writable_dir  # noqa: E402
from ldm.config import load_config  # noqa: E402
from ldm.data.celeba import PreprocessedFaces  # noqa: E402
from ldm.data.faceworld import make_faceworld  # noqa: E402
from ldm.diffusion.collaborative import CollaborativeOptions  # noqa: E402
from ldm.figures import write_comparison  # noqa: E402
from ldm.pipeline import load_model  # noqa: E402
from ldm.training import LaunchOptions, train  # noqa: E402

logger = logging.getLogger("demo")
CHAIN = ("vae", "text", "mask", "codiff")


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


@main_guard
def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--out", default="outputs/demo", help="where the figures go")
    p.add_argument("--train-steps", type=int, default=30, help="optimiser steps for each tiny model")
    p.add_argument("--pairs", type=int, default=3, help="how many test (mask, caption) pairs to sample")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging()
    out = writable_dir(args.out)
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
            model, conditions, ["collaborative", "composable", "text", "mask"], out / f"pair{i}_{item['name']}",
            steps=20, eta=1.0, seed=args.seed, options=CollaborativeOptions.from_preset("paper"),
            save_influence=i == 0, progress=False,
        )
    for path in written:
        if path.name in ("grid.png", "influence_seg_mask.png", "influence_text.png"):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
