"""Trustworthy training runs (issues 7 and 8), on the tiny text expert at 32² on CPU.

* a run resumed mid-epoch from a checkpoint logs the same losses and ends with the same weights as the
  uninterrupted run;
* a run killed with SIGKILL leaves only loadable checkpoints and finishes with ``--resume last``, again with
  the uninterrupted run's weights;
* a truncated checkpoint, an unknown config key and a NaN loss each end in a one-line ``error:`` (exit 2);
* DDP on 2 CPU processes (gloo) at batch 2 per process trains to the weights of 1 process at batch 4.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldm.checkpoints import load_state_dict

from conftest import REPO, script

STEPS = 6  # the uninterrupted run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """FaceWorld (24 samples at 32²) and a randomly initialised tiny VAE saved as a checkpoint."""
    from ldm.config import instantiate, load_config

    os.chdir(REPO)  # configs name each other relative to the repository root
    os.environ["LDM_PROGRESS"] = "0"
    root = tmp_path_factory.mktemp("training")
    data = root / "faceworld"
    assert script("make_faceworld").main(["--out", str(data), "--num", "24", "--seed", "1", "--size", "32", "--test-size", "4"]) == 0
    torch.manual_seed(0)
    vae = instantiate(load_config("configs/tiny/vae.yaml").model.params.vae)
    vae_ckpt = root / "vae.pt"
    torch.save({f"vae.{k}": v for k, v in vae.state_dict().items()}, vae_ckpt)
    return {"root": root, "data": data, "vae": vae_ckpt}


def train_args(tiny, run_dir: Path, steps: int, every: int, *extra: str) -> list[str]:
    return [
        "--config", "configs/tiny/text.yaml", "--accelerator", "cpu", "--devices", "1", "--run-dir", str(run_dir),
        "--max-steps", str(steps), f"data.train.params.root={tiny['data']}", f"model.params.vae.params.ckpt={tiny['vae']}",
        "train.log_every_n_steps=1", f"train.checkpoint_every_n_steps={every}", *extra,
    ]


def logged_losses(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """``key`` by step over every launch's metrics.csv (a later launch wins)."""
    losses = {}
    for path in sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(path, newline="") as f:
            losses.update({int(row["step"]): float(row[key]) for row in csv.DictReader(f) if row.get(key)})
    return losses


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = load_state_dict(a), load_state_dict(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        if atol == 0.0:
            assert torch.equal(wa[key], wb[key]), key
        else:
            assert torch.allclose(wa[key], wb[key], rtol=0.0, atol=atol), (key, (wa[key] - wb[key]).abs().max().item())


def same_threads_env() -> dict[str, str]:
    """The environment for a training subprocess that must match this process bit for bit: CPU kernels may
    sum in a different order with another number of threads."""
    return {**os.environ, "LDM_PROGRESS": "0", "OMP_NUM_THREADS": str(torch.get_num_threads())}


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def uninterrupted(tiny):
    run = tiny["root"] / "uninterrupted"
    assert script("train_ldm").main(train_args(tiny, run, STEPS, 1)) == 0
    losses = logged_losses(run)
    assert sorted(losses) == list(range(STEPS))
    return {"run": run, "losses": losses, "last": run / "checkpoints" / "last.ckpt", "step": lambda n: run / "checkpoints" / f"step{n:08d}.ckpt"}


# ---- resume -----------------------------------------------------------------------------------------


def test_resume_mid_epoch_matches_uninterrupted_run(tiny, uninterrupted, tmp_path):
    """Resuming at step 2 of 6 (mid-epoch: the run is one epoch) gives the same losses and weights."""
    run = tmp_path / "resumed"
    start = uninterrupted["step"](2)
    assert script("train_ldm").main(train_args(tiny, run, STEPS, 2, "--resume", str(start))) == 0
    resumed = logged_losses(run)
    assert sorted(resumed) == list(range(2, STEPS))
    assert resumed == {step: uninterrupted["losses"][step] for step in resumed}
    assert_same_weights(run / "checkpoints" / "last.ckpt", uninterrupted["last"])
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == STEPS
    # the FaceWorld recipe reads a resumed run's step through the restricted loader
    from ldm.fileio import safe_torch_load

    assert safe_torch_load(run / "checkpoints" / "last.ckpt")["global_step"] == STEPS


def test_extending_a_finished_shorter_run_matches_uninterrupted_run(tiny, uninterrupted, tmp_path):
    """A run that ended at step 3 (its epoch ended with it), continued with --resume last to step 6."""
    run = tmp_path / "extended"
    assert script("train_ldm").main(train_args(tiny, run, 3, 3)) == 0
    assert script("train_ldm").main(train_args(tiny, run, STEPS, 3, "--resume", "last")) == 0
    assert logged_losses(run) == uninterrupted["losses"]
    assert_same_weights(run / "checkpoints" / "last.ckpt", uninterrupted["last"])


def test_keep_checkpoints_keeps_the_newest_and_resume_still_matches(tiny, uninterrupted, tmp_path, capsys):
    """train.keep_checkpoints: 2 leaves the two newest step files beside last.ckpt, also across a resume, and the
    weights are the uninterrupted run's; a value that is not a whole number >= 1 is refused in one line."""
    run = tmp_path / "kept"
    checkpoints = run / "checkpoints"
    assert script("train_ldm").main(train_args(tiny, run, 4, 1, "train.keep_checkpoints=2")) == 0
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt", "step00000003.ckpt", "step00000004.ckpt"]
    assert script("train_ldm").main(train_args(tiny, run, STEPS, 1, "train.keep_checkpoints=2", "--resume", "last")) == 0
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt", "step00000005.ckpt", "step00000006.ckpt"]
    assert_same_weights(checkpoints / "last.ckpt", uninterrupted["last"])

    refused = tmp_path / "refused"
    assert script("train_ldm").main(train_args(tiny, refused, STEPS, 1, "train.keep_checkpoints=0")) == 2
    assert "train.keep_checkpoints" in one_error_line(capsys.readouterr().err)
    assert not refused.exists()


def test_vae_with_accumulation_resumes_exactly_and_keeps_its_final_state(tiny, tmp_path):
    """The VAE draws posterior samples per micro-batch; with 2 micro-batches per step, a run resumed at step 2
    and a 3-step run (not a multiple of its checkpoint interval) extended to 5 both match the uninterrupted run:
    losses, logged steps and weights."""
    def vae_args(run: Path, steps: int, every: int, *extra: str) -> list[str]:
        return [
            "--config", "configs/tiny/vae.yaml", "--accelerator", "cpu", "--devices", "1", "--run-dir", str(run),
            "--max-steps", str(steps), f"data.train.params.root={tiny['data']}", "train.accumulate_grad_batches=2",
            "train.log_every_n_steps=1", f"train.checkpoint_every_n_steps={every}", *extra,
        ]

    def final(run: Path) -> dict:
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)

    train_vae = script("train_vae")
    full = tmp_path / "full"
    assert train_vae.main(vae_args(full, 5, 1)) == 0
    losses = logged_losses(full, "train/total_loss")
    assert sorted(losses) == list(range(5))

    resumed = tmp_path / "resumed"
    assert train_vae.main(vae_args(resumed, 5, 2, "--resume", str(full / "checkpoints" / "step00000002.ckpt"))) == 0
    assert logged_losses(resumed, "train/total_loss") == {step: losses[step] for step in range(2, 5)}
    assert_same_weights(resumed / "checkpoints" / "last.ckpt", full / "checkpoints" / "last.ckpt")

    extended = tmp_path / "extended"
    assert train_vae.main(vae_args(extended, 3, 2)) == 0
    assert final(extended)["global_step"] == 3  # last.ckpt holds the final step, not step 2
    assert train_vae.main(vae_args(extended, 5, 2, "--resume", "last")) == 0
    assert final(extended)["global_step"] == 5
    assert logged_losses(extended, "train/total_loss") == losses
    assert_same_weights(extended / "checkpoints" / "last.ckpt", full / "checkpoints" / "last.ckpt")


def test_killed_run_leaves_loadable_checkpoints_and_resumes(tiny, uninterrupted, tmp_path):
    run = tmp_path / "killed"
    checkpoints = run / "checkpoints"
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "scripts/train_ldm.py", *train_args(tiny, run, STEPS, 1)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=same_threads_env(),
        )
        try:
            deadline = time.monotonic() + 120
            while not (checkpoints / "last.ckpt").exists():  # written after the step file of the same step
                assert proc.poll() is None, f"training ended before its first checkpoint:\n{log.read_text()}"
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    files = sorted(checkpoints.glob("*.ckpt"))
    assert checkpoints / f"step{STEPS:08d}.ckpt" not in files, "the run finished before it was killed"
    for path in files:
        load_state_dict(path)  # raises CheckpointError on a truncated file

    # other checkpoint settings this time: last.ckpt is still the one overwritten (no last-v1.ckpt beside it)
    assert script("train_ldm").main(train_args(tiny, run, STEPS, STEPS, "--resume", "last")) == 0
    assert not list(checkpoints.glob("*-v*.ckpt"))
    assert_same_weights(checkpoints / "last.ckpt", uninterrupted["last"])
    resumed = logged_losses(run)
    assert resumed and resumed == {step: uninterrupted["losses"][step] for step in resumed}


# ---- errors -----------------------------------------------------------------------------------------


def test_truncated_checkpoint_is_refused_in_one_line(tiny, uninterrupted, tmp_path, capsys):
    good = uninterrupted["step"](2).read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good[: len(good) // 2])
    run = tmp_path / "run"
    assert script("train_ldm").main(train_args(tiny, run, STEPS, 1, "--resume", str(bad))) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "corrupt" in line
    assert not run.exists()


def test_resume_last_without_checkpoint_is_refused(tiny, tmp_path, capsys):
    run = tmp_path / "empty"
    assert script("train_ldm").main(train_args(tiny, run, STEPS, 1, "--resume", "last")) == 2
    assert "last.ckpt does not exist" in one_error_line(capsys.readouterr().err)


def test_unknown_config_key_fails_before_anything_is_written(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    # the override comes before the flags: overrides and flags may be mixed
    assert script("train_ldm").main(["train.batch_sze=4", *train_args(tiny, run, STEPS, 1)]) == 2
    assert "batch_sze" in one_error_line(capsys.readouterr().err)
    assert not run.exists()


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    from ldm.models.latent_diffusion import LatentDiffusion

    original = LatentDiffusion.diffusion_loss

    def nan_at_step_2(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if self.global_step == 2 else loss

    monkeypatch.setattr(LatentDiffusion, "diffusion_loss", nan_at_step_2)
    run = tmp_path / "diverged"
    assert script("train_ldm").main(train_args(tiny, run, STEPS, 1)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "loss became nan at training step 2" in line and "last good checkpoint is" in line and "step00000002.ckpt" in line
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt", "step00000001.ckpt", "step00000002.ckpt"]
    last = load_state_dict(checkpoints / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in last.values() if v.is_floating_point())
    assert_same_weights(checkpoints / "last.ckpt", checkpoints / "step00000002.ckpt")


# ---- DDP (issue 7) ----------------------------------------------------------------------------------


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tiny, uninterrupted, tmp_path):
    """2 gloo processes at batch 2 give the weights of the 1-process run at batch 4: StepBatchSampler deals rank r
    the rows r::2 of each global batch, and each rank keeps the same rows of the noise drawn for the global
    batch. Only the order of the gradient sums differs, hence the tolerance (rank-dependent noise is off by
    ~2e-5 after 3 steps). A subprocess: DDP changes the process's thread settings and spawns workers."""
    steps = 3  # Adam turns reduction-order rounding in near-zero gradients into differences that grow per step
    run = tmp_path / "ddp"
    argv = train_args(tiny, run, steps, steps, "train.batch_size=2")
    argv[argv.index("--devices") + 1] = "2"
    result = subprocess.run(
        [sys.executable, "scripts/train_ldm.py", *argv, "--strategy", "ddp_spawn"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "LDM_PROGRESS": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == steps
    assert_same_weights(run / "checkpoints" / "last.ckpt", uninterrupted["step"](steps), atol=2e-6)
