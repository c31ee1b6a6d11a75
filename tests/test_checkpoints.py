"""Checkpoint files: atomic writes, safe loading of every kind, strict key matching and the released layouts."""

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ldm import checkpoints as ckpt
from ldm import fileio
from ldm.checkpoints import SCHEDULE_BUFFERS, detect_kind, load_checkpoint_into, load_state_dict, load_strict, to_native, to_released
from ldm.fileio import atomic_torch_save, atomic_write_bytes, save_safetensors
from ldm.diffusion.schedule import NoiseSchedule
from ldm.errors import CheckpointError, UserError
from ldm.modules.autoencoder import AutoencoderKL
from ldm.modules.dynamic_diffuser import DynamicDiffuser
from ldm.modules.encoders import MaskEncoder, TextEncoder
from ldm.modules.expert import Expert
from ldm.modules.unet import UNetModel

TINY_LAYOUT = dict(
    model_channels=32, num_res_blocks=1, attention_downsample_factors=[1], channel_mult=[1], num_heads=2, context_dim=16
)


# --------------------------------------------------------------------------------------------------
# Tiny real networks in the native layout


def tiny_unet() -> UNetModel:
    return UNetModel(in_channels=3, out_channels=3, **TINY_LAYOUT)


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(embed_dim=3, z_channels=3, ch=32, ch_mult=[1], num_res_blocks=1, resolution=8)


def tiny_text_encoder() -> TextEncoder:
    return TextEncoder(n_embed=16, n_layer=1, n_heads=2, dim_head=8, vocab_size=50, max_seq_len=77)


class NativeLDM(nn.Module):
    """The native key layout of a LatentDiffusion model (``expert.*``, ``vae.*``) without Lightning."""

    def __init__(self) -> None:
        super().__init__()
        self.expert = Expert(tiny_unet(), MaskEncoder(n_embed=16))
        self.vae = tiny_vae()


class NativeCollaborative(nn.Module):
    """The native key layout of CollaborativeDiffusion (``experts.<m>.*``, ``diffusers.<m>.*``, ``vae.*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleDict(
            {"seg_mask": Expert(tiny_unet(), MaskEncoder(n_embed=16)), "text": Expert(tiny_unet(), tiny_text_encoder())}
        )
        self.diffusers = nn.ModuleDict({m: DynamicDiffuser(**TINY_LAYOUT) for m in ("seg_mask", "text")})
        self.vae = tiny_vae()


def randomized(state_dict: dict) -> dict:
    """Distinct random values everywhere, so a swapped or dropped tensor cannot go unnoticed."""
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in state_dict.items()}


def native_vae() -> dict:
    sd = {f"vae.{k}": v for k, v in tiny_vae().state_dict().items()}
    sd["loss.logvar"] = torch.tensor(0.0)
    return randomized(sd)


def native_ldm() -> dict:
    return randomized(NativeLDM().state_dict())


def native_collaborative() -> dict:
    return randomized(NativeCollaborative().state_dict())


BUFFERS = NoiseSchedule().released_buffers()


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["file.bin"]  # no temporary file left behind


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.ckpt"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]  # fails inside f.write
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.ckpt"]


def test_atomic_torch_save_keeps_the_old_file_when_pickling_fails(tmp_path):
    path = tmp_path / "model.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(2)}}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        atomic_torch_save({"state_dict": {"w": torch.ones(2)}, "bad": lambda: None}, path)  # lambdas don't pickle
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.ckpt"]


# --------------------------------------------------------------------------------------------------
# Reading the three file kinds


def small_state() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "layer.weight": torch.randn(4, 3, generator=g),
        "layer.bias": torch.randn(4, generator=g),
        "half": torch.randn(2, 5, generator=g).half(),
        "bf16": torch.randn(3, generator=g).bfloat16(),
        "count": torch.tensor(7, dtype=torch.int64),
        "flags": torch.tensor([True, False]),
        "scalar": torch.tensor(0.25),
    }


def test_lightning_ckpt_round_trip(tmp_path):
    sd = small_state()
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": sd, "global_step": 12, "epoch": 0, "optimizer_states": [{"lr": 1e-4}]}, path)
    assert_same_tensors(load_state_dict(path), sd)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_plain_state_dict_round_trip(tmp_path, suffix):
    sd = small_state()
    path = tmp_path / f"weights{suffix}"
    atomic_torch_save(sd, path)
    assert_same_tensors(load_state_dict(path), sd)


def test_safetensors_round_trip(tmp_path):
    sd = small_state()
    sd["transposed"] = torch.arange(12.0).reshape(3, 4).t()  # not contiguous
    shared = torch.randn(4, 4)
    sd["tied.a"], sd["tied.b"] = shared, shared  # shared storage (tied weights)
    path = tmp_path / "weights.safetensors"
    save_safetensors(sd, path, metadata={"kind": "ldm", "layout": "native"})
    assert_same_tensors(load_state_dict(path), sd)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"kind": "ldm", "layout": "native"}


def test_saving_the_same_weights_again_keeps_the_file_bytes(tmp_path):
    """A re-export of an unchanged model must not change the shipped file (safetensors orders metadata freely)."""
    sd = small_state()
    path = tmp_path / "weights.safetensors"
    metadata = {"kind": "evaluator", "layout": "native", "a": "1", "b": "2"}
    save_safetensors(sd, path, metadata=metadata)
    data, before = path.read_bytes(), path.stat().st_mtime_ns
    for _ in range(3):
        save_safetensors({k: v.clone() for k, v in sd.items()}, path, metadata=dict(reversed(metadata.items())))
    assert path.read_bytes() == data and path.stat().st_mtime_ns == before
    changed = {**sd, next(iter(sd)): next(iter(sd.values())) + 1}
    for new_state, new_metadata in [(changed, metadata), (sd, {**metadata, "a": "3"}), (sd, None)]:
        save_safetensors(new_state, path, metadata=new_metadata)
        assert_same_tensors(load_state_dict(path), new_state)
    path.write_bytes(data[: len(data) // 2])  # an unreadable file is overwritten, not an error
    save_safetensors(sd, path, metadata=metadata)
    assert_same_tensors(load_state_dict(path), sd)


def test_real_module_save_load_round_trip(tmp_path):
    model = NativeLDM()
    sd = model.state_dict()
    for name, save in [("m.safetensors", save_safetensors), ("m.ckpt", lambda s, p: atomic_torch_save({"state_dict": s}, p))]:
        save(sd, tmp_path / name)
        loaded = load_state_dict(tmp_path / name)
        assert_same_tensors(loaded, sd)
        fresh = NativeLDM()
        load_strict(fresh, loaded)
        assert_same_tensors(fresh.state_dict(), sd)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.ckpt")
    assert issubclass(CheckpointError, UserError)


@pytest.mark.parametrize("name", ["model.ckpt", "model.safetensors"])
def test_truncated_file_is_corrupt(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_safetensors(small_state(), path)
    else:
        atomic_torch_save({"state_dict": small_state()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_state_dict(path)
    assert "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("data", [b"", b"not a checkpoint at all", b"PK\x03\x04" + b"\x00" * 40])
def test_garbage_file_is_corrupt(tmp_path, data):
    path = tmp_path / "model.ckpt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_state_dict(path)


@pytest.mark.parametrize("obj", [[torch.ones(2)], {"w": torch.ones(2), "step": 3}, {"state_dict": {"w": "text"}}])
def test_file_without_a_state_dict(tmp_path, obj):
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_state_dict(path)


# --------------------------------------------------------------------------------------------------
# Pickles with foreign objects: the tensors come back, no code from the file runs


class TrainingHyperParameters:
    """A class only this test module defines (as a Lightning file pickles its hparams)."""

    def __init__(self) -> None:
        self.lr = 1e-4
        self.layers = [1, 2, 3]


class TouchOnLoad:
    """Unpickling this with plain ``pickle`` creates ``marker`` (through os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class ExecOnLoad:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class ChangeDefaultDtypeOnLoad:
    """A call into torch with a global side effect, reachable by name from the ``torch`` module."""

    def __reduce__(self):
        return torch.set_default_dtype, (torch.float64,)


def test_pickled_foreign_classes_are_ignored(tmp_path):
    sd = small_state()
    path = tmp_path / "old_lightning.ckpt"
    hparams = OmegaConf.create({"model": {"target": "ldm.x.Y", "params": {"lr": 1e-4}}, "modalities": ["text"]})
    torch.save({"state_dict": sd, "hyper_parameters": hparams, "extra": TrainingHyperParameters()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the case the restricted unpickler exists for
    assert_same_tensors(load_state_dict(path), sd)


@pytest.mark.parametrize("payload", [TouchOnLoad, ExecOnLoad])
def test_loading_never_runs_code_from_the_file(tmp_path, payload):
    marker = tmp_path / "pwned"
    sd = small_state()
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": payload(marker), "callbacks": [payload(marker)]}, path)
    with zipfile.ZipFile(path) as archive:  # the payload really is in the file
        assert any(name.endswith("data.pkl") for name in archive.namelist())
    assert_same_tensors(load_state_dict(path), sd)
    assert not marker.exists()


def test_loading_never_calls_torch_functions_with_side_effects(tmp_path):
    path = tmp_path / "evil.ckpt"
    sd = small_state()
    torch.save({"state_dict": sd, "hyper_parameters": ChangeDefaultDtypeOnLoad()}, path)
    before = torch.get_default_dtype()
    try:
        loaded = load_state_dict(path)
        assert torch.get_default_dtype() == before
    finally:
        torch.set_default_dtype(before)
    assert_same_tensors(loaded, sd)


def test_payload_in_place_of_the_state_dict_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(TouchOnLoad(marker), path)
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Layouts


def released_vae() -> dict:
    return to_released(native_vae())


def test_detect_kind():
    assert detect_kind(native_vae()) == ("native", "vae")
    assert detect_kind(native_ldm()) == ("native", "ldm")
    assert detect_kind(native_collaborative()) == ("native", "collaborative")
    assert detect_kind(released_vae()) == ("released", "vae")
    assert detect_kind(to_released(native_ldm(), BUFFERS)) == ("released", "ldm")
    assert detect_kind(to_released(native_collaborative(), BUFFERS)) == ("released", "collaborative")
    assert detect_kind({"weight": torch.ones(1)}) == ("unknown", "unknown")
    assert detect_kind({}) == ("unknown", "unknown")


def test_released_vae_keys():
    native = native_vae()
    released = to_released(native, BUFFERS)
    assert not set(SCHEDULE_BUFFERS) & set(released)  # a VAE file has no schedule
    assert {k.split(".")[0] for k in released} == {"encoder", "decoder", "quant_conv", "post_quant_conv", "loss"}
    assert torch.equal(released["quant_conv.weight"], native["vae.quant_conv.weight"])
    assert_same_tensors(to_native(released, BUFFERS), native)


def test_released_ldm_keys():
    native = native_ldm()
    released = to_released(native, BUFFERS)
    assert_same_tensors({k: released[k] for k in SCHEDULE_BUFFERS}, BUFFERS)
    assert len(released) == len(native) + 12
    assert torch.equal(released["model.diffusion_model.time_embed.0.weight"], native["expert.unet.time_embed.0.weight"])
    assert torch.equal(released["cond_stage_model.linear.weight"], native["expert.cond_encoder.linear.weight"])
    assert torch.equal(released["first_stage_model.encoder.conv_in.weight"], native["vae.encoder.conv_in.weight"])
    assert not any(k.startswith(("expert.", "vae.")) for k in released)


def test_released_collaborative_keys():
    native = native_collaborative()
    released = to_released(native, BUFFERS)
    prefixes = {
        "model.seg_mask_confidence_predictor.diffusion_model.": "diffusers.seg_mask.unet.",
        "model.text_confidence_predictor.diffusion_model.": "diffusers.text.unet.",
        "model.seg_mask_unet.diffusion_model.": "experts.seg_mask.unet.",
        "model.text_unet.diffusion_model.": "experts.text.unet.",
        "cond_stage_model.seg_mask_cond_stage_model.linear.": "experts.seg_mask.cond_encoder.linear.",
        "cond_stage_model.text_cond_stage_model.transformer.": "experts.text.cond_encoder.transformer.",
        "first_stage_model.": "vae.",
    }
    for old, new in prefixes.items():
        mapped = {k[len(old):] for k in released if k.startswith(old)}
        assert mapped and mapped == {k[len(new):] for k in native if k.startswith(new)}, old
    assert set(SCHEDULE_BUFFERS) <= set(released)
    assert len(released) == len(native) + 12


@pytest.mark.parametrize("make", [native_vae, native_ldm, native_collaborative], ids=["vae", "ldm", "collaborative"])
def test_layout_round_trips_are_exact(make):
    native = make()
    released = to_released(native, BUFFERS)
    assert_same_tensors(to_native(released, BUFFERS), native)
    assert_same_tensors(to_released(to_native(released, BUFFERS), BUFFERS), released)
    assert_same_tensors(to_native(native, BUFFERS), native)  # a native dict is left as it is
    assert_same_tensors(to_released(released, BUFFERS), released)  # and so is a released one


def test_released_file_loads_strictly_into_the_native_model(tmp_path):
    source = NativeLDM()
    path = tmp_path / "256_mask.ckpt"
    atomic_torch_save({"state_dict": to_released(source.state_dict(), BUFFERS), "global_step": 1}, path)
    target = NativeLDM()
    load_checkpoint_into(target, path, "ldm", BUFFERS)
    assert_same_tensors(target.state_dict(), source.state_dict())
    with pytest.raises(CheckpointError, match="is a ldm checkpoint but a collaborative checkpoint"):
        load_checkpoint_into(NativeCollaborative(), path, "collaborative", BUFFERS)


def test_released_extras_are_dropped():
    native = native_ldm()
    released = to_released(native, BUFFERS)
    released["model_ema.decay"] = torch.tensor(0.999)
    released["model_ema.diffusion_modeltime_embed0weight"] = torch.zeros(2)
    released["logvar"] = torch.zeros(1000)
    assert_same_tensors(to_native(released, BUFFERS), native)


def test_schedule_mismatch_is_refused():
    released = to_released(native_ldm(), BUFFERS)
    released["betas"] = released["betas"] * 1.01
    with pytest.raises(CheckpointError, match="schedule") as info:
        to_native(released, BUFFERS)
    assert "betas" in str(info.value)
    to_native(released)  # without our buffers there is nothing to compare against


def test_schedule_of_another_length_is_refused():
    released = to_released(native_ldm(), NoiseSchedule(num_timesteps=500).released_buffers())
    with pytest.raises(CheckpointError, match="schedule"):
        to_native(released, BUFFERS)


def test_buffers_match_a_released_ldm_schedule():
    assert tuple(BUFFERS) == SCHEDULE_BUFFERS
    assert all(v.dtype == torch.float32 and v.shape == (1000,) for v in BUFFERS.values())
    released = to_released(native_ldm(), NoiseSchedule(1000, 0.0015, 0.0195).released_buffers())
    to_native(released, BUFFERS)  # the same schedule passes the check


def test_convert_file_round_trip(tmp_path):
    released = to_released(native_ldm(), BUFFERS)
    src = tmp_path / "256_mask.ckpt"
    atomic_torch_save({"state_dict": released, "hyper_parameters": OmegaConf.create({"a": 1})}, src)
    assert ckpt.convert_file(src, tmp_path / "native.safetensors", "native") == ("ldm", len(released) - 12)
    assert_same_tensors(load_state_dict(tmp_path / "native.safetensors"), to_native(released))
    ckpt.convert_file(tmp_path / "native.safetensors", tmp_path / "back.ckpt", "released")
    assert_same_tensors(load_state_dict(tmp_path / "back.ckpt"), released)
    with pytest.raises(CheckpointError, match="--out"):
        ckpt.convert_file(src, tmp_path / "out.bin")


# --------------------------------------------------------------------------------------------------
# Strict loading


def test_load_strict_reports_every_key_by_name():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    del sd["1.bias"]  # missing
    sd["2.weight"] = torch.zeros(1)  # unexpected
    sd["0.weight"] = torch.zeros(3, 5)  # shape mismatch
    with pytest.raises(CheckpointError) as info:
        load_strict(model, sd, source="run/last.ckpt")
    message = str(info.value)
    assert "run/last.ckpt" in message and "\n" not in message
    assert "1 missing: 1.bias" in message
    assert "1 unexpected: 2.weight" in message
    assert "shape mismatch: 0.weight (3, 5) vs (3, 2)" in message


def test_load_strict_shortens_long_key_lists():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(6)])  # 12 keys
    with pytest.raises(CheckpointError, match=r"12 missing: .*\(\+4 more\)"):
        load_strict(model, {})


def test_load_strict_loads_matching_weights():
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    load_strict(model, other.state_dict())
    assert_same_tensors(model.state_dict(), other.state_dict())


def test_load_strict_refuses_a_released_dict_that_was_not_mapped():
    released = to_released(NativeLDM().state_dict(), BUFFERS)
    with pytest.raises(CheckpointError, match=r"missing: expert\..*unexpected: "):
        load_strict(NativeLDM(), released)



def test_pretrained_overrides_wire_the_chain():
    from ldm.checkpoints import pretrained_overrides

    ckpts = {"vae": "V.ckpt", "text": "T.ckpt", "mask": "M.ckpt"}
    assert pretrained_overrides("vae", ckpts) == [] and pretrained_overrides("parser", ckpts) == []
    assert pretrained_overrides("text", ckpts) == ["model.params.vae.params.ckpt=V.ckpt"]
    assert pretrained_overrides("codiff", ckpts, {"vae": "v.yaml", "text": "t.yaml", "mask": "m.yaml"}) == [
        "model.params.vae.params.config=v.yaml", "model.params.vae.params.ckpt=V.ckpt",
        "model.params.experts.text.params.config=t.yaml", "model.params.experts.text.params.ckpt=T.ckpt",
        "model.params.experts.seg_mask.params.config=m.yaml", "model.params.experts.seg_mask.params.ckpt=M.ckpt",
    ]


def test_pretrained_builds_a_nested_component(tmp_path):
    """``component: loss.discriminator``: a VAE run's discriminator from its checkpoint (the FaceWorld render stage)."""
    from ldm.checkpoints import pretrained
    from ldm.config import instantiate, load_config
    from ldm.errors import ConfigError

    cfg = load_config("configs/faceworld/decoder.yaml")
    disc = instantiate(cfg.model.params.loss.params.discriminator)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"loss.discriminator.{k}": v for k, v in disc.state_dict().items()}}, path)
    loaded = pretrained("configs/faceworld/decoder.yaml", "loss.discriminator", str(path))
    assert_same_tensors(loaded.state_dict(), disc.state_dict())
    with pytest.raises(ConfigError, match=r"no model\.params\.loss\.params\.generator"):
        pretrained("configs/faceworld/decoder.yaml", "loss.generator", str(path))
