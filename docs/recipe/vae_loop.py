"""The plain VAE loop behind the short runs of docs/faceworld_recipe.md (sections 1 and 3): the FaceWorld VAE
and loss (L1 + 1e-6 KL, optional image-gradient L1, PatchGAN, bf16, cosine lr, random windows) for a fixed
wall-clock budget; saves NAME.ckpt. The printed age/beard numbers use --evaldir's evaluators. Example:
  python docs/recipe/vae_loop.py --name crop48 --threads 1 --minutes 14 --eval_every 100 --root DATA --evaldir EV --bf16 --cosine --crop 48
  python scripts/vae_ceiling.py --config configs/faceworld/vae.yaml --ckpt crop48.ckpt --data DATA --num 500 --parser P --classifier C
"""
import time, json, argparse, math, torch, numpy as np
import torch.nn.functional as F
from torch.utils.data import DataLoader
from ldm.modules.autoencoder import AutoencoderKL
from ldm.data.celeba import PreprocessedFaces
from ldm.evaluation.evaluators import load_evaluator, to_condition_grid
p = argparse.ArgumentParser()
p.add_argument("--name"); p.add_argument("--ch", type=int, default=32); p.add_argument("--nrb", type=int, default=1)
p.add_argument("--mult", default="1,2,2"); p.add_argument("--bs", type=int, default=8); p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--grad", type=float, default=0.0); p.add_argument("--minutes", type=float, default=8); p.add_argument("--threads", type=int, default=2)
p.add_argument("--crop", type=int, default=0); p.add_argument("--cosine", action="store_true"); p.add_argument("--l2", type=float, default=0.0)
p.add_argument("--eval_every", type=float, default=4.0)
p.add_argument("--gan", action="store_true"); p.add_argument("--ndf", type=int, default=32); p.add_argument("--dlayers", type=int, default=2)
p.add_argument("--disc_start", type=int, default=0); p.add_argument("--root", required=True); p.add_argument("--evaldir", default="checkpoints/faceworld")
p.add_argument("--bf16", action="store_true"); p.add_argument("--disc_weight", type=float, default=0.5)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(0)
root = a.root
def load(split, keys, n=None):
    d = PreprocessedFaces(root, split=split, resolution=64, keys=keys)
    if n: d.names = d.names[:n]
    return next(iter(DataLoader(d, batch_size=len(d))))
train = load("train", ["image"])["image"]
test = load("test", ["image", "index_mask", "labels"], 400)
parser = load_evaluator(a.evaldir + "/parser.safetensors", "parser")
clf = load_evaluator(a.evaldir + "/classifier.safetensors", "classifier")
vae = AutoencoderKL(embed_dim=3, z_channels=3, double_z=True, ch=a.ch, ch_mult=[int(c) for c in a.mult.split(",")], num_res_blocks=a.nrb, resolution=64)
lossmod = None
params = list(vae.parameters())
if a.gan:
    from ldm.modules.vae_loss import VAELoss
    from ldm.modules.discriminator import NLayerDiscriminator
    lossmod = VAELoss(perceptual=None, discriminator=NLayerDiscriminator(3, a.ndf, a.dlayers), disc_start=a.disc_start, perceptual_weight=0.0, kl_weight=1e-6, disc_weight=a.disc_weight)
    params += list(lossmod.discriminator.parameters())
opt = torch.optim.Adam(params, a.lr, betas=(0.9, 0.999))
def grads(x): return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]
@torch.no_grad()
def ceiling():
    vae.eval(); x = test["image"]
    r = torch.cat([vae.decode(vae.encode(x[i:i+100]).mode()).clamp(-1, 1) for i in range(0, len(x), 100)])
    vae.train()
    acc = (to_condition_grid(parser(r).argmax(1)) == to_condition_grid(test["index_mask"])).float().mean().item()
    out = {k: (o.argmax(1) == test["labels"][k]).float().mean().item() for k, o in clf(r).items()}
    return {"mask": round(acc, 3), **{k: round(v, 3) for k, v in out.items()}, "l1": round((r - x).abs().mean().item(), 4)}
g = torch.Generator().manual_seed(1)
start = time.time(); step = 0; log = []; next_eval = a.eval_every * 60; total = a.minutes * 60
while True:
    el = time.time() - start
    if a.cosine:
        for pg in opt.param_groups: pg["lr"] = a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(el / total, 1))))
    idx = torch.randint(0, len(train), (a.bs,), generator=g)
    x = train[idx]
    if a.crop:
        i, j = torch.randint(0, 64 - a.crop + 1, (2,), generator=g).tolist(); x = x[..., i:i+a.crop, j:j+a.crop]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        out = vae(x, sample_posterior=True, generator=g)
    r = out.reconstruction.float()
    if lossmod is not None:
        gl, _ = lossmod.generator_loss(x, r, out.posterior, step, last_layer=vae.last_layer)
        dl, _ = lossmod.discriminator_loss(x, r, step)
        loss = gl + dl
    else:
      loss = (r - x).abs().mean() * 3 * 64 * 64 + 1e-6 * out.posterior.kl().sum() / a.bs if hasattr(out, "posterior") else (r - x).abs().mean()
    if a.grad:
        gx, gy = grads(x); rx, ry = grads(r)
        loss = loss + a.grad * ((gx - rx).abs().mean() + (gy - ry).abs().mean()) * 3 * 64 * 64
    if a.l2:
        loss = loss + a.l2 * ((r - x) ** 2).mean() * 3 * 64 * 64
    opt.zero_grad(); loss.backward(); opt.step(); step += 1
    el = time.time() - start
    if el >= next_eval or el >= total:
        c = ceiling(); c.update(step=step, min=round(el / 60, 1), name=a.name); log.append(c); print(json.dumps(c), flush=True)
        next_eval += a.eval_every * 60
        if el >= total: break
torch.save({"vae." + k: v for k, v in vae.state_dict().items()}, f"{a.name}.ckpt")  # loadable by scripts/vae_ceiling.py
