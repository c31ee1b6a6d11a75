"""Which caption attributes does a method follow? Confusion matrices of the FaceWorld classifier's reading of
generated images against the captions' age, beard and gender (docs/faceworld_analysis.md). Rows: the caption's
level, columns: what the classifier reads. Runs on the first --num test pairs with the evaluation's seeds
(`batch_seed(seed, batch)`, batches of 25); a fast sampler by default (it is a diagnostic, not the table).
Example (the text expert of a run, inside the shipped collaborative model):
  python docs/recipe/attribute_confusion.py --method text \
      model.params.experts.text.params.config=outputs/faceworld_train/runs/text/checkpoints/config.yaml \
      model.params.experts.text.params.ckpt=outputs/faceworld_train/runs/text/checkpoints/last.ckpt
"""
import argparse
import json
from pathlib import Path

import torch

from ldm.evaluation import evaluators
from ldm.evaluation.generation import batch_of, test_pairs
from ldm.pipeline import load_model, sample
from ldm.seeding import batch_seed

ATTRIBUTES = ("age", "beard", "gender")
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--config", default="checkpoints/faceworld/codiff.yaml")
p.add_argument("--ckpt", default="checkpoints/faceworld/codiff.safetensors")
p.add_argument("--data", default="outputs/faceworld_train/faceworld")
p.add_argument("--classifier", default="checkpoints/faceworld/classifier.safetensors")
p.add_argument("--method", default="text", help="text, mask, composable or collaborative")
p.add_argument("--num", type=int, default=200)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--sampler", default="dpmpp_2m_sde")
p.add_argument("--steps", type=int, default=15)
p.add_argument("overrides", nargs="*", help="config overrides key=value")
a = p.parse_args()

model = load_model(a.config, a.ckpt, "cpu", a.overrides)
root = Path(a.data)
pairs = test_pairs(root, 64, a.num)
labels = json.loads((root / "labels.json").read_text())
classifier = evaluators.load_evaluator(a.classifier, "classifier", "cpu")
confusion = {name: torch.zeros(5, 5, dtype=torch.long) for name in ATTRIBUTES}
batch_size = 25
for unit in range((len(pairs) + batch_size - 1) // batch_size):
    batch = batch_of(pairs, range(unit * batch_size, min((unit + 1) * batch_size, len(pairs))))
    generator = torch.Generator().manual_seed(batch_seed(a.seed, unit))
    images = sample(model, {"seg_mask": batch["seg_mask"], "text": batch["text"]}, method=a.method, sampler=a.sampler,
                    steps=a.steps, generator=generator).images
    with torch.no_grad():
        logits = classifier(images)
    truth = evaluators.label_tensors(labels, batch["name"], ATTRIBUTES)
    for name in ATTRIBUTES:
        for t, r in zip(truth[name].tolist(), logits[name].argmax(dim=1).tolist()):
            confusion[name][t, r] += 1
print(f"{a.method}, {len(pairs)} test pairs, {a.sampler} {a.steps} steps, seed {a.seed}")
for name, c in confusion.items():
    levels = int((c.sum(1) > 0).nonzero().max()) + 1
    print(f"\n{name}: accuracy {float(c.trace()) / float(c.sum()):.1%} (rows: caption level, columns: classifier's reading)")
    for level in range(levels):
        print(f"  {level}: " + " ".join(f"{int(v):4d}" for v in c[level, :levels]))
