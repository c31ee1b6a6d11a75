"""A face photo -> a 19-class mask PNG in the released class order, ready for --mask of generate.py / edit.py.

Writes MASK.png (a palette PNG: pixel values are the class ids 0-18 of the released order, shown in the
CelebAMask-HQ colours) and MASK_preview.png beside it (the cropped photo, the coloured mask, both blended).
The photo is centre-cropped to a square. With --bisenet-weights the face-parsing BiSeNet (CelebAMask-HQ,
for real photos) parses it; without, the shipped FaceWorld parser (for FaceWorld-style images).

Examples:
  # a real photo, with the face-parsing.PyTorch weights (79999_iter.pth)
  python scripts/parse_face.py --image tests/assets/test_mask_edit/256_input_image/27044.jpg \\
      --out outputs/masks/27044.png --bisenet-weights weights/79999_iter.pth
  # a FaceWorld-style image with the shipped FaceWorld parser, mask at 256x256
  python scripts/parse_face.py --image face.png --out outputs/masks/face.png --size 256
  # then generate from it
  python scripts/generate.py --config checkpoints/faceworld/codiff.yaml --ckpt checkpoints/faceworld/codiff.safetensors \\
      --mask outputs/masks/face.png --text "This man is in his forties."
"""

from __future__ import annotations

import sys

import torch

from ldm.cli import existing_file, main_guard, make_parser
from ldm.errors import UserError
from ldm.face_parsing import DEFAULT_PARSER, OUTPUT_SIZE, load_face_parser, parse_face, read_photo, write_parsed_mask


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--image", required=True, help="the face photo (PNG or JPEG, about square)")
    p.add_argument("--out", required=True, help="the mask PNG to write (its preview goes beside it)")
    p.add_argument("--bisenet-weights", default=None, help="face-parsing.PyTorch's 79999_iter.pth: parse with BiSeNet")
    p.add_argument("--parser", default=str(DEFAULT_PARSER), help="the FaceWorld parser (used without --bisenet-weights)")
    p.add_argument("--size", type=int, default=OUTPUT_SIZE, help="side of the written mask in pixels")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


@main_guard
def main(argv=None):
    args = parse(argv)
    if not 32 <= args.size <= 4096:
        raise UserError(f"--size {args.size} is out of range; use 32 to 4096 (512, the released masks' size)")
    photo = read_photo(existing_file(args.image, "image", "--image"))
    if args.bisenet_weights is None:
        existing_file(args.parser, "FaceWorld parser", "--parser (or give --bisenet-weights)")
    model = load_face_parser(args.bisenet_weights, args.parser, args.device)
    index = parse_face(photo, model, args.size, where=args.image)
    mask, preview = write_parsed_mask(index, photo, args.out)
    print(f"wrote {mask} ({model.name}, {len(set(index.flat))} classes present) and {preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
