"""How much a trained expert uses its condition, averaged over several test batches (docs/faceworld_recipe.md,
section 9): the recipe's `usage` diagnostic (ldm.evaluation.condition_usage) on more images, so that short
ablation runs can be told apart. Prints, per band of timesteps, the ε-MSE with the true condition and the gain
1 − true / mismatched (the batch's conditions rolled by one). Example:
  python docs/recipe/condition_gain.py --run outputs/faceworld_train/runs/text --ckpt step00002000.ckpt --key text
"""
import argparse

import torch
from torch.utils.data import DataLoader

from ldm.data.celeba import PreprocessedFaces
from ldm.evaluation.condition_usage import condition_usage
from ldm.pipeline import load_model

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--run", required=True, help="a run directory with checkpoints/config.yaml")
p.add_argument("--ckpt", default="last.ckpt", help="checkpoint file inside <run>/checkpoints")
p.add_argument("--key", default="text", help="the condition's data key: text or seg_mask")
p.add_argument("--data", default="outputs/faceworld_train/faceworld")
p.add_argument("--batches", type=int, default=4, help="test batches of 128 images")
a = p.parse_args()

model = load_model(f"{a.run}/checkpoints/config.yaml", f"{a.run}/checkpoints/{a.ckpt}").eval()
test = PreprocessedFaces(a.data, split="test", resolution=64, keys=["image", a.key])
generator = torch.Generator().manual_seed(0)
sums: dict[tuple[int, int], list[float]] = {}
for i, batch in enumerate(DataLoader(test, batch_size=128, shuffle=False)):
    if i == a.batches:
        break
    for row in condition_usage(model, batch["image"], batch[a.key], generator):
        acc = sums.setdefault((row["t_lo"], row["t_hi"]), [0.0, 0.0])
        acc[0] += row["true"]
        acc[1] += row["mismatched"]
n = min(a.batches, len(test) // 128 + (len(test) % 128 > 0))
print(f"{a.run} {a.ckpt}: " + "  ".join(f"t in [{lo}, {hi}): eps-MSE {true / n:.4f}, gain {1 - true / mismatched:+.2%}"
                                        for (lo, hi), (true, mismatched) in sums.items()))
