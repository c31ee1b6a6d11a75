"""Averaging per-sample results into the table of an evaluation, and writing it (Markdown, JSON)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

# (key in the per-sample records / summary, column title, kind) in table order.
COLUMNS = (
    ("mask_accuracy", "mask acc", "percent"),
    ("age", "age acc", "percent"),
    ("beard", "beard acc", "percent"),
    ("text_accuracy", "text acc", "percent"),
    ("joint_accuracy", "joint acc (mask x text)", "percent"),
    ("frechet_distance", "FD (parser features)", "float"),
    ("fid", "FID", "float"),
    ("clip_similarity", "CLIP similarity", "float4"),
    ("bisenet_mask_accuracy", "mask acc (BiSeNet)", "percent"),
    ("hf_energy", "HF energy (residual noise)", "float4"),
)
PER_SAMPLE = ("mask_accuracy", "age", "beard", "text_accuracy", "joint_accuracy", "clip_similarity", "bisenet_mask_accuracy", "hf_energy")
NOISE_TOLERANCE = 1.3  # a method's high-frequency energy should be within this factor of the real images'
REAL = "real test images"
RECONSTRUCTION = "VAE reconstruction"  # the row of the real test images encoded and decoded by the model's VAE


def average_records(records: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{method: {metric: mean over its samples}}`` for the per-sample metrics present in the records."""
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        out[method] = {"n": len(rows)}
        for key in PER_SAMPLE:
            values = [r[key] for r in rows if r.get(key) is not None]
            if values:
                out[method][key] = sum(values) / len(values)
    return out


def _cell(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "percent":
        return f"{100 * value:.1f}%"
    return f"{value:.4f}" if kind == "float4" else f"{value:.3f}"


def markdown_table(summary: Mapping[str, Mapping[str, float]], caption: str) -> str:
    """A Markdown table: one row per entry of ``summary`` (methods, and the real images), one column per
    metric that any row has; ``caption`` (N, seed, ...) goes above it."""
    columns = [c for c in COLUMNS if any(c[0] in row for row in summary.values())]
    lines = [caption, "", "| method | " + " | ".join(title for _, title, _ in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for label, row in summary.items():
        lines.append(f"| {label} | " + " | ".join(_cell(row.get(key), kind) for key, _, kind in columns) + " |")
    return "\n".join(lines) + "\n"


CLAIM_TOLERANCE = 0.05  # "within 5 points" of the uni-modal model on its own modality


def paired_difference(records: Sequence[Mapping[str, Any]], a: str, b: str, key: str) -> Optional[tuple[float, float]]:
    """Mean per-sample difference ``a − b`` of metric ``key`` over the samples both methods scored (same
    conditions and seeds), and the half-width of its 95% confidence interval (1.96 standard errors).
    ``None`` when fewer than 2 samples pair up."""
    first = {r["index"]: r[key] for r in records if r["method"] == a and r.get(key) is not None}
    diffs = [first[r["index"]] - r[key] for r in records if r["method"] == b and r.get(key) is not None and r["index"] in first]
    if len(diffs) < 2:
        return None
    return mean_and_ci(diffs)


def mean_and_ci(values: Sequence[float]) -> tuple[float, float]:
    """The mean of ``values`` (at least 2) and the half-width of its 95% confidence interval (1.96 standard errors)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def claim_checks(
    summary: Mapping[str, Mapping[str, float]],
    records: Optional[Sequence[Mapping[str, Any]]] = None,
    tolerance: float = CLAIM_TOLERANCE,
) -> list[str]:
    """The paper's claim, checked on an evaluation summary: one ``PASS``/``FAIL`` line per part.

    Collaboration should match the mask-only model on mask accuracy and the text-only model on text accuracy
    (not more than ``tolerance`` below; above is fine), and beat Composable Diffusion on joint accuracy (higher)
    and on the Fréchet distance (lower). With the per-sample ``records``, each accuracy line also gives the
    paired difference's 95% confidence interval, and a win over composable whose interval includes 0 is marked
    "not significant". Parts whose methods or metrics are missing are left out.
    """
    collab = summary.get("collaborative")
    if collab is None:
        return []

    def interval(rival: str, metric: str) -> tuple[str, Optional[tuple[float, float]]]:
        ci = paired_difference(records, "collaborative", rival, metric) if records else None
        return (f", paired 95% CI ±{100 * ci[1]:.1f}" if ci else ""), ci

    parts = []
    for metric, rival, name in (("mask_accuracy", "mask", "mask acc"), ("text_accuracy", "text", "text acc")):
        other = summary.get(rival, {})
        if metric in collab and metric in other:
            diff = collab[metric] - other[metric]
            verdict = "PASS" if diff >= -tolerance else "FAIL"
            ci_text, _ = interval(rival, metric)
            parts.append(f"{verdict}: collaborative {name} {collab[metric]:.1%} vs {rival}-only {other[metric]:.1%} "
                         f"({100 * diff:+.1f} points{ci_text}; needs >= {-100 * tolerance:.0f})")
    composable = summary.get("composable", {})
    if "joint_accuracy" in collab and "joint_accuracy" in composable:
        a, b = collab["joint_accuracy"], composable["joint_accuracy"]
        ci_text, ci = interval("composable", "joint_accuracy")
        verdict = "PASS" if a > b else "FAIL"
        if verdict == "PASS" and ci is not None and ci[0] - ci[1] <= 0:
            verdict = "PASS (not significant)"
        parts.append(f"{verdict}: collaborative joint acc {a:.1%} vs composable {b:.1%} ({100 * (a - b):+.1f} points{ci_text}; higher is better)")
    if "frechet_distance" in collab and "frechet_distance" in composable:
        a, b = collab["frechet_distance"], composable["frechet_distance"]
        parts.append(f"{'PASS' if a < b else 'FAIL'}: collaborative FD {a:.3f} vs composable {b:.3f} (lower is better)")
    return parts


def noise_checks(summary: Mapping[str, Mapping[str, float]], tolerance: float = NOISE_TOLERANCE) -> list[str]:
    """Residual noise: each method's high-frequency energy as a multiple of the real test images' (within
    ``tolerance`` in either direction: far above is leftover noise, far below is blur)."""
    real = summary.get(REAL, {}).get("hf_energy")
    if not real:
        return []
    parts = []
    for method, row in summary.items():
        if method == REAL or "hf_energy" not in row:
            continue
        ratio = row["hf_energy"] / real
        verdict = "PASS" if 1.0 / tolerance <= ratio <= tolerance else "FAIL"
        parts.append(f"{verdict}: {method} high-frequency energy {ratio:.2f}x the real images' (needs {1 / tolerance:.2f}-{tolerance:.2f}x)")
    return parts


# The FaceWorld quality targets (docs/faceworld_recipe.md): stricter than the paper's claim, so that a shipped
# FaceWorld model shows the method with a margin. (row, metric, bound) for absolute bars; the rest are relative.
FACEWORLD_FLOORS = (
    (RECONSTRUCTION, "mask_accuracy", 0.96),
    (RECONSTRUCTION, "age", 0.92),
    (RECONSTRUCTION, "beard", 0.92),
    ("text", "text_accuracy", 0.70),
    ("mask", "mask_accuracy", 0.90),
)
FACEWORLD_MARGINS = (("mask", "mask_accuracy", -0.02), ("text", "text_accuracy", -0.03))  # collaborative − rival ≥ margin
FACEWORLD_JOINT_GAIN = 0.08  # collaborative − composable joint accuracy, with the paired 95% CI above 0


def faceworld_target_checks(summary: Mapping[str, Mapping[str, float]], records: Optional[Sequence[Mapping[str, Any]]] = None) -> list[str]:
    """One ``PASS``/``FAIL`` line per FaceWorld quality target the summary can check (rows or metrics that are
    missing are left out): the VAE ceiling, each expert on its own modality, collaborative against each expert
    and against composable (joint accuracy with its paired CI), and the Fréchet distance below every rival."""
    lines = []
    for row, metric, floor in FACEWORLD_FLOORS:
        value = summary.get(row, {}).get(metric)
        if value is not None:
            lines.append(f"{'PASS' if value >= floor else 'FAIL'}: {row} {metric.replace('_', ' ')} {value:.1%} (target >= {floor:.0%})")
    collab = summary.get("collaborative", {})
    for rival, metric, margin in FACEWORLD_MARGINS:
        a, b = collab.get(metric), summary.get(rival, {}).get(metric)
        if a is not None and b is not None:
            lines.append(f"{'PASS' if a - b >= margin - 1e-12 else 'FAIL'}: collaborative {metric.replace('_', ' ')} {a:.1%} vs "
                         f"{rival}-only {b:.1%} ({100 * (a - b):+.1f} points; target >= {100 * margin:+.0f})")
    a, b = collab.get("joint_accuracy"), summary.get("composable", {}).get("joint_accuracy")
    if a is not None and b is not None:
        ci = paired_difference(records, "collaborative", "composable", "joint_accuracy") if records else None
        verdict = "PASS" if ci is not None and ci[0] - ci[1] > 0 and a - b >= FACEWORLD_JOINT_GAIN else "FAIL"
        ci_text = f", paired 95% CI {100 * (ci[0] - ci[1]):+.1f} to {100 * (ci[0] + ci[1]):+.1f}" if ci else ", no per-sample records for the CI"
        lines.append(f"{verdict}: collaborative joint acc {a:.1%} vs composable {b:.1%} ({100 * (a - b):+.1f} points{ci_text}; "
                     f"target >= {100 * FACEWORLD_JOINT_GAIN:+.0f} with the CI above 0)")
    fd = collab.get("frechet_distance")
    rivals = {m: summary[m]["frechet_distance"] for m in ("composable", "text", "mask") if "frechet_distance" in summary.get(m, {})}
    if fd is not None and rivals:
        others = ", ".join(f"{m} {v:.3f}" for m, v in rivals.items())
        lines.append(f"{'PASS' if all(fd < v for v in rivals.values()) else 'FAIL'}: collaborative FD {fd:.3f} vs {others} "
                     "(target: below every one)")
    return lines


@dataclass(frozen=True)
class RunDifference:
    """One method's metric in two evaluation runs of the same conditions and seeds: the paired difference."""

    method: str
    key: str
    first: float  # mean in the first run
    second: float  # mean in the second run
    difference: float  # mean per-sample (second − first)
    half_width: float  # of its 95% confidence interval
    max_abs: float  # the largest per-sample |difference|
    ci_first: float  # half-width of the 95% confidence interval of the first run's own mean

    @property
    def within_ci(self) -> bool:
        """The second run's mean lies inside the first run's own 95% confidence interval."""
        return abs(self.second - self.first) <= self.ci_first


def compare_runs(first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]],
                 keys: Sequence[str] = PER_SAMPLE) -> list[RunDifference]:
    """Per-sample comparison of two runs' records (``records.json``) of the same pairs, method by method.

    Raises ValueError when the runs do not cover the same (method, sample) pairs."""
    def index(records):
        return {(r["method"], r["index"]): r for r in records}

    a, b = index(first), index(second)
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())[:3]
        raise ValueError(f"the two runs cover different (method, sample) pairs, e.g. {only}; compare runs of the same --num and --methods")
    rows = []
    for method in sorted({m for m, _ in a}):
        samples = sorted(i for m, i in a if m == method)
        for key in keys:
            pairs = [(a[method, i][key], b[method, i][key]) for i in samples
                     if a[method, i].get(key) is not None and b[method, i].get(key) is not None]
            if len(pairs) < 2:
                continue
            diffs = [y - x for x, y in pairs]
            mean_d, half_d = mean_and_ci(diffs)
            mean_a, half_a = mean_and_ci([x for x, _ in pairs])
            rows.append(RunDifference(method, key, mean_a, sum(y for _, y in pairs) / len(pairs), mean_d, half_d,
                                      max(abs(d) for d in diffs), half_a))
    return rows
