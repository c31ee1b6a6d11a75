"""UNet, attention and dynamic diffuser: paper sizes, released key names, backends, checkpointing, dtypes."""

import pytest
import torch

from ldm.modules.attention import CrossAttention, set_attention_backend
from ldm.modules.dynamic_diffuser import DynamicDiffuser
from ldm.modules.unet import UNetModel, timestep_embedding

PAPER_LAYOUT = dict(channel_mult=[1, 2, 3, 5], num_res_blocks=2, attention_downsample_factors=[2, 4, 8], num_heads=32)
TINY = dict(
    in_channels=3,
    out_channels=3,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_downsample_factors=[1, 2],
    num_heads=4,
    context_dim=16,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_zeros(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised weights (output convs, proj_out, norm biases) random values so every path counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def tiny_inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=g)
    t = torch.tensor([999, 3][:batch])
    context = torch.randn(batch, 5, 16, generator=g)
    return x, t, context


# ------------------------------------------------------------------------------------------------ sizes


def test_paper_expert_has_403_62m_params():
    with torch.device("meta"):
        expert = UNetModel(in_channels=3, out_channels=3, model_channels=192, context_dim=640, **PAPER_LAYOUT)
    assert abs(n_params(expert) - 403.62e6) < 0.1e6


def test_paper_dynamic_diffuser_sizes():
    counts = {}
    for time_injection in ("add", "adaln"):
        with torch.device("meta"):
            diffuser = DynamicDiffuser(
                model_channels=32, context_dim=640, time_injection=time_injection, **PAPER_LAYOUT
            )
        counts[time_injection] = n_params(diffuser)
    assert abs(counts["add"] - 13.14e6) < 0.1e6  # released layout (Table A2: 13.1M)
    # adaln: emb_layers.1 emits scale and shift, doubling its width in each of the 25 ResBlocks.
    assert counts["adaln"] == 13_404_641


# ------------------------------------------------------------------------------------------------ layout


def test_released_key_names():
    with torch.device("meta"):
        layout = dict(channel_mult=[1, 1, 1, 1], num_res_blocks=2, attention_downsample_factors=[1, 4])
        keys = set(UNetModel(**{**TINY, **layout}).state_dict())
    expected = [
        "time_embed.0.weight",
        "time_embed.2.bias",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.0.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.1.1.norm.weight",
        "input_blocks.1.1.proj_in.weight",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.bias",
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
        "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight",
        "input_blocks.1.1.transformer_blocks.0.norm3.weight",
        "input_blocks.1.1.proj_out.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.6.0.op.weight",
        "input_blocks.9.0.op.weight",
        "middle_block.0.emb_layers.1.weight",
        "middle_block.1.proj_in.weight",
        "middle_block.2.out_layers.3.weight",
        "output_blocks.0.0.skip_connection.weight",
        "output_blocks.2.1.conv.weight",  # factor 8 has no attention here: upsample at .1
        "output_blocks.5.2.conv.weight",  # factor 4 has attention: upsample at .2
        "out.0.weight",
        "out.2.weight",
    ]
    assert [k for k in expected if k not in keys] == []
    assert not any(k.endswith(("to_q.bias", "to_k.bias", "to_v.bias")) for k in keys)
    assert "input_blocks.4.0.skip_connection.weight" not in keys  # equal widths: identity skip

    with torch.device("meta"):
        expert = UNetModel(in_channels=3, out_channels=3, model_channels=192, context_dim=640, **PAPER_LAYOUT)
    paper_keys = set(expert.state_dict())
    assert len(paper_keys) == 688
    assert {
        "input_blocks.4.0.skip_connection.weight",  # 192 -> 384 channels
        "input_blocks.4.1.proj_in.weight",  # first attention: factor 2
        "output_blocks.2.2.conv.weight",  # factor 8 has attention: upsample at .2
    } <= paper_keys
    assert not any(k.startswith(("input_blocks.1.1.", "input_blocks.2.1.")) for k in paper_keys)  # factor 1: none


def test_pooled_context_is_a_second_condition_path_off_by_default():
    """pooled_context adds Linear(mean of the tokens) to the timestep embedding; the released layout has no such key."""
    assert not any(k.startswith("context_embed") for k in UNetModel(**TINY).state_dict())
    x, t, context = tiny_inputs()
    plain = randomize_zeros(UNetModel(**{**TINY, "attention_downsample_factors": []}))
    pooled = UNetModel(**{**TINY, "attention_downsample_factors": [], "pooled_context": True})
    missing, unexpected = pooled.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["context_embed.weight", "context_embed.bias"] and unexpected == []
    with torch.no_grad():
        pooled.context_embed.weight.zero_()
        pooled.context_embed.bias.zero_()
        torch.testing.assert_close(pooled(x, t, context), plain(x, t, context))  # a zero path changes nothing
        pooled.context_embed.weight.normal_()
        assert not torch.allclose(pooled(x, t, context), plain(x, t, context), atol=1e-3)
        # a mean, not one token: permuting the tokens changes nothing (cross-attention is permutation-invariant too)
        torch.testing.assert_close(pooled(x, t, context.flip(1)), pooled(x, t, context), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pooled_context"):
        pooled(x, t, None)


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0, 5], dtype=torch.int64), 8)
    assert emb.shape == (2, 8) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb[1, 0] == pytest.approx(torch.cos(torch.tensor(5.0)).item())


# ------------------------------------------------------------------------------------------------ numerics


def test_sdpa_and_math_backends_agree():
    torch.manual_seed(0)
    model = randomize_zeros(UNetModel(**TINY)).eval()
    x, t, context = tiny_inputs()
    with torch.no_grad():
        sdpa = model(x, t, context)
        set_attention_backend(model, "math")
        assert all(m.backend == "math" for m in model.modules() if isinstance(m, CrossAttention))
        math = model(x, t, context)
    assert sdpa.abs().mean() > 1e-3
    torch.testing.assert_close(sdpa, math, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend(model, "flash")


def test_checkpointing_gives_identical_outputs_and_gradients():
    results = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = randomize_zeros(UNetModel(**TINY, use_checkpoint=use_checkpoint))
        x, t, context = tiny_inputs()
        out = model(x, t, context)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out0, grads0), (out1, grads1) = results
    assert torch.equal(out0, out1)
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = randomize_zeros(UNetModel(**TINY)).eval()
    x, t, context = tiny_inputs()
    with torch.no_grad():
        fp32 = model(x, t, context)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x, t, context)
    assert bf16.dtype == torch.bfloat16
    assert ((bf16.float() - fp32).norm() / fp32.norm()).item() < 0.05


# ------------------------------------------------------------------------------------------------ diffuser


@pytest.mark.parametrize("time_injection", ["add", "adaln"])
def test_dynamic_diffuser_starts_at_zero_and_trains(time_injection):
    torch.manual_seed(0)
    config = {k: v for k, v in TINY.items() if k not in ("in_channels", "out_channels")}
    diffuser = DynamicDiffuser(**config, time_injection=time_injection)
    assert "unet.out.2.weight" in diffuser.state_dict()
    x, t, context = tiny_inputs()
    logits = diffuser(x, t, context)
    assert logits.shape == (2, 1, 8, 8)
    assert torch.equal(logits, torch.zeros_like(logits))

    randomize_zeros(diffuser)
    logits = diffuser(x, t, context)
    logits.square().mean().backward()
    emb_grad = diffuser.unet.input_blocks[1][0].emb_layers[1].weight.grad
    assert logits.abs().mean() > 0 and emb_grad is not None and emb_grad.abs().sum() > 0


def test_invalid_time_injection_raises():
    with pytest.raises(ValueError, match="time_injection='film'"):
        UNetModel(**TINY, time_injection="film")
    with pytest.raises(ValueError, match="time_injection"):
        DynamicDiffuser(model_channels=32, context_dim=16, time_injection="AdaLN", **PAPER_LAYOUT)


def test_cross_attention_only_levels_drop_the_self_attention_and_nothing_else():
    """cross_attention_only_factors removes attn1/norm1 at those levels: the same as a full block whose
    self-attention outputs zero, and fewer parameters; a level without attention is refused by name."""
    full = randomize_zeros(UNetModel(**TINY))
    cross = UNetModel(**{**TINY, "cross_attention_only_factors": [1]})
    dropped = sorted(set(full.state_dict()) - set(cross.state_dict()))
    assert dropped and all(".attn1." in k or ".norm1." in k for k in dropped)
    assert not any(k.startswith(("input_blocks.3.", "middle_block.")) for k in dropped)  # factor 2 and the middle keep theirs
    missing, unexpected = cross.load_state_dict(full.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == dropped
    x, t, context = tiny_inputs()
    with torch.no_grad():
        for name, module in full.named_modules():
            if name.endswith("attn1") and any(k.startswith(name + ".") for k in dropped):
                module.to_out[0].weight.zero_()
                module.to_out[0].bias.zero_()
        torch.testing.assert_close(cross(x, t, context), full(x, t, context))
    with pytest.raises(ValueError, match="cross_attention_only_factors"):
        UNetModel(**{**TINY, "attention_downsample_factors": [2], "cross_attention_only_factors": [1]})
