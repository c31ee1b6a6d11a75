"""The evaluation table and the automatic check of the paper's claim."""

import pytest
import torch

from ldm.evaluation.report import claim_checks, markdown_table, paired_difference

SUMMARY = {
    "collaborative": {"n": 4, "mask_accuracy": 0.80, "text_accuracy": 0.90, "joint_accuracy": 0.72, "frechet_distance": 2.0},
    "composable": {"n": 4, "mask_accuracy": 0.70, "text_accuracy": 0.60, "joint_accuracy": 0.42, "frechet_distance": 3.0},
    "text": {"n": 4, "mask_accuracy": 0.30, "text_accuracy": 0.93},
    "mask": {"n": 4, "mask_accuracy": 0.90, "text_accuracy": 0.40},
}


def test_claim_checks_pass_and_fail_by_the_stated_rules():
    lines = claim_checks(SUMMARY)
    assert len(lines) == 4
    mask_line, text_line, joint_line, fd_line = lines
    assert mask_line.startswith("FAIL") and "-10.0 points" in mask_line  # 10 points under mask-only
    assert text_line.startswith("PASS") and "-3.0 points" in text_line  # within 5 points
    assert joint_line.startswith("PASS") and fd_line.startswith("PASS")
    worse = {**SUMMARY, "collaborative": {**SUMMARY["collaborative"], "joint_accuracy": 0.4, "frechet_distance": 3.5}}
    assert [line[:4] for line in claim_checks(worse)][2:] == ["FAIL", "FAIL"]


def test_claim_checks_leave_out_missing_parts():
    assert claim_checks({"text": SUMMARY["text"]}) == []
    only = {"collaborative": SUMMARY["collaborative"], "mask": SUMMARY["mask"]}
    assert len(claim_checks(only)) == 1


def test_markdown_table_has_one_row_per_method_and_only_present_columns():
    table = markdown_table(SUMMARY, "N = 4")
    assert table.startswith("N = 4") and table.count("\n| ") == 6  # header, separator, 4 rows
    assert "FD (parser features)" in table and "FID" not in table and "80.0%" in table


def records_for(values: dict[str, list[float]], key: str = "joint_accuracy") -> list[dict]:
    return [{"method": m, "index": i, key: v} for m, vs in values.items() for i, v in enumerate(vs)]


def test_paired_difference_mean_and_interval():
    recs = records_for({"collaborative": [1.0, 0.0, 1.0, 1.0], "composable": [0.0, 0.0, 1.0, 0.0]})
    mean, half = paired_difference(recs, "collaborative", "composable", "joint_accuracy")
    # differences 1, 0, 0, 1: mean 0.5, sample std 0.57735, 1.96 * std / 2
    assert mean == pytest.approx(0.5) and half == pytest.approx(1.96 * 0.57735 / 2, rel=1e-4)
    assert paired_difference(recs[:1], "collaborative", "composable", "joint_accuracy") is None


def test_a_win_inside_the_noise_is_marked_not_significant():
    noisy = records_for({"collaborative": [1.0, 0.0, 1.0, 0.0], "composable": [0.0, 1.0, 1.0, 0.0]})
    summary = {"collaborative": {"joint_accuracy": 0.5}, "composable": {"joint_accuracy": 0.25}}
    (line,) = claim_checks(summary, noisy)
    assert line.startswith("PASS (not significant)") and "paired 95% CI" in line
    clear = records_for({"collaborative": [1.0] * 8, "composable": [0.0, 0.1] * 4})
    (line,) = claim_checks({"collaborative": {"joint_accuracy": 1.0}, "composable": {"joint_accuracy": 0.05}}, clear)
    assert line.startswith("PASS: ")


def test_high_frequency_energy_sees_residual_noise():
    from ldm.evaluation.metrics import high_frequency_energy

    g = torch.Generator().manual_seed(0)
    smooth = torch.full((2, 3, 32, 32), 0.3)
    noisy = smooth + 0.2 * torch.randn(smooth.shape, generator=g)
    e_smooth, e_noisy = high_frequency_energy(smooth), high_frequency_energy(noisy)
    assert e_smooth.shape == (2,) and float(e_smooth.max()) < 1e-6
    assert float(e_noisy.min()) > 0.02  # about (8/9) * 0.2**2 for white noise


def test_noise_checks_compare_each_method_with_the_real_images():
    from ldm.evaluation.report import REAL, noise_checks

    lines = noise_checks({"collaborative": {"hf_energy": 0.012}, "text": {"hf_energy": 0.05}, REAL: {"hf_energy": 0.01}})
    assert lines[0].startswith("PASS: collaborative") and "1.20x" in lines[0]
    assert lines[1].startswith("FAIL: text") and "5.00x" in lines[1]
    assert noise_checks({"collaborative": {"hf_energy": 0.01}}) == []


def test_faceworld_targets_pass_and_fail_on_their_bars():
    from ldm.evaluation.report import RECONSTRUCTION, faceworld_target_checks

    good = {
        RECONSTRUCTION: {"mask_accuracy": 0.97, "age": 0.93, "beard": 0.95},
        "text": {"mask_accuracy": 0.50, "text_accuracy": 0.80, "frechet_distance": 0.30},
        "mask": {"mask_accuracy": 0.92, "text_accuracy": 0.30, "frechet_distance": 0.20},
        "composable": {"joint_accuracy": 0.40, "frechet_distance": 0.25},
        "collaborative": {"mask_accuracy": 0.905, "text_accuracy": 0.775, "joint_accuracy": 0.70, "frechet_distance": 0.10},
    }
    # per-sample joint accuracy: collaborative 1/0 alternating at 0.7, composable at 0.4 -> a clear gain
    records = [{"method": "collaborative", "index": i, "joint_accuracy": 1.0 if i % 10 < 7 else 0.0} for i in range(100)]
    records += [{"method": "composable", "index": i, "joint_accuracy": 1.0 if i % 10 < 4 else 0.0} for i in range(100)]
    lines = faceworld_target_checks(good, records)
    assert len(lines) == 9 and all(line.startswith("PASS") for line in lines), lines

    bad = {**good, RECONSTRUCTION: {"mask_accuracy": 0.95, "age": 0.93, "beard": 0.95},
           "collaborative": {**good["collaborative"], "text_accuracy": 0.76, "frechet_distance": 0.22}}
    assert [line[:4] for line in faceworld_target_checks(bad, records)].count("FAIL") == 3  # ceiling mask, text margin, FD vs mask
    assert faceworld_target_checks(good)[-2].startswith("FAIL")  # no records: the joint gain's CI is unknown
    assert faceworld_target_checks({"collaborative": {}}) == []
