"""Print the parameter count of every component a config builds, without allocating weights.

The model is built on PyTorch's meta device and no checkpoint is read, so the paper-scale configs
summarise in seconds on a laptop.

Examples:
  python scripts/summarize.py --config configs/256_text.yaml          # UNet 403.6M
  python scripts/summarize.py --config configs/256_codiff_mask_text.yaml --json
"""

import json
import sys

from ldm.cli import main_guard, make_parser
from ldm.config import load_config
from ldm.summary import summarize


@main_guard
def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="any config under configs/")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    rows = summarize(load_config(args.config, args.overrides))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["component"]) for r in rows)
        print(f"{'component':<{width}}  {'class':<22} {'params':>14} {'':>9}")
        for r in rows:
            print(f"{r['component']:<{width}}  {r['class']:<22} {r['params']:>14,} {r['params'] / 1e6:>8.2f}M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
