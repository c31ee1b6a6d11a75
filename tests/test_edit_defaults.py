"""Editing defaults: EditOptions' released values < the config's edit: section < explicit flags; the section is
checked when the config loads."""

from __future__ import annotations

import argparse

import pytest

from ldm.cli import add_edit_arguments, edit_values
from ldm.config import load_config
from ldm.editing import COLLABORATIVE_ALPHAS, UNIMODAL_ALPHAS, EditOptions, edit_defaults
from ldm.errors import ConfigError

FACEWORLD = "configs/faceworld/codiff.yaml"
PAPER = "configs/256_codiff_mask_text.yaml"


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_edit_arguments(parser)
    return parser.parse_args(list(argv))


def test_paper_configs_keep_the_released_defaults():
    released = EditOptions()
    values = edit_defaults(load_config(PAPER), "text")
    assert values == {"embed_steps": released.embed_steps, "embed_lr": released.embed_lr, "finetune_steps": released.finetune_steps,
                      "finetune_lr": released.finetune_lr, "alphas": UNIMODAL_ALPHAS, "strength": 1.0}
    assert (values["embed_steps"], values["finetune_steps"], values["finetune_lr"]) == (500, 1000, 1e-6)
    assert released.strength == 1.0  # stage C starts from pure noise, as released
    assert edit_defaults(None, "collaborative")["alphas"] == COLLABORATIVE_ALPHAS


def test_the_config_section_overrides_the_released_values_and_flags_override_it():
    cfg = load_config(FACEWORLD)
    assert edit_defaults(cfg, "text") == {"embed_steps": 100, "embed_lr": 1e-2, "finetune_steps": 100, "finetune_lr": 1e-4,
                                          "alphas": (0.0, 0.5, 1.0, 1.5, 2.0), "strength": 0.5}
    values = edit_values(flags("--finetune-lr", "3e-5", "--alphas", "0,1"), cfg, "text")
    assert values == {"embed_steps": 100, "embed_lr": 1e-2, "finetune_steps": 100, "finetune_lr": 3e-5, "alphas": (0.0, 1.0),
                      "strength": 0.5}
    assert edit_values(flags("--strength", "1"), cfg, "text")["strength"] == 1.0
    partial = load_config(PAPER, ["edit.finetune_lr=1e-4"])  # a section may set some keys only
    assert edit_defaults(partial, "text")["finetune_lr"] == 1e-4
    assert edit_defaults(partial, "text")["embed_steps"] == 500
    # what a run records is the effective values
    options = EditOptions(**values)
    assert (options.embed_steps, options.finetune_lr, options.alphas) == (100, 3e-5, (0.0, 1.0))


def test_the_shipped_faceworld_config_carries_the_same_edit_section():
    """checkpoints/faceworld/codiff.yaml is what users load: its edit: section is the recipe config's."""
    assert edit_defaults(load_config("checkpoints/faceworld/codiff.yaml"), "text") == edit_defaults(load_config(FACEWORLD), "text")


def test_a_script_default_sweep_beats_the_config_but_not_the_flag():
    cfg = load_config(FACEWORLD)
    assert edit_values(flags(), cfg, "collaborative", alphas="1")["alphas"] == (1.0,)
    assert edit_values(flags("--alphas", "0.5"), cfg, "collaborative", alphas="1")["alphas"] == (0.5,)


@pytest.mark.parametrize("override, message", [
    ("edit.embed_stps=3", "unknown key edit.embed_stps; allowed: ['alphas', 'embed_lr', 'embed_steps', 'finetune_lr', 'finetune_steps', 'strength']"),
    ("edit.strength=0", "edit.strength = 0 is out of range; use a fraction of the schedule in (0, 1]"),
    ("edit.strength=1.5", "edit.strength = 1.5 is out of range"),
    ("edit.finetune_lr=2.0", "edit.finetune_lr = 2.0 is out of range; use a learning rate in (0, 1]"),
    ("edit.embed_steps=-1", "edit.embed_steps = -1 is out of range"),
    ("edit.alphas=[]", "edit.alphas = is empty"),
])
def test_a_bad_edit_section_fails_at_load_in_one_line(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(FACEWORLD, [override])
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
