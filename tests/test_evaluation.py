"""Evaluation: metrics on hand-made tensors, sharding and merging, the real-data networks' key layouts and
missing-file errors, and evaluate.py / sharded generate.py end to end on the tiny chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm import distributed
from ldm.data.masks import CLASS_NAMES, index_mask_to_onehot, onehot_to_index
from ldm.errors import CheckpointError, UserError
from ldm.evaluation import metrics, real_metrics
from ldm.evaluation.bisenet import BISENET_CLASS_NAMES, BISENET_TO_RELEASED, BiSeNet
from ldm.evaluation.fid_inception import FIDInceptionV3

from conftest import ASSETS, REPO, script

MASK = ASSETS / "256_masks" / "29980.png"


# ---------------------------------------------------------------------------------------------------------
# Metrics


def test_mask_pixel_accuracy_known_values():
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    pred = target.clone()
    pred[1, :8] = 5  # a quarter of the second mask wrong
    assert metrics.mask_pixel_accuracy(pred, target).tolist() == [1.0, 0.75]


def test_parser_accuracy_at_32_from_larger_logits():
    index = torch.randint(0, 19, (2, 32, 32))
    onehot = torch.nn.functional.one_hot(index.flatten(1), 19).permute(0, 2, 1).float()  # [B, 19, 1024]
    big = index.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 128 x 128
    logits = torch.nn.functional.one_hot(big, 19).permute(0, 3, 1, 2).float()
    assert metrics.parser_mask_accuracy(logits, onehot).tolist() == [1.0, 1.0]
    logits[1, :, :64] = 0
    logits[1, 7, :64] = 1  # top half says class 7
    expected = 0.5 + 0.5 * (index[1, :16] == 7).float().mean()
    assert metrics.parser_mask_accuracy(logits, onehot)[1].item() == pytest.approx(expected.item())


def test_resize_matches_the_condition_preprocessing():
    """Downsampling the parser's map picks the same pixels as the PIL nearest resize that made the condition."""
    rng = np.random.default_rng(0)
    for size in (64, 100, 256):
        index = rng.integers(0, 19, (size, size)).astype(np.uint8)
        condition = onehot_to_index(index_mask_to_onehot(index))
        ours = metrics.resize_index_masks(torch.from_numpy(index).long()[None])[0]
        assert torch.equal(ours, condition), size


def test_attribute_text_and_joint_accuracy():
    logits = {"age": torch.tensor([[0.0, 9, 0, 0, 0], [9, 0, 0, 0, 0]]), "beard": torch.tensor([[9.0, 0, 0, 0], [9, 0, 0, 0]]),
              "gender": torch.zeros(2, 2)}
    labels = {"age": torch.tensor([1, 2]), "beard": torch.tensor([0, 0])}
    correct = metrics.attribute_correct(logits, labels)
    assert correct["age"].tolist() == [1.0, 0.0] and correct["beard"].tolist() == [1.0, 1.0]
    text = metrics.text_accuracy(correct)
    assert text.tolist() == [1.0, 0.5]
    assert metrics.joint_accuracy(torch.tensor([0.8, 0.6]), text).tolist() == pytest.approx([0.8, 0.3])
    with pytest.raises(ValueError, match="no head"):
        metrics.attribute_correct({"age": logits["age"]}, labels)


def test_frechet_distance_identical_sets_is_zero():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert metrics.frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)
    rank_deficient = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))  # N < D: singular covariance
    assert metrics.frechet_distance_features(rank_deficient, rank_deficient) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_closed_forms():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # commuting (diagonal) case
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert metrics.frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)
    # non-commuting full covariances: tr((S1 S2)^1/2) from the eigenvalues of S1 S2 (real, non-negative)
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = m1 @ m1.T, m2 @ m2.T
    trace = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    assert metrics.frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(np.trace(s1) + np.trace(s2) - 2 * trace, rel=1e-9)


def test_gaussian_fit_float64():
    x = torch.randn(50, 4, dtype=torch.float32, generator=torch.Generator().manual_seed(2))
    mu, sigma = metrics.gaussian_fit(x)
    assert mu.dtype == np.float64 and np.allclose(sigma, np.cov(x.double().numpy(), rowvar=False))


# ---------------------------------------------------------------------------------------------------------
# Sharding


def test_shards_cover_every_unit_exactly_once():
    for n in range(0, 41):
        for world in range(1, 10):
            blocks = [distributed.shard_range(n, distributed.Shard(r, world)) for r in range(world)]
            flat = [i for b in blocks for i in b]
            assert flat == list(range(n)), (n, world)
            sizes = [len(b) for b in blocks]
            assert max(sizes) - min(sizes) <= 1


def test_batch_seed_known_values():
    """The noise seed of a global batch is the same on every numpy release (no uint64 arithmetic)."""
    from ldm.seeding import batch_seed

    assert batch_seed(0, 0) == 7896617691693857887
    assert batch_seed(1234, 7) == 6572324068835722780
    assert batch_seed(1234, 8) != batch_seed(1234, 7)


def test_shard_from_flag_and_environment():
    assert distributed.shard_from_env("1/4", {}) == distributed.Shard(1, 4)
    assert distributed.shard_from_env(None, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == distributed.Shard(3, 8, 1)
    assert distributed.shard_from_env(None, {"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_LOCALID": "0"}) == distributed.Shard(2, 3)
    assert distributed.shard_from_env(None, {}) == distributed.Shard(0, 1)
    assert distributed.device_for(distributed.Shard(3, 8, 1), "cuda", num_gpus=4) == "cuda:1"
    # more processes than GPUs (torchrun --nproc-per-node 2 on one GPU): the ranks share the GPUs in turn
    assert [distributed.device_for(distributed.Shard(r, 3, r), "cuda", num_gpus=2) for r in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert distributed.device_for(distributed.Shard(1, 2, 1), "cpu", num_gpus=0) == "cpu"
    with pytest.raises(UserError, match="no GPU"):
        distributed.device_for(distributed.Shard(1, 2, 1), "cuda", num_gpus=0)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(UserError, match="shard"):
            distributed.shard_from_env(bad, {})


@pytest.mark.parametrize("name", ["evaluate", "generate"])
def test_torchrun_leaves_the_sharded_scripts_flags_to_them(name, monkeypatch):
    """torchrun's own parser takes any option that abbreviates one of its options (``--num`` is ambiguous with
    its ``--numa-binding`` and stops it): every option of a script that shards under torchrun has a spelling
    that torchrun passes on to the script untouched."""
    from torch.distributed.run import get_args_parser

    module = script(name)
    parsers = []

    def recording_make_parser(doc):
        parsers.append(module_make_parser(doc))
        return parsers[-1]

    module_make_parser = module.make_parser
    monkeypatch.setattr(module, "make_parser", recording_make_parser)
    module.parse(["--config", "c", "--ckpt", "k"])
    torchrun = get_args_parser()
    theirs = [o for action in torchrun._actions for o in action.option_strings]
    script_args = []
    for action in parsers[0]._actions:
        safe = [o for o in action.option_strings if o.startswith("--") and not any(t.startswith(o) for t in theirs)]
        if action.option_strings and action.dest != "help":
            assert safe, f"{name}.py {action.option_strings}: torchrun takes every spelling for one of its own options"
            script_args += [safe[0]] + ([] if action.nargs == 0 else ["1"])
    parsed = torchrun.parse_args(["--nproc-per-node", "2", f"scripts/{name}.py", *script_args])
    assert parsed.training_script_args == script_args and parsed.nproc_per_node == "2"


def test_write_and_gather_any_order(tmp_path):
    n, world = 7, 3
    shards = [distributed.Shard(r, world) for r in range(world)]
    order = [2, 0, 1]
    for step, r in enumerate(order):
        units = distributed.shard_range(n, shards[r])
        records = [{"unit": u, "value": u * 10} for u in units]
        features = {"f": torch.tensor([[float(u)] for u in units]).reshape(-1, 1)}
        distributed.write_shard(tmp_path, shards[r], "sig", n, units, records, features, extra={"rank": r})
        gathered = distributed.try_gather(tmp_path, "sig", world, n)
        assert (gathered is None) == (step < world - 1)
    assert [r["unit"] for r in gathered.records] == list(range(n))
    assert gathered.tensors["f"][:, 0].tolist() == list(range(n))
    assert distributed.try_gather(tmp_path, "other run", world, n) is None  # never mixes runs
    # a shard claiming another rank's unit is refused
    distributed.write_shard(tmp_path, shards[0], "sig", n, [0, 1, 2], [{"unit": 2}])
    with pytest.raises(UserError, match="claimed by ranks"):
        distributed.try_gather(tmp_path, "sig", world, n)


def test_two_processes_gather(tmp_path):
    """Two real processes (torchrun-style environment) write their shards; the last one merges."""
    code = textwrap.dedent("""
        import json, sys
        from ldm import distributed
        shard = distributed.shard_from_env()
        units = distributed.shard_range(11, shard)
        distributed.write_shard(sys.argv[1], shard, "sig", 11, units, [{"unit": u, "rank": shard.rank} for u in units])
        g = distributed.try_gather(sys.argv[1], "sig", shard.world_size, 11)
        print(json.dumps(None if g is None else [r["unit"] for r in g.records]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    merged = [o for o in outs if o is not None]
    assert merged and all(o == list(range(11)) for o in merged)  # at least the last process merged
    final = distributed.try_gather(tmp_path, "sig", 2, 11)
    assert [r["unit"] for r in final.records] == list(range(11))


# ---------------------------------------------------------------------------------------------------------
# Real-data networks: key layouts, remapping, loading, missing files


def test_fid_inception_layout_and_forward(tmp_path):
    with torch.device("meta"):
        state = FIDInceptionV3().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in shapes)
    net = FIDInceptionV3().eval()
    # the released file has no num_batches_tracked counters; it loads strictly without them
    file = tmp_path / real_metrics.FID_WEIGHTS_FILE
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, file)
    loaded = real_metrics.load_fid_inception(file)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    features = real_metrics.inception_features(loaded, images)
    assert features.shape == (1, 2048) and features.dtype == torch.float64 and torch.isfinite(features).all()
    torch.save({**net.state_dict(), "extra.weight": torch.zeros(1)}, file)
    with pytest.raises(CheckpointError, match="unexpected: extra.weight"):
        real_metrics.load_fid_inception(file)


def test_bisenet_layout_remap_and_forward(tmp_path):
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in BiSeNet().state_dict().items()}
    assert shapes["cp.resnet.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["cp.resnet.layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["cp.resnet.layer4.1.bn2.running_mean"] == (512,)
    assert shapes["cp.arm16.conv.conv.weight"] == (128, 256, 3, 3)
    assert shapes["cp.arm32.conv_atten.weight"] == (128, 128, 1, 1)
    assert shapes["cp.conv_avg.conv.weight"] == (128, 512, 1, 1)
    assert shapes["ffm.convblk.conv.weight"] == (256, 256, 1, 1)
    assert shapes["ffm.conv1.weight"] == (64, 256, 1, 1)
    assert shapes["conv_out.conv_out.weight"] == (19, 256, 1, 1)
    assert shapes["conv_out16.conv_out.weight"] == (19, 64, 1, 1)
    assert not any(k.startswith("sp.") or k.startswith("cp.resnet.fc") for k in shapes)
    # the class remapping: a permutation that sends each BiSeNet class to the released class of the same name
    assert sorted(BISENET_TO_RELEASED) == list(range(19))
    assert all(CLASS_NAMES[BISENET_TO_RELEASED[k]] == name for k, name in enumerate(BISENET_CLASS_NAMES))
    assert [BISENET_TO_RELEASED[k] for k in (10, 16, 17, 6)] == [2, 18, 13, 3]  # nose, cloth, hair, eye_g
    net = BiSeNet().eval()
    file = tmp_path / real_metrics.BISENET_WEIGHTS_FILE
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, file)  # as saved from DataParallel
    loaded = real_metrics.load_bisenet(file)
    channel = 17  # the network says "hair" everywhere
    loaded.network_logits = lambda x: torch.nn.functional.one_hot(torch.full((x.shape[0], *x.shape[2:]), channel), 19).permute(0, 3, 1, 2).float()
    logits = loaded(torch.zeros(1, 3, 32, 32), input_size=64)
    assert logits.shape == (1, 19, 32, 32) and (logits.argmax(1) == CLASS_NAMES.index("hair")).all()
    out = BiSeNet().eval()(torch.rand(1, 3, 32, 32) * 2 - 1, input_size=64)  # the real forward, tiny input
    assert out.shape == (1, 19, 32, 32) and torch.isfinite(out).all()


def _tiny_clip_dir(path: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,'!?")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    # the files every transformers release reads (its constructor's arguments changed in 5.0)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer.from_pretrained(path).save_pretrained(path)
    return path


def test_clip_similarity_from_a_local_folder(tmp_path):
    clip = real_metrics.load_clip(_tiny_clip_dir(tmp_path / "clip"))
    images = torch.rand(3, 3, 48, 40) * 2 - 1
    sims = clip(images, ["she is a teen.", "he has a long beard.", "x"])
    assert sims.shape == (3,) and sims.dtype == torch.float64 and (sims.abs() <= 1 + 1e-6).all()
    assert clip.preprocess(images).shape == (3, 3, 32, 32)


@pytest.mark.parametrize("load, arg, flag, name", [
    (real_metrics.load_fid_inception, "missing.pth", "--fid-weights", real_metrics.FID_WEIGHTS_FILE),
    (real_metrics.load_fid_inception, None, "--fid-weights", real_metrics.FID_WEIGHTS_FILE),
    (real_metrics.load_bisenet, "missing.pth", "--bisenet-weights", real_metrics.BISENET_WEIGHTS_FILE),
    (real_metrics.load_clip, "missing_dir", "--clip-dir", "config.json"),
    (real_metrics.load_clip, None, "--clip-dir", "CLIP"),
])
def test_missing_real_data_weights_say_which_file(load, arg, flag, name):
    with pytest.raises(CheckpointError) as err:
        load(arg)
    assert flag in str(err.value) and name in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# End to end on the tiny chain


@pytest.fixture(scope="module")
def chain(tiny_chain):
    """The session's tiny chain plus random tiny evaluators (safetensors + yaml)."""
    from ldm.fileio import save_safetensors
    from ldm.modules.attribute_classifier import AttributeClassifier
    from ldm.modules.face_parser import FaceParser

    root = tiny_chain["root"]
    evaluators = root / "evaluators"
    evaluators.mkdir(exist_ok=True)
    torch.manual_seed(0)
    # the parser as the FaceWorld recipe ships it (float16 keys 'parser.*', the training module's config) ...
    parser = {f"parser.{k}": v.half() for k, v in FaceParser(width=8).state_dict().items()}
    save_safetensors(parser, evaluators / "parser.safetensors")
    (evaluators / "parser.yaml").write_text("model: {target: ldm.models.evaluators.FaceParserModule, params: "
                                            "{parser: {target: ldm.modules.face_parser.FaceParser, params: {width: 8}}}}\n")
    # ... and the classifier as a bare network with its own config
    save_safetensors(AttributeClassifier(width=8).state_dict(), evaluators / "classifier.safetensors")
    (evaluators / "classifier.yaml").write_text("model: {target: ldm.modules.attribute_classifier.AttributeClassifier, params: {width: 8}}\n")
    return {**tiny_chain, "evaluators": evaluators}


def evaluate_argv(chain, out, *extra):
    return ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["codiff"]), "--data", str(chain["data"]),
            "--num", "4", "--steps", "2", "--batch-size", "2", "--out", str(out), "--device", "cpu",
            "--parser", str(chain["evaluators"] / "parser.safetensors"),
            "--classifier", str(chain["evaluators"] / "classifier.safetensors"), *extra, *chain["overrides"]]


def test_evaluate_end_to_end_and_sharded_merge(chain, tmp_path, capsys):
    whole = tmp_path / "whole"
    doc = tmp_path / "docs" / "faceworld_results.md"
    assert script("evaluate").main(evaluate_argv(chain, whole, "--write-doc", str(doc))) == 0
    printed = capsys.readouterr().out
    assert printed.index("face parser pixel accuracy") < printed.index("| method |")  # evaluators first
    assert "retrain the evaluators" in printed  # random evaluators are far below 95%
    results = json.loads((whole / "results.json").read_text())
    table = results["results"]
    assert set(table) == {"text", "mask", "composable", "collaborative", "VAE reconstruction", "real test images"}
    assert table["VAE reconstruction"]["n"] == 4 and results["claim"] and all(c[:4] in ("PASS", "FAIL") for c in results["claim"])
    assert "The paper's claim" in doc.read_text()
    for method in ("text", "mask", "composable", "collaborative"):
        row = table[method]
        assert row["n"] == 4 and 0 <= row["mask_accuracy"] <= 1 and 0 <= row["joint_accuracy"] <= row["mask_accuracy"] + 1e-9
        assert row["frechet_distance"] >= 0 and {"age", "beard", "text_accuracy"} <= set(row)
    assert "| collaborative |" in (whole / "results.md").read_text() and "N = 4" in doc.read_text()
    # the same run in two shards (one after the other; two methods to save time): the second merges, and every
    # number equals the unsharded run's (each batch's seed depends on the batch alone, not on the shard)
    sharded = tmp_path / "sharded"
    two = ("--methods", "collaborative,mask")
    assert script("evaluate").main(evaluate_argv(chain, sharded, "--shard", "1/2", *two)) == 0
    assert not (sharded / "results.json").exists()
    assert script("evaluate").main(evaluate_argv(chain, sharded, "--shard", "0/2", *two)) == 0
    merged = json.loads((sharded / "results.json").read_text())["results"]
    assert set(merged) == {"collaborative", "mask", "VAE reconstruction", "real test images"}
    for method, row in merged.items():
        for key, value in table[method].items():
            assert merged[method][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (method, key)


def test_evaluate_real_data_flags_missing_files(chain, tmp_path, capsys):
    for flag, name in (("--fid-weights", "pt_inception"), ("--bisenet-weights", "79999_iter.pth"), ("--clip-dir", "config.json")):
        assert script("evaluate").main(evaluate_argv(chain, tmp_path, flag, str(tmp_path / "absent"))) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and flag in err and name in err and "\n" not in err


def test_evaluate_missing_evaluator_says_how_to_get_it(chain, tmp_path, capsys):
    argv = evaluate_argv(chain, tmp_path)
    argv[argv.index("--parser") + 1] = str(tmp_path / "nope.safetensors")
    assert script("evaluate").main(argv) == 2
    assert "--parser" in capsys.readouterr().err


def test_generate_sharded_pairs_and_batch(chain, tmp_path):
    """--conditions pairs over 2 shards, and one condition's batch over 2 shards: nothing lost or repeated, and
    the first slice / every pair equals an unsharded run with the same seed."""
    gen = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["codiff"]), "--steps", "2", "--method", "collaborative"]
    pairs = [{"mask": str(MASK), "text": "He is elderly.", "name": "a"}, {"mask": str(MASK), "text": "She is a teen."}]
    file = tmp_path / "pairs.json"
    file.write_text(json.dumps(pairs))
    out = tmp_path / "pairs"
    for rank in (1, 0):
        argv = [*gen, "--conditions", str(file), "--batch-size", "1", "--shard", f"{rank}/2", "--out", str(out), *chain["overrides"]]
        assert script("generate").main(argv) == 0
        assert (out / "manifest.json").exists() == (rank == 0)  # the last one to finish merges
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["name"] for r in manifest] == ["a", "0001"]
    assert all((out / name / "grid.png").is_file() for name in ("a", "0001"))

    single = tmp_path / "single"
    for rank in (0, 1):  # batch of 3 split 1 + 2; the slice at sample a is seeded seed + a
        argv = [*gen, "--mask", str(MASK), "--text", "She is a teen.", "--batch-size", "3", "--shard", f"{rank}/2",
                "--out", str(single), *chain["overrides"]]
        assert script("generate").main(argv) == 0
    manifest = json.loads((single / "manifest.json").read_text())
    assert [r["unit"] for r in manifest] == [0, 1, 2]
    files = [r["files"]["collaborative"] for r in manifest]
    assert files == ["collaborative_seed0_000.png", "collaborative_seed1_000.png", "collaborative_seed1_001.png"]
    assert all((single / f).is_file() for f in files) and (single / "grid.png").is_file()
    # sample 0 (seed 0, batch 1) is what the unsharded pair "0001" (same condition, seed 0, batch 1) holds
    assert (single / files[0]).read_bytes() == (out / "0001" / "collaborative_seed0_000.png").read_bytes()


def test_bad_conditions_file(chain, tmp_path, capsys):
    file = tmp_path / "pairs.csv"
    file.write_text("mask,text\n,\n")
    argv = ["--config", "configs/tiny/codiff.yaml", "--ckpt", str(chain["ckpt"]["codiff"]), "--conditions", str(file), "--out", str(tmp_path)]
    assert script("generate").main(argv) == 2
    assert "neither a mask nor a text" in capsys.readouterr().err


def test_evaluate_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        script("evaluate").main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "torchrun" in out and "--fid-weights" in out and "--shard" in out


def test_the_doc_command_leaves_out_sharding_flags():
    module = script("evaluate")
    argv = ["--config", "C", "--shard", "1/2", "--merge-only", "--shard=0/2", "--num", "5"]
    assert module.reproducing_argv(argv) == ["--config", "C", "--num", "5"]
