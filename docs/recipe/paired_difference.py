"""Paired difference between two evaluations of the same method on the same pairs (docs/faceworld_recipe.md,
section 19): reads each run's OUT/records.json from scripts/evaluate.py and prints, per score, the mean
difference B − A in points with its 95% normal interval. Example:
  python docs/recipe/paired_difference.py outputs/abl4/eval_C outputs/abl4/eval_T3 --method text
"""
import argparse
import json
import math
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("a", type=Path, help="the baseline evaluation's --out folder")
p.add_argument("b", type=Path, help="the other evaluation's --out folder (same pairs and seed)")
p.add_argument("--method", default="text", help="text, mask, composable or collaborative")
p.add_argument("--scores", default="text_accuracy,age,beard,mask_accuracy,joint_accuracy")
a = p.parse_args()


def records(folder: Path) -> dict[int, dict]:
    rows = json.loads((folder / "records.json").read_text())
    return {r["index"]: r for r in rows if r["method"] == a.method}


base, other = records(a.a), records(a.b)
if not base or base.keys() != other.keys():
    raise SystemExit(f"{a.a} and {a.b} must hold {a.method!r} records of the same pairs ({len(base)} and {len(other)} found)")
for key in a.scores.split(","):
    d = [other[i][key] - base[i][key] for i in base]
    n = len(d)
    mean = sum(d) / n
    half = 1.96 * math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
    print(f"{a.b.name} - {a.a.name}, {a.method} {key}: {100 * mean:+.1f} points (95% CI {100 * (mean - half):+.1f} to "
          f"{100 * (mean + half):+.1f}), n = {n}")
