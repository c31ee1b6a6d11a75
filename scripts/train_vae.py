"""Train the VAE (AutoencoderKL, with LPIPS and the optional PatchGAN discriminator).

Examples:
  python scripts/train_vae.py --config configs/256_vae.yaml --devices 4 --strategy ddp
  python scripts/train_vae.py --config configs/tiny/vae.yaml --max-steps 20 --accelerator cpu
  python scripts/train_vae.py --config configs/256_vae.yaml --resume last
"""

import sys

from ldm.cli import main_guard
from ldm.training import main_for

main = main_guard(lambda argv=None: main_for(argv, __doc__))

if __name__ == "__main__":
    sys.exit(main())
