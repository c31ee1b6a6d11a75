"""Time of one optimiser step of a config's trained parameters, per Adam implementation (docs/faceworld_recipe.md,
section 20): torch's default (a loop over the tensors on CPU), for-each, and fused (``train.fused_optimizer``).
Random weights and gradients; the step is the same work whatever they hold. Example:
  OMP_NUM_THREADS=2 python docs/recipe/optimizer_step.py --config configs/faceworld/text.yaml
"""
import argparse
import time

import torch

from ldm.benchmark import build_random_model

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--config", default="configs/faceworld/text.yaml")
p.add_argument("--steps", type=int, default=20)
a = p.parse_args()

model = build_random_model(a.config, [], torch.device("cpu"), 0)
trained = model.expert if hasattr(model, "expert") else model
params = [p for p in trained.parameters() if p.requires_grad] or list(trained.parameters())
generator = torch.Generator().manual_seed(0)
for param in params:
    param.grad = torch.randn(param.shape, generator=generator)
print(f"{a.config}: {len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.2f}M parameters, {torch.get_num_threads()} threads")
for name, options in [("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]:
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, **options)
    for _ in range(3):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(a.steps):
        optimizer.step()
    print(f"{name:8s} {(time.perf_counter() - start) / a.steps * 1000:7.1f} ms / step")
