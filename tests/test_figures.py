"""`make figures` (scripts/figures.py, ldm/paper_figures.py, ldm/plotting.py) on the tiny chain: every figure is
written with its panel layout, the panels hold what went in, the edits' run directories are reused, bad input
stops with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.paper_figures import dataset_pairs, faceworld_edit_input, mask_panel, selected_steps
from ldm.plotting import VIRIDIS, colormap, fit_panel, font, panel_grid, text_height, text_panel, wrap

from conftest import script

SIZE = 48


@pytest.fixture(scope="module")
def figures(tiny_chain, tmp_path_factory):
    """The script run once on the tiny chain with the chain's FaceWorld as --data."""
    root = tmp_path_factory.mktemp("figures")
    argv = [
        "--config", "configs/tiny/codiff.yaml", "--ckpt", str(tiny_chain["ckpt"]["codiff"]), "--data", str(tiny_chain["data"]),
        "--out", str(root / "out"), "--edit-runs", str(root / "edits"), "--pairs", "3", "--samples", "2",
        "--steps", "4", "--influence-steps", "3", "--embed-steps", "2", "--finetune-steps", "2", "--alphas", "0,1",
        "--size", str(SIZE), "--device", "cpu", *tiny_chain["overrides"],
    ]
    assert script("figures").main(argv) == 0
    manifest = json.loads((root / "out" / "figures.json").read_text())
    return {"root": root, "out": root / "out", "argv": argv, "manifest": manifest, "data": tiny_chain["data"]}


def load(figures, name) -> np.ndarray:
    return np.asarray(Image.open(figures["out"] / f"{name}.png").convert("RGB"))


def panel(image: np.ndarray, entry: dict, row: int, col: int) -> np.ndarray:
    left, top, w, h = entry["panels"][f"{row},{col}"]
    return image[top:top + h, left:left + w]


def test_every_figure_written_with_its_layout(figures):
    m = figures["manifest"]
    assert set(m) == {"teaser", "comparison", "influence_a", "influence_b", "editing"}
    for name, entry in m.items():
        image = load(figures, name)
        assert [image.shape[1], image.shape[0]] == entry["size"], name
        assert entry["paper"] and entry["settings"]["sampling"]["steps"] == 4
        for key, box in entry["panels"].items():  # every panel inside the picture, at the panel size
            left, top, w, h = box
            caption_strip = name == "teaser" and key.startswith("1,")
            assert w == SIZE and (h == SIZE or caption_strip and 0 < h <= SIZE) and left >= 0 and top >= 0
            assert left + w <= image.shape[1] and top + h <= image.shape[0]
    assert m["teaser"]["rows"] == ["mask condition", "text condition", "collaborative, seed 0", "collaborative, seed 1"]
    assert len(m["teaser"]["columns"]) == 3 and len(m["teaser"]["panels"]) == 4 * 3
    # the test image each condition comes from sits beside the conditions, as a reference for the methods
    assert m["comparison"]["columns"] == ["mask condition", "text condition", "test image (reference)",
                                          "collaborative (ours)", "composable", "text only", "mask only"]
    assert len(m["comparison"]["rows"]) == 3 and len(m["comparison"]["panels"]) == 3 * 7
    # 4 DDIM steps (751, 501, 251, 1), 3 shown: the first, the last and one between
    assert m["influence_a"]["columns"] == ["condition / result", "t = 751", "t = 251", "t = 1"]
    assert len(m["influence_a"]["rows"]) == 3 and "mask" in m["influence_a"]["rows"][0] and "text" in m["influence_a"]["rows"][1]
    assert m["influence_a"]["rows"] == m["influence_b"]["rows"]
    assert m["editing"]["columns"] == ["input", "input mask", "target mask", "target caption", "alpha = 0", "alpha = 1"]
    assert [r.split()[0] for r in m["editing"]["rows"]] == ["text", "mask", "collaborative"]
    # the text edit shows no masks, the mask edit no caption; the collaborative edit all of them
    assert {"0,1", "0,2", "1,3"}.isdisjoint(m["editing"]["panels"])
    assert {"0,3", "1,1", "1,2", "2,1", "2,2", "2,3"} <= set(m["editing"]["panels"])


def test_panels_hold_the_conditions_and_the_influence_colours(figures):
    m = figures["manifest"]
    pairs = dataset_pairs(figures["data"], 32, 3)
    assert m["comparison"]["settings"]["pairs"] == [p.name for p in pairs]
    comparison, teaser = load(figures, "comparison"), load(figures, "teaser")
    for r, pair in enumerate(pairs):  # the mask panel of every row is that pair's mask, pixel for pixel
        expected = fit_panel(mask_panel(pair.seg_mask), SIZE, smooth=False)
        assert np.array_equal(panel(comparison, m["comparison"], r, 0), expected)
        assert np.array_equal(panel(teaser, m["teaser"], 0, r), expected)
        strip = min(text_height([p.text for p in pairs], SIZE), SIZE)
        assert np.array_equal(panel(teaser, m["teaser"], 1, r), text_panel(pair.text, SIZE, strip))  # its caption
        assert np.array_equal(panel(comparison, m["comparison"], r, 1), text_panel(pair.text, SIZE))
        assert pair.image is not None  # the data folder's own test image for that condition
        assert np.array_equal(panel(comparison, m["comparison"], r, 2), fit_panel(pair.image, SIZE))
    edit, editing = faceworld_edit_input(1, 24, 32, test_size=5), load(figures, "editing")  # the chain's FaceWorld
    assert np.array_equal(panel(editing, m["editing"], 2, 0), fit_panel(np.asarray(edit.image), SIZE))
    assert np.array_equal(panel(editing, m["editing"], 1, 1), fit_panel(mask_panel(edit.source_mask), SIZE, smooth=False))
    assert np.array_equal(panel(editing, m["editing"], 1, 2), fit_panel(mask_panel(edit.seg_mask), SIZE, smooth=False))
    assert not torch.equal(edit.source_mask, edit.seg_mask)  # the glasses changed
    influence = load(figures, "influence_a")
    palette = colormap(np.linspace(0, 1, 2001)).astype(np.int64)  # [2001, 3]
    for row in (0, 1):
        for col in (1, 2, 3):
            pixels = panel(influence, m["influence_a"], row, col).reshape(-1, 3).astype(np.int64)
            distance = np.abs(pixels[:, None, :] - palette[None]).sum(-1).min(1)
            assert distance.max() <= 3, (row, col)  # only colours of the colour scale


def test_edit_runs_are_reused(figures, capsys):
    edits = figures["root"] / "edits"
    run_dirs = sorted(p for p in edits.iterdir() if p.is_dir())
    assert [d.name.split("_")[1] for d in run_dirs] == ["collaborative", "mask", "text"]
    stamps = {p: p.stat().st_mtime_ns for d in run_dirs for p in d.glob("*.safetensors")}
    alpha_images = {p: p.read_bytes() for d in run_dirs for p in d.glob("alpha_*.png")}
    assert len(alpha_images) == 3 * 2 and stamps
    before = (figures["out"] / "editing.png").read_bytes()
    argv = list(figures["argv"])
    argv[argv.index("--out") + 1] = str(figures["root"] / "again")
    assert script("figures").main(argv + ["--only", "editing"]) == 0
    assert sorted(p for p in edits.iterdir() if p.is_dir()) == run_dirs  # no new run directories
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # stages A and B not run again
    assert (figures["root"] / "again" / "editing.png").read_bytes() == before
    assert set(json.loads((figures["root"] / "again" / "figures.json").read_text())) == {"editing"}


@pytest.mark.parametrize("extra, message", [
    (["--only", "teaser,bogus"], "--only"),
    (["--pairs", "0"], "--pairs 0 is out of range"),
    (["--influence-steps", "1"], "--influence-steps"),
    (["--edit-image", "x.png"], "together"),
    (["--data", "no/such/folder"], "--data no/such/folder is not a folder"),
    (["--alphas", "0,a"], "--alphas"),
    (["--finetune-lr", "0"], "--finetune-lr"),
    (["--size", "8"], "--size"),
])
def test_bad_input_one_line_error(tiny_chain, tmp_path, capsys, extra, message):
    argv = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(tiny_chain["ckpt"]["codiff"]), "--out", str(tmp_path / "o"),
            "--edit-runs", str(tmp_path / "e"), *extra, *tiny_chain["overrides"]]
    assert script("figures").main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_uni_modal_model_is_refused(tiny_chain, tmp_path, capsys):
    argv = ["--config", "configs/tiny/text.yaml", "--ckpt", str(tiny_chain["ckpt"]["text"]), "--out", str(tmp_path / "o"),
            f"model.params.vae.params.ckpt={tiny_chain['ckpt']['vae']}"]
    assert script("figures").main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "not a collaborative model" in err and "\n" not in err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        script("figures").main(["--help"])
    assert exit_info.value.code == 0
    assert "make figures" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# The drawing helpers


def test_colormap_ends_and_clipping():
    values = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]])
    rgb = colormap(values)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[0, 0], VIRIDIS[0]) and np.array_equal(rgb[0, 1], VIRIDIS[0])
    assert np.array_equal(rgb[0, 3], VIRIDIS[-1]) and np.array_equal(rgb[0, 4], VIRIDIS[-1])
    brightness = colormap(np.linspace(0, 1, 50)[None]).astype(float)[0] @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(brightness) > 0)  # readable as a scale in greyscale too
    with pytest.raises(ValueError):
        colormap(values, 1.0, 1.0)


def test_panel_grid_places_every_panel_where_it_says():
    rng = np.random.default_rng(0)
    cells = [[rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(3)] for _ in range(2)]
    cells[1][0] = None
    fig = panel_grid(cells, size=32, title="a title", column_labels=["a", "b", "c"], row_labels=["one", "two"],
                     x_label="x", column_gaps=(0,), colorbar_rows=(0, 1), colorbar_label="weight", footnote="note",
                     smooth={(r, c): False for r in range(2) for c in range(3)})
    assert set(fig.panels) == {(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)}
    boxes = list(fig.panels.values())
    for i, a in enumerate(boxes):  # no two panels overlap
        for b in boxes[i + 1:]:
            assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
    for (r, c) in fig.panels:
        assert np.array_equal(fig.panel(r, c), fit_panel(cells[r][c], 32, smooth=False))
    assert fig.panels[(0, 1)][0] - fig.panels[(0, 0)][0] > fig.panels[(0, 2)][0] - fig.panels[(0, 1)][0]  # the gap
    with pytest.raises(ValueError, match="row_labels"):
        panel_grid(cells, size=32, row_labels=["only one"])


def test_wrap_and_selected_steps():
    fnt = font(12)
    lines = wrap("This man has beard of medium length. He is in his thirties.", fnt, 80)
    assert len(lines) > 1 and " ".join(lines) == "This man has beard of medium length. He is in his thirties."
    assert selected_steps(50, 10)[0] == 0 and selected_steps(50, 10)[-1] == 49 and len(selected_steps(50, 10)) == 10
    assert selected_steps(4, 10) == [0, 1, 2, 3]


def test_edit_runs_are_named_by_the_weights(tiny_chain, tmp_path):
    from ldm.paper_figures import weight_files, weights_digest

    files = weight_files("configs/tiny/codiff.yaml", tiny_chain["ckpt"]["codiff"], tiny_chain["overrides"])
    assert set(files) == set(tiny_chain["ckpt"].values())  # the checkpoint and the experts and VAE it names
    copy = tmp_path / "weights.ckpt"
    copy.write_bytes(tiny_chain["ckpt"]["vae"].read_bytes())
    before = weights_digest([copy])
    assert weights_digest([copy]) == before
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1  # a retrained model: new run directories
    copy.write_bytes(bytes(data))
    assert weights_digest([copy]) != before
