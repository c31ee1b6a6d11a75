"""scripts/train_faceworld.py: --help, and a smoke run of the whole recipe (every stage and the export)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ldm.checkpoints import pretrained
from ldm.data.faceworld import render_sample
from ldm.images import resize_nearest
from ldm.paper_figures import FACEWORLD_RESOLUTION, faceworld_pairs
from ldm.pipeline import load_model

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _script():
    return _load("train_faceworld")


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        _script().main(["--help"])
    assert exit_.value.code == 0 and "Examples:" in capsys.readouterr().out


def test_smoke_run_exports_loadable_models_and_resumes(tmp_path: Path, capsys):
    work, export = tmp_path / "work", tmp_path / "ckpt"
    args = ["--work", str(work), "--export", str(export), "--num", "24", "--steps", "2", "--batch-size", "2", "--workers", "1"]
    assert _script().main(args) == 0
    assert "evaluator accuracy on 2 real FaceWorld test images" in capsys.readouterr().out
    for name in ("vae", "text", "mask", "codiff", "parser", "classifier"):
        assert (export / f"{name}.yaml").is_file() and (export / f"{name}.safetensors").is_file()
        assert (work / "runs" / name / "done.json").is_file()
    # the shipped VAE is the render stage's: the VAE stage's encoder, the decoder trained further against a PatchGAN
    # (decoder stage), then on latents this run's collaborative model re-drew from training images (render stage)
    vae_stage, decoder_stage, render_stage = (
        pretrained("configs/faceworld/vae.yaml", "vae", str(work / "runs" / s / "checkpoints" / "last.ckpt")).state_dict()
        for s in ("vae", "decoder", "render"))
    shipped_vae = load_file(export / "vae.safetensors")
    assert not any(k.startswith("loss.discriminator.") for k in shipped_vae)  # a training aid, not shipped
    for key, value in render_stage.items():
        assert torch.equal(shipped_vae[f"vae.{key}"], value.half()), key
        for earlier in (vae_stage, decoder_stage):
            same = torch.equal(value, earlier[key])
            assert same == key.startswith(("encoder.", "quant_conv.")), key  # encoder frozen, decoder trained
    records = {s: json.loads((work / "runs" / s / "done.json").read_text()) for s in ("decoder", "render")}
    assert "discriminator" in records["decoder"]["config"]["model"]["params"]["loss"]["params"]
    regenerate = records["render"]["config"]["model"]["params"]["regenerate"]["params"]["model"]["params"]
    assert regenerate["ckpt"] == str(work / "runs" / "codiff" / "checkpoints" / "last.ckpt")  # this run's diffusers
    codiff = load_file(export / "codiff.safetensors")
    assert {k.split(".", 1)[0] for k in codiff} == {"diffusers"}  # partial: the experts are not stored twice
    assert all(v.dtype == torch.float16 for v in codiff.values())
    scale = json.loads((work / "runs" / "scale" / "done.json").read_text())["scale_factor"]

    model = load_model(export / "codiff.yaml", export / "codiff.safetensors")  # experts and VAE from the shipped files
    assert model.scale_factor == pytest.approx(scale)
    assert next(model.diffusers.parameters()).dtype == torch.float32
    parser = pretrained(str(export / "parser.yaml"), "parser", str(export / "parser.safetensors"))
    assert parser(torch.zeros(1, 3, 64, 64)).shape == (1, 19, 64, 64)
    summary = json.loads((export / "recipe.json").read_text())
    assert summary["stages"]["text"]["steps"] == 2 and "accuracy" in summary["stages"]
    usage = summary["stages"]["usage"]
    assert usage["test_images"] == 2 and [len(usage[n]) for n in ("text", "mask", "text_profile", "mask_profile")] == [3, 3, 7, 7]
    assert "Do the experts use their conditions?" in (export / "README.md").read_text()

    # the demo samples from the shipped files when they are there
    demo = _load("demo")
    assert demo.main(["--checkpoints", str(export), "--out", str(tmp_path / "demo"), "--pairs", "2", "--samples", "1", "--steps", "2"]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "demo" / "overview.png") in printed and sum(p.endswith("grid.png") for p in printed) == 2
    # overview rows: mask, caption, the pair's own FaceWorld test image, then the four methods
    overview = np.asarray(Image.open(tmp_path / "demo" / "overview.png"))
    tile, pad = demo.OVERVIEW_TILE, 2
    assert overview.shape[0] == 7 * (tile + pad) + pad
    data = summary["stages"]["data"]
    first = faceworld_pairs(int(data.get("seed", 0)), int(data["num"]), 2)[0].name
    real = render_sample(int(data.get("seed", 0)), int(first), FACEWORLD_RESOLUTION).image
    y, x = pad + 2 * (tile + pad), overview.shape[1] - 2 * (tile + pad)  # third row, first of the two columns
    assert np.array_equal(overview[y:y + tile, x:x + tile], resize_nearest(real, tile))
    assert any(p.endswith("influence_text.png") for p in printed)
    assert any(p.endswith("influence/influence.png") for p in printed)  # the labelled figure (timesteps, colour scale)

    # a re-run skips every finished stage and exports the same weights
    before = (work / "runs" / "vae" / "done.json").read_text()
    assert _script().main(args) == 0
    assert (work / "runs" / "vae" / "done.json").read_text() == before
    assert torch.equal(load_file(export / "codiff.safetensors")["diffusers.text.unet.out.2.weight"], codiff["diffusers.text.unet.out.2.weight"])

    # a finished stage that no longer matches the recipe is refused, not silently reused
    trained = work / "runs" / "text" / "checkpoints" / "config.yaml"
    original = trained.read_text()
    trained.write_text(original.replace("model_channels: 32", "model_channels: 16"))
    capsys.readouterr()
    assert _script().main(args) == 2
    err = capsys.readouterr().err
    assert "configs/faceworld/text.yaml changed since it was trained" in err and "model_channels: 16 -> 32" in err
    assert str(work / "runs" / "codiff") in err and str(work / "runs" / "usage") in err  # what is built on it moves too
    trained.write_text(original)
    import os
    done = work / "runs" / "mask" / "done.json"
    os.utime(done, (done.stat().st_atime, done.stat().st_mtime + 3600))  # the mask expert 'retrained' after codiff
    assert _script().main(args) == 2
    assert "runs/codiff is out of date: it finished before" in capsys.readouterr().err
    os.utime(done, (done.stat().st_atime, done.stat().st_mtime - 3600))
    assert "cache_latents: true" in original
    trained.write_text(original.replace("cache_latents: true", "cache_latents: false"))
    assert _script().main(args) == 0  # run-only settings (cache_latents, logging) never make a stage stale

    # --reuse-shipped: a second work folder takes the VAE, mask expert and evaluators from the export and trains
    # only the text expert and the dynamic diffusers; the reused files come back bit for bit
    work2, export2 = tmp_path / "work2", tmp_path / "ckpt2"
    import shutil
    shutil.copytree(export, export2)
    args2 = ["--work", str(work2), "--export", str(export2), "--num", "24", "--steps", "2", "--batch-size", "2", "--workers", "1"]
    capsys.readouterr()
    assert _script().main(args2 + ["--reuse-shipped", "mask"]) == 2  # a mask expert without the VAE it was trained on
    assert "mask (built on vae)" in capsys.readouterr().err and not (work2 / "runs").exists()
    assert _script().main(args2 + ["--reuse-shipped", "codiff"]) == 2
    assert "only vae, text, mask, parser, classifier can be reused" in capsys.readouterr().err
    recipe_file = export2 / "recipe.json"
    good_recipe = recipe_file.read_text()
    summary2 = json.loads(good_recipe)
    summary2["stages"]["decoder"]["config"]["train"]["max_steps"] = 5  # the decoder stage of another config: refused
    recipe_file.write_text(json.dumps(summary2))
    assert _script().main(args2 + ["--reuse-shipped", "vae,mask,parser,classifier"]) == 2
    assert "decoder stage was trained with another config" in capsys.readouterr().err and not (work2 / "runs").exists()
    recipe_file.write_text(good_recipe)
    stale = export2 / "mask.yaml"
    good = stale.read_text()
    assert "max_steps: 2\n" in good
    stale.write_text(good.replace("max_steps: 2\n", "max_steps: 3\n"))  # shipped from another config: refused, nothing written
    assert _script().main(args2 + ["--reuse-shipped", "vae,mask,parser,classifier"]) == 2
    assert "train.max_steps: 3 -> 2" in capsys.readouterr().err and not (work2 / "runs").exists()
    stale.write_text(good)
    assert _script().main(args2 + ["--reuse-shipped", "vae,mask,parser,classifier"]) == 0
    for name in ("vae", "mask", "parser", "classifier"):
        assert json.loads((work2 / "runs" / name / "done.json").read_text())["reused_from"] == str(export2 / f"{name}.safetensors")
        shipped, again = load_file(export / f"{name}.safetensors"), load_file(export2 / f"{name}.safetensors")
        assert shipped.keys() == again.keys() and all(torch.equal(shipped[k], again[k]) for k in shipped)
    # the shipped VAE is the render stage's output, so reusing it reuses the decoder and render stages too
    for stage in ("decoder", "render"):
        assert json.loads((work2 / "runs" / stage / "done.json").read_text())["reused_from"] == str(export2 / "vae.safetensors")
    assert "reused_from" not in json.loads((work2 / "runs" / "text" / "done.json").read_text())  # trained here
    assert (work2 / "runs" / "text" / "logs").is_dir() and not (work2 / "runs" / "vae" / "logs").exists()
    assert _script().main(args2 + ["--reuse-shipped", "vae"]) == 2  # never overwrites a run folder
    assert "would overwrite" in capsys.readouterr().err
    assert "`vae`, `decoder`, `mask`, `render`, `parser`, `classifier` were not trained by this invocation" in (export2 / "README.md").read_text()
