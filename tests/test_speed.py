"""Speed options (ldm/speed.py) and the benchmark (ldm/benchmark.py, scripts/benchmark.py), tiny and on the CPU.

The whole collaborative sampling path is compared: the reference options (fp32, explicit softmax attention,
checkpointing on) against the fast ones from the same seed and weights."""

import json
import logging

import pytest
import torch

from conftest import REPO, script
from ldm import speed as speed_module
from ldm.benchmark import build_random_model, random_conditions
from ldm.diffusion.collaborative import make_collaborative_eps_fn
from ldm.modules.unet import UNetModel
from ldm.pipeline import sample
from ldm.pipeline import make_eps_fn
from ldm.speed import SpeedOptions, apply_speed_options, concurrent_runner, fast_network, weights_in_precision

CONFIG = str(REPO / "configs" / "tiny" / "codiff.yaml")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def tiny():
    """The tiny collaborative model with random (non-zero) weights, and two rows of conditions."""
    model = build_random_model(CONFIG, (), torch.device("cpu"), seed=0)
    conditions = random_conditions(model, 2, torch.Generator().manual_seed(1))
    return model, conditions


def run(model, conditions, speed, eta=1.0):
    return sample(model, conditions, method="collaborative", steps=6, eta=eta,
                  generator=torch.Generator().manual_seed(7), speed=speed)


def test_default_speed_options_change_nothing(tiny):
    model, conditions = tiny
    apply_speed_options(model, SpeedOptions())  # as built: sdpa, contiguous
    plain = run(model, conditions, None)
    fast = run(model, conditions, SpeedOptions())
    assert torch.equal(plain.latents, fast.latents)
    assert plain.latents.abs().max() > 0  # the random weights make the networks say something


def test_reference_and_fast_fp32_agree(tiny):
    model, conditions = tiny
    reference = run(model, conditions, SpeedOptions.reference())
    assert all(m.backend == "math" for m in model.modules() if hasattr(m, "backend"))
    fast = run(model, conditions, SpeedOptions(attention="sdpa", checkpointing=False))
    assert all(m.backend == "sdpa" for m in model.modules() if hasattr(m, "backend"))
    assert rel(fast.latents, reference.latents) < 1e-5
    assert rel(fast.images, reference.images) < 1e-4


def test_bf16_autocast_sampling_agrees_loosely(tiny):
    model, conditions = tiny
    reference = run(model, conditions, SpeedOptions.reference())
    bf16 = run(model, conditions, SpeedOptions(precision="bf16"))
    assert bf16.latents.dtype == torch.float32 and bf16.images.dtype == torch.float32
    assert torch.isfinite(bf16.latents).all()
    assert rel(bf16.latents, reference.latents) < 5e-2
    assert next(model.parameters()).dtype == torch.float32  # autocast, not a cast of the weights


class CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """How many aten operations a call dispatches, and how many of them are dtype casts."""

    def __init__(self):
        super().__init__()
        self.ops, self.casts = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.casts += func.overloadpacket.__name__ == "_to_copy"
        return func(*args, **(kwargs or {}))


def test_weights_held_in_bf16_give_the_same_step_with_fewer_casts(tiny):
    model, conditions = tiny
    speed = SpeedOptions(precision="bf16")
    apply_speed_options(model, speed)
    contexts = {m: model.experts[m].encode(c) for m, c in conditions.items()}
    eps_fn = make_eps_fn(model, contexts, method="collaborative", speed=speed)
    x, t = torch.randn(2, *model.vae.latent_shape, generator=torch.Generator().manual_seed(3)), torch.tensor([900, 20])
    before = {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()}
    with torch.no_grad():
        autocast_only, held = CountOps(), CountOps()
        with autocast_only:
            expected = eps_fn(x, t)
        with weights_in_precision(model, speed):
            unet_params = [p for u in model.modules() if isinstance(u, UNetModel) for p in u.parameters()]
            assert any(p.dtype == torch.bfloat16 for p in unet_params)
            norms = [p for u in model.modules() if isinstance(u, UNetModel) for m in u.modules()
                     if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) for p in m.parameters()]
            assert norms and all(p.dtype == torch.float32 for p in norms)  # autocast runs norms in float32
            assert all(p.dtype == torch.float32 for p in model.vae.parameters())  # decoded outside autocast
            with held:
                got = eps_fn(x, t)
    assert torch.equal(got, expected)  # autocast would have cast the weights the same way
    assert held.casts < autocast_only.casts / 2 and held.ops < autocast_only.ops
    after = dict(model.named_parameters())
    assert all((after[name].data_ptr(), after[name].dtype) == kept for name, kept in before.items())  # the originals back
    assert torch.equal(run(model, conditions, speed).latents, run(model, conditions, speed).latents)


def test_weights_in_precision_is_a_no_op_in_fp32_or_when_switched_off(tiny):
    model, _ = tiny
    before = [p.data_ptr() for p in model.parameters()]
    cast_per_call = SpeedOptions(precision="bf16", hold_weights=False)
    assert "weights cast per call" in cast_per_call.describe()
    with weights_in_precision(model, SpeedOptions()), weights_in_precision(model, None), \
            weights_in_precision(model, cast_per_call):
        assert [p.data_ptr() for p in model.parameters()] == before


def test_fast_network_returns_float32_and_runs_under_autocast():
    seen = []

    def net(x):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return (x @ x).to(torch.bfloat16)

    out = fast_network(net, SpeedOptions(precision="bf16"), "cpu")(torch.eye(2))
    assert out.dtype == torch.float32 and seen == [torch.bfloat16]
    assert fast_network(net, SpeedOptions(), "cpu") is net  # fp32: untouched


def test_channels_last_gives_the_same_result(tiny):
    model, conditions = tiny
    plain = run(model, conditions, SpeedOptions(), eta=0.0)
    nhwc = run(model, conditions, SpeedOptions(channels_last=True), eta=0.0)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert rel(nhwc.latents, plain.latents) < 1e-5
    apply_speed_options(model, SpeedOptions())
    assert conv.weight.is_contiguous()


def test_compile_degrades_with_a_message(tiny, monkeypatch, caplog):
    model, conditions = tiny
    monkeypatch.setattr(speed_module, "compile_support", lambda device: "RuntimeError: no compiler here")
    with caplog.at_level(logging.WARNING, logger="ldm.speed"):
        out = run(model, conditions, SpeedOptions(compile=True))
    assert "torch.compile is unavailable" in caplog.text and "no compiler here" in caplog.text
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules() if isinstance(m, UNetModel))
    assert torch.isfinite(out.latents).all()


def test_checkpointing_switch(tiny):
    model, _ = tiny
    flags = lambda: {m.use_checkpoint for m in model.modules() if hasattr(m, "use_checkpoint")}  # noqa: E731
    apply_speed_options(model, SpeedOptions(checkpointing=True))
    assert flags() == {True}
    apply_speed_options(model, SpeedOptions(checkpointing=False))
    assert flags() == {False}
    apply_speed_options(model, SpeedOptions())  # None: left as it is
    assert flags() == {False}


def test_runner_receives_every_network_of_a_step():
    calls = []

    def runner(named):
        calls.append(sorted(named))
        return {k: f() for k, f in reversed(list(named.items()))}  # any order: the calls are independent

    experts = {"text": lambda x, t: x + 1, "seg_mask": lambda x, t: 2 * x}
    diffusers = {"text": lambda x, t: x[:, :1] * 0, "seg_mask": lambda x, t: x[:, :1] * 0 + 1}
    x, t = torch.randn(2, 3, 4, 4), torch.full((2,), 5)
    plain = make_collaborative_eps_fn(experts, diffusers)(x, t)
    ran = make_collaborative_eps_fn(experts, diffusers, run=runner)(x, t)
    assert torch.equal(plain, ran)
    assert calls == [["eps/seg_mask", "eps/text", "logits/seg_mask", "logits/text"]]
    assert concurrent_runner("cpu") is None  # sequential off CUDA


def test_speed_options_validate():
    with pytest.raises(ValueError, match="precision"):
        SpeedOptions(precision="fp8")
    with pytest.raises(ValueError, match="attention"):
        SpeedOptions(attention="flash")
    assert "math" in SpeedOptions.reference().describe()


def test_benchmark_script_tiny_reference_and_train(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = script("benchmark").main([
        "--config", CONFIG, "--device", "cpu", "--batch-sizes", "1", "--steps", "2", "--warmup", "1",
        "--reference", "--train", "--train-steps", "1", "--peak-tflops", "1", "--json", str(out),
    ])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    for text in ("ms/step", "img/s", "speed-up", "train expert:text", "train diffusers", "agreement", "GFLOP"):
        assert text in printed
    report = json.loads(out.read_text())
    assert report["agree"] is True
    tasks = {(m["path"], m["task"]) for m in report["measurements"]}
    assert ("reference", "sampling") in tasks and ("fast", "train diffusers") in tasks
    assert report["gflop_per_image"]["sampling"] > 0
    ops = report["operations_per_step"]  # the explicit softmax attention dispatches more than sdpa
    assert ops["reference"] > ops["fast"] > 0 and "aten operations per sampling step" in printed


def test_benchmark_profile_writes_the_top_operations(tmp_path, capsys):
    out, table = tmp_path / "bench.json", tmp_path / "profile.txt"
    rc = script("benchmark").main([
        "--config", CONFIG, "--device", "cpu", "--batch-sizes", "1", "--steps", "2", "--warmup", "0", "--no-flops",
        "--profile-batch", "2", "--profile-steps", "2", "--profile-out", str(table), "--json", str(out),
    ])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "profile (fast path, sampling, batch 2, 2 steps)" in printed
    profile = json.loads(out.read_text())["profile"]
    assert profile["batch"] == 2 and profile["profiled_ms_per_step"] > 0
    assert profile["kernel_ms_per_step"] is None  # only CUDA reports the device's own time
    text = table.read_text()
    assert "Self CPU" in text and "aten::" in text  # torch.profiler's table of the top operations


def test_kernel_time_counts_the_device_events_only():
    from types import SimpleNamespace as Event

    from ldm.profiling import kernel_time_ms

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [
        Event(device_type=cuda, self_device_time_total=1500.0, is_user_annotation=False),  # a kernel, 1.5 ms
        Event(device_type=cuda, self_device_time_total=500.0, is_user_annotation=False),
        Event(device_type=cpu, self_device_time_total=2000.0, is_user_annotation=False),  # aten::mm that launched them
        Event(device_type=cuda, self_device_time_total=9000.0, is_user_annotation=True),  # a range, not a kernel
    ]
    assert kernel_time_ms(events) == pytest.approx(2.0)


def test_benchmark_profile_flags_are_checked(capsys):
    rc = script("benchmark").main(["--config", CONFIG, "--profile-out", "p.txt"])
    assert rc == 2 and "--profile-batch" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["benchmark", "generate", "evaluate"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script(name).main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--precision" in printed and "--compile" in printed and "--channels-last" in printed


@pytest.mark.parametrize("name", ["generate", "evaluate"])
def test_speed_flags(name):
    generate = script(name)
    base = ["--config", "c", "--ckpt", "k"]
    assert generate.speed_options(generate.parse(base)) is None  # defaults: the plain path
    speed = generate.speed_options(generate.parse(base + ["--precision", "bf16", "--channels-last"]))
    assert speed == SpeedOptions(precision="bf16", channels_last=True)
