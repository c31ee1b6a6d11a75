"""Imagic editing (ldm/editing.py, scripts/edit.py) and its FaceWorld measurement, on tiny random models.

The tiny experts' zero-initialised layers (the output conv, the attention output projections) get random weights:
a trained expert's ε depends on its tokens, a freshly built one ignores them, and stage A would have nothing to do.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from ldm.checkpoints import load_state_dict
from ldm.fileio import save_safetensors
from ldm.config import instantiate, load_config
from ldm.data.celeba import read_image
from ldm.diffusion.schedule import NoiseSchedule
from ldm.editing import (
    COLLABORATIVE_ALPHAS,
    UNIMODAL_ALPHAS,
    EditOptions,
    denoising_loss,
    encode_input,
    finetune_expert,
    fit_to_resolution,
    interpolate,
    optimize_embedding,
    run_edit,
    sample_alpha,
)
from ldm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets" / "test_mask_edit"
IMAGE = ASSETS / "256_input_image" / "27044.jpg"
TARGET_MASK = ASSETS / "256_edited_masks" / "27044_0_remove_smile_and_rings.png"
CAPTION = "He is a teen. The face is covered with short pointed beard."
TINY = dict(embed_steps=2, finetune_steps=2, steps=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the suite runs two workers on two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(config: str) -> nn.Module:
    os.chdir(REPO)  # configs name each other relative to the repository root
    torch.manual_seed(0)
    model = instantiate(load_config(config).model, load_weights=False).eval()
    for expert in model.experts.values():  # a trained expert has no zero layers: its ε depends on the tokens
        for param in expert.unet.parameters():
            if param.dim() > 1 and not param.any():
                nn.init.normal_(param, std=0.05)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Full native checkpoints of the tiny collaborative and text models (random weights)."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name in ("codiff", "text"):
        paths[name] = root / f"{name}.safetensors"
        save_safetensors(build(f"configs/tiny/{name}.yaml").state_dict(), paths[name])
    return paths


@pytest.fixture(scope="module")
def input_32():
    return fit_to_resolution(read_image(IMAGE), 32)


def fixed_loss(expert, x0, context, schedule, draws: int = 64) -> float:
    """The denoising loss averaged over the same ``draws`` (t, ε) pairs every call."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(123)
        return denoising_loss(expert, x0.expand(draws, -1, -1, -1), context.expand(draws, -1, -1), schedule, gen).item()


# ------------------------------------------------------------------------------------------------
# The maths


def test_released_alpha_lists():
    assert UNIMODAL_ALPHAS == (-1, -0.5, 0, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.2, 1.3, 1.4, 1.5)
    assert COLLABORATIVE_ALPHAS[0] == 0 and COLLABORATIVE_ALPHAS[-2:] == (2.0, 2.5) and len(COLLABORATIVE_ALPHAS) == 18


def test_interpolate_exact():
    a, b = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0])
    assert torch.equal(interpolate(a, b, 0.0), b)
    assert torch.equal(interpolate(a, b, 1.0), a)
    assert torch.equal(interpolate(a, b, 0.5), torch.tensor([1.5, 1.5]))
    assert torch.equal(interpolate(a, b, -1.0), torch.tensor([0.0, -6.0]))  # 2b - a: extrapolation


def test_fit_to_resolution_resizes_shorter_side_and_crops_centre():
    wide = Image.new("RGB", (300, 100), (0, 0, 0))
    wide.paste((255, 0, 0), (100, 0, 200, 100))  # the centre third is red
    out = fit_to_resolution(wide, 32)
    assert out.size == (32, 32)
    assert np.asarray(out)[:, 4:28, 0].min() > 200  # all centre: red


def test_stage_a_lowers_the_loss_and_touches_only_the_embedding(input_32):
    model = build("configs/tiny/text.yaml")
    expert, schedule = model.expert, model.schedule
    x0 = encode_input(model, input_32)
    target = expert.encode([CAPTION]).detach()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = fixed_loss(expert, x0, target, schedule)
    fit = optimize_embedding(expert, x0, target, schedule, steps=60, lr=1e-2, generator=torch.Generator().manual_seed(0))
    after = fixed_loss(expert, x0, fit.embedding, schedule)
    assert after < before, (before, after)
    assert len(fit.losses) == 60 and fit.embedding.shape == target.shape and not fit.embedding.requires_grad
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}  # restored


def test_stage_b_changes_only_the_experts_unet():
    model = build("configs/tiny/codiff.yaml")
    x0 = torch.randn(1, *model.vae.latent_shape, generator=torch.Generator().manual_seed(1))
    expert = model.experts["text"]
    e_opt = expert.encode([CAPTION]).detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    losses = finetune_expert(expert, x0, e_opt, model.schedule, steps=3, lr=1e-3, generator=torch.Generator().manual_seed(0))
    assert len(losses) == 3
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("experts.text.unet.") for k in changed)
    unet_keys = {k for k in before if k.startswith("experts.text.unet.") and k.endswith("weight")}
    assert len(changed & unet_keys) > 0.8 * len(unet_keys)  # the UNet as a whole trains
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}  # frozen experts stay frozen


class IdealDenoiser(nn.Module):
    """A UNet stand-in where α has a clear meaning: ε(x_t, t, c) = (x_t − √ā_t·x̂0(c)) / √(1 − ā_t), the exact
    noise if the image were x̂0(c), a linear map of the mean context token. DDIM (eta 0) returns x̂0(c)."""

    def __init__(self, schedule: NoiseSchedule, context_dim: int, latent_shape: tuple[int, ...]):
        super().__init__()
        self.schedule, self.latent_shape = schedule, latent_shape
        self.to_x0 = nn.Linear(context_dim, int(np.prod(latent_shape)))

    def forward(self, x_t, t, context):
        x0 = self.to_x0(context.mean(dim=1)).view(-1, *self.latent_shape)
        a = self.schedule.alphas_cumprod[t.cpu()].to(x_t).view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def test_alpha_0_reconstructs_the_input_better_than_alpha_1(input_32):
    """Imagic with a denoiser whose samples are a function of the tokens: stage A finds tokens that give back
    the input, stage B fits the weights to them; sampling (eta 0) at α = 0 is then close to x0, at α = 1 (the
    target's tokens) far from it, and the error grows along the sweep."""
    model = build("configs/tiny/text.yaml")
    model.expert.unet = IdealDenoiser(model.schedule, 32, model.vae.latent_shape)
    x0 = encode_input(model, input_32)
    e_target = model.expert.encode([CAPTION]).detach()
    fit = optimize_embedding(model.expert, x0, e_target, model.schedule, steps=200, lr=5e-2,
                             generator=torch.Generator().manual_seed(0))
    finetune_expert(model.expert, x0, fit.embedding, model.schedule, steps=20, lr=1e-3,
                    generator=torch.Generator().manual_seed(1))
    errors = []
    for alpha in (0.0, 0.5, 1.0):
        z = sample_alpha(model, {"text": e_target}, {"text": fit.embedding}, alpha, steps=10, eta=0.0, seed=0).latents
        errors.append(torch.mean((z - x0) ** 2).item())
    assert errors[0] < 0.25 * errors[2] and errors[0] < errors[1] < errors[2], errors


def test_a_partial_start_keeps_the_input_and_strength_1_is_the_released_start(input_32):
    """Stage C from the input's latent noised to t < strength·T (SDEdit): the lower the strength, the closer the
    sample stays to x0, whatever the tokens; strength 1 ignores x0 and is the released pure-noise start, bit for bit."""
    model = build("configs/tiny/text.yaml")
    x0 = encode_input(model, input_32)
    e = {"text": model.expert.encode([CAPTION]).detach()}
    distance = {}
    for strength in (0.05, 0.3, 1.0):
        z = sample_alpha(model, e, e, 1.0, steps=20, eta=1.0, seed=0, x0=x0, strength=strength).latents
        distance[strength] = torch.mean((z - x0) ** 2).item()
    assert distance[0.05] < distance[0.3] < distance[1.0], distance
    released = sample_alpha(model, e, e, 1.0, steps=20, eta=1.0, seed=0).latents
    assert torch.equal(sample_alpha(model, e, e, 1.0, steps=20, eta=1.0, seed=0, x0=x0, strength=1.0).latents, released)
    with pytest.raises(ValueError, match="strength < 1 starts from a given latent: pass x_start"):
        sample_alpha(model, e, e, 1.0, steps=20, eta=1.0, seed=0, strength=0.5)


# ------------------------------------------------------------------------------------------------
# The run directory


def edit_text(model, image, out, **kw):
    return run_edit(model, image, {"text": [CAPTION]}, out, EditOptions(alphas=(0.0, 1.0), **{**TINY, **kw}),
                    {"case": "test"}, progress=False)


def test_resume_skips_finished_stages_and_matches_an_uninterrupted_run(input_32, tmp_path, monkeypatch):
    import ldm.editing as editing

    whole = edit_text(build("configs/tiny/text.yaml"), input_32, tmp_path / "whole")
    assert whole.skipped == []

    # interrupted in stage B: stage A's file is there, nothing of B, no temporary file
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(editing, "finetune_expert", interrupted)
        with pytest.raises(KeyboardInterrupt):
            edit_text(build("configs/tiny/text.yaml"), input_32, tmp_path / "cut")
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["embedding_text.safetensors", "input.png", "settings.json"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(editing, "optimize_embedding", must_not_run)
    resumed = edit_text(build("configs/tiny/text.yaml"), input_32, tmp_path / "cut")
    assert resumed.skipped == ["embedding_text"]
    for name in ("embedding_text.safetensors", "expert_text.safetensors", "alpha_00_0.png", "alpha_01_1.png"):
        a, b = load_or_bytes(tmp_path / "whole" / name), load_or_bytes(tmp_path / "cut" / name)
        assert a == b, name  # bit-identical on CPU

    # everything finished: nothing runs; a deleted alpha image is the only thing redone
    (tmp_path / "cut" / "alpha_01_1.png").unlink()
    monkeypatch.setattr(editing, "finetune_expert", must_not_run)
    again = edit_text(build("configs/tiny/text.yaml"), input_32, tmp_path / "cut")
    assert again.skipped == ["embedding_text", "expert_text", "alpha_00_0"]
    assert (tmp_path / "cut" / "alpha_01_1.png").read_bytes() == (tmp_path / "whole" / "alpha_01_1.png").read_bytes()


def load_or_bytes(path: Path):
    if path.suffix == ".safetensors":
        return {k: v.tolist() for k, v in load_state_dict(path).items()}
    return path.read_bytes()


def test_other_settings_in_an_existing_run_are_refused(input_32, tmp_path):
    model = build("configs/tiny/text.yaml")
    edit_text(model, input_32, tmp_path)
    with pytest.raises(UserError, match="other settings.*embed_steps"):
        edit_text(model, input_32, tmp_path, embed_steps=3)


# ------------------------------------------------------------------------------------------------
# scripts/edit.py


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edit_argv(ckpts, out, *extra, model="codiff"):
    return ["--config", f"configs/tiny/{model}.yaml", "--ckpt", str(ckpts[model]), "--image", str(IMAGE),
            "--embed-steps", "2", "--finetune-steps", "2", "--steps", "2", "--out", str(out), "--device", "cpu", *extra]


@pytest.mark.parametrize("mode, extra, alphas, modalities", [
    ("text", ["--text", CAPTION], UNIMODAL_ALPHAS, ["text"]),
    ("mask", ["--mask", str(TARGET_MASK)], UNIMODAL_ALPHAS, ["seg_mask"]),
    ("collaborative", ["--text", CAPTION, "--mask", str(TARGET_MASK), "--alphas", "0,1,2.5"], (0, 1, 2.5), ["text", "seg_mask"]),
])
def test_edit_script_writes_every_artefact(ckpts, tmp_path, caplog, mode, extra, alphas, modalities):
    caplog.set_level("INFO")
    out = tmp_path / mode
    assert script("edit").main(edit_argv(ckpts, out, "--mode", mode, *extra)) == 0
    assert "resized (shorter side) and centre-cropped" in caplog.text
    names = {p.name for p in out.iterdir()}
    for m in modalities:
        assert {f"embedding_{m}.safetensors", f"expert_{m}.safetensors"} <= names
        saved = load_state_dict(out / f"embedding_{m}.safetensors")
        assert set(saved) == {"e_opt", "e_target", "losses"} and saved["losses"].shape == (2,)
    assert len([n for n in names if n.startswith("alpha_")]) == len(alphas)
    assert {"grid.png", "input.png", "settings.json"} <= names
    assert Image.open(out / "input.png").size == (32, 32)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["mode"] == mode and settings["alphas"] == list(alphas) and settings["modalities"] == modalities
    assert settings["strength"] == 1.0  # the tiny configs have no edit: section: the released pure-noise start
    assert not [n for n in names if n.endswith(".tmp")]
    # the fine-tuned UNet file loads into the expert
    model = build(f"configs/tiny/codiff.yaml")
    model.experts[modalities[0]].unet.load_state_dict(load_state_dict(out / f"expert_{modalities[0]}.safetensors"))


def test_edit_script_uni_modal_model_and_resume(ckpts, tmp_path, capsys):
    argv = edit_argv(ckpts, tmp_path, "--mode", "text", "--text", CAPTION, "--alphas", "0,1", model="text")
    assert script("edit").main(argv) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert script("edit").main(argv) == 0  # everything skipped, same files
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    assert script("edit").main([*argv, "--seed", "1"]) == 2
    assert "other settings" in capsys.readouterr().err


def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    rgb = np.zeros((40, 40, 3), np.uint8)
    files["grey"] = tmp_path / "grey.png"
    Image.fromarray(rgb[..., 0]).save(files["grey"])
    files["rgba"] = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(files["rgba"])
    files["16bit"] = tmp_path / "16bit.png"
    Image.fromarray(np.zeros((40, 40), np.uint16)).save(files["16bit"])
    files["junk"] = tmp_path / "junk.jpg"
    files["junk"].write_bytes(b"not an image")
    files["mask_ids"] = tmp_path / "mask_ids.png"
    Image.fromarray(np.full((64, 64), 22, np.uint8)).save(files["mask_ids"])
    files["mask_wide"] = tmp_path / "mask_wide.png"
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(files["mask_wide"])
    files["a_file"] = tmp_path / "a_file"
    files["a_file"].write_text("x")
    return files


BAD = [
    (["--image", "{grey}", "--mode", "text", "--text", "x"], "greyscale"),
    (["--image", "{rgba}", "--mode", "text", "--text", "x"], "RGB with alpha"),
    (["--image", "{16bit}", "--mode", "text", "--text", "x"], "16-bit"),
    (["--image", "{junk}", "--mode", "text", "--text", "x"], "unreadable image"),
    (["--image", "missing.jpg", "--mode", "text", "--text", "x"], "does not exist"),
    (["--mode", "text", "--text", "  "], "empty caption"),
    (["--mode", "text"], "needs its target: give --text"),
    (["--mode", "collaborative", "--text", "x"], "give --mask"),
    (["--mode", "text", "--text", "x", "--mask", str(TARGET_MASK)], "does not use --mask"),
    (["--mode", "mask", "--mask", "{mask_ids}"], "class ids [22]"),
    (["--mode", "mask", "--mask", "{mask_wide}"], "must be square"),
    (["--mode", "text", "--text", "x", "--alphas", "0,11"], "|alpha| <= 10"),
    (["--mode", "text", "--text", "x", "--alphas", "0,one"], "comma list of numbers"),
    (["--mode", "text", "--text", "x", "--steps", "0"], "--steps"),
    (["--mode", "text", "--text", "x", "--eta", "2"], "--eta"),
    (["--mode", "text", "--text", "x", "--embed-steps", "-1"], "--embed-steps"),
    (["--mode", "text", "--text", "x", "--finetune-lr", "0"], "--finetune-lr"),
    (["--mode", "text", "--text", "x", "--strength", "0"], "--strength 0.0 is out of range"),
    (["--mode", "text", "--text", "x", "--strength", "1.5"], "--strength 1.5 is out of range"),
    (["--mode", "text", "--text", "x", "--strength", "0.0005"], "keeps none of the 2 timesteps"),
    (["--mode", "text", "--text", "x", "--out", "{a_file}/run"], "cannot be written"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_edit_bad_input_one_line_error_and_no_files(ckpts, tmp_path, capsys, argv, message):
    files = bad_files(tmp_path)
    argv = [a.format(**files) for a in argv]
    out = tmp_path / "out"
    base = edit_argv(ckpts, out)
    if "--image" in argv:  # replace the default image
        i = base.index("--image")
        base = base[:i] + base[i + 2:]
    assert script("edit").main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not out.exists() or not any(out.iterdir())


def test_collaborative_edit_needs_diffusers(ckpts, tmp_path, capsys):
    argv = edit_argv(ckpts, tmp_path, "--mode", "collaborative", "--text", "x", "--mask", str(TARGET_MASK), model="text")
    assert script("edit").main(argv) == 2
    assert "no ['seg_mask'] expert" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The FaceWorld measurement, with random stand-ins of the evaluators' interfaces


class StandInParser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)

    def forward(self, images):
        return self.conv(images)  # [B, 19, H, W]


class StandInClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({"age": nn.Linear(3, 5), "beard": nn.Linear(3, 4), "gender": nn.Linear(3, 2)})

    def forward(self, images):
        pooled = images.mean(dim=(2, 3))
        return {k: head(pooled) for k, head in self.heads.items()}


def test_faceworld_edit_measurement(tmp_path):
    from ldm.data.faceworld import make_faceworld
    from ldm.evaluation.edit_metrics import CEILING, EDIT_MODES, METRICS, evaluate_edits, faceworld_cases, markdown_table, write_results

    world = make_faceworld(tmp_path / "fw", num=6, seed=3, size=32, test_size=2, progress=False)
    cases = faceworld_cases(world, 2, 32)
    assert [c.mask_change for c in cases] == ["glasses", "hair_length"]
    later = faceworld_cases(world, 1, 32, offset=1)  # the same face gets the same edit whatever the offset
    assert later[0].name == cases[1].name and later[0].mask_change == "hair_length"
    assert later[0].target_caption == cases[1].target_caption and (later[0].target_mask == cases[1].target_mask).all()
    with pytest.raises(UserError, match=r"--offset 1 --num 2 asks for test faces 1..2"):
        faceworld_cases(world, 2, 32, offset=1)
    for c in cases:
        assert (c.source_mask != c.target_mask).any()
        assert c.target_labels["age"] != c.source_labels["age"] and c.target_labels["gender"] == c.source_labels["gender"]
    torch.manual_seed(0)
    parser, classifier = StandInParser(), StandInClassifier()
    model = build("configs/tiny/codiff.yaml")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    options = EditOptions(alphas=(1.0,), **TINY)
    rows = evaluate_edits(model, cases, parser, classifier, tmp_path / "eval", options)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # experts restored
    assert [(r["mode"], r["alpha"], r["row"]) for r in rows] == ([("input", None, "input")] + [(m, None, CEILING) for m in EDIT_MODES]
                                                                 + [(m, 1.0, "edit") for m in EDIT_MODES])
    ceiling = {r["mode"]: r for r in rows if r["row"] == CEILING}
    by_mode = {r["mode"]: r for r in rows if r["row"] == "edit"}
    # the targets' renders: the text target keeps the mask, the mask target is the mask edit's image
    assert set(cases[0].target_images) == set(EDIT_MODES)
    assert ceiling["text"]["target_mask"] is None and ceiling["mask"]["target_age"] is None
    assert ceiling["mask"]["target_glasses"] is not None and ceiling["mask"]["target_hair"] is not None
    assert ceiling["mask"]["target_mask"] == pytest.approx((ceiling["mask"]["target_glasses"] + ceiling["mask"]["target_hair"]) / 2)
    assert by_mode["text"]["target_mask"] is None and by_mode["mask"]["target_age"] is None
    for r in rows:
        assert r["n"] == 2
        for k in METRICS:
            v = r[k]
            assert v is None or (0.0 <= v <= 1.0 if not k.startswith("psnr") else v > 0), (r["mode"], k, v)
    assert by_mode["collaborative"]["target_age"] is not None and by_mode["collaborative"]["target_mask"] is not None
    # the text and mask edits reused the collaborative edit's stages A and B
    a = load_state_dict(tmp_path / "eval" / f"{cases[0].name}_collaborative" / "expert_text.safetensors")
    b = load_state_dict(tmp_path / "eval" / f"{cases[0].name}_text" / "expert_text.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    table = markdown_table(rows)
    assert table.count("\n") == 8 and "| collaborative | 1 | 2 |" in table and "| mask: target via VAE | – | 2 |" in table
    json_path, _ = write_results(rows, tmp_path / "eval", {"num": 2})
    assert json.loads(json_path.read_text())["rows"][0]["mode"] == "input"


def test_lpips_is_optional_with_a_clear_message(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    module = script("evaluate_editing")
    args = module.parse(["--config", "c", "--ckpt", "k", "--data", "d", "--parser", "p", "--classifier", "c"])
    caplog.set_level("WARNING")
    assert module.optional_lpips(args, "cpu") is None
    assert "LPIPS is left out" in caplog.text and "weights are missing" in caplog.text


def test_evaluate_editing_without_evaluators_says_so(ckpts, tmp_path, capsys):
    weights = tmp_path / "parser.safetensors"
    save_safetensors({"w": torch.zeros(1)}, weights)
    argv = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(ckpts["codiff"]), "--data", str(tmp_path),
            "--parser", str(weights), "--classifier", str(weights), "--out", str(tmp_path / "o")]
    assert script("evaluate_editing").main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


SHIPPED = REPO / "checkpoints" / "faceworld"


def test_real_input_runs_every_mode_with_the_shipped_faceworld_models(tmp_path):
    """The 256² CelebA-HQ face and its hand-edited mask go through every mode with the shipped 64² models
    (resized, centre-cropped); every artefact is written (the picture from FaceWorld models means little)."""
    os.chdir(REPO)
    for mode, extra in (("text", ["--text", CAPTION]), ("mask", ["--mask", str(TARGET_MASK)]),
                        ("collaborative", ["--text", CAPTION, "--mask", str(TARGET_MASK)])):
        out = tmp_path / mode
        argv = ["--config", str(SHIPPED / "codiff.yaml"), "--ckpt", str(SHIPPED / "codiff.safetensors"), "--image", str(IMAGE),
                "--mode", mode, *extra, "--embed-steps", "2", "--finetune-steps", "2", "--steps", "2", "--alphas", "0,1",
                "--out", str(out), "--device", "cpu"]
        assert script("edit").main(argv) == 0
        modalities = {"text": ["text"], "mask": ["seg_mask"], "collaborative": ["text", "seg_mask"]}[mode]
        for m in modalities:
            assert (out / f"embedding_{m}.safetensors").is_file() and (out / f"expert_{m}.safetensors").is_file()
        assert Image.open(out / "input.png").size == (64, 64) and (out / "grid.png").is_file()
        settings = json.loads((out / "settings.json").read_text())
        assert len(list(out.glob("alpha_*.png"))) == 2 and settings["mode"] == mode
        assert settings["strength"] == 0.5  # the shipped config's edit: section reaches edit.py


def test_evaluate_editing_script_with_the_shipped_models(tmp_path, capsys):
    """The measurement end to end through its script: the shipped FaceWorld models and evaluators on a small
    FaceWorld at 64², a start part-way from the flag, the second test face (--offset); results.md has the input,
    ceiling and edit rows."""
    from ldm.data.faceworld import make_faceworld
    from ldm.evaluation.edit_metrics import faceworld_cases

    os.chdir(REPO)
    world = make_faceworld(tmp_path / "fw", num=6, seed=3, size=64, test_size=2, progress=False)
    out = tmp_path / "eval"
    argv = ["--config", str(SHIPPED / "codiff.yaml"), "--ckpt", str(SHIPPED / "codiff.safetensors"), "--data", str(world),
            "--parser", str(SHIPPED / "parser.safetensors"), "--classifier", str(SHIPPED / "classifier.safetensors"),
            "--num", "1", "--modes", "text,mask", "--embed-steps", "2", "--finetune-steps", "2", "--steps", "2",
            "--alphas", "1", "--strength", "0.6", "--offset", "1", "--out", str(out), "--device", "cpu"]
    assert script("evaluate_editing").main(argv) == 0
    table = (out / "results.md").read_text()
    for row in ("| input | – | 1 |", "| text: target via VAE | – | 1 |", "| mask: target via VAE | – | 1 |",
                "| text | 1 | 1 |", "| mask | 1 | 1 |"):
        assert row in table, row
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["strength"] == 0.6 and results["settings"]["modes"] == ["text", "mask"]
    assert results["settings"]["offset"] == 1
    (run_dir,) = out.glob("*_text")
    assert run_dir.name == f"{faceworld_cases(world, 1, 64, offset=1)[0].name}_text"  # the second test face
    assert json.loads((run_dir / "settings.json").read_text())["strength"] == 0.6
