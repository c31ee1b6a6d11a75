"""Score VAE decoders on the same generated latents (docs/faceworld_recipe.md, section 24).

A decoder trained with the encoder frozen changes no latent: every method's samples are the same latents, only
rendered differently. So the first N evaluation pairs are generated once per method (seed 0, DDIM 50, eta 1, the
`paper` preset; the same x_T as scripts/evaluate.py) and their latents cached in OUT/latents.pt; each decoder
(``--vaes``: checkpoints holding ``vae.*``, e.g. a decoder run's last.ckpt or a shipped vae.safetensors) then
decodes them and the real test images' reconstructions, and the FaceWorld evaluators score every row: mask /
text / joint accuracy, age, beard, the high-frequency energy against the real images' (the residual-noise figure)
and the Fréchet distance of the parser features. The first decoder named is the reference of the paired columns.

Example (200 pairs: about 4 minutes to generate, 1 a decoder, on 2 CPU cores):
  python docs/recipe/decoder_variants.py --num 200 --out outputs/decoders \\
      --vaes checkpoints/faceworld/vae.safetensors,outputs/decoder_try/checkpoints/last.ckpt
"""
import argparse
from pathlib import Path

import torch

from ldm.checkpoints import load_state_dict, load_strict
from ldm.data.faceworld import load_labels
from ldm.diffusion.collaborative import PAPER
from ldm.evaluation import evaluators, metrics, report
from ldm.evaluation.generation import METHODS, RECONSTRUCTION, Evaluators, batch_of, test_pairs
from ldm.pipeline import load_model, sample
from ldm.seeding import batch_seed

SCORES = ("mask_accuracy", "text_accuracy", "joint_accuracy", "age", "beard")


def cached_latents(model, dataset, num: int, batch_size: int, seed: int, steps: int, path: Path) -> dict:
    """{method: latents [N, C, h, w]} of the evaluation's samples, generated once and kept in ``path``."""
    if path.is_file():
        cached = torch.load(path)
        if cached["num"] == num and cached["seed"] == seed and cached["steps"] == steps:
            return cached["latents"]
    latents = {m: [] for m in METHODS}
    for unit, start in enumerate(range(0, num, batch_size)):
        batch = batch_of(dataset, range(start, min(start + batch_size, num)))
        for method in METHODS:
            generator = torch.Generator().manual_seed(batch_seed(seed, unit))
            latents[method].append(sample(model, {"seg_mask": batch["seg_mask"], "text": batch["text"]}, method=method,
                                          steps=steps, eta=1.0, generator=generator, options=PAPER).latents)
    latents = {m: torch.cat(v) for m, v in latents.items()}
    torch.save({"num": num, "seed": seed, "steps": steps, "latents": latents}, path)
    return latents


def score_decoder(model, latents: dict, dataset, labels, scorer: Evaluators, batch_size: int) -> tuple[list[dict], dict]:
    """Per-sample records of every method's decoded latents, the reconstructions and the real images; parser features."""
    records, features = [], {}
    n = next(iter(latents.values())).shape[0]
    for start in range(0, n, batch_size):
        indices = range(start, min(start + batch_size, n))
        batch = batch_of(dataset, indices)
        label = evaluators.label_tensors(labels, batch["name"])
        with torch.no_grad():
            images = {m: model.decode_latents(z[start:start + len(indices)]).clamp(-1, 1) for m, z in latents.items()}
            images[RECONSTRUCTION] = model.vae.decode(model.vae.encode(batch["image"]).mean).clamp(-1, 1)
        images[report.REAL] = batch["image"]
        for method, x in images.items():
            rows, feats = scorer.score(x, batch, label)
            records += [{"index": i, "method": method, **r} for i, r in zip(indices, rows)]
            features.setdefault(method, []).append(feats["parser"])
    return records, {m: torch.cat(f) for m, f in features.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="checkpoints/faceworld/codiff.yaml")
    p.add_argument("--ckpt", default="checkpoints/faceworld/codiff.safetensors")
    p.add_argument("--data", type=Path, default=Path("outputs/faceworld_train/faceworld"))
    p.add_argument("--vaes", required=True, help="comma-separated checkpoints with vae.* weights; the first is the reference")
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50, help="as scripts/evaluate.py's (the seeds are per batch)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    vaes = a.vaes.split(",")
    for path in vaes:  # a missing file fails before the generation
        if not Path(path).is_file():
            raise SystemExit(f"--vaes: {path} does not exist")
    model = load_model(a.config, a.ckpt, "cpu")
    dataset = test_pairs(a.data, None, a.num)
    labels = load_labels(a.data)
    scorer = Evaluators(True, "cpu")
    a.out.mkdir(parents=True, exist_ok=True)
    latents = cached_latents(model, dataset, a.num, a.batch_size, a.seed, a.steps, a.out / "latents.pt")

    lines = ["| decoder | row | mask acc | text acc | joint acc | age | beard | HF energy vs real | FD (parser) | vs first decoder: mask / text |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    reference = None
    for path in vaes:
        state = {k[len("vae."):]: v.float() for k, v in load_state_dict(path).items() if k.startswith("vae.")}
        load_strict(model.vae, state, source=path)
        records, features = score_decoder(model, latents, dataset, labels, scorer, a.batch_size)
        means = report.average_records(records, [*METHODS, RECONSTRUCTION, report.REAL])
        real_hf = means[report.REAL]["hf_energy"]
        for method in (RECONSTRUCTION, *METHODS):
            row = means[method]
            fd = metrics.frechet_distance_features(features[method], features[report.REAL])
            paired = "-"
            if reference is not None:
                both = reference + [{**r, "method": f"{r['method']}'"} for r in records if r["method"] == method]
                paired = " / ".join(f"{100 * report.paired_difference(both, method + chr(39), method, k)[0]:+.1f}"
                                    for k in ("mask_accuracy", "text_accuracy"))
            lines.append(f"| {Path(path).parent.parent.name if path.endswith('.ckpt') else Path(path).name} | {method} | "
                         + " | ".join(f"{100 * row[k]:.1f}%" for k in SCORES)
                         + f" | {row['hf_energy'] / real_hf:.2f}x | {fd:.4f} | {paired} |")
            print(lines[-1], flush=True)
        if reference is None:
            reference = records
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
