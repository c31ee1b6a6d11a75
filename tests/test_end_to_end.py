"""The whole tiny chain through the scripts: FaceWorld -> VAE -> text and mask experts -> dynamic diffusers
-> generate (every method, influence figures) -> convert to the released layout -> sample from that."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldm.checkpoints import detect_kind, load_state_dict, to_native

from conftest import ASSETS, REPO, script

MASK = ASSETS / "256_masks" / "29980.png"


@pytest.fixture(scope="module")
def chain(tiny_chain):
    return tiny_chain


def test_checkpoints_and_resolved_config_written(chain):
    for name, path in chain["ckpt"].items():
        assert path.is_file(), name
        saved = (path.parent / "config.yaml").read_text()
        assert str(chain["data"]) in saved  # the resolved config, overrides included


def test_diffuser_training_leaves_experts_unchanged(chain):
    codiff = to_native(load_state_dict(chain["ckpt"]["codiff"]))
    for modality, name in (("text", "text"), ("seg_mask", "mask")):
        expert = to_native(load_state_dict(chain["ckpt"][name]))
        for key, value in expert.items():
            if key.startswith("expert."):
                assert torch.equal(codiff[f"experts.{modality}." + key[len("expert."):]], value), key


def test_generate_every_method_with_influence(chain, tmp_path):
    out = tmp_path / "gen"
    argv = [
        "--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["codiff"]), "--mask", str(MASK),
        "--text", "This man has beard of medium length. He is in his thirties.", "--steps", "4", "--batch-size", "2",
        "--method", "collaborative,composable,text,mask", "--save-influence", "--out", str(out), "--device", "cpu",
        *chain["overrides"],
    ]
    assert script("generate").main(argv) == 0
    for method in ("collaborative", "composable", "text", "mask"):
        assert (out / f"{method}_seed0_001.png").is_file()
    assert (out / "grid.png").is_file()
    raw = torch.load(out / "influence" / "influence.pt")
    assert raw["timesteps"].tolist() == [751, 501, 251, 1]
    weights = raw["influence_seg_mask"] + raw["influence_text"]
    assert torch.allclose(weights, torch.ones_like(weights), atol=1e-6)
    assert json.loads((out / "settings.json").read_text())["steps"] == 4


def test_same_seed_same_images(chain, tmp_path):
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        argv = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["codiff"]), "--mask", str(MASK),
                "--text", "She is a teenager.", "--steps", "3", "--batch-size", "1", "--seed", "7", "--out", str(out),
                *chain["overrides"]]
        assert script("generate").main(argv) == 0
        outs.append((out / "collaborative_seed7_000.png").read_bytes())
    assert outs[0] == outs[1]


def test_uni_modal_generate(chain, tmp_path):
    argv = ["--config", "configs/tiny/text.yaml", "--ckpt", str(chain["ckpt"]["text"]), "--text", "He is a teen.",
            "--steps", "2", "--batch-size", "1", "--out", str(tmp_path), f"model.params.vae.params.ckpt={chain['ckpt']['vae']}"]
    assert script("generate").main(argv) == 0
    assert (tmp_path / "text_seed0_000.png").is_file()


def test_released_layout_round_trip_samples(chain, tmp_path):
    released = tmp_path / "codiff_released.ckpt"
    assert script("convert_checkpoint").main([
        "--ckpt", str(chain["ckpt"]["codiff"]), "--out", str(released), "--to", "released",
        "--config", "configs/tiny/codiff.yaml"]) == 0
    state = load_state_dict(released)
    assert detect_kind(state) == ("released", "collaborative")
    assert "model.seg_mask_confidence_predictor.diffusion_model.out.2.weight" in state
    assert "betas" in state
    back = tmp_path / "codiff.safetensors"
    assert script("convert_checkpoint").main(["--ckpt", str(released), "--out", str(back)]) == 0
    original = to_native(load_state_dict(chain["ckpt"]["codiff"]))
    converted = load_state_dict(back)
    assert original.keys() == converted.keys()
    assert all(torch.equal(original[k], converted[k]) for k in original)
    out = tmp_path / "gen"
    argv = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(released), "--mask", str(MASK), "--text", "She is a teenager.",
            "--steps", "2", "--batch-size", "1", "--out", str(out), *chain["overrides"]]
    assert script("generate").main(argv) == 0


@pytest.mark.parametrize("argv, message", [
    (["--mask", "missing.png"], "does not exist"),
    (["--text", "  "], "empty caption"),
    (["--steps", "0", "--text", "x"], "--steps"),
    (["--eta", "2", "--text", "x"], "--eta"),
    (["--batch-size", "0", "--text", "x"], "--batch-size"),
    (["--preset", "bogus", "--text", "x"], "preset"),
    ([], "give a condition"),
])
def test_generate_bad_input_one_line_error(chain, tmp_path, capsys, argv, message):
    base = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["codiff"]), "--out", str(tmp_path / "o"),
            *chain["overrides"]]
    assert script("generate").main(base[:4] + argv + base[4:]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not list((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True


def test_wrong_kind_checkpoint_is_refused(chain, tmp_path, capsys):
    argv = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["vae"]), "--text", "x", "--mask", str(MASK),
            "--out", str(tmp_path), *chain["overrides"]]
    assert script("generate").main(argv) == 2
    assert "vae checkpoint but a collaborative checkpoint is expected" in capsys.readouterr().err


def test_summarize_paper_configs(capsys):
    import os

    os.chdir(REPO)
    assert script("summarize").main(["--config", "configs/256_codiff_mask_text.yaml", "--json"]) == 0
    rows = {r["component"]: r for r in json.loads(capsys.readouterr().out)}
    assert abs(rows["experts.text.unet"]["params"] - 403.6e6) < 0.1e6
    assert abs(rows["experts.seg_mask.unet"]["params"] - 403.6e6) < 0.1e6
    assert abs(rows["diffusers.text"]["params"] - 13.1e6) < 0.1e6
    assert abs(rows["vae"]["params"] - 55.3e6) < 0.1e6


def test_partial_checkpoint_takes_the_rest_from_the_config(chain, tmp_path):
    partial = tmp_path / "diffusers.safetensors"
    assert script("convert_checkpoint").main(["--ckpt", str(chain["ckpt"]["codiff"]), "--out", str(partial), "--keep", "diffusers"]) == 0
    assert {k.split(".")[0] for k in load_state_dict(partial)} == {"diffusers"}
    from ldm.pipeline import load_model

    full = load_model("configs/tiny/codiff.yaml", chain["ckpt"]["codiff"], overrides=chain["overrides"])
    part = load_model("configs/tiny/codiff.yaml", partial, overrides=chain["overrides"])
    a, b = full.state_dict(), part.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
