"""Per test face, the text edits' age at every alpha: does an edit under- or overshoot the target age?

Reads the run folders of ``scripts/evaluate_editing.py --modes text`` (``OUT/<face>_text/alpha_*.png``) and scores
each image with the edit measurement's own metric (``ldm.evaluation.edit_metrics.image_metrics``). Prints, per face,
the source and target age and the classifier's age at each alpha; then the target-age accuracy of each single alpha
and with the alpha picked per face (Imagic's practice: its user picks alpha per image). Recipe section 25:

  python docs/recipe/age_per_face.py --out outputs/exp25/edit_s0.5 --offset 20 --num 20 --alphas 1,1.5,2,2.5
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from ldm.evaluation.edit_metrics import faceworld_cases, image_metrics, image_to_tensor
from ldm.evaluation.evaluators import load_evaluator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="an evaluate_editing.py --out folder with text edits")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--num", type=int, default=20)
    p.add_argument("--alphas", required=True, help="the run's alphas, comma list, in order")
    p.add_argument("--data", default="outputs/faceworld_train/faceworld")
    p.add_argument("--parser", default="checkpoints/faceworld/parser.safetensors")
    p.add_argument("--classifier", default="checkpoints/faceworld/classifier.safetensors")
    a = p.parse_args()
    alphas = [float(x) for x in a.alphas.split(",")]
    parser, classifier = load_evaluator(a.parser, "parser", "cpu"), load_evaluator(a.classifier, "classifier", "cpu")
    hits = []  # [face][alpha] target age reached
    for case in faceworld_cases(a.data, a.num, 64, a.offset):
        images = [image_to_tensor(Image.open(f"{a.out}/{case.name}_text/alpha_{k:02d}_{alpha:g}.png").convert("RGB"))
                  for k, alpha in enumerate(alphas)]
        with torch.no_grad():
            ages = [int(classifier(x.unsqueeze(0))["age"].argmax(-1)) for x in images]
        hits.append([bool(image_metrics(case, x, "text", parser, classifier)["target_age"]) for x in images])
        print(f"face {case.name}: age {case.source_labels['age']} -> {case.target_labels['age']}; "
              + ", ".join(f"α {alpha:g}: {age}" for alpha, age in zip(alphas, ages)))
    for k, alpha in enumerate(alphas):
        print(f"target age at α {alpha:g}: {100 * sum(h[k] for h in hits) / len(hits):.0f}%")
    print(f"target age with α picked per face: {100 * sum(any(h) for h in hits) / len(hits):.0f}%")


if __name__ == "__main__":
    main()
