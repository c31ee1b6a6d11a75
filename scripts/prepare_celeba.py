"""Prepare CelebA-HQ / CelebAMask-HQ / CelebA-Dialog for training: raw downloads -> preprocessed layout.

Reads RAW/CelebA-HQ-img/{N}.jpg, RAW/CelebAMask-HQ-mask-anno/{N//2000}/{N:05d}_{part}.png and the
CelebA-Dialog captions (RAW/captions_hq.json or --dialog-json) and writes, under OUT, resized images, index-mask
PNGs, 32x32 one-hot mask tensors, the beard-and-age caption file and meta.json (the released split: the last
3,000 captioned images are the test set). Resumable and safe to interrupt: re-run the same command.
See data/README.md for the layouts.

Examples:
    python scripts/prepare_celeba.py --raw data/raw --out data/celeba
    python scripts/prepare_celeba.py --raw data/raw --out data/celeba --sizes 256 --workers 2
    python scripts/prepare_celeba.py --raw /datasets/CelebAMask-HQ --dialog-json /datasets/CelebA-Dialog/captions_hq.json --out data/celeba
"""

from __future__ import annotations

import os
import sys

from ldm.cli import main_guard, make_parser, setup_logging, writable_dir


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("--raw", required=True, help="folder with CelebA-HQ-img/ and CelebAMask-HQ-mask-anno/")
    p.add_argument("--out", required=True, help="output folder (the preprocessed layout)")
    p.add_argument("--dialog-json", default=None, help="CelebA-Dialog captions_hq.json (default RAW/captions_hq.json)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes to write")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes")
    p.add_argument("--test-size", type=int, default=3000, help="last K captioned images form the test split")
    p.add_argument("--mask-resolution", type=int, default=512, help="size of the raw part masks")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from ldm.data.prepare import prepare_celeba

    out = writable_dir(args.out)
    done = prepare_celeba(
        args.raw, out, dialog_json=args.dialog_json, sizes=args.sizes, workers=args.workers,
        test_size=args.test_size, mask_resolution=args.mask_resolution, progress=not args.quiet,
    )  # fmt: skip
    print(f"prepared {done} new samples in {out}")


if __name__ == "__main__":
    sys.exit(main())
