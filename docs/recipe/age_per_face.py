"""Per test face: source and target age and the classifier's age of each alpha of a text-edit run folder
(scripts/evaluate_editing.py --out), to see whether edits under- or overshoot. Usage: python docs/recipe/age_per_face.py OUT OFFSET"""
import sys, torch
from pathlib import Path
from PIL import Image
from ldm.evaluation.edit_metrics import faceworld_cases, image_to_tensor
from ldm.evaluation.evaluators import load_evaluator
torch.set_num_threads(1)
out = Path(sys.argv[1]); off = int(sys.argv[2])
clf = load_evaluator("checkpoints/faceworld/classifier.safetensors", "classifier", "cpu")
cases = faceworld_cases("outputs/faceworld_train/faceworld", 20, 64, off)
from collections import Counter
tally = Counter()
for c in cases:
    d = out / f"{c.name}_text"
    preds = []
    for p in sorted(d.glob("alpha_*.png")):
        x = image_to_tensor(Image.open(p).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            a = clf(x)
        preds.append(int(a["age"].argmax(-1)))
    s, t = c.source_labels["age"], c.target_labels["age"]
    tally[(s, t, preds[-2] == t)] += 1
    print(c.name, "age", s, "->", t, "preds", preds)
print(sorted(tally.items()))
