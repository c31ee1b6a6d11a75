"""scripts/vae_ceiling.py: the evaluators on real test images and on their VAE reconstructions."""

from __future__ import annotations

import json

import torch

from ldm.fileio import save_safetensors
from ldm.evaluation.vae_ceiling import ceiling_scores

from conftest import script


def evaluators(folder):
    from ldm.modules.attribute_classifier import AttributeClassifier
    from ldm.modules.face_parser import FaceParser

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_safetensors(FaceParser(width=8).state_dict(), folder / "parser.safetensors")
    (folder / "parser.yaml").write_text("model: {target: ldm.modules.face_parser.FaceParser, params: {width: 8}}\n")
    save_safetensors(AttributeClassifier(width=8).state_dict(), folder / "classifier.safetensors")
    (folder / "classifier.yaml").write_text("model: {target: ldm.modules.attribute_classifier.AttributeClassifier, params: {width: 8}}\n")
    return folder / "parser.safetensors", folder / "classifier.safetensors"


def test_vae_ceiling_scores_real_and_reconstructed_images(tiny_chain, tmp_path, capsys):
    parser, classifier = evaluators(tmp_path / "evaluators")
    argv = ["--config", "configs/tiny/vae.yaml", "--ckpt", str(tiny_chain["ckpt"]["vae"]), "--data", str(tiny_chain["data"]),
            "--resolution", "32", "--parser", str(parser), "--classifier", str(classifier), "--json"]
    assert script("vae_ceiling").main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    real, recon = rows["real test images"], rows["VAE reconstruction"]
    assert real["images"] == recon["images"] == 5 and real["l1"] == 0.0 and recon["l1"] > 0.0
    assert {"mask_accuracy", "age", "beard"} <= set(real) and all(0.0 <= recon[k] <= 1.0 for k in ("mask_accuracy", "age", "beard"))


def test_ceiling_scores_of_perfect_evaluators_are_one():
    """An identity 'VAE' and evaluators that read the answers off the batch score 100%."""

    class Parser(torch.nn.Module):
        def forward(self, images):
            return self.truth

        def features(self, images):
            return images.flatten(1)[:, :4]

    class Classifier(torch.nn.Module):
        def forward(self, images):
            return {"age": torch.nn.functional.one_hot(torch.tensor([1, 3]), 5).float()}

    from ldm.data import masks

    index = torch.randint(0, masks.NUM_CLASSES, (2, 32, 32), generator=torch.Generator().manual_seed(0))
    onehot = torch.stack([torch.as_tensor(masks.index_mask_to_onehot(m.numpy().astype("uint8"))) for m in index]).float()
    parser = Parser()
    parser.truth = torch.nn.functional.one_hot(index, masks.NUM_CLASSES).permute(0, 3, 1, 2).float()
    parser.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))
    classifier = Classifier()
    classifier.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))
    batch = {"image": torch.zeros(2, 3, 32, 32), "seg_mask": onehot}
    scores = ceiling_scores(parser, classifier, [batch], lambda b: {"age": torch.tensor([1, 3])})
    assert scores.mask_accuracy == 1.0 and scores.attributes == {"age": 1.0} and scores.l1 == 0.0 and scores.images == 2


def test_vae_ceiling_missing_data_is_one_line(tiny_chain, tmp_path, capsys):
    argv = ["--config", "configs/tiny/vae.yaml", "--ckpt", str(tiny_chain["ckpt"]["vae"]), "--data", str(tmp_path / "nowhere"), "--num", "0"]
    assert script("vae_ceiling").main(argv) == 2
    assert "--num" in capsys.readouterr().err
