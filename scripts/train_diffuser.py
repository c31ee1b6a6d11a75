"""Train the dynamic diffusers of Collaborative Diffusion over frozen experts.

Examples:
  python scripts/train_diffuser.py --config configs/256_codiff_mask_text.yaml --devices 4                 # one node, 4 GPUs (DDP)
  python scripts/train_diffuser.py --config configs/tiny/codiff.yaml --max-steps 20 --accelerator cpu
  python scripts/train_diffuser.py --config configs/256_codiff_mask_text.yaml --resume last               # continue runs/<name>/checkpoints/last.ckpt
  python scripts/train_diffuser.py --config configs/256_codiff_mask_text.yaml train.batch_size=4 train.accumulate_grad_batches=2
  # 2 nodes x 8 GPUs with torchrun (run on every node; SLURM's srun works the same way):
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
      scripts/train_diffuser.py --config configs/256_codiff_mask_text.yaml --devices 8 --num-nodes 2 --strategy ddp

Checkpoints go to <run-dir>/checkpoints/ (default runs/<config name>/) with the resolved config.yaml beside
them; logs to <run-dir>/logs/ (TensorBoard or CSV, set by train.logger).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import main_guard  # noqa: E402
from ldm.training import main_for  # noqa: E402


@main_guard
def main(argv=None):
    return main_for(argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
