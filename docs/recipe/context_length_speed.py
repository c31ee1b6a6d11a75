"""Time of one FaceWorld text-expert training step (UNet + text transformer forward, backward and AdamW, batch 32,
2 threads) with the caption context at 77 tokens (released) and at 24 (docs/faceworld_recipe.md, section 17).
Prints the fastest of three means over 20 steps, after 5 warm-up steps. Example:
  python docs/recipe/context_length_speed.py
"""
import time

import torch

from ldm.config import instantiate, load_config

torch.set_num_threads(2)
config = load_config("configs/faceworld/text.yaml")
captions = ["This man has a short beard. He is in his thirties."] * 32
x_t, t = torch.randn(32, 3, 16, 16), torch.randint(0, 1000, (32,))

for max_seq_len in (77, 24):  # caption positions the cross-attention attends to
    node = config.model.params.expert.copy()
    node.params.cond_encoder.params.max_seq_len = max_seq_len
    torch.manual_seed(0)
    expert = instantiate(node)
    optimizer = torch.optim.AdamW(expert.parameters(), lr=1e-3)

    def step():
        loss = expert.predict(x_t, t, expert.encode(captions)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    means = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(20):
            step()
        means.append((time.perf_counter() - start) / 20)
    print(f"max_seq_len {max_seq_len}: {min(means):.3f} s/step (means {', '.join(f'{m:.3f}' for m in means)})")
