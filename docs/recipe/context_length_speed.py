"""Time of one FaceWorld text-expert training step (UNet + text transformer forward, backward and AdamW, batch 32,
2 threads) with the caption context at 77 tokens (released) and at 24 (docs/faceworld_recipe.md, section 17).
Example:
  python docs/recipe/context_length_speed.py
"""
import time, torch
from ldm.config import load_config, instantiate
torch.set_num_threads(2)
cfg = load_config("configs/faceworld/text.yaml")
for L in (77, 24):  # caption positions the cross-attention attends to
    c = cfg.model.params.expert.copy(); c.params.cond_encoder.params.max_seq_len = L
    torch.manual_seed(0); expert = instantiate(c)
    opt = torch.optim.AdamW(expert.parameters(), 1e-3)
    x = torch.randn(32, 3, 16, 16); t = torch.randint(0, 1000, (32,)); caps = ["This man has a short beard. He is in his thirties."] * 32
    def step():
        ctx = expert.encode(caps); loss = expert.predict(x, t, ctx).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    for _ in range(5): step()
    ts = []
    for _ in range(3):
        s = time.perf_counter(); [step() for _ in range(20)]; ts.append((time.perf_counter() - s) / 20)
    print(L, "min s/step", round(min(ts), 4), [round(v, 4) for v in ts])
