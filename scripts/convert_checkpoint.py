"""Convert a checkpoint (released or ours; .ckpt, .pt or .safetensors) to safetensors or .ckpt.

By default the output uses this package's native key layout; ``--to released`` writes the authors' layout
(with the 12 noise-schedule buffers) instead. With ``--config`` the converted weights are also loaded
strictly into the model the config builds, so a mismatch is caught now rather than at sampling time.

Examples:
  python scripts/convert_checkpoint.py --ckpt checkpoints/256_codiff_mask_text.ckpt \
      --out checkpoints/256_codiff_mask_text.safetensors --config configs/256_codiff_mask_text.yaml
  python scripts/convert_checkpoint.py --ckpt runs/text/checkpoints/last.ckpt --out text_released.ckpt --to released
  # only the dynamic diffusers (the experts and VAE then come from the files the config names):
  python scripts/convert_checkpoint.py --ckpt runs/codiff/checkpoints/last.ckpt --out diffusers.safetensors --keep diffusers
"""

import sys

from ldm.checkpoints import convert_file
from ldm.cli import main_guard, make_parser, setup_logging


@main_guard
def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--ckpt", required=True, help="input checkpoint")
    p.add_argument("--out", required=True, help="output file: .safetensors, .ckpt or .pt")
    p.add_argument("--to", choices=["native", "released"], default="native", help="key layout of the output")
    p.add_argument("--config", default=None, help="optional config to verify the weights against (strict load)")
    p.add_argument("--keep", nargs="+", default=None, help="write only these top-level parts (e.g. diffusers): a partial checkpoint")
    args = p.parse_args(argv)
    setup_logging()
    kind, count = convert_file(args.ckpt, args.out, layout=args.to, config=args.config, keep=args.keep)
    print(f"wrote {args.out}: {count} tensors of a {kind} checkpoint in the {args.to} layout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
