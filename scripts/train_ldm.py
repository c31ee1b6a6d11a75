"""Train a uni-modal expert (text- or mask-driven latent diffusion, chosen by the config).

Examples:
  python scripts/train_ldm.py --config configs/256_text.yaml --devices 4 --strategy ddp
  python scripts/train_ldm.py --config configs/tiny/mask.yaml --max-steps 20 --accelerator cpu
  python scripts/train_ldm.py --config configs/256_text.yaml --resume last
"""

import sys

from ldm.cli import main_guard
from ldm.training import main_for

main = main_guard(lambda argv=None: main_for(argv, __doc__))

if __name__ == "__main__":
    sys.exit(main())
