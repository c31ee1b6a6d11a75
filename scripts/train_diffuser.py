"""Train the dynamic diffusers of Collaborative Diffusion over frozen experts.

Examples:
  python scripts/train_diffuser.py --config configs/256_codiff_mask_text.yaml --devices 4 --strategy ddp
  python scripts/train_diffuser.py --config configs/tiny/codiff.yaml --max-steps 20 --accelerator cpu
  python scripts/train_diffuser.py --config configs/256_codiff_mask_text.yaml --resume last
"""

import sys

from ldm.cli import main_guard
from ldm.training import main_for

main = main_guard(lambda argv=None: main_for(argv, __doc__))

if __name__ == "__main__":
    sys.exit(main())
