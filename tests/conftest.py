"""Shared test settings and fixtures: offline runs, the real test inputs in tests/assets/, the scripts
loaded as modules, and the tiny chain (FaceWorld -> VAE -> text and mask experts -> diffusers) trained once
per test session through the scripts."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LDM_PROGRESS", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one thread each avoids oversubscribing the cores.
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"


def script(name: str):
    """``scripts/<name>.py`` as a module, so tests call ``script(name).main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory):
    """The tiny chain trained 2 steps per stage on a 24-image FaceWorld at 32²; returns its paths and the
    overrides that point configs/tiny/codiff.yaml at its checkpoints."""
    os.chdir(REPO)  # configs name each other relative to the repository root
    root = tmp_path_factory.mktemp("chain")
    data = root / "faceworld"
    assert script("make_faceworld").main(["--out", str(data), "--num", "24", "--seed", "1", "--size", "32", "--test-size", "5", "--quiet"]) == 0
    runs = root / "runs"
    ckpt = {n: runs / n / "checkpoints" / "last.ckpt" for n in ("vae", "text", "mask", "codiff")}
    common = ["--accelerator", "cpu", "--devices", "1", "--max-steps", "2", f"data.train.params.root={data}"]
    assert script("train_vae").main(["--config", "configs/tiny/vae.yaml", "--run-dir", str(runs / "vae"), *common]) == 0
    for name in ("text", "mask"):
        assert script("train_ldm").main([
            "--config", f"configs/tiny/{name}.yaml", "--run-dir", str(runs / name), *common,
            f"model.params.vae.params.ckpt={ckpt['vae']}",
        ]) == 0
    overrides = [
        f"model.params.vae.params.ckpt={ckpt['vae']}",
        f"model.params.experts.text.params.ckpt={ckpt['text']}",
        f"model.params.experts.seg_mask.params.ckpt={ckpt['mask']}",
    ]
    assert script("train_diffuser").main(["--config", "configs/tiny/codiff.yaml", "--run-dir", str(runs / "codiff"), *common, *overrides]) == 0
    return {"root": root, "data": data, "ckpt": ckpt, "overrides": overrides}
