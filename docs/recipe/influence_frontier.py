"""How far any re-weighting of the two frozen experts can move the collaborative model (docs/faceworld_recipe.md,
section 23): generates the first N evaluation pairs with several weightings, scores them with the FaceWorld
evaluators and prints mask / text / joint accuracy, each against the mask-only and text-only samples of a
reference evaluation (scripts/evaluate.py's OUT/records.json, same seed and batch size, so the same x_T).

Weightings (``--variants``, comma-separated):
  paper              the dynamic diffusers' softmax (the paper preset)
  official           the released sampler's adjustments (mask weight boosted 2x and faded out with a cosine)
  boost_text=B       the diffusers' weights with the text expert's multiplied by B, renormalised
  boost_mask=B       the same for the mask expert
  constant=W         the text expert weighted W and the mask expert 1 - W everywhere (no diffusers)

Example (200 pairs, about 1 minute a variant on 2 CPU cores):
  python docs/recipe/influence_frontier.py --reference outputs/evaluate_S15 --num 200 \\
      --variants paper,boost_text=1.5,boost_text=2,constant=0.5,constant=0.7 --out outputs/frontier
"""
import argparse
import json
from pathlib import Path

import torch

from ldm.data.faceworld import load_labels
from ldm.diffusion.collaborative import PAPER, CollaborativeOptions
from ldm.evaluation import evaluators, report
from ldm.evaluation.generation import Evaluators, batch_of, test_pairs
from ldm.pipeline import load_model, sample
from ldm.seeding import batch_seed

SCORES = ("mask_accuracy", "text_accuracy", "joint_accuracy", "age", "beard")


def variant_arguments(spec: str) -> dict:
    """The ``sample`` keyword arguments of one weighting."""
    name, _, value = spec.partition("=")
    if name == "paper":
        return {"method": "collaborative", "options": PAPER}
    if name == "official":
        return {"method": "collaborative", "options": CollaborativeOptions.from_preset("official")}
    if name in ("boost_text", "boost_mask"):
        modality = "text" if name == "boost_text" else "seg_mask"
        return {"method": "collaborative", "options": CollaborativeOptions(boost_modality=modality, boost=float(value))}
    if name == "constant":
        w = float(value)
        return {"method": "composable", "lambdas": {"seg_mask": 1.0 - w, "text": w}}
    raise SystemExit(f"unknown variant {spec!r}; use paper, official, boost_text=B, boost_mask=B or constant=W")


def paired(records: list[dict], spec: str, reference: str, key: str) -> str:
    mean, half = report.paired_difference(records, spec, reference, key)
    return f"{100 * mean:+.1f} ± {100 * half:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="checkpoints/faceworld/codiff.yaml")
    p.add_argument("--ckpt", default="checkpoints/faceworld/codiff.safetensors")
    p.add_argument("--data", type=Path, default=Path("outputs/faceworld_train/faceworld"))
    p.add_argument("--reference", type=Path, required=True, help="a scripts/evaluate.py --out folder with text and mask records")
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50, help="as the reference's (the seeds are per batch)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--variants", default="paper")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    variants = {spec: variant_arguments(spec) for spec in a.variants.split(",")}  # a bad one fails before any work

    reference = [r for r in json.loads((a.reference / "records.json").read_text())
                 if r["method"] in ("mask", "text") and r["index"] < a.num]
    model = load_model(a.config, a.ckpt, "cpu")
    dataset = test_pairs(a.data, None, a.num)
    labels = load_labels(a.data)
    scorer = Evaluators(True, "cpu")  # the FaceWorld parser and classifier of checkpoints/faceworld/
    a.out.mkdir(parents=True, exist_ok=True)

    lines = ["| weighting | mask acc | text acc | joint acc | age | beard | vs mask-only, mask acc | vs text-only, text acc |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for spec, kwargs in variants.items():
        records: list[dict] = []
        for unit, start in enumerate(range(0, a.num, a.batch_size)):
            indices = range(start, min(start + a.batch_size, a.num))
            batch = batch_of(dataset, indices)
            generator = torch.Generator().manual_seed(batch_seed(a.seed, unit))
            images = sample(model, {"seg_mask": batch["seg_mask"], "text": batch["text"]}, steps=a.steps, eta=1.0,
                            generator=generator, **kwargs).images
            rows, _ = scorer.score(images, batch, evaluators.label_tensors(labels, batch["name"]))
            records += [{"index": i, "method": spec, **r} for i, r in zip(indices, rows)]
        (a.out / f"{spec}.json").write_text(json.dumps(records))
        mean = report.average_records(records, [spec])[spec]
        line = (f"| {spec} | " + " | ".join(f"{100 * mean[k]:.1f}%" for k in SCORES)
                + f" | {paired(records + reference, spec, 'mask', 'mask_accuracy')}"
                + f" | {paired(records + reference, spec, 'text', 'text_accuracy')} |")
        lines.append(line)
        print(line, flush=True)
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
