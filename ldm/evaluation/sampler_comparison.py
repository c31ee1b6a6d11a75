"""Quality against steps: several ``scripts/evaluate.py`` runs that differ only in the sampler, side by side.

Every run scores the same pairs from the same x_T (the seed of a batch does not depend on the sampler), so a
run is compared with the reference run (the released DDIM 50) **per sample**: the paired difference of mask,
text and joint accuracy with its 95% confidence interval, and the ratio of the Fréchet distances. A run
*matches the reference* when none of the three accuracies is significantly lower (the upper end of the
interval of "run − reference" is >= 0) and its FD is at most :data:`FD_RATIO` times the reference's.
``scripts/compare_samplers.py`` writes the table (into a marked block of ``docs/samplers.md``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ldm.diffusion.samplers import SamplerOptions
from ldm.errors import UserError
from ldm.evaluation.report import paired_difference

FD_RATIO = 1.1  # "FD at most 1.1x DDIM-50's"
ACCURACIES = (("mask_accuracy", "mask"), ("text_accuracy", "text"), ("joint_accuracy", "joint"))
# The evaluate.py settings that must agree between runs for a paired comparison.
SAME = ("config", "ckpt", "data", "num", "seed", "preset", "batch_size", "overrides")


@dataclass
class Run:
    """One evaluate.py run directory: its settings, averaged results and per-sample records."""

    path: Path
    settings: dict[str, Any]
    results: dict[str, dict[str, float]]
    records: list[dict[str, Any]]

    @property
    def label(self) -> str:
        """E.g. ``DDIM 50 steps, uniform spacing, eta 1``."""
        s = self.settings
        return SamplerOptions(s["sampler"], s["steps"], s["spacing"], s.get("eta")).describe()

    def command(self) -> str:
        """The evaluate.py command line that makes this run."""
        s = self.settings
        argv = ["python", "scripts/evaluate.py", "--config", s["config"], "--ckpt", s["ckpt"], "--data", s["data"],
                "--num", str(s["num"]), "--seed", str(s["seed"]), "--methods", ",".join(s["methods"]),
                "--preset", s["preset"], "--batch-size", str(s["batch_size"]), "--sampler", s["sampler"],
                "--steps", str(s["steps"]), "--spacing", s["spacing"]]
        if s.get("eta") is not None:
            argv += ["--eta", f"{s['eta']:g}"]
        return " ".join(shlex.quote(a) for a in [*argv, "--out", str(self.path), *s.get("overrides", [])])


def load_run(path: str | Path) -> Run:
    """Read ``results.json`` and ``records.json`` of an evaluate.py output directory."""
    path = Path(path)
    files = [path / "results.json", path / "records.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{path} is not a finished evaluate.py run ({', '.join(missing)} missing); run scripts/evaluate.py "
                        f"--out {path} first")
    try:
        results = json.loads(files[0].read_text())
        records = json.loads(files[1].read_text())
    except ValueError as err:
        raise UserError(f"{path}: unreadable results ({err}); run scripts/evaluate.py --out {path} again") from None
    if "sampler" not in results.get("settings", {}):
        raise UserError(f"{path}/results.json records no sampler (an older evaluate.py); run scripts/evaluate.py --out {path} again")
    return Run(path, results["settings"], results["results"], records)


@dataclass
class Comparison:
    """One run against the reference, for one method."""

    run: Run
    values: dict[str, Optional[float]]  # mask/text/joint accuracy and frechet_distance of the run
    differences: dict[str, Optional[tuple[float, float]]]  # accuracy key -> (mean run - reference, 95% half-width)
    fd_ratio: Optional[float]

    @property
    def matches(self) -> Optional[bool]:
        """None for the reference itself or when a metric is missing."""
        if self.fd_ratio is None or any(d is None for d in self.differences.values()):
            return None
        return all(mean + half >= 0 for mean, half in self.differences.values()) and self.fd_ratio <= FD_RATIO


def _tagged(records: Sequence[dict[str, Any]], method: str, tag: str) -> list[dict[str, Any]]:
    return [{**r, "method": tag} for r in records if r["method"] == method]


def compare(runs: Sequence[Run], reference: Run, method: str = "collaborative") -> list[Comparison]:
    """Every run against ``reference`` for ``method`` (the reference's own row has no differences)."""
    for run in runs:
        clash = [k for k in SAME if run.settings.get(k) != reference.settings.get(k)]
        if clash:
            raise UserError(f"{run.path} and {reference.path} differ in {clash}; compare runs of the same model, pairs "
                            "and seed, which differ only in the sampler")
        if method not in run.results:
            raise UserError(f"{run.path} has no results for method {method!r} (it has {sorted(run.results)}); pass --method")
    out = []
    for run in runs:
        row = run.results[method]
        values = {key: row.get(key) for key, _ in ACCURACIES}
        values["frechet_distance"] = row.get("frechet_distance")
        if run is reference:
            out.append(Comparison(run, values, {}, None))
            continue
        pairs = _tagged(run.records, method, "run") + _tagged(reference.records, method, "reference")
        differences = {key: paired_difference(pairs, "run", "reference", key) for key, _ in ACCURACIES}
        ref_fd = reference.results[method].get("frechet_distance")
        fd = values["frechet_distance"]
        out.append(Comparison(run, values, differences, None if fd is None or not ref_fd else fd / ref_fd))
    return out


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _diff(d: Optional[tuple[float, float]]) -> str:
    return "–" if d is None else f"{100 * d[0]:+.1f} ± {100 * d[1]:.1f}"


def markdown(comparisons: Sequence[Comparison], reference: Run, method: str) -> str:
    """The table (one row per run, in the given order) and a line naming the fewest-step matching setting."""
    s = reference.settings
    lines = [
        f"Method `{method}`, N = {s['num']} held-out pairs, seed {s['seed']}, preset {s['preset']}, `{s['ckpt']}`; "
        f"differences are run − {reference.label} per sample (paired 95% CI, points); FD: Fréchet distance of the "
        f"parser features (lower is better). *matches* = no accuracy significantly lower and FD ≤ {FD_RATIO:g}× the "
        "reference's.",
        "",
        "| sampler | steps (network calls) | spacing | mask acc | text acc | joint acc | Δ mask | Δ text | Δ joint | FD | FD / ref | matches |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in comparisons:
        r = c.run.settings
        name = r["sampler"] + (f" (eta {r['eta']:g})" if r.get("eta") is not None else "")
        fd = c.values["frechet_distance"]
        verdict = "reference" if c.run is reference else {True: "yes", False: "no", None: "–"}[c.matches]
        lines.append(
            f"| {name} | {r['steps']} | {r['spacing']} | " + " | ".join(_pct(c.values[k]) for k, _ in ACCURACIES) + " | "
            + " | ".join(_diff(c.differences.get(k)) for k, _ in ACCURACIES) + " | "
            + ("–" if fd is None else f"{fd:.3f}") + " | " + ("–" if c.fd_ratio is None else f"{c.fd_ratio:.2f}") + f" | {verdict} |"
        )
    matching = [c for c in comparisons if c.matches]
    best = min(matching, key=lambda c: c.run.settings["steps"], default=None)
    lines.append("")
    if best is None:
        lines.append(f"No run matches {reference.label} on all four criteria.")
    else:
        steps = best.run.settings["steps"]
        lines.append(f"Fewest network calls matching {reference.label}: **{best.run.label}** "
                     f"({reference.settings['steps'] / steps:.1f}× fewer).")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- sampler-comparison:begin -->", "<!-- sampler-comparison:end -->"


def write_block(doc: str | Path, block: str) -> None:
    """Replace the text between the BEGIN and END markers of ``doc`` with ``block`` (a new file is just the block)."""
    doc = Path(doc)
    body = f"{BEGIN}\n{block.rstrip()}\n{END}"
    if not doc.is_file():
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(body + "\n")
        return
    text = doc.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise UserError(f"{doc} lacks one {BEGIN} ... {END} block; add the two markers where the table goes")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:start] + body + text[end:])
