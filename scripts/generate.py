"""Generate faces from a mask and/or a caption with a trained model.

Methods: ``collaborative`` (the paper), ``composable`` (global weights), or one expert alone (``text``,
``mask``). Give several, comma-separated, to compare them on the same seeds.

Examples:
  # collaborative, released 256 checkpoint, 4 samples
  python scripts/generate.py --config configs/256_codiff_mask_text.yaml \
      --ckpt checkpoints/256_codiff_mask_text.ckpt \
      --mask ../shared/test_data/256_masks/29980.png --text "She is in her thirties." --batch-size 4
  # all four methods side by side, with influence-map figures
  python scripts/generate.py --config configs/256_codiff_mask_text.yaml --ckpt K --mask M.png \
      --text "This man has beard of medium length. He is in his thirties." \
      --method collaborative,composable,text,mask --save-influence
  # a uni-modal text model
  python scripts/generate.py --config configs/256_text.yaml --ckpt checkpoints/256_text.ckpt --text "He is a teen."
  # many (mask, caption) pairs from a file, shared out over 4 processes (or torchrun / srun; --shard i/n by hand)
  torchrun --nproc-per-node 4 scripts/generate.py --config C --ckpt K --conditions pairs.json --device cuda --out outputs/pairs
  # fewer steps: UniPC in 15 steps instead of DDIM's 50 (see docs/samplers.md)
  python scripts/generate.py --config C --ckpt K --mask M.png --text T --sampler unipc --steps 15 --save-influence
  # faster on a GPU: bf16 autocast, channels_last, compiled UNets (see docs/performance.md)
  python scripts/generate.py --config C --ckpt K --mask M.png --text T --device cuda --precision bf16 --channels-last --compile

--conditions FILE: a JSON list of {"mask": PNG, "text": caption, "name": optional folder name} or a CSV with a
header naming the columns mask, text (and optionally name); mask paths are relative to the file's folder.
Each pair gets its own folder OUT/<name> (default its 4-digit index) with what a single run writes, from the
same --seed, and OUT/manifest.json lists them all.
Sharding (several processes): with --conditions each process takes a contiguous block of pairs; with one
condition, the --batch-size samples are split into contiguous slices, the slice starting at sample a being
seeded with seed + a (so the first slice equals an unsharded run). Each process writes OUT/shards/rank{i}.json;
the last to finish writes OUT/manifest.json (and, for one condition, grid.png). OUT must be shared.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import torch

from ldm import distributed
from ldm.cli import (
    add_sampler_arguments,
    add_speed_arguments,
    check_batch_size,
    existing_file,
    main_guard,
    make_parser,
    sampler_options,
    speed_options,
    setup_logging,
    writable_dir,
)
from ldm.config import load_config, sample_settings
from ldm.data.masks import load_mask_condition
from ldm.diffusion.collaborative import CollaborativeOptions
from ldm.errors import UserError
from ldm.figures import GRID_TILE, condition_tiles, write_comparison
from ldm.images import grid, save_png
from ldm.pipeline import load_model

logger = logging.getLogger("generate")


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="model config (LDM or collaborative)")
    p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt, .pt or .safetensors; ours or released)")
    p.add_argument("--mask", help="mask PNG: class ids 0-18 (palette or greyscale) or the 19-colour palette")
    p.add_argument("--text", help="caption, e.g. 'This man has beard of medium length. He is in his thirties.'")
    p.add_argument("--method", default=None, help="collaborative, composable, text, mask, or a comma list (default from config)")
    p.add_argument("--preset", default=None, help="collaborative preset: paper (the method) or official (released sampler's adjustments)")
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and of the sampler's noise")
    p.add_argument("--batch-size", type=int, default=None, help="samples per method")
    p.add_argument("--out", default="outputs/generate", help="output directory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-influence", action="store_true", help="write influence maps and x_t at every sampler step (Figures A4/A5)")
    p.add_argument("--conditions", default=None, help="JSON or CSV file of many (mask, text) pairs (see below)")
    p.add_argument("--shard", default=None, help="RANK/WORLD_SIZE of this process (default: torchrun / SLURM environment)")
    add_speed_arguments(p)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)






def read_conditions(mask: Optional[str], text: Optional[str], batch: int) -> dict:
    """The raw conditions of ``--mask`` / ``--text`` (either may be None), each repeated ``batch`` times."""
    conditions = {}
    if mask is not None:
        onehot = load_mask_condition(existing_file(mask, "mask", "--mask"))
        conditions["seg_mask"] = onehot.unsqueeze(0).repeat(batch, 1, 1)  # [B, 19, 1024]
    if text is not None:
        if not text.strip():
            raise UserError("empty caption; give a non-empty --text")
        conditions["text"] = [text] * batch
    if not conditions:
        raise UserError("give a condition: --mask PNG and/or --text CAPTION")
    return conditions


def read_condition_file(path: str) -> list[dict]:
    """The pairs of a ``--conditions`` file: ``[{"name", "mask" (a Path or None), "text" (str or None)}]``."""
    file = existing_file(path, "conditions file", "--conditions")
    try:
        if file.suffix.lower() == ".csv":
            with open(file, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        else:
            rows = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, csv.Error) as err:
        raise UserError(f"{file}: cannot read the conditions ({err}); give a JSON list or a CSV with a header") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{file}: expected a non-empty list of {{\"mask\": PNG, \"text\": caption}} objects (or CSV rows)")
    pairs = []
    for k, row in enumerate(rows):
        mask, text = row.get("mask") or None, row.get("text") or None
        if mask is None and text is None:
            raise UserError(f"{file}: pair {k} has neither a mask nor a text; give at least one")
        if mask is not None and not Path(mask).is_absolute() and (file.parent / mask).is_file():
            mask = file.parent / mask
        name = str(row.get("name") or f"{k:04d}")
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
            raise UserError(f"{file}: pair {k} has name {name!r}; use letters, digits, '-', '_' and '.' (it names a folder)")
        pairs.append({"name": name, "mask": None if mask is None else Path(mask), "text": text})
    names = [p["name"] for p in pairs]
    if len(set(names)) != len(names):
        raise UserError(f"{file}: pair names repeat ({sorted({n for n in names if names.count(n) > 1})[:5]}); make them unique")
    return pairs


def pair_conditions(pair: dict, batch: int) -> dict:
    """The raw conditions of one pair, checked as ``--mask``/``--text`` are."""
    return read_conditions(None if pair["mask"] is None else str(pair["mask"]), pair["text"], batch)


def merge_single_grid(out: Path, records: list[dict], conditions: dict, methods: list[str]) -> Path:
    """``grid.png`` of a sharded single-condition run, from every rank's images (conditions row, then a row per method)."""
    from PIL import Image
    import numpy as np

    rows = {m: [np.asarray(Image.open(out / r["files"][m]).convert("RGB")) for r in records] for m in methods}
    tile = max(GRID_TILE, rows[methods[0]][0].shape[0])
    path = out / "grid.png"
    save_png(grid([condition_tiles(conditions, 0, tile), *rows.values()], tile, labels=["conditions", *methods]), path)
    return path


def generate_sharded(args, model, methods, out: Path, shard: distributed.Shard, settings: dict, batch: int,
                     pairs: list[dict] | None, conditions: dict | None, **sampling) -> int:
    """Many pairs (``pairs``, from ``--conditions``) or one condition's batch over several processes: each rank
    does its block of pairs or samples, and the last to finish merges."""
    num_units = len(pairs) if args.conditions else batch
    units = distributed.shard_range(num_units, shard)
    records = []
    if args.conditions:
        for k in units:
            pair = pairs[k]
            folder = out / pair["name"]
            written = write_comparison(model, pair_conditions(pair, batch), methods, folder, seed=args.seed,
                                       save_influence=args.save_influence, **sampling)
            pair_settings = {**settings, "mask": None if pair["mask"] is None else str(pair["mask"]), "text": pair["text"]}
            (folder / "settings.json").write_text(json.dumps(pair_settings, indent=2))
            records.append({"unit": k, "name": pair["name"], "mask": pair_settings["mask"], "text": pair["text"],
                            "files": [str(p.relative_to(out)) for p in written]})
    elif len(units):
        a, b = units.start, units.stop
        seed = args.seed + a
        rows = {key: value[a:b] for key, value in conditions.items()}
        write_comparison(model, rows, methods, out, seed=seed, grid_name=None,
                         save_influence=args.save_influence and a == 0, **sampling)
        records = [{"unit": i, "seed": seed, "files": {m: f"{m}_seed{seed}_{i - a:03d}.png" for m in methods}} for i in units]
    signature = distributed.run_signature({**settings, "conditions": args.conditions, "world_size": shard.world_size})
    distributed.write_shard(out, shard, signature, num_units, units, records)
    gathered = distributed.try_gather(out, signature, shard.world_size, num_units)
    if gathered is None:
        print(f"rank {shard}: wrote {len(records)} {'pairs' if args.conditions else 'samples'}; the last rank to finish writes the manifest")
        return 0
    (out / "settings.json").write_text(json.dumps({**settings, "conditions": args.conditions, "world_size": shard.world_size}, indent=2))
    (out / "manifest.json").write_text(json.dumps(gathered.records, indent=1))
    if not args.conditions:
        merge_single_grid(out, gathered.records, conditions, methods)
    print(f"wrote {len(gathered.records)} {'pairs' if args.conditions else 'samples'} from {shard.world_size} process(es); "
          f"manifest: {out / 'manifest.json'}")
    return 0


@main_guard
def main(argv=None):
    args = parse(argv)
    setup_logging()
    defaults = sample_settings(load_config(args.config, args.overrides))
    choice = sampler_options(args, defaults)
    batch = args.batch_size if args.batch_size is not None else defaults.batch_size
    check_batch_size(batch)
    try:
        options = CollaborativeOptions.from_preset(args.preset or defaults.preset)
    except ValueError as err:
        raise UserError(f"--preset: {err}") from None
    shard = distributed.shard_from_env(args.shard)
    if args.conditions:
        if args.mask is not None or args.text is not None:
            raise UserError("give either --conditions FILE or --mask/--text, not both")
        pairs = read_condition_file(args.conditions)
        for pair in pairs:  # check every pair before any sampling
            pair_conditions(pair, 1)
    else:
        conditions = read_conditions(args.mask, args.text, batch)
    out = writable_dir(args.out)
    existing_file(args.ckpt, "checkpoint", "--ckpt")

    model = load_model(args.config, args.ckpt, distributed.device_for(shard, args.device), args.overrides)
    methods = (args.method or defaults.method).split(",")
    if methods == ["collaborative"] and not model.diffusers:  # a uni-modal model: sample its one expert
        methods = ["mask" if m == "seg_mask" else m for m in model.experts]
    settings = {"config": args.config, "ckpt": args.ckpt, "mask": args.mask, "text": args.text, "methods": methods,
                "preset": args.preset or defaults.preset, **choice.to_dict(), "seed": args.seed, "batch_size": batch}
    speed = speed_options(args)
    if speed is not None:
        settings["speed"] = speed.describe()
    if args.conditions or shard.is_sharded:
        return generate_sharded(args, model, methods, out, shard, settings, batch, pairs if args.conditions else None,
                                None if args.conditions else conditions, **choice.to_dict(), options=options, speed=speed)
    written = write_comparison(
        model, conditions, methods, out, **choice.to_dict(), seed=args.seed, options=options,
        save_influence=args.save_influence, speed=speed,
    )
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(f"wrote {len(written)} files; grid: {out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
