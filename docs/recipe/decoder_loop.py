"""The plain loop behind the decoder fine-tuning runs of docs/faceworld_recipe.md (section 16): a trained FaceWorld
VAE's decoder (post_quant_conv + decoder) trained further with its encoder frozen, so that the latents, and every
expert and diffuser trained on them, stay valid. L1 (the VAE's loss), optionally + a PatchGAN term (hinge, the
adaptive weight of VAELoss). Scores the result like scripts/vae_ceiling.py (posterior mean) plus the
high-frequency energy of the reconstructions against the real images' (the residual-noise check of evaluate.py).
Example:
  python docs/recipe/decoder_loop.py --steps 1500 --gan --out outputs/exp/dec_gan
"""
import argparse, json, time

import torch
from torch.utils.data import DataLoader

from ldm.callbacks import LearningRateSchedule
from ldm.checkpoints import pretrained
from ldm.data.celeba import PreprocessedFaces
from ldm.data.faceworld import load_labels
from ldm.evaluation.evaluators import label_tensors, load_evaluator
from ldm.evaluation.metrics import high_frequency_energy
from ldm.evaluation.vae_ceiling import ceiling_scores, reconstruct
from ldm.modules.autoencoder import DiagonalGaussian
from ldm.modules.discriminator import NLayerDiscriminator
from ldm.modules.vae_loss import VAELoss

p = argparse.ArgumentParser()
p.add_argument("--config", default="configs/faceworld/vae.yaml")
p.add_argument("--ckpt", default="outputs/faceworld_train/runs/vae/checkpoints/last.ckpt",
               help="the VAE stage's checkpoint (the shipped vae.safetensors already has the decoder stage)")
p.add_argument("--root", default="outputs/faceworld_train/faceworld")
p.add_argument("--evaldir", default="checkpoints/faceworld")
p.add_argument("--steps", type=int, default=1500); p.add_argument("--bs", type=int, default=16)
p.add_argument("--lr", type=float, default=2e-4); p.add_argument("--threads", type=int, default=2)
p.add_argument("--gan", action="store_true"); p.add_argument("--disc_weight", type=float, default=0.5)
p.add_argument("--ndf", type=int, default=32); p.add_argument("--dlayers", type=int, default=2)
p.add_argument("--num", type=int, default=500, help="test images scored")
p.add_argument("--eval_only", action="store_true"); p.add_argument("--out", required=True)
a = p.parse_args()
torch.set_num_threads(a.threads)
g = torch.Generator().manual_seed(0)
vae = pretrained(a.config, "vae", a.ckpt)
for m in (vae.encoder, vae.quant_conv):
    m.requires_grad_(False)
parser = load_evaluator(a.evaldir + "/parser.safetensors", "parser")
classifier = load_evaluator(a.evaldir + "/classifier.safetensors", "classifier")
test = PreprocessedFaces(a.root, split="test", resolution=64, keys=["image", "seg_mask"])
test.names = test.names[: a.num]
labels = load_labels(a.root)


def score(model):
    loader = DataLoader(test, batch_size=100, shuffle=False)
    row = ceiling_scores(parser, classifier, loader, lambda b: label_tensors(labels, b["name"]), vae=model).as_row()
    real, rec = [], []
    for b in DataLoader(test, batch_size=100, shuffle=False):
        real.append(high_frequency_energy(b["image"])); rec.append(high_frequency_energy(reconstruct(model, b["image"])))
    row["hf_ratio"] = float(torch.cat(rec).mean() / torch.cat(real).mean())
    return {k: round(v, 4) for k, v in row.items()}


log = {"before": score(vae.eval())}
print(json.dumps(log["before"]), flush=True)
if not a.eval_only:
    train = PreprocessedFaces(a.root, split="train", resolution=64, keys=["image"])
    images = torch.cat([b["image"] for b in DataLoader(train, batch_size=500)])  # [N, 3, 64, 64]
    with torch.no_grad():  # the frozen encoder's posterior, once
        moments = torch.cat([vae.quant_conv(vae.encoder(images[i:i + 500])) for i in range(0, len(images), 500)])
    disc = NLayerDiscriminator(3, a.ndf, a.dlayers) if a.gan else None
    loss_fn = VAELoss(perceptual=None, discriminator=disc, disc_start=0, perceptual_weight=0.0, kl_weight=0.0,
                      disc_weight=a.disc_weight)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    groups = [{"params": params}] + ([{"params": list(disc.parameters())}] if disc is not None else [])
    opt = torch.optim.Adam(groups, lr=a.lr, betas=(0.5, 0.9) if a.gan else (0.9, 0.999))
    schedule = LearningRateSchedule("cosine", a.steps, warmup_steps=0, min_ratio=0.1)  # the configs' schedule
    vae.train(); start = time.time()
    for step in range(a.steps):
        for group in opt.param_groups:
            group["lr"] = a.lr * schedule.factor(step)
        idx = torch.randint(0, len(images), (a.bs,), generator=g)
        x, posterior = images[idx], DiagonalGaussian(moments[idx])
        recon = vae.decode(posterior.sample(g))
        loss, info = loss_fn.generator_loss(x, recon, posterior, step, last_layer=vae.last_layer)
        if disc is not None:
            d_loss, d_info = loss_fn.discriminator_loss(x, recon, step)
            loss = loss + d_loss; info.update(d_info)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print(step, f"{time.time() - start:.0f}s", {k: round(float(v), 4) for k, v in info.items() if k in
                  ("rec_loss", "g_loss", "d_weight", "disc_loss")}, flush=True)
    log["seconds"] = round(time.time() - start, 1); log["steps"] = a.steps
    log["after"] = score(vae.eval())
    print(json.dumps(log["after"]), flush=True)
    torch.save({"state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()}}, a.out + ".ckpt")
with open(a.out + ".json", "w") as f:
    json.dump({**vars(a), **log}, f, indent=1)
