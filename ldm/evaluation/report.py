"""Averaging per-sample results into the table of an evaluation, and writing it (Markdown, JSON)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

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
)
PER_SAMPLE = ("mask_accuracy", "age", "beard", "text_accuracy", "joint_accuracy", "clip_similarity", "bisenet_mask_accuracy")


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


def claim_checks(summary: Mapping[str, Mapping[str, float]], tolerance: float = CLAIM_TOLERANCE) -> list[str]:
    """The paper's claim, checked on an evaluation summary: one ``PASS``/``FAIL`` line per part.

    Collaboration should match the mask-only model on mask accuracy and the text-only model on text accuracy
    (not more than ``tolerance`` below; above is fine), and beat Composable Diffusion on joint accuracy (higher)
    and on the Fréchet distance (lower). Parts whose methods or metrics are missing are left out.
    """
    collab = summary.get("collaborative")
    if collab is None:
        return []
    parts = []
    for metric, rival, name in (("mask_accuracy", "mask", "mask acc"), ("text_accuracy", "text", "text acc")):
        other = summary.get(rival, {})
        if metric in collab and metric in other:
            diff = collab[metric] - other[metric]
            verdict = "PASS" if diff >= -tolerance else "FAIL"
            parts.append(f"{verdict}: collaborative {name} {collab[metric]:.1%} vs {rival}-only {other[metric]:.1%} "
                         f"({100 * diff:+.1f} points; needs >= {-100 * tolerance:.0f})")
    composable = summary.get("composable", {})
    for metric, name, higher in (("joint_accuracy", "joint acc", True), ("frechet_distance", "FD", False)):
        if metric in collab and metric in composable:
            a, b = collab[metric], composable[metric]
            verdict = "PASS" if (a > b if higher else a < b) else "FAIL"
            fmt = (lambda v: f"{v:.1%}") if higher else (lambda v: f"{v:.3f}")
            parts.append(f"{verdict}: collaborative {name} {fmt(a)} vs composable {fmt(b)} ({'higher' if higher else 'lower'} is better)")
    return parts
