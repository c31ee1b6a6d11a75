"""The app as a server: scripts/app.py on a free localhost port with the shipped FaceWorld models, driven through
its API with gradio_client: a generate request, an edit request (then the same again, resumed), bad inputs that
come back as messages while the server keeps serving, and two clients at once that each get their own results.
Skipped without the app extra (pip install -e .[app]); CI installs it (make venv-app)."""

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e .[app]")
gradio_client = pytest.importorskip("gradio_client")

from app_server import running_app  # noqa: E402
from conftest import REPO  # noqa: E402
from ldm.app import mask_editor as me  # noqa: E402
from ldm.app.generate import condition_picture  # noqa: E402
from ldm.data import faceworld  # noqa: E402

SOURCE = me.faceworld_source(REPO / "checkpoints" / "faceworld" / "recipe.json")
FIRST = SOURCE.test_indices.start


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("app")
    with running_app(out) as url:
        yield url, out


def client(url):
    return gradio_client.Client(url, verbose=False, download_files=True)


def editor_value(path):
    return {"background": gradio_client.handle_file(path), "layers": [], "composite": None, "id": None}


def generate(c, editor, caption, methods, steps=2, seed=0):
    return c.predict(editor, caption, methods, "ddim", steps, 1.0, seed, "paper", api_name="/generate")


def test_generate_request(server):
    url, _ = server
    c = client(url)
    editor, caption, message = c.predict(str(FIRST + 3), api_name="/start_faceworld")
    assert message.startswith(f"FaceWorld test sample {FIRST + 3}") and caption
    gallery, conditions, frame, slider, animation, status = generate(c, editor_value(editor["background"]), caption,
                                                                     ["collaborative", "composable", "text", "mask"])
    assert status.startswith("Done: DDIM 2 steps"), status
    assert [item["caption"] for item in gallery] == ["collaborative", "composable", "text only", "mask only"]
    assert all(Image.open(item["image"]).size == (256, 256) for item in gallery)
    assert Path(frame).name == "frame_001.png" and Path(animation).suffix == ".gif" and slider["maximum"] == 1
    index, _ = me.faceworld_test_mask(SOURCE, FIRST + 3)
    expected = condition_picture(me.resize_index(index, me.EDITOR_SIZE))
    assert np.array_equal(np.asarray(Image.open(conditions).convert("RGB")), expected)


def test_edit_request_and_its_resume(server, tmp_path):
    url, out = server
    c = client(url)
    face = tmp_path / "face.png"
    Image.fromarray(faceworld.render_sample(SOURCE.seed, FIRST + 5, 64).image).save(face)
    target, message = c.predict(gradio_client.handle_file(str(face)), api_name="/target_from_face")
    assert message.startswith("Target mask parsed")
    args = (gradio_client.handle_file(str(face)), editor_value(target["background"]), "collaborative", "He is in his seventies.",
            1, 1, "0,1", "ddim", 2, 1.0, 0, "paper")
    sweep, grid, slider, selected, info, status = c.predict(*args, api_name="/edit")
    assert status.startswith("Edited: 2 α images. Run directory"), status
    assert [item["caption"] for item in sweep] == ["α = 0", "α = 1"] and Path(grid).name == "grid.png"
    assert "scripts/edit.py" in info and "--mode collaborative" in info
    run_dirs = list((out / "files" / "sessions").glob("*/edit/collaborative_*"))
    assert len(run_dirs) == 1 and (run_dirs[0] / "expert_seg_mask.safetensors").is_file()
    *_, status = c.predict(*args, api_name="/edit")
    assert "resumed: 6 finished stages reused" in status, status


def test_bad_inputs_are_messages_and_the_server_keeps_serving(server, tmp_path):
    url, _ = server
    c = client(url)
    editor, caption, _ = c.predict(str(FIRST), api_name="/start_faceworld")
    *_, status = generate(c, editor_value(editor["background"]), "  ", ["collaborative"])
    assert status.startswith("Error: empty caption"), status
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.full((64, 64, 3), (10, 20, 30), np.uint8)).save(wrong)
    _, status = c.predict(gradio_client.handle_file(str(wrong)), api_name="/start_upload")
    assert status.startswith("Error: wrong.png: 4096 pixels have colours matching no class"), status
    narrow = tmp_path / "narrow.png"
    Image.new("RGB", (40, 300), (200, 150, 120)).save(narrow)
    _, status = c.predict(gradio_client.handle_file(str(narrow)), api_name="/start_photo")
    assert "is 40x300, more than 2 times as long as it is wide" in status, status
    photo = Image.new("RGB", (64, 64))
    photo.save(tmp_path / "plain.png")
    *_, status = c.predict(gradio_client.handle_file(str(tmp_path / "plain.png")), None, "text", "", 1, 1, "0", "ddim", 2,
                           1.0, 0, "paper", api_name="/edit")
    assert status == "Error: empty target caption; the text only edit needs one", status
    *_, status = c.predict(gradio_client.handle_file(str(tmp_path / "plain.png")), None, "text", "x", 1, 1, "0,zero", "ddim",
                           2, 1.0, 0, "paper", api_name="/edit")
    assert status.startswith("Error: --alphas '0,zero' is not a comma list"), status
    *_, status = generate(c, editor_value(editor["background"]), caption, ["mask"])  # still serving
    assert status.startswith("Done"), status


def test_two_clients_at_once_get_their_own_results(server):
    url, out = server
    results, errors = {}, []

    def user(k):
        try:
            c = client(url)
            editor, caption, _ = c.predict(str(FIRST + 10 + k), api_name="/start_faceworld")
            gallery, conditions, *_, status = generate(c, editor_value(editor["background"]), caption, ["mask"], seed=k)
            results[k] = (caption, conditions, status)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and sorted(results) == [0, 1]
    for k, (caption, conditions, status) in results.items():
        assert status.startswith("Done"), status
        index, expected_caption = me.faceworld_test_mask(SOURCE, FIRST + 10 + k)
        assert caption == expected_caption
        expected = condition_picture(me.resize_index(index, me.EDITOR_SIZE))
        assert np.array_equal(np.asarray(Image.open(conditions).convert("RGB")), expected)  # its own mask, not the other's
    sessions = [p for p in (out / "files" / "sessions").iterdir() if (p / "generate").is_dir()]
    assert len(sessions) >= 2  # each client wrote into a folder of its own
