"""The samplers through the pipeline, the configs and the scripts (generate, evaluate, compare_samplers, edit,
benchmark): DDIM unchanged, influence maps at every solver step, settings recorded, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ASSETS, REPO, script
from ldm.benchmark import build_random_model, format_report, random_conditions, run_equal_quality, BenchmarkReport
from ldm.config import load_config, sample_settings
from ldm.diffusion.ddim import ddim_sample, ddim_timesteps
from ldm.diffusion.samplers import RECOMMENDED, SamplerOptions
from ldm.diffusion.spacing import spaced_timesteps
from ldm.editing import EditOptions
from ldm.errors import ConfigError, UserError
from ldm.evaluation.sampler_comparison import BEGIN, END, write_block
from ldm.pipeline import make_eps_fn, sample
from ldm.speed import SpeedOptions
from test_editing import CAPTION, ckpts, edit_argv  # noqa: F401 (ckpts is a fixture)
from test_evaluation import chain, evaluate_argv  # noqa: F401 (chain is a fixture)

CONFIG = str(REPO / "configs" / "tiny" / "codiff.yaml")
MASK = ASSETS / "256_masks" / "29980.png"


@pytest.fixture(scope="module")
def tiny():
    """The tiny collaborative model with random (non-zero) weights, and two rows of conditions."""
    model = build_random_model(CONFIG, (), torch.device("cpu"), seed=0)
    return model, random_conditions(model, 2, torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------
# The pipeline


def test_pipeline_default_is_the_released_ddim_bit_for_bit(tiny):
    model, conditions = tiny
    got = sample(model, conditions, method="collaborative", steps=4, generator=torch.Generator().manual_seed(3))
    contexts = {m: model.experts[m].encode(conditions[m]) for m in model.experts}
    generator = torch.Generator().manual_seed(3)
    x_T = torch.randn((2, *model.vae.latent_shape), generator=generator)
    expected = ddim_sample(make_eps_fn(model, contexts, method="collaborative"), x_T, model.schedule, ddim_timesteps(4),
                           eta=1.0, generator=generator)
    assert torch.equal(got.latents, expected)
    explicit = sample(model, conditions, method="collaborative", steps=4, eta=1.0, sampler="ddim", spacing="uniform",
                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(explicit.latents, expected)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc"])
def test_influence_follows_every_samplers_timesteps(tiny, name):
    model, conditions = tiny
    result = sample(model, conditions, method="collaborative", steps=5, sampler=name,
                    generator=torch.Generator().manual_seed(0), record_trace=True)
    expected = SamplerOptions(name, 5).timesteps(model.schedule).flip(0).tolist()
    trace = result.trace
    assert trace.timesteps == expected and len(trace.x_t) == 5
    assert set(trace.weights) == {"text", "seg_mask"} and all(len(w) == 5 for w in trace.weights.values())
    total = sum(torch.stack(w) for w in trace.weights.values())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    assert torch.isfinite(result.images).all()


def test_pipeline_bad_sampler_choice_is_a_user_error(tiny):
    model, conditions = tiny
    for kwargs, message in ((dict(sampler="unipc", eta=1.0), "eta applies to the ddim sampler only"),
                            (dict(sampler="heun"), "unknown sampler 'heun'"),
                            (dict(sampler="unipc", steps=80), "karras spacing of 80 steps repeats timesteps")):
        with pytest.raises(UserError, match=message):
            sample(model, conditions, method="composable", generator=torch.Generator(), **kwargs)


# ------------------------------------------------------------------------------------------------
# Configs


def test_config_sample_section_takes_a_sampler_and_is_checked_on_load():
    settings = sample_settings(load_config(CONFIG, ["sample.sampler=unipc", "sample.spacing=trailing", "sample.steps=15"]))
    assert (settings.sampler, settings.spacing, settings.steps) == ("unipc", "trailing", 15)
    for paper in ("256_codiff_mask_text", "512_codiff_mask_text", "256_text", "512_mask"):
        s = sample_settings(load_config(REPO / "configs" / f"{paper}.yaml"))
        assert (s.sampler, s.steps, s.eta, s.spacing) == ("ddim", 50, 1.0, None)  # as released
    for override, message in (("sample.sampler=euler", "sample.sampler = 'euler' is unknown; choose one of ddim"),
                              ("sample.spacing=cosine", "sample.spacing = 'cosine' is unknown"),
                              ("sample.steps=0", "sample.steps = 0 is out of range"),
                              ("sample.eta=1.5", "sample.eta = 1.5 is out of range"),
                              ("sample.preset=released", "sample.preset = 'released' is unknown")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_config(CONFIG, [override])


# ------------------------------------------------------------------------------------------------
# Scripts


def test_generate_with_unipc_writes_influence_at_its_timesteps(chain, tmp_path):  # noqa: F811
    out = tmp_path / "gen"
    argv = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["codiff"]), "--mask", str(MASK),
            "--text", CAPTION, "--sampler", "unipc", "--steps", "3", "--batch-size", "1", "--method", "collaborative",
            "--save-influence", "--out", str(out), "--device", "cpu", *chain["overrides"]]
    assert script("generate").main(argv) == 0
    raw = torch.load(out / "influence" / "influence.pt")
    assert raw["timesteps"].tolist() == [999, 617, 0]  # karras, 3 steps
    assert raw["influence_text"].shape[0] == 3 and (out / "influence" / "influence_text.png").is_file()
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["sampler"], settings["steps"], settings["spacing"], settings["eta"]) == ("unipc", 3, "karras", None)


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "unipc", "--eta", "0.5"], "--eta applies to --sampler ddim only; unipc has no eta"),
    (["--sampler", "dpmpp_2m", "--steps", "0"], "--steps 0 is out of range"),
    (["--sampler", "unipc", "--steps", "80"], "karras spacing of 80 steps repeats timesteps"),
    (["--spacing", "linspace", "--steps", "1000"], "linspace spacing of 1000 steps repeats timesteps"),
])
def test_generate_bad_sampler_flags_one_line_error(chain, tmp_path, capsys, argv, message):  # noqa: F811
    base = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["codiff"]), "--text", "x", "--method", "text",
            "--out", str(tmp_path / "o"), "--device", "cpu", *chain["overrides"]]
    assert script("generate").main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err


def test_unknown_sampler_flag_is_refused_by_the_parser(capsys):
    for name in ("generate", "evaluate", "edit", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            script(name).main(["--config", "c", "--ckpt", "k", "--image", "i", "--mode", "text", "--sampler", "euler"])
        assert exit_info.value.code == 2
        assert "invalid choice: 'euler'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["generate", "evaluate", "edit", "demo"])
def test_help_lists_the_samplers(name, capsys):
    with pytest.raises(SystemExit):
        script(name).main(["--help"])
    printed = capsys.readouterr().out
    assert "--sampler {ddim,dpmpp_2m,dpmpp_2m_sde,unipc}" in printed and "--spacing" in printed


def test_evaluate_two_samplers_and_compare_them(chain, tmp_path, capsys):  # noqa: F811
    runs = {}
    for name, extra in (("ddim", ()), ("unipc", ("--sampler", "unipc"))):
        runs[name] = tmp_path / name
        assert script("evaluate").main(evaluate_argv(chain, runs[name], "--methods", "collaborative", *extra)) == 0
        settings = json.loads((runs[name] / "results.json").read_text())["settings"]
        assert settings["sampler"] == name and settings["steps"] == 2
        records = json.loads((runs[name] / "records.json").read_text())
        assert sorted(r["index"] for r in records if r["method"] == "collaborative") == [0, 1, 2, 3]
    doc = tmp_path / "samplers.md"
    doc.write_text(f"# Samplers\n\nprose stays\n\n{BEGIN}\nold\n{END}\n\nmore prose\n")
    capsys.readouterr()
    assert script("compare_samplers").main([str(runs["ddim"]), str(runs["unipc"]), "--write-doc", str(doc)]) == 0
    printed = capsys.readouterr().out
    text = doc.read_text()
    assert text.startswith("# Samplers\n\nprose stays") and text.rstrip().endswith("more prose") and "old" not in text
    assert "| ddim (eta 1) | 2 | uniform |" in text and "| unipc | 2 | karras |" in text and "reference" in text
    assert "--sampler unipc --steps 2 --spacing karras" in text and "python scripts/compare_samplers.py" in text
    assert "| sampler |" in printed
    # runs of other pairs cannot be paired
    other = tmp_path / "other"
    assert script("evaluate").main(evaluate_argv(chain, other, "--methods", "collaborative", "--seed", "1")) == 0
    assert script("compare_samplers").main([str(runs["ddim"]), str(other)]) == 2
    assert "differ in ['seed']" in capsys.readouterr().err
    assert script("compare_samplers").main([str(tmp_path / "missing")]) == 2
    assert "not a finished evaluate.py run" in capsys.readouterr().err


def test_write_block_needs_its_markers(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("no markers\n")
    with pytest.raises(UserError, match="lacks one"):
        write_block(doc, "table")
    new = tmp_path / "new.md"
    write_block(new, "table")
    assert new.read_text() == f"{BEGIN}\ntable\n{END}\n"


def test_edit_stage_c_with_unipc(ckpts, tmp_path):  # noqa: F811
    out = tmp_path / "edit"
    argv = edit_argv(ckpts, out, "--mode", "text", "--text", CAPTION, "--alphas", "1", "--sampler", "unipc", model="text")
    assert script("edit").main(argv) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["sampler"], settings["steps"], settings["spacing"], settings["eta"]) == ("unipc", 2, "karras", None)
    assert [p.name for p in out.iterdir() if p.name.startswith("alpha_")] == ["alpha_00_1.png"]


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "dpmpp_2m", "--eta", "1"], "--eta applies to --sampler ddim only"),
    (["--sampler", "unipc", "--steps", "70"], "stage C sampler: karras spacing of 70 steps repeats timesteps"),
])
def test_edit_bad_sampler_flags_before_any_stage(ckpts, tmp_path, capsys, argv, message):  # noqa: F811
    out = tmp_path / "out"
    assert script("edit").main(edit_argv(ckpts, out, "--mode", "text", "--text", CAPTION, "--alphas", "1", *argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert not out.exists() or not any(out.iterdir())


def test_edit_options_check_the_sampler():
    EditOptions(sampler="unipc", eta=None, steps=15).check()
    with pytest.raises(UserError, match="--eta applies to --sampler ddim only"):
        EditOptions(sampler="unipc", steps=15).check()  # eta defaults to DDIM's 1
    with pytest.raises(UserError, match="--sampler: unknown sampler"):
        EditOptions(sampler="plms").check()


def test_equal_quality_speed_is_measured_in_one_run(tiny):
    model, conditions = tiny
    contexts = {m: model.experts[m].encode(conditions[m]) for m in model.experts}
    row = run_equal_quality(model, contexts, "collaborative", SpeedOptions(checkpointing=False), seed=0,
                            released=SamplerOptions("ddim", 6), recommended=SamplerOptions("unipc", 2))
    assert row.released.startswith("DDIM 6 steps") and row.recommended.startswith("UniPC (bh2) 2 steps")
    assert row.released_images_per_s > 0 and row.speedup == row.recommended_images_per_s / row.released_images_per_s
    report = BenchmarkReport(machine={"cpu": "x", "cpu_count": 1, "torch_threads": 1, "torch": "t", "device": "cpu"},
                             config=CONFIG, method="collaborative", fast="fp32", reference=None, equal_quality=[row])
    assert "images/s at equal quality" in format_report(report) and report.to_dict()["equal_quality"][0]["speedup"] > 0
    assert RECOMMENDED.steps < 50
