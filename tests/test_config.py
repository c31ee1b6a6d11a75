"""Configs are data, checked when loaded: every section, node, key and type, and every error message."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from ldm.config import TrainSettings, instantiate, load_config, train_settings
from ldm.errors import ConfigError, UserError
from ldm.modules.encoders import MaskEncoder
from ldm.modules.expert import Expert
from ldm.modules.unet import UNetModel

REPO = Path(__file__).resolve().parents[1]

TINY_UNET = {
    "target": "ldm.modules.unet.UNetModel",
    "params": {
        "in_channels": 3,
        "out_channels": 3,
        "model_channels": 32,
        "num_res_blocks": 1,
        "attention_downsample_factors": [1],
        "channel_mult": [1],
        "num_heads": 2,
        "context_dim": 16,
    },
}
TINY_MASK_ENCODER = {"target": "ldm.modules.encoders.MaskEncoder", "params": {"n_embed": 16}}
TINY_EXPERT = {"target": "ldm.modules.expert.Expert", "params": {"unet": TINY_UNET, "cond_encoder": TINY_MASK_ENCODER}}
TINY_VAE = {
    "target": "ldm.modules.autoencoder.AutoencoderKL",
    "params": {"embed_dim": 3, "z_channels": 3, "ch": 32, "ch_mult": [1], "num_res_blocks": 1, "resolution": 8},
}
TINY_LDM = {
    "target": "ldm.models.latent_diffusion.LatentDiffusion",
    "params": {"expert": TINY_EXPERT, "vae": TINY_VAE, "cond_key": "seg_mask", "scale_factor": 0.058},
}


def expert_config() -> dict:
    return {"model": copy.deepcopy(TINY_EXPERT), "train": {"batch_size": 2, "base_learning_rate": 1.0e-4}}


def write(tmp_path: Path, cfg, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def load_error(tmp_path: Path, cfg, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, cfg), overrides)
    message = str(info.value)
    assert "\n" not in message  # one line, printed by the scripts without a traceback
    return message


# --------------------------------------------------------------------------------------------------
# Valid configs load and build


def test_valid_expert_config_loads_and_builds(tmp_path):
    cfg = load_config(write(tmp_path, expert_config()))
    assert cfg.train.batch_size == 2 and cfg.model.params.unet.params.num_heads == 2
    model = instantiate(cfg.model)
    assert isinstance(model, Expert)
    assert isinstance(model.unet, UNetModel) and isinstance(model.cond_encoder, MaskEncoder)
    assert model.cond_encoder.linear.out_features == 16
    settings = train_settings(cfg)
    assert settings.batch_size == 2 and settings.base_learning_rate == 1.0e-4
    assert settings.seed == TrainSettings().seed  # unspecified settings keep their defaults
    x, t, mask = torch.randn(1, 3, 8, 8), torch.tensor([10]), torch.zeros(1, 19, 1024)
    assert model(x, t, model.encode(mask)).shape == (1, 3, 8, 8)


def test_valid_latent_diffusion_config_loads_and_builds(tmp_path):
    pytest.importorskip("pytorch_lightning")
    from ldm.models.latent_diffusion import LatentDiffusion

    cfg = {"model": copy.deepcopy(TINY_LDM), "sample": {"steps": 10, "eta": 0.0}}
    model = instantiate(load_config(write(tmp_path, cfg)).model)
    assert isinstance(model, LatentDiffusion)
    assert isinstance(model.expert.unet, UNetModel) and model.cond_key == "seg_mask"


def test_null_for_optional_and_int_for_float_are_accepted(tmp_path):
    cfg = expert_config()
    cfg["train"].update(max_epochs=None, gradient_clip_val=1, base_learning_rate=1)  # int where float is asked
    cfg["model"]["params"]["unet"]["params"]["dropout"] = 0  # float param given as an int
    load_config(write(tmp_path, cfg))


def test_instantiate_turns_constructor_value_errors_into_config_errors(tmp_path):
    cfg = expert_config()
    cfg["model"]["params"]["unet"]["params"]["time_injection"] = "bogus"
    loaded = load_config(write(tmp_path, cfg))  # a str: the type check passes, the constructor refuses it
    with pytest.raises(ConfigError, match="bogus") as info:
        instantiate(loaded.model)
    assert "ldm.modules.unet.UNetModel" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Structure errors name the key path


def test_unknown_top_level_key(tmp_path):
    cfg = expert_config()
    cfg["trainer"] = {"max_steps": 10}
    message = load_error(tmp_path, cfg)
    assert "trainer" in message and "top-level" in message


def test_unknown_top_level_keys_of_mixed_types(tmp_path):
    message = load_error(tmp_path, "model: {target: ldm.modules.encoders.MaskEncoder}\n1: a\nfoo: b\n")
    assert "[1, 'foo']" in message


def test_unresolvable_interpolation(tmp_path):
    cfg = expert_config()
    cfg["model"]["params"]["cond_encoder"]["params"]["n_embed"] = "${nope}"
    message = load_error(tmp_path, cfg)
    assert "nope" in message and "model.params.cond_encoder.params.n_embed" in message


def test_interpolations_resolve_before_validation(tmp_path):
    cfg = expert_config()
    cfg["model"]["params"]["cond_encoder"]["params"]["n_embed"] = "${model.params.unet.params.context_dim}"
    loaded = load_config(write(tmp_path, cfg))
    assert instantiate(loaded.model).cond_encoder.linear.out_features == 16


def test_missing_model_section(tmp_path):
    message = load_error(tmp_path, {"train": {"batch_size": 4}})
    assert "model" in message and "missing" in message


def test_model_that_is_not_a_node(tmp_path):
    assert "'model' must be a node" in load_error(tmp_path, {"model": {"params": {}}})


def test_unknown_key_inside_a_node(tmp_path):
    cfg = expert_config()
    cfg["model"]["target_"] = "ldm.modules.expert.Expert"
    assert "target_" in load_error(tmp_path, cfg)


def test_unknown_param_names_the_dotted_path(tmp_path):
    cfg = expert_config()
    cfg["model"]["params"]["unet"]["params"]["num_head"] = 4
    message = load_error(tmp_path, cfg)
    assert "model.params.unet.params.num_head" in message
    assert "num_heads" in message  # the allowed names are listed


def test_unknown_param_deep_in_latent_diffusion(tmp_path):
    cfg = {"model": copy.deepcopy(TINY_LDM)}
    cfg["model"]["params"]["expert"]["params"]["cond_encoder"]["params"]["n_embd"] = 16
    assert "model.params.expert.params.cond_encoder.params.n_embd" in load_error(tmp_path, cfg)


def test_missing_required_param(tmp_path):
    cfg = expert_config()
    del cfg["model"]["params"]["unet"]["params"]["context_dim"]
    message = load_error(tmp_path, cfg)
    assert "missing required key model.params.unet.params.context_dim" in message


def test_missing_required_network(tmp_path):
    cfg = expert_config()
    del cfg["model"]["params"]["cond_encoder"]
    assert "model.params.cond_encoder" in load_error(tmp_path, cfg)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("num_heads", "4", "must be an integer"),  # a string for an int
        ("num_heads", True, "must be an integer"),  # a bool for an int
        ("num_heads", 4.0, "must be an integer"),  # a float for an int
        ("dropout", [0.1], "must be a number"),  # a list for a float
        ("dropout", "0.1", "must be a number"),
        ("use_checkpoint", 1, "must be true or false"),  # an int for a bool
        ("time_injection", 3, "must be a string"),
        ("channel_mult", 1, "must be a list"),
        ("channel_mult", [1, "2"], "channel_mult[1]"),  # list items are checked too
        ("num_heads", TINY_MASK_ENCODER, "not a target node"),  # a node where a number is asked
    ],
)
def test_wrong_types_name_the_key(tmp_path, key, value, expected):
    cfg = expert_config()
    cfg["model"]["params"]["unet"]["params"][key] = value
    message = load_error(tmp_path, cfg)
    assert f"model.params.unet.params.{key}" in message
    assert expected in message


def test_plain_value_where_a_network_is_expected(tmp_path):
    cfg = expert_config()
    cfg["model"]["params"]["unet"] = "unet.ckpt"
    message = load_error(tmp_path, cfg)
    assert "model.params.unet" in message and "node" in message


# --------------------------------------------------------------------------------------------------
# Targets


@pytest.mark.parametrize("target", ["os.system", "torch.nn.Linear", "builtins.eval", "ldmx.foo.Bar", 42])
def test_target_outside_ldm_is_refused(tmp_path, target):
    cfg = expert_config()
    cfg["model"]["params"]["cond_encoder"]["target"] = target
    message = load_error(tmp_path, cfg)
    assert "model.params.cond_encoder.target" in message and "outside the ldm package" in message


@pytest.mark.parametrize("target", ["ldm.training.DataLoader", "ldm.modules.unet.checkpoint", "ldm.config.OmegaConf"])
def test_names_imported_into_ldm_from_elsewhere_are_refused(tmp_path, target):
    cfg = expert_config()
    cfg["model"]["params"]["cond_encoder"] = {"target": target}
    assert "outside the ldm package" in load_error(tmp_path, cfg)


@pytest.mark.parametrize(
    "target, expected",
    [
        ("ldm.modules.encoders.NoSuchEncoder", "has no class or function 'NoSuchEncoder'"),
        ("ldm.no_such_module.Thing", "cannot be imported"),
        ("ldm.modules.encoders.VOCAB_SIZE", "has no class or function"),  # exists, but is not callable
    ],
)
def test_target_that_does_not_exist(tmp_path, target, expected):
    cfg = expert_config()
    cfg["model"]["params"]["cond_encoder"]["target"] = target
    message = load_error(tmp_path, cfg)
    assert "model.params.cond_encoder.target" in message and expected in message


# --------------------------------------------------------------------------------------------------
# Settings sections


def test_unknown_key_in_train(tmp_path):
    cfg = expert_config()
    cfg["train"]["batchsize"] = 4
    message = load_error(tmp_path, cfg)
    assert "train.batchsize" in message and "batch_size" in message


@pytest.mark.parametrize(
    "key, value",
    [("batch_size", "four"), ("batch_size", True), ("base_learning_rate", [1e-4]), ("scale_lr", "yes"),
     ("max_epochs", 1.5), ("precision", 16)],
)  # fmt: skip
def test_wrong_type_in_train(tmp_path, key, value):
    cfg = expert_config()
    cfg["train"][key] = value
    assert f"train.{key}" in load_error(tmp_path, cfg)


def test_unknown_key_and_wrong_type_in_sample(tmp_path):
    cfg = expert_config()
    cfg["sample"] = {"step": 10}
    assert "sample.step" in load_error(tmp_path, cfg)
    cfg["sample"] = {"eta": "one"}
    assert "sample.eta" in load_error(tmp_path, cfg)


def test_train_must_be_a_mapping(tmp_path):
    cfg = expert_config()
    cfg["train"] = [1, 2]
    assert "'train' must be a mapping" in load_error(tmp_path, cfg)


def test_data_section_splits_and_nodes(tmp_path):
    cfg = expert_config()
    cfg["data"] = {"test": {"target": "ldm.modules.encoders.MaskEncoder"}}
    assert "data.test" in load_error(tmp_path, cfg)
    cfg["data"] = {"train": {"target": "os.getcwd"}}
    assert "data.train.target" in load_error(tmp_path, cfg)


# --------------------------------------------------------------------------------------------------
# Overrides


def test_overrides_are_applied(tmp_path):
    path = write(tmp_path, expert_config())
    cfg = load_config(path, ["train.batch_size=4", "model.params.unet.params.num_heads=4", "sample.eta=0.0"])
    assert cfg.train.batch_size == 4 and isinstance(cfg.train.batch_size, int)
    assert cfg.model.params.unet.params.num_heads == 4
    assert cfg.sample.eta == 0.0
    assert load_config(path).train.batch_size == 2  # the file itself is unchanged


def test_list_and_null_overrides(tmp_path):
    cfg = load_config(write(tmp_path, expert_config()), ["model.params.unet.params.channel_mult=[1,2]",
                                                         "train.max_epochs=null"])  # fmt: skip
    assert list(cfg.model.params.unet.params.channel_mult) == [1, 2] and cfg.train.max_epochs is None


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.batch_size=four", "train.batch_size"),  # wrong type
        ("train.batchsize=4", "train.batchsize"),  # unknown key
        ("model.params.unet.params.num_head=4", "model.params.unet.params.num_head"),
        ("model.params.cond_encoder.target=os.system", "outside the ldm package"),
        ("train.batch_size", "key=value"),  # not an override at all
    ],
)
def test_bad_overrides_are_rejected(tmp_path, override, expected):
    assert expected in load_error(tmp_path, expert_config(), [override])


# --------------------------------------------------------------------------------------------------
# Files


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text",
    ["model: [unclosed\n", "model:\n  target: a\n bad: indent\n", "\tmodel: x\n"],
    ids=["unclosed", "indent", "tab"],
)
def test_invalid_yaml(tmp_path, text):
    assert "not valid YAML" in load_error(tmp_path, text)


@pytest.mark.parametrize("text", ["", "just a sentence\n", "- model\n- train\n"], ids=["empty", "scalar", "list"])
def test_yaml_that_is_not_a_mapping(tmp_path, text):
    assert "must hold a mapping" in load_error(tmp_path, text)


def test_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(b"PK\x03\x04\x89\xff\xfe\x00\x80binary")
    with pytest.raises(ConfigError, match="weights.ckpt"):
        load_config(path)


def test_config_errors_are_user_errors():
    assert issubclass(ConfigError, UserError)


# --------------------------------------------------------------------------------------------------
# The shipped configs


SHIPPED_CONFIGS = sorted((REPO / "configs").rglob("*.yaml")) + sorted((REPO / "configs").rglob("*.yml"))


def test_shipped_configs_exist_or_none_yet():
    assert all(path.is_file() for path in SHIPPED_CONFIGS)  # passes trivially while configs/ is empty


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # relative paths inside configs are relative to the repository root
    cfg = load_config(path)
    assert "model" in cfg


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("1e30", 1e30), ("1.0e+30", 1e30), ("2.5E-3", 2.5e-3)])
def test_float_overrides_in_any_exponent_form(text, value):
    cfg = load_config(REPO / "configs" / "tiny" / "text.yaml", [f"train.base_learning_rate={text}"])
    assert cfg.train.base_learning_rate == value


@pytest.mark.parametrize("old, new", [
    ("ldm.models.autoencoder.AutoencoderModule", "ldm.models.autoencoder_module.AutoencoderModule"),
    ("ldm.models.collaborative.CollaborativeDiffusion", "ldm.models.collaborative_diffusion.CollaborativeDiffusion"),
    ("ldm.models.evaluators.FaceParserModule", "ldm.models.faceworld_evaluators.FaceParserModule"),
    ("ldm.models.evaluators.AttributeClassifierModule", "ldm.models.faceworld_evaluators.AttributeClassifierModule"),
])
def test_targets_of_renamed_modules_still_resolve(old, new):
    """Resolved configs saved beside existing checkpoints name the modules' old names."""
    from ldm.config import resolve_target

    assert resolve_target(old, "model") is resolve_target(new, "model")


def test_a_saved_config_with_an_old_target_loads(tmp_path):
    text = (REPO / "configs/tiny/vae.yaml").read_text()
    assert "ldm.models.autoencoder_module.AutoencoderModule" in text
    old = tmp_path / "vae.yaml"
    old.write_text(text.replace("ldm.models.autoencoder_module.", "ldm.models.autoencoder."))
    from ldm.config import resolve_target

    cfg = load_config(old)  # validation resolves every target
    assert resolve_target(cfg.model.target, "model").__name__ == "AutoencoderModule"
