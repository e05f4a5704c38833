"""ROI tables, terminal summaries and the self-contained HTML report on synthetic Scores."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import synthetic_scores

from alignment import dims
from alignment.io import InputError, write_netcdf
from alignment.report import render_subject_report, roi_table, summary_lines, write_subject_report
from alignment.report.tables import TABLE_COLUMNS

PLANTED = {"early": 1, "mid": 2, "late": 3}  # ROI -> layer index of the planted peak
N_LAYERS = 4
TRUTH = {"images": {"rois": {name: {"layer": f"layer_{i:02d}"} for name, i in PLANTED.items()}}}


def make_scores(model="tiny-vit", untrained=0, n_per_roi=50, n_none=30, seed=0, **attrs):
    """Scores over fsaverage5 vertices: 3 ROIs peaking at a planted layer, 4 layers.

    The first 10 voxels of each ROI are not significant (q = 0.5); the early ROI has 3 voxels
    without a ceiling and one voxel whose r exceeds sqrt(ceiling). Built by the shared
    builder in conftest.py (:func:`conftest.synthetic_scores`).
    """
    return synthetic_scores(
        model=model, untrained=untrained, n_per_roi=n_per_roi, n_none=n_none, seed=seed, **attrs
    )


@pytest.fixture(scope="module")
def scores():
    return make_scores()


def test_roi_table_matches_hand_computation(scores):
    table = roi_table(scores)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert list(table["roi"]) == list(PLANTED)  # "none" left out, order of appearance
    assert list(table["best_layer"]) == [f"layer_{i:02d}" for i in PLANTED.values()]

    r = scores[dims.R].values
    q = scores[dims.Q].values
    c = scores[dims.CEILING].values
    p95 = scores[dims.R_NULL_P95].values
    m = scores[dims.ROI].values == "early"
    b = PLANTED["early"]
    row = table.set_index("roi").loc["early"]
    keep = m & (c > 0)
    assert row["n_voxels"] == m.sum()
    assert row["best_layer_index"] == b
    np.testing.assert_allclose(row["r"], r[b, m].mean())
    np.testing.assert_allclose(row["r_null_p95"], p95[b, m].mean())
    np.testing.assert_allclose(row["ceiling"], c[m].mean())
    # r/ceiling: mean over voxels with ceiling > 0 of r / sqrt(ceiling)
    np.testing.assert_allclose(row["r_over_ceiling"], np.mean(r[b, keep] / np.sqrt(c[keep])))
    # (r/ceiling)^2: mean over voxels with ceiling > 0 of max(r, 0)^2 / ceiling
    np.testing.assert_allclose(
        row["r2_over_ceiling"], np.mean(np.maximum(r[b, keep], 0) ** 2 / c[keep])
    )
    np.testing.assert_allclose(row["frac_significant"], np.mean(q[b, m] < 0.05))
    assert row["n_significant"] == (q[b, m] < 0.05).sum()
    assert row["n_above_ceiling"] == 1
    assert row["n_without_ceiling"] == 3
    assert table.set_index("roi").loc["mid", "n_above_ceiling"] == 0
    assert table.attrs["fdr_alpha"] == 0.05


def test_roi_table_alpha_and_missing_variables(scores):
    assert (roi_table(scores, alpha=1e-4)["frac_significant"] == 0).all()
    with pytest.raises(InputError, match="ceiling"):
        roi_table(scores.drop_vars(dims.CEILING))


def test_summary_lines(scores, tmp_path):
    path = tmp_path / "scores.nc"
    write_netcdf(make_scores(model="rand-vit", untrained=1), path)
    lines = summary_lines([scores, path])
    assert len(lines) == 2 * len(PLANTED)
    subject = f"sub-{scores.attrs['subject']} | " if "subject" in scores.attrs else ""
    assert lines[0].startswith(f"{subject}images | tiny-vit | ridge | early: best layer_01 r=")
    assert "r/ceil=" in lines[0]
    assert "above ceiling" in lines[0]
    assert all("UNTRAINED" in line for line in lines[3:])
    assert not any("UNTRAINED" in line for line in lines[:3])
    control = make_scores(model="random", untrained=1, control=1)
    assert all("RANDOM-FEATURE CONTROL" in line for line in summary_lines([control]))


@pytest.fixture(scope="module")
def report_html():
    trained = make_scores(model='evil<script>alert("x")</script>')
    untrained = make_scores(model="rand-vit", untrained=1, seed=1)
    config = {"datasets": {"images": {"path": "data/demo"}}, "note": "<b>not bold</b>"}
    provenance = {"config_hash": "abc123", "host": "laptop"}
    return render_subject_report("01", [trained, untrained], config, provenance, TRUTH, dpi=30)


def test_report_is_self_contained(report_html):
    assert report_html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", report_html)
    assert "http://" not in report_html and "https://" not in report_html
    assert "<link" not in report_html and "<script" not in report_html
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', report_html)
    assert len(images) == 2 * 4  # per model: profiles, best-layer, r and r/ceiling maps


def test_report_content(report_html):
    for roi in PLANTED:
        assert f"<td>{roi}</td>" in report_html
    assert "sub-01" in report_html
    assert "UNTRAINED (random init)" in report_html
    assert 'class="model untrained"' in report_html
    assert "How to read" in report_html
    assert "config hash" in report_html and "abc123" in report_html
    for package in ("numpy", "xarray", "nilearn", "himalaya", "torch", "python"):
        assert f"<td>{package}</td>" in report_html
    # planted layer shown next to the recovered one, and recovered
    assert "planted layer" in report_html
    assert report_html.count('<td class="ok">yes</td>') == 2 * len(PLANTED)
    assert report_html.count("best layer overall") >= 2


def test_report_escapes_text(report_html):
    assert "<script>" not in report_html
    assert "evil&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in report_html
    assert "<b>not bold</b>" not in report_html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in report_html


def test_report_unsupported_space_and_truth_without_layer(tmp_path):
    volume = make_scores(space="MNI152")
    path = tmp_path / "sub-01" / "report.html"
    truth = {
        "images": {
            "rois": {"early": {"layer": "layer_02"}, "late": {"layer": None, "driver": "faces"}}
        },
        "other": {"rois": {"early": {"layer": "layer_00"}}},
        "subjects": ["01"],
    }
    out = write_subject_report(path, "01", [volume], {}, {}, truth)
    text = out.read_text(encoding="utf-8")
    assert out == path
    assert '<td>layer_02</td><td class="bad">no</td>' in text  # planted 02, recovered 01
    assert '<td>no layer (faces)</td><td class="low">n/a</td>' in text
    assert '<td class="low">not planted</td>' in text  # mid
    assert "No brain maps" in text
    assert len(re.findall(r"data:image/png;base64,", text)) == 1  # the layer profiles only
    assert not list(path.parent.glob(".*tmp"))  # atomic write left nothing behind


def test_report_rejects_incomplete_scores(scores):
    with pytest.raises(InputError, match=r"r_null_p95"):
        render_subject_report("01", [scores.drop_vars(dims.R_NULL_P95)], {}, {})


def test_report_without_truth(scores):
    text = render_subject_report("01", [scores.assign_attrs(space="MNI152")], {}, {})
    assert "planted" not in text
