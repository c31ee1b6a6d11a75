"""Tokenizer ids, text-encoder layout (released key names, parameter count) and the mask encoder."""

import logging
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from ldm.errors import UserError
from ldm.modules.attention import set_attention_backend
from ldm.modules.encoders import BertTokenizer, MaskEncoder, TextEncoder

# Full size: 186,154,682 parameters = token_emb 19,534,080 + pos_emb 49,280 + 32 x 4,593,920 (attention
# 1,312,640 + feed-forward 3,281,280) + norm 1,280 + to_logits 19,564,602.
FULL_TEXT_ENCODER_PARAMS = 186_154_682


def tiny_text_encoder(**kwargs):
    torch.manual_seed(0)
    return TextEncoder(n_embed=16, n_layer=2, n_heads=2, dim_head=8, **kwargs)


# --- tokenizer ----------------------------------------------------------------------------------------------


def test_tokenizer_ids_padding_and_lower_case():
    tokens = BertTokenizer()(["hello", "HELLO World"])
    assert tokens.dtype == torch.long and tokens.shape == (2, 77)
    assert tokens[0, :3].tolist() == [101, 7592, 102]  # [CLS] hello [SEP]
    assert tokens[1, :4].tolist() == [101, 7592, 2088, 102]  # lower-cased
    assert (tokens[0, 3:] == 0).all() and (tokens[1, 4:] == 0).all()  # [PAD] = 0


def test_tokenizer_wordpiece_pieces_and_accents():
    # "unaffable" -> una ##ffa ##ble; "café" -> cafe (accents stripped, as bert-base-uncased does)
    assert BertTokenizer()(["unaffable café"])[0, :6].tolist() == [101, 14477, 20961, 3468, 7668, 102]


def test_long_caption_warns_and_truncates(caplog):
    with caplog.at_level(logging.WARNING, logger="ldm.modules.encoders"):
        tokens = BertTokenizer()(["smile " * 100])  # 100 words + [CLS] + [SEP] = 102 tokens
    assert tokens.shape == (1, 77)
    assert tokens[0, 0] == 101 and tokens[0, -1] == 102 and (tokens[0, 1:-1] != 0).all()
    assert "dropping the last 25" in caplog.text


@pytest.mark.parametrize("caption", ["", "   "])
def test_empty_caption_raises(caption):
    with pytest.raises(UserError, match="empty caption; give a non-empty --text"):
        BertTokenizer()(["a face", caption])


# --- text encoder -------------------------------------------------------------------------------------------


def test_text_encoder_shape_and_backends_agree():
    encoder = tiny_text_encoder().eval()
    tokens = BertTokenizer()(["a smiling young woman", "an old man with a beard"])
    with torch.no_grad():
        out = encoder(tokens)
        set_attention_backend(encoder, "math")
        reference = encoder(tokens)
    assert out.shape == (2, 77, 16)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert encoder.encode(["a smiling young woman"]).shape == (1, 77, 16)


def test_text_encoder_released_key_layout():
    shapes = {k: tuple(v.shape) for k, v in tiny_text_encoder().state_dict().items()}
    expected = {
        "transformer.token_emb.weight": (30522, 16),
        "transformer.pos_emb.emb.weight": (77, 16),
        "transformer.attn_layers.layers.0.0.weight": (16,),
        "transformer.attn_layers.layers.0.0.bias": (16,),
        "transformer.attn_layers.layers.0.1.to_q.weight": (16, 16),
        "transformer.attn_layers.layers.0.1.to_k.weight": (16, 16),
        "transformer.attn_layers.layers.0.1.to_v.weight": (16, 16),
        "transformer.attn_layers.layers.0.1.to_out.weight": (16, 16),
        "transformer.attn_layers.layers.0.1.to_out.bias": (16,),
        "transformer.attn_layers.layers.1.0.weight": (16,),
        "transformer.attn_layers.layers.1.1.net.0.0.weight": (64, 16),
        "transformer.attn_layers.layers.1.1.net.0.0.bias": (64,),
        "transformer.attn_layers.layers.1.1.net.2.weight": (16, 64),
        "transformer.attn_layers.layers.1.1.net.2.bias": (16,),
        "transformer.attn_layers.layers.3.1.net.2.bias": (16,),
        "transformer.norm.weight": (16,),
        "transformer.norm.bias": (16,),
        "transformer.to_logits.weight": (30522, 16),
        "transformer.to_logits.bias": (30522,),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert len(shapes) == 2 + 2 * 7 + 2 * 6 + 4  # 2 layers x (attention 7 + feed-forward 6 tensors) + heads
    assert not any("to_q.bias" in k or "layers.4" in k for k in shapes)


def test_text_encoder_checkpointing_matches():
    encoder = tiny_text_encoder()
    tokens = BertTokenizer()(["a face"])
    plain = encoder(tokens)
    encoder.transformer.attn_layers.use_checkpoint = True
    checkpointed = encoder(tokens)
    checkpointed.sum().backward()
    torch.testing.assert_close(plain, checkpointed)
    assert encoder.transformer.token_emb.weight.grad is not None


def test_full_text_encoder_parameter_count():
    with torch.device("meta"):
        encoder = TextEncoder()
    assert sum(p.numel() for p in encoder.parameters()) == FULL_TEXT_ENCODER_PARAMS
    assert len(encoder.transformer.attn_layers.layers) == 64


# --- mask encoder -------------------------------------------------------------------------------------------


def test_mask_encoder_shapes_and_keys():
    encoder = MaskEncoder()
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items()} == {
        "linear.weight": (640, 1024),
        "linear.bias": (640,),
    }
    seg_mask = torch.zeros(2, 19, 1024, dtype=torch.float64)
    seg_mask[:, 0] = 1
    assert encoder.encode(seg_mask).shape == (2, 19, 640)
    assert encoder.encode(seg_mask).dtype == torch.float32


@pytest.mark.parametrize("shape", [(19, 1024), (2, 19, 512), (2, 1, 19, 1024)])
def test_mask_encoder_rejects_wrong_shape(shape):
    with pytest.raises(UserError, match=r"expected \[B, 19, 1024\]"):
        MaskEncoder().encode(torch.zeros(shape))
