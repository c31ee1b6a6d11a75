"""The app's logic (ldm/app, ldm/face_parsing.py, scripts/parse_face.py) without Gradio: mask editing, start
masks, influence frames, generation and editing requests, sessions, photo -> mask, and their error messages.
Sampling runs on the shipped FaceWorld models with two or three steps."""

import json
import os
import shlex
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ASSETS, REPO, script
from ldm.app import mask_editor as me
from ldm.app.edit import EditRequest, ModelSource, edit_command, edit_targets, execute, model_for_edit, prepare_run
from ldm.app.generate import GenerateRequest, available_methods, condition_picture, parse_methods, run_generate
from ldm.app.influence import SCALE_COLOURS, colour_bar, colour_scale, frame_steps, influence_frame, write_frames
from ldm.app.service import AppService, parse_number
from ldm.app.sessions import KEEP_RUNS, Cancelled, SessionStore, check_upload, error_message
from ldm.data import faceworld
from ldm.data.masks import CLASS_NAMES, NUM_CLASSES, PALETTE, colorize, index_mask_to_onehot, load_mask_png
from ldm.errors import DataError, UserError
from ldm.face_parsing import check_photo, load_face_parser, parse_face, read_photo, write_parsed_mask
from ldm.pipeline import load_model, sample

SHIPPED = REPO / "checkpoints" / "faceworld"
SOURCE = ModelSource(str(SHIPPED / "codiff.yaml"), str(SHIPPED / "codiff.safetensors"))
RELEASED_MASK = ASSETS / "256_masks" / "29980.png"


@pytest.fixture(scope="module")
def model():
    os.chdir(REPO)
    return load_model(SOURCE.config, SOURCE.ckpt, "cpu")


@pytest.fixture(scope="module")
def parser():
    return load_face_parser(parser=SHIPPED / "parser.safetensors")


def faceworld_face(tmp_path: Path, index: int = 9003) -> Path:
    path = tmp_path / f"face_{index}.png"
    Image.fromarray(faceworld.render_sample(0, index, 64).image).save(path)
    return path


# ---- the mask editor -------------------------------------------------------------------------------------


def test_brushes_are_the_palette_in_class_order_and_named():
    colours = me.brush_colours()
    assert len(colours) == NUM_CLASSES == len(set(colours))
    assert [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in colours] == [tuple(p) for p in PALETTE.tolist()]
    legend = me.legend_html()
    for k, name in enumerate(CLASS_NAMES):
        assert me.CLASS_LABELS[name] in legend and me.hex_colour(k) in legend
    script_text = me.brush_names_script()
    assert '"rgb(255, 51, 153)": "14 hat"' in script_text and script_text.count("rgb(") == NUM_CLASSES


def test_blank_face_round_trips_through_the_editor_picture():
    blank = me.blank_face()
    assert blank.shape == (256, 256) and blank.dtype == np.uint8
    present = {CLASS_NAMES[k] for k in np.unique(blank)}
    assert {"skin", "hair", "l_eye", "r_eye", "nose", "u_lip", "l_lip", "neck", "cloth", "background"} <= present
    picture = me.index_to_editor(blank)
    assert picture.shape == (256, 256, 3)
    assert np.array_equal(me.editor_to_index(picture), blank)
    rgba = np.concatenate([picture, np.full((256, 256, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(me.editor_to_index(rgba, []), blank)
    assert me.blank_face(64).shape == (64, 64)


def test_strokes_set_the_class_of_their_colour_and_faint_edges_do_not():
    background = me.index_to_editor(me.blank_face())
    layer = np.zeros((256, 256, 4), np.uint8)
    hat = CLASS_NAMES.index("hat")
    layer[10:40, 60:200, :3] = PALETTE[hat]
    layer[10:40, 60:200, 3] = 255
    layer[40, 60:200] = (*PALETTE[hat], 60)  # an anti-aliased edge, mostly transparent: ignored
    layer[41, 60:200] = (250, 55, 150, 200)  # an opaque edge pixel slightly off the colour: snapped to hat
    index = me.editor_to_index(background, [layer])
    assert (index[10:40, 60:200] == hat).all() and (index[41, 60:200] == hat).all()
    assert np.array_equal(index[40, 60:200], me.blank_face()[40, 60:200])
    assert np.array_equal(index[60:], me.blank_face()[60:])
    small = layer[::2, ::2].copy()  # a layer at another size is scaled to the picture
    assert (me.editor_to_index(background, [small])[12:38, 62:198] == hat).all()


def test_editor_pictures_that_are_not_masks_are_refused():
    with pytest.raises(DataError, match="empty; start from a blank face"):
        me.editor_to_index(None)
    photo = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    with pytest.raises(DataError, match="colours matching no class"):
        me.editor_to_index(photo)
    nearly = me.index_to_editor(me.blank_face())
    nearly[:4] = (3, 2, 1)  # 1.6% off the palette (a browser's resampling): snapped to the nearest colour
    assert (me.editor_to_index(nearly)[:4] == 0).all()
    with pytest.raises(DataError, match="must be square"):
        me.editor_to_index(me.index_to_editor(me.blank_face())[:200])
    with pytest.raises(DataError, match="expected an 8-bit RGB or RGBA picture"):
        me.editor_to_index(np.zeros((256, 256), np.float32))


def test_mask_files_are_read_and_checked(tmp_path):
    index = me.read_mask_file(RELEASED_MASK)
    assert np.array_equal(index, load_mask_png(RELEASED_MASK))
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.full((64, 64, 3), (10, 20, 30), np.uint8)).save(wrong)
    with pytest.raises(DataError, match=r"wrong.png: 4096 pixels have colours matching no class, e.g. \(10, 20, 30\)"):
        me.read_mask_file(wrong)
    with pytest.raises(DataError, match=r"^upload.png: 4096 pixels have colours"):  # named as the user knows it
        me.read_mask_file(wrong, where="upload.png")
    oblong = tmp_path / "oblong.png"
    Image.fromarray(colorize(np.zeros((64, 100), np.uint8))).save(oblong)
    with pytest.raises(DataError, match="mask is 100x64; it must be square"):
        me.read_mask_file(oblong)


def test_faceworld_test_masks_follow_the_shipped_recipe(tmp_path):
    source = me.faceworld_source(SHIPPED / "recipe.json")
    recipe = json.loads((SHIPPED / "recipe.json").read_text())["stages"]["data"]
    assert source == (int(recipe.get("seed", 0)), int(recipe["num"]))
    assert me.faceworld_source(tmp_path / "none.json") == me.FaceWorldSource()
    (tmp_path / "bad.json").write_text("{")
    assert me.faceworld_source(tmp_path / "bad.json") == me.FaceWorldSource()
    choices = me.faceworld_choices(source, 3)
    first = source.test_indices.start
    assert [i for _, i in choices] == [first, first + 1, first + 2]
    index, caption = me.faceworld_test_mask(source, first + 1)
    assert np.array_equal(index, faceworld.render_sample(source.seed, first + 1, 64).mask)
    assert caption == faceworld.make_caption(faceworld.sample_factors(source.seed, first + 1))
    assert choices[1][0] == f"{first + 1}: {caption}"
    with pytest.raises(DataError, match="not in the test split"):
        me.faceworld_test_mask(source, 0)


def test_mask_summary_names_the_largest_classes():
    index = np.zeros((10, 10), np.uint8)
    index[:6] = CLASS_NAMES.index("hair")
    index[9, 9] = CLASS_NAMES.index("nose")
    assert me.mask_summary(index) == "hair 60%, background 39%, nose 1%"
    assert me.mask_summary(index, top=1) == "hair 60% and 2 more classes"


# ---- influence frames ------------------------------------------------------------------------------------


def test_colour_scale_is_viridis_at_its_stops_and_darkest_at_zero():
    assert np.array_equal(colour_scale(np.array([0.0, 0.5, 1.0])), SCALE_COLOURS[[0, 2, 4]].astype(np.uint8))
    assert np.array_equal(colour_scale(np.array([-1.0, 2.0])), SCALE_COLOURS[[0, 4]].astype(np.uint8))
    lightness = colour_scale(np.linspace(0, 1, 50)).astype(float) @ np.array([0.299, 0.587, 0.114])
    assert (np.diff(lightness) > 0).all()
    bar = colour_bar(200)
    assert bar.shape == (200, 64, 3) and (bar[20, 4] != 255).any()


def test_frame_steps_keep_the_first_and_last():
    assert frame_steps(5) == [0, 1, 2, 3, 4]
    steps = frame_steps(200, 50)
    assert len(steps) == 50 and steps[0] == 0 and steps[-1] == 199 and steps == sorted(set(steps))


def test_frames_and_animation(tmp_path):
    x_t = np.zeros((64, 64, 3), np.uint8)
    maps = {"text": np.full((16, 16), 0.25), "seg_mask": np.full((16, 16), 0.75)}
    frame = influence_frame("step 1 of 2, t = 981", x_t, maps, tile=100)
    assert frame.shape[0] == 22 + 18 + 100 + 6 and frame.shape[1] == 6 + 3 * 106 + 64
    x0 = 6 + 106 + 50  # inside the second panel: the first modality's map, in the scale's colour of 0.25
    assert tuple(frame[22 + 18 + 50, x0]) == tuple(colour_scale(np.array(0.25)))
    second = influence_frame("step 2 of 2, t = 1", x_t, {m: 1 - w for m, w in maps.items()}, tile=100)
    paths, gif = write_frames([frame, second], tmp_path)
    assert [p.name for p in paths] == ["frame_000.png", "frame_001.png"]
    with Image.open(gif) as animation:
        assert animation.n_frames == 2
    assert write_frames([], tmp_path / "none") == ([], None)


# ---- generation ------------------------------------------------------------------------------------------


def test_generate_requests_are_checked_in_the_pages_words(model):
    caption = "This man is in his forties."
    GenerateRequest(caption, ("collaborative",), steps=2).check(model)
    GenerateRequest("", ("mask",), steps=2).check(model)  # mask only needs no caption
    cases = [
        (GenerateRequest(" ", ("collaborative", "mask")), "empty caption; write one .*collaborative.* or choose mask only"),
        (GenerateRequest(caption, ()), "no method chosen"),
        (GenerateRequest(caption, ("text", "text")), "repeat"),
        (GenerateRequest(caption, ("sketch",)), "'sketch' is not available"),
        (GenerateRequest(caption, ("text",), steps=0), "steps 0 is out of range"),
        (GenerateRequest(caption, ("text",), eta=1.5), "eta 1.5 is out of range"),
        (GenerateRequest(caption, ("text",), sampler="euler"), "unknown sampler 'euler'"),
        (GenerateRequest(caption, ("text",), preset="fast"), "unknown preset 'fast'"),
        (GenerateRequest(caption, ("text",), seed=-1), "seed -1 is out of range"),
        (GenerateRequest("x" * 600, ("text",)), "caption is 600 characters"),
    ]
    for request, message in cases:
        with pytest.raises(UserError, match=message):
            request.check(model)
    GenerateRequest(caption, ("text",), sampler="unipc", eta=1.5).check(model)  # eta belongs to DDIM only


def test_methods_offered_follow_the_model(model):
    assert available_methods(model) == ["collaborative", "composable", "text", "mask"]
    text_only = load_model(SHIPPED / "text.yaml", SHIPPED / "text.safetensors", "cpu")  # one expert, no diffusers
    assert available_methods(text_only) == ["text"]
    assert parse_methods(["mask only", "collaborative", "text"]) == ("collaborative", "text", "mask")


def test_every_method_samples_from_the_same_seed_with_influence_frames(model, tmp_path):
    index, caption = me.faceworld_test_mask(me.faceworld_source(SHIPPED / "recipe.json"), 9003)
    request = GenerateRequest(caption, ("collaborative", "composable", "text", "mask"), steps=3, seed=7)
    seen = []
    result = run_generate(model, request, me.resize_index(index, 256), tmp_path, lambda k, n, m: seen.append((k, n, m)))
    assert seen == [(0, 4, "collaborative"), (1, 4, "composable"), (2, 4, "text"), (3, 4, "mask")]
    assert [label for _, label in result.images] == ["collaborative", "composable", "text only", "mask only"]
    assert Image.open(result.images[0][0]).size == (256, 256)
    conditions = {"seg_mask": index_mask_to_onehot(me.resize_index(index, 256)).unsqueeze(0), "text": [caption]}
    for method, given in (("collaborative", conditions), ("mask", {"seg_mask": conditions["seg_mask"]})):
        direct = sample(model, given, method=method, steps=3, eta=1.0, generator=torch.Generator().manual_seed(7))
        saved = np.asarray(Image.open(tmp_path / f"{method}_seed7.png"))
        assert np.array_equal(saved, ((direct.images[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    assert len(result.frames) == 3 and result.animation.is_file()
    assert np.array_equal(np.asarray(Image.open(result.conditions)), condition_picture(me.resize_index(index, 256)))
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["sampler"] == "ddim" and settings["steps"] == 3 and settings["seed"] == 7
    assert result.summary.startswith("DDIM 3 steps")

    none = run_generate(model, GenerateRequest(caption, ("text",), steps=2), index, tmp_path / "text")
    assert none.frames == [] and none.animation is None


# ---- sessions --------------------------------------------------------------------------------------------


def test_sessions_are_separate_folders_and_keep_the_last_runs(tmp_path):
    store = SessionStore(tmp_path)
    a, b = store.folder("abc123"), store.folder("xyz_9")
    assert a != b and a.parent == b.parent == tmp_path / "sessions"
    for bad in ("../x", "a/b", "", "x" * 65, None):
        with pytest.raises(ValueError, match="bad session id"):
            store.folder(bad)
    runs = [store.new_run("abc123", "generate") for _ in range(KEEP_RUNS + 2)]
    assert [p.name for p in runs[:2]] == ["0000", "0001"]
    assert sorted(p.name for p in (a / "generate").iterdir()) == [p.name for p in runs[-KEEP_RUNS:]]
    flag = store.cancel_flag("abc123")
    assert flag is store.cancel_flag("abc123") and flag is not store.cancel_flag("xyz_9")
    (a / "edit").mkdir()
    store.forget("abc123")
    assert not (a / "generate").exists() and (a / "edit").is_dir()


def test_uploads_and_error_messages(tmp_path, caplog):
    big = tmp_path / "big.png"
    big.write_bytes(b"0" * 3 * 2**20)
    assert check_upload(big, 4 * 2**20) == big
    with pytest.raises(DataError, match=r"photo is 3.0 MB; the limit is 2 MB"):
        check_upload(big, 2 * 2**20, "photo")
    with pytest.raises(DataError, match="gone; upload it again"):
        check_upload(tmp_path / "missing.png", 10)
    assert error_message(UserError("bad thing")) == "Error: bad thing"
    assert error_message(Cancelled("A")).startswith("Cancelled. Finished stages are kept")
    try:
        {}["missing"]
    except KeyError as err:
        assert error_message(err).startswith("Internal error (KeyError: 'missing'); the app keeps running")
    assert "Traceback (most recent call last)" in caplog.text and "test_app_logic.py" in caplog.text
    assert parse_number("12", "steps") == 12 and parse_number("0.5", "eta", float) == 0.5
    for value, message in (("x", "steps 'x' is not a number"), (2.5, "steps 2.5 must be a whole number")):
        with pytest.raises(UserError, match=message):
            parse_number(value, "steps")


# ---- photo -> mask ---------------------------------------------------------------------------------------


def test_the_faceworld_parser_reads_a_faceworld_face(parser, tmp_path):
    rendered = faceworld.render_sample(0, 9003, 64)
    index = parse_face(Image.fromarray(rendered.image), parser, 64)
    assert index.shape == (64, 64) and index.dtype == np.uint8 and index.max() < NUM_CLASSES
    assert parser.input_size == 64 and (index == rendered.mask).mean() > 0.9
    big = parse_face(Image.fromarray(rendered.image).resize((200, 260)), parser, 512)  # oblong: centre-cropped
    assert big.shape == (512, 512)
    mask, preview = write_parsed_mask(index, Image.fromarray(rendered.image), tmp_path / "out" / "m.png")
    assert np.array_equal(load_mask_png(mask), index) and Image.open(mask).mode == "P"
    assert Image.open(preview).size == (192, 64)
    with pytest.raises(DataError, match="ending in .png"):
        write_parsed_mask(index, Image.fromarray(rendered.image), tmp_path / "m.jpg")


def test_bisenet_weights_are_used_when_given(tmp_path):
    from ldm.evaluation.bisenet import BiSeNet

    torch.manual_seed(0)
    weights = tmp_path / "79999_iter.pth"
    torch.save({f"module.{k}": v for k, v in BiSeNet().state_dict().items()}, weights)
    model = load_face_parser(bisenet_weights=weights)
    assert model.input_size == 512 and model.name.startswith("BiSeNet")
    index = parse_face(Image.new("RGB", (300, 300), (200, 150, 120)), model, 64)
    assert index.shape == (64, 64) and index.max() < NUM_CLASSES


def test_photos_of_the_wrong_size_or_kind_are_refused(tmp_path):
    for size, message in (((20, 20), "at least 32x32"), ((100, 400), "more than 2 times as long")):
        with pytest.raises(DataError, match=message):
            check_photo(Image.new("RGB", size), "p.png")
    grey = tmp_path / "grey.png"
    Image.new("LA", (40, 40), (10, 0)).save(grey)  # transparent grey: flattened on white
    assert np.asarray(read_photo(grey)).min() == 255
    wide = tmp_path / "wide16.png"
    Image.new("I;16", (40, 40)).save(wide)
    with pytest.raises(DataError, match="not an 8-bit photo"):
        read_photo(wide)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="^photo.png: cannot read the image"):
        read_photo(tmp_path / "junk.png", "photo.png")
    with pytest.raises(DataError, match="no such image"):
        read_photo(tmp_path / "none.png")


def test_parse_face_script(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script("parse_face").main(["--help"])
    assert exit_info.value.code == 0 and "--bisenet-weights" in capsys.readouterr().out
    face = faceworld_face(tmp_path)
    out = tmp_path / "masks" / "face.png"
    assert script("parse_face").main(["--image", str(face), "--out", str(out), "--size", "128", "--device", "cpu"]) == 0
    assert load_mask_png(out).shape == (128, 128) and (tmp_path / "masks" / "face_preview.png").is_file()
    assert "FaceWorld parser" in capsys.readouterr().out
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (16, 16)).save(tiny)
    for argv, message in (
        (["--image", str(tiny), "--out", str(out)], "tiny.png: image is 16x16; a face photo must be at least 32x32"),
        (["--image", str(face), "--out", str(out), "--size", "8"], "--size 8 is out of range"),
        (["--image", str(face), "--out", str(out), "--parser", str(tmp_path / "no.safetensors")], "FaceWorld parser"),
        (["--image", str(face), "--out", str(out), "--bisenet-weights", str(tmp_path / "no.pth")], "no.pth does not exist"),
    ):
        assert script("parse_face").main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err


# ---- editing ---------------------------------------------------------------------------------------------


def test_edit_requests_and_targets_are_checked():
    assert EditRequest("text", "x", alphas="0, 1.5").options().alphas == (0.0, 1.5)
    for request, message in (
        (EditRequest("text", "x", alphas="a,b"), "not a comma list of numbers"),
        (EditRequest("text", "x", embed_steps=-1), "--embed-steps -1 is out of range"),
        (EditRequest("text", "x", seed=2**31), "seed 2147483648 is out of range"),
        (EditRequest("text", "x", steps=0), "steps 0 is out of range"),
        (EditRequest("text", "x", preset="nope"), "unknown collaborative preset"),
    ):
        with pytest.raises(UserError, match=message):
            request.options()
    assert EditRequest("text", "x", sampler="unipc", eta=0.3).options().eta is None  # eta is DDIM's only
    mask = me.blank_face()
    assert set(edit_targets("collaborative", " He is old. ", mask)) == {"text", "seg_mask"}
    assert edit_targets("text", "He is old.", None)["text"] == ["He is old."]
    assert edit_targets("mask", "", mask)["seg_mask"].shape == (1, NUM_CLASSES, 1024)
    for mode, caption, m, message in (("text", " ", None, "empty target caption"), ("mask", "", None, "no target mask"),
                                       ("collaborative", "x", None, "no target mask"), ("swap", "x", mask, "unknown edit mode")):
        with pytest.raises(UserError, match=message):
            edit_targets(mode, caption, m)


def test_an_edit_copies_only_the_unets_it_fine_tunes(model):
    private = model_for_edit(model, ["text"])
    assert private is not model and private.experts["text"].unet is not model.experts["text"].unet
    assert private.experts["text"].cond_encoder is model.experts["text"].cond_encoder
    assert private.experts["seg_mask"] is model.experts["seg_mask"] and private.vae is model.vae
    assert private.diffusers is model.diffusers
    shared = {id(p) for p in model.parameters()}
    copied = [p for p in private.experts["text"].unet.parameters()]
    assert not any(id(p) in shared for p in copied)
    assert all(torch.equal(a, b) for a, b in zip(copied, model.experts["text"].unet.parameters()))


def test_app_edits_take_the_models_learning_rates_and_strength():
    """The page sets steps, α and sampling; the learning rates and stage C's start come from the model's config
    (its edit: section, else the released values), as edit.py takes them, and the page's command repeats them."""
    from ldm.config import load_config
    from ldm.editing import edit_defaults

    released = EditRequest("text", "x").options()
    assert (released.embed_lr, released.finetune_lr, released.strength) == (1e-3, 1e-6, 1.0)
    options = EditRequest("text", "x").options(edit_defaults(load_config("configs/faceworld/codiff.yaml"), "text"))
    assert (options.embed_lr, options.finetune_lr, options.strength) == (1e-2, 1e-4, 0.5)
    assert (options.embed_steps, options.finetune_steps) == (100, 200)  # the page's own stage lengths
    command = edit_command(SOURCE, "text", Path("face.png"), "x", None, options, Path("out"))
    assert "--strength 0.5" in command and "--finetune-lr 0.0001" in command


def test_app_edits_resume_cancel_and_match_edit_py(model, tmp_path, capsys):
    photo = Image.open(faceworld_face(tmp_path))
    request = EditRequest("collaborative", "This man is in his forties.", embed_steps=2, finetune_steps=2, alphas="0,1",
                          steps=2, sampler="ddim")
    target = me.blank_face()
    run = prepare_run(tmp_path / "edits", photo, target, request, SOURCE)
    again = prepare_run(tmp_path / "edits", photo, target, request, SOURCE)  # the same inputs: the same folder
    assert (again.out_dir, again.command, again.provenance) == (run.out_dir, run.command, run.provenance)
    other = prepare_run(tmp_path / "edits", photo, target, EditRequest(**{**request.__dict__, "caption": "She is old."}), SOURCE)
    assert other.out_dir != run.out_dir
    before = [p.clone() for p in model.experts["text"].unet.parameters()]

    # cancelled during stage B of the text expert: stage A's file stays, nothing after it is written
    cancel = threading.Event()

    def stop_in_b(stage, done, total):
        if stage.startswith("B: fine-tune (text)"):
            cancel.set()

    with pytest.raises(Cancelled):
        execute(model, run, stop_in_b, cancel)
    assert (run.out_dir / "embedding_text.safetensors").is_file() and not (run.out_dir / "expert_text.safetensors").exists()

    stages = []
    result = execute(model, run, lambda s, d, n: stages.append(s))
    assert result.skipped == ["embedding_text"] and len(result.images) == 2
    assert "B: fine-tune (text)" in stages and "C: alpha sweep" in stages and "A: embedding (text)" not in stages
    assert all(torch.equal(a, b) for a, b in zip(before, model.experts["text"].unet.parameters()))  # shared weights untouched

    # the page's edit.py command resumes the very same run: every stage is found finished
    args = shlex.split(run.command)
    assert args[:2] == ["python", "scripts/edit.py"] and args[args.index("--out") + 1] == str(run.out_dir)
    assert script("edit").main(args[2:]) == 0
    assert "2 alpha images" in capsys.readouterr().out
    settings = json.loads((run.out_dir / "settings.json").read_text())
    assert settings["image"] == str(run.image) and settings["mask"] == str(run.mask) and settings["text"] == request.caption
    assert edit_command(SOURCE, "text", run.image, "a b", None, run.options, run.out_dir).count("--mask") == 0


def test_the_service_turns_page_values_into_results_and_messages(model, parser, tmp_path):
    service = AppService(model=model, source=SOURCE, store=SessionStore(tmp_path), parser=parser,
                         faceworld=me.faceworld_source(SHIPPED / "recipe.json"), max_upload_bytes=2**20)
    assert "experts seg_mask, text" in service.describe() and "FaceWorld parser" in service.describe()
    assert service.edit_modes() == ["collaborative", "text", "mask"]
    start = service.start_faceworld("9003: anything after the colon")
    assert start.caption and start.picture.shape == (256, 256, 3)
    with pytest.raises(UserError, match="choose a FaceWorld test sample"):
        service.start_faceworld("")
    assert service.start_upload(str(RELEASED_MASK)).message.startswith("Mask 29980.png (256x256)")
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"0" * (2**20 + 1))
    with pytest.raises(DataError, match="huge.png is 1.0 MB; the limit is 1 MB"):
        service.start_upload(str(huge))
    assert service.start_photo(str(faceworld_face(tmp_path))).message.startswith("Parsed with the FaceWorld parser")
    narrow = tmp_path / "narrow.png"
    Image.new("RGB", (40, 200)).save(narrow)
    with pytest.raises(DataError, match="narrow.png: image is 40x200"):
        service.start_photo(str(narrow))
    layer = np.zeros((256, 256, 4), np.uint8)
    editor = {"background": start.picture, "layers": [layer], "composite": None}
    result = service.generate("s1", editor, GenerateRequest(start.caption, ("mask",), steps=2))
    assert result.images[0][0].parent.parent == tmp_path / "sessions" / "s1" / "generate"
    with pytest.raises(UserError, match="empty caption"):
        service.generate("s1", editor, GenerateRequest("", ("text",), steps=2))
    with pytest.raises(DataError, match="mask editor is empty"):
        service.generate("s1", {"background": None, "layers": []}, GenerateRequest("x", ("text",), steps=2))
    no_parser = AppService(model=model, source=SOURCE, store=SessionStore(tmp_path))
    with pytest.raises(UserError, match="photo -> mask is off"):
        no_parser.start_photo(str(narrow))


def test_app_script_help_and_startup_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        script("app").main(["--help"])
    assert exit_info.value.code == 0 and "--bisenet-weights" in capsys.readouterr().out
    app = script("app")
    assert app.session_id(type("Request", (), {"session_hash": "ab/../c"})()) == "ab____c"  # a plain folder name
    assert app.session_id(None) == "anonymous"
    monkeypatch.setitem(sys.modules, "gradio", None)  # as without the app extra
    assert app.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: the app needs Gradio: pip install -e .[app] (or make app)"
    args = app.parse(["--ckpt", str(SHIPPED / "vae.safetensors"), "--out", str(tmp_path)])
    with pytest.raises(UserError, match="vae.safetensors"):  # a checkpoint that does not match the config
        app.build_service(args)
    with pytest.raises(UserError, match="--ckpt"):
        app.build_service(app.parse(["--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path)]))
    with pytest.raises(UserError, match="--max-upload-mb 0 is out of range"):
        app.build_service(app.parse(["--max-upload-mb", "0", "--out", str(tmp_path)]))
