"""Compare two evaluation runs of the same held-out pairs (scripts/evaluate.py's OUT folders), sample by sample.

Checks that a change which should not move the results does not: a sharded run against a single-process one
(--exact: every per-sample score within TOL), bf16 against fp32 sampling (default: every method's mean of
every metric in the second run inside the first run's own 95% confidence interval). Prints one row per method
and metric (the two means, the paired difference with its 95% CI, the largest per-sample difference) and the
Fréchet distances; exit code 1 when a check fails, 2 when the runs are not comparable (other pairs, seeds or
sampler).

Examples:
  python scripts/compare_evaluations.py outputs/eval_fp32 outputs/eval_bf16
  python scripts/compare_evaluations.py outputs/eval_single outputs/eval_torchrun --exact 1e-6
"""

import json
import sys
from pathlib import Path

from ldm.cli import main_guard, make_parser
from ldm.errors import UserError
from ldm.evaluation import report

# settings that may differ between two comparable runs: how the networks ran, not what was sampled
SPEED_SETTINGS = ("precision", "channels_last", "compile")


def read_run(folder: str) -> tuple[dict, list]:
    path = Path(folder)
    for name in ("results.json", "records.json"):
        if not (path / name).is_file():
            raise UserError(f"{path / name} does not exist; pass an OUT folder that scripts/evaluate.py finished")
    return json.loads((path / "results.json").read_text()), json.loads((path / "records.json").read_text())


def setting_differences(a: dict, b: dict) -> list[str]:
    keys = (a.keys() | b.keys()) - set(SPEED_SETTINGS) - {"ckpt", "config", "data"}
    return sorted(k for k in keys if a.get(k) != b.get(k))


@main_guard
def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("first", help="OUT folder of the reference run")
    p.add_argument("second", help="OUT folder of the run to check against it")
    p.add_argument("--exact", type=float, default=None, metavar="TOL",
                   help="require every per-sample score to agree within TOL (and Fréchet distances within TOL relative)")
    p.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    args = p.parse_args(argv)
    (res_a, rec_a), (res_b, rec_b) = read_run(args.first), read_run(args.second)
    differ = setting_differences(res_a["settings"], res_b["settings"])
    if differ:
        raise UserError(f"the runs differ in {', '.join(differ)}: they did not sample the same pairs the same way; "
                        "compare runs of the same --num, --seed, --methods and sampler")
    try:
        rows = report.compare_runs(rec_a, rec_b)
    except ValueError as err:
        raise UserError(str(err)) from None
    failed = []
    for label, folder, results in (("first", args.first, res_a), ("second", args.second, res_b)):
        speed = ", ".join(f"{k}={results['settings'].get(k)}" for k in SPEED_SETTINGS)
        print(f"{label}: {folder} ({speed})")
    print(f"{'method':<20} {'metric':<16} {'first':>9} {'second':>9} {'diff (95% CI)':>20} {'max |diff|':>10}  check")
    for r in rows:
        ok = r.max_abs <= args.exact if args.exact is not None else r.within_ci
        failed += [] if ok else [f"{r.method} {r.key}"]
        print(f"{r.method:<20} {r.key:<16} {r.first:9.4f} {r.second:9.4f} {r.difference:+9.4f} ± {r.half_width:<8.4f} "
              f"{r.max_abs:10.2e}  {'ok' if ok else 'FAIL'}")
    fds = []
    for method, values in res_a["results"].items():
        fd_a, fd_b = values.get("frechet_distance"), res_b["results"].get(method, {}).get("frechet_distance")
        if fd_a is None or fd_b is None:
            continue
        ok = args.exact is None or abs(fd_a - fd_b) <= args.exact * max(abs(fd_a), 1.0)
        failed += [] if ok else [f"{method} FD"]
        fds.append({"method": method, "first": fd_a, "second": fd_b, "ok": ok})
        print(f"{method:<20} {'FD (parser)':<16} {fd_a:9.4f} {fd_b:9.4f}" + ("" if args.exact is None else f"  {'ok' if ok else 'FAIL'}"))
    check = f"every per-sample score within {args.exact:g}" if args.exact is not None else "every mean inside the first run's 95% CI"
    print(f"{check}: {'yes' if not failed else 'no: ' + ', '.join(failed)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"first": args.first, "second": args.second, "check": check, "failed": failed,
                                               "rows": [{**r.__dict__, "within_ci": r.within_ci} for r in rows], "fd": fds}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
