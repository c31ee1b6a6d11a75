"""The plain loop behind the decoder variants of docs/faceworld_recipe.md, section 24 (A-M; R and the shipped
`render` stage are configs/faceworld/render.yaml through scripts/train_vae.py): the FaceWorld VAE's decoder trained
further, encoder frozen, on posterior latents of which the first --frac of each batch is re-drawn by the shipped
collaborative model (SDEdit from a strength in [--smin, --smax], DDIM --nsteps over the whole range, eta 1, under
the image's own mask and caption; collaborative, mask-only and text-only in turn), against the PatchGAN of
configs/faceworld/decoder.yaml. Writes the VAE's state dict; score it with docs/recipe/decoder_variants.py (samples)
and scripts/vae_ceiling.py (the ceiling).

  decoder stage + 300 (A-E, I, M):  continues section 23's decoder and its discriminator (the default)
  VAE stage + N (G, H, K, L):       --from-vae-stage (the VAE stage's decoder, a new discriminator)
  GAN term on the re-drawn rows only (L, M): --gan-regen-only; their pixel target the starting decoder's
                                     rendering of the posterior rows (M): --anchor

Example (M, about 5 minutes on 2 CPU cores):
  python docs/recipe/render_loop.py --frac 0.5 --smax 0.7 --disc-weight 0.75 --gan-regen-only --anchor --out outputs/exp/M.pt
"""
import argparse
import copy
import math
import time

import torch

from ldm.checkpoints import load_state_dict
from ldm.config import instantiate, load_config
from ldm.data.celeba import PreprocessedFaces
from ldm.pipeline import load_model, sample_from_contexts

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--steps", type=int, default=300); p.add_argument("--bs", type=int, default=16)
p.add_argument("--frac", type=float, default=0.5); p.add_argument("--smin", type=float, default=0.05)
p.add_argument("--smax", type=float, default=0.5); p.add_argument("--nsteps", type=int, default=20)
p.add_argument("--lr", type=float, default=1e-4); p.add_argument("--disc-weight", type=float, default=0.5)
p.add_argument("--methods", default="collaborative,seg_mask,text")
p.add_argument("--from-vae-stage", action="store_true"); p.add_argument("--gan-regen-only", action="store_true")
p.add_argument("--anchor", action="store_true"); p.add_argument("--out", required=True)
p.add_argument("--runs", default="outputs/faceworld_train/runs"); p.add_argument("--data", default="outputs/faceworld_train/faceworld")
a = p.parse_args()
if a.anchor and not a.gan_regen_only:
    raise SystemExit("--anchor goes with --gan-regen-only (as measured)")
torch.manual_seed(0)
model = load_model("checkpoints/faceworld/codiff.yaml", "checkpoints/faceworld/codiff.safetensors")
vae = model.vae  # the shipped VAE at the time: section 23's decoder stage
cfg = load_config("configs/faceworld/decoder.yaml")
cfg.model.params.loss.params.disc_weight = a.disc_weight
loss_fn = instantiate(cfg.model.params.loss)
if a.from_vae_stage:
    state = load_state_dict(f"{a.runs}/vae/checkpoints/last.ckpt")
    vae.load_state_dict({k[len("vae."):]: v for k, v in state.items() if k.startswith("vae.")})
else:
    state = load_state_dict(f"{a.runs}/decoder/checkpoints/last.ckpt")
    loss_fn.discriminator.load_state_dict({k[len("loss.discriminator."):]: v for k, v in state.items() if k.startswith("loss.discriminator.")})
teacher = copy.deepcopy(vae).eval().requires_grad_(False)
for module in (vae.encoder, vae.quant_conv):
    module.requires_grad_(False)
decoder = [q for n, q in vae.named_parameters() if not n.startswith(("encoder.", "quant_conv."))]
for q in decoder:
    q.requires_grad_(True)
vae.train(); vae.encoder.eval()
opt = torch.optim.Adam([{"params": decoder}, {"params": list(loss_fn.discriminator.parameters())}], lr=a.lr, betas=(0.5, 0.9))
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / a.steps)))
data = PreprocessedFaces(a.data, split="train", resolution=64, keys=["image", "text", "seg_mask"])
g = torch.Generator().manual_seed(7)
loader = torch.utils.data.DataLoader(data, batch_size=a.bs, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=True)
methods = a.methods.split(",")
GAN_ON = 10**6  # a step past disc_start
step, t0 = 0, time.time()
while step < a.steps:
    for b in loader:
        x = b["image"]
        with torch.no_grad():
            post = vae.encode(x)
            z = post.sample(generator=g)
        k = int(round(a.frac * a.bs))
        if k > 0:
            m = methods[step % len(methods)]
            mods = ["seg_mask", "text"] if m == "collaborative" else [m]
            ctx = {mm: model.experts[mm].encode(b[mm][:k] if mm == "seg_mask" else list(b[mm][:k])) for mm in mods}
            s = float(a.smin + (a.smax - a.smin) * torch.rand((), generator=g))
            redrawn = sample_from_contexts(model, ctx, method=m if m != "seg_mask" else "mask", steps=a.nsteps, eta=1.0,
                                           generator=g, x_start=z[:k] * model.scale_factor, strength=s).latents
            z = torch.cat([redrawn / model.scale_factor, z[k:]])
        recon = vae.decode(z)
        target, rows = x, (k if a.gan_regen_only else None)
        if a.anchor:
            with torch.no_grad():
                target = torch.cat([x[:k], teacher.decode(z[k:])])
        loss, log = loss_fn.generator_loss(target, recon, post, GAN_ON, last_layer=vae.last_layer, adversarial_rows=rows)
        d_loss, _ = loss_fn.discriminator_loss(x, recon, GAN_ON, adversarial_rows=rows)
        opt.zero_grad(); (loss + d_loss).backward(); opt.step(); sched.step(); step += 1
        if step % 25 == 0:
            print(step, f"{time.time() - t0:.0f}s", {n: round(float(v), 4) for n, v in log.items()}, flush=True)
        if step >= a.steps:
            break
torch.save({"state_dict": {f"vae.{n}": v for n, v in vae.state_dict().items()}}, a.out)
