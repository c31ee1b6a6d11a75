"""Make a FaceWorld: procedural faces with exact 19-class masks and beard-and-age captions.

The world is written in the reference system's preprocessed layout, so every loader, config and script
reads it like the real data (``PreprocessedFaces(root=OUT, resolution=SIZE)``), plus index-mask PNGs
(``mask/index_mask_SIZE/N.png``), ``labels.json`` (every factor's ground truth) and ``meta.json``.
Deterministic (same seed -> identical files), resumable (finished samples are skipped; re-run after an
interrupt), and growing --num keeps the existing samples. See ldm/data/faceworld.py for the factors.

Examples:
    python scripts/make_faceworld.py --out data/faceworld --num 10000 --seed 0
    python scripts/make_faceworld.py --out data/faceworld_128 --num 2000 --seed 1 --size 128 --workers 2
    python scripts/make_faceworld.py --out /tmp/fw_tiny --num 64 --seed 0 --test-size 8
"""

from __future__ import annotations

import os
import sys
import time

from ldm.cli import main_guard, make_parser, setup_logging, writable_dir


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("--out", required=True, help="output folder (created; an existing FaceWorld is resumed)")
    p.add_argument("--num", type=int, required=True, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="world seed")
    p.add_argument("--size", type=int, default=64, help="image (and index mask) size in pixels")
    p.add_argument("--test-size", type=int, default=None, help="last K samples form the test split (default num // 10)")
    p.add_argument("--supersample", type=int, default=None, help="odd render supersampling (default 3 up to 128 px, else 1)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes")
    p.add_argument("--version", type=int, default=None, choices=[1, 2],
                   help="renderer version: 2 (default; caption cues drawn at a scale the 16x16 latent keeps; what make "
                        "train-faceworld and the shipped models were trained on) or 1 (the first world, finer cues)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@main_guard
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from ldm.data.faceworld import VERSION, make_faceworld

    out = writable_dir(args.out)
    start = time.perf_counter()
    make_faceworld(
        out, args.num, seed=args.seed, size=args.size, test_size=args.test_size,
        supersample=args.supersample, workers=args.workers, progress=not args.quiet,
        version=VERSION if args.version is None else args.version,
    )  # fmt: skip
    print(f"FaceWorld of {args.num} samples at {args.size}px in {out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
