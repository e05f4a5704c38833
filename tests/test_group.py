"""Group statistics across subjects and the study-level tables, reports and summary."""

from __future__ import annotations

import contextlib
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from alignment.metrics.group import (
    best_layer_consistency,
    group_test,
    loso_selected,
    min_attainable_p,
    peak_depth,
    sign_flip_test,
    simes,
    t_test,
)
from alignment.report.study import (
    COMPARISON_COLUMNS,
    baseline_pairs,
    best_layer_stats,
    config_pairs,
    group_layer_stats,
    model_peaks,
    paired_differences,
    study_table,
)

ALPHA = 0.05


# --------------------------------------------------------------------------------------------
# the tests across subjects


@pytest.mark.parametrize("test", ["sign-flip", "t-test"])
def test_group_test_is_calibrated_on_null_subjects(test):
    # 12 subjects x 4000 null quantities, heavy-tailed but symmetric around 0
    rng = np.random.default_rng(0)
    x = rng.standard_t(3, size=(12, 4000)) * rng.uniform(0.5, 2.0, size=(12, 1))
    res = group_test(x, test=test, n_permutations=5000, random_state=1)
    rate = np.mean(res.p < ALPHA)
    se = np.sqrt(ALPHA * (1 - ALPHA) / x.shape[1])
    assert rate <= ALPHA + 2.6 * se, rate
    assert rate > ALPHA - 4 * se  # not needlessly conservative either
    # p-values are roughly uniform
    assert abs(np.mean(res.p < 0.5) - 0.5) < 0.03


@pytest.mark.parametrize("test", ["sign-flip", "t-test"])
def test_group_test_detects_planted_effects(test):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 500)) + 1.0  # effect of one SD across subjects
    res = group_test(x, test=test, n_permutations=5000)
    assert np.mean(res.p < ALPHA) > 0.9
    np.testing.assert_allclose(res.mean, x.mean(0))
    assert (res.ci_low < res.mean).all() and (res.mean < res.ci_high).all()


def test_sign_flip_is_exact_for_few_subjects_and_matches_enumeration():
    x = np.array([[0.3, -0.1], [0.2, 0.2], [0.5, -0.3], [0.1, 0.4]])
    res = sign_flip_test(x, n_permutations=10000)
    assert res.exact and res.n_permutations == 16
    # hand enumeration of the first column: patterns whose mean >= observed
    col = x[:, 0]
    signs = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    expected = np.mean(signs @ col >= col.sum() - 1e-12)
    assert res.p[0] == pytest.approx(expected) == pytest.approx(1 / 16)
    assert min_attainable_p(4) == 1 / 16 and min_attainable_p(5) < ALPHA
    assert min_attainable_p(3, "t-test") == 0.0
    # the one-sided sign-flip can never reject with 3 subjects, the t-test can
    strong = np.array([[0.5], [0.52], [0.49]])
    assert sign_flip_test(strong).p[0] == pytest.approx(1 / 8)
    assert t_test(strong).p[0] < 0.01


def test_tests_leave_nan_subjects_out_and_match_scipy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 40)) + 0.4
    x[0, :5] = np.nan
    res = t_test(x, alternative="two-sided")
    ref = sps.ttest_1samp(x, 0, axis=0, nan_policy="omit", alternative="two-sided").pvalue
    np.testing.assert_allclose(res.p, np.asarray(ref), rtol=1e-10)
    assert (res.n_subjects[:5] == 8).all() and (res.n_subjects[5:] == 9).all()
    flip = sign_flip_test(x)
    assert np.isfinite(flip.p).all()
    with pytest.raises(ValueError, match="test must be"):
        group_test(x, test="wilcoxon")


def test_best_layer_consistency_and_loso():
    rng = np.random.default_rng(4)
    layers = np.arange(6)
    profiles = np.exp(-((layers - 2.0) ** 2)) + 0.15 * rng.standard_normal((10, 6))
    cons = best_layer_consistency(profiles, n_bootstrap=500, random_state=0)
    assert cons.best == 2
    assert cons.counts.sum() == 10 and cons.counts[2] >= 7
    assert cons.ci_low <= 2 <= cons.ci_high
    selected, chosen = loso_selected(profiles)
    assert (chosen == 2).sum() >= 9
    np.testing.assert_allclose(selected, profiles[np.arange(10), chosen])
    # on pure noise the left-out choice is not inflated like the subject's own maximum
    noise = rng.standard_normal((40, 12))
    assert abs(loso_selected(noise)[0].mean()) < 0.3 < noise.max(axis=1).mean()


def test_simes():
    p = np.array([[0.01, 0.5, 0.9, np.nan], [0.2, 0.3, 0.25, 0.9]])
    np.testing.assert_allclose(simes(p), [0.03, 0.4])
    assert np.isnan(simes(np.full((1, 3), np.nan)))[0]


def test_peak_depth_is_the_same_for_models_of_different_depth():
    for n_layers in (6, 12):
        depth = np.linspace(0, 1, n_layers)
        profile = 0.4 * np.exp(-(((depth - 0.5) / 0.25) ** 2))
        d, best = peak_depth(depth, profile)
        assert abs(float(d) - 0.5) < 0.02, (n_layers, d)
        # argmax alone would be a layer off the planted depth
        assert abs(depth[best] - 0.5) > 0.04


# --------------------------------------------------------------------------------------------
# study tables from Scores


def _subjects(factory, n_subjects, *, model="vit", planted=None, **kw):
    out = []
    for s in range(n_subjects):
        out.append(
            factory(
                model=model,
                seed=100 * s + sum(map(ord, model)),
                subject=f"{s + 1:02d}",
                planted=planted,
                vertex_seed=7,
                n_per_roi=20,
                n_none=10,
                **kw,
            )
        )
    return out


@pytest.fixture(scope="module")
def study(scores_factory):
    """8 subjects: a model with planted layers, an untrained net and a random control."""
    items = _subjects(scores_factory, 8, model="vit", untrained=0)
    items += _subjects(
        scores_factory,
        8,
        model="vit-untrained",
        untrained=1,
        planted={"early": 1, "mid": None, "late": None},
        effect=(0.02, 0.05),
    )
    items += _subjects(
        scores_factory,
        8,
        model="random",
        untrained=1,
        control=1,
        n_layers=1,
        planted={"early": None, "mid": None, "late": None},
    )
    return items, study_table(items)


def test_study_table_columns_and_values(study):
    items, table = study
    assert list(table.columns) == list(COMPARISON_COLUMNS)
    assert len(table) == 8 * (3 * 4 + 3 * 4 + 3 * 1)
    first = items[0]
    row = table[(table.subject == "01") & (table.model == "vit") & (table.roi == "mid")]
    m = first["roi"].values == "mid"
    np.testing.assert_allclose(row["r"], first["r"].values[:, m].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(row["relative_depth"], np.arange(4) / 3)
    assert set(table.loc[table.model == "random", "baseline"]) == {"control"}
    assert set(table.loc[table.model == "vit-untrained", "baseline"]) == {"untrained"}


def test_group_stats_recover_planted_layers_and_reject_controls(study):
    _, table = study
    group = {"test": "sign-flip", "n_permutations": 2000, "n_bootstrap": 300}
    stats = group_layer_stats(table, group)
    best = best_layer_stats(table, group).set_index(["model", "roi"])
    for roi, layer in {"early": 1, "mid": 2, "late": 3}.items():
        row = best.loc[("vit", roi)]
        assert row["best_index"] == layer
        assert row["n_best"] >= 6 and row["n_subjects"] == 8
        assert row["ci_low_index"] <= layer <= row["ci_high_index"]
        st = stats[(stats.model == "vit") & (stats.roi == roi) & (stats.layer_index == layer)]
        assert bool(st["significant"].iloc[0]) and st["p"].iloc[0] == pytest.approx(1 / 256)
    control = stats[stats.model == "random"]
    assert not control["significant"].any()
    assert (control["q"] > ALPHA).all()


def test_model_against_baselines(study):
    _, table = study
    pairs = baseline_pairs(table, models={})
    assert ("images", "vit", "random", "ridge") in pairs
    assert ("images", "vit", "vit-untrained", "ridge") in pairs
    assert ("images", "vit-untrained", "random", "ridge") in pairs
    assert not any(p[1] == "random" for p in pairs)
    # a family that differs keeps the untrained net of another family out
    other = baseline_pairs(table, models={"vit": {"family": "a"}, "vit-untrained": {"family": "b"}})
    assert ("images", "vit", "vit-untrained", "ridge") not in other
    diffs = paired_differences(table, pairs, {"test": "t-test"}).set_index(
        ["model_a", "model_b", "roi"]
    )
    assert diffs.loc[("vit", "random", "late"), "significant"]
    assert diffs.loc[("vit", "vit-untrained", "mid"), "significant"]
    assert diffs.loc[("vit", "random", "late"), "layer_a"] == "layer_03"
    # the untrained net's planted early ROI beats the random control, its other ROIs do not
    assert diffs.loc[("vit-untrained", "random", "early"), "diff"] > 0
    assert not diffs.loc[("vit-untrained", "random", "late"), "significant"]


def test_cross_model_axis_puts_peaks_at_the_same_relative_depth(scores_factory):
    # a 6- and a 12-layer model, both peaking at relative depth 0.6
    items = []
    for n_layers, name in ((6, "small"), (12, "large")):
        planted = dict.fromkeys(("early", "mid", "late"), 0.6 * (n_layers - 1))
        items += _subjects(
            scores_factory,
            6,
            model=name,
            n_layers=n_layers,
            planted=planted,
            width=0.25 * (n_layers - 1),
            noise=0.01,
        )
    table = study_table(items)
    models = {"small": {"params": 1e6, "family": "x"}, "large": {"params": 1e7, "family": "x"}}
    peaks = model_peaks(table, {"n_bootstrap": 200}, models, {"small": 32}).set_index(
        ["model", "roi"]
    )
    for roi in ("early", "mid", "late"):
        small, large = peaks.loc[("small", roi)], peaks.loc[("large", roi)]
        assert abs(small["peak_depth"] - 0.6) < 0.03, small["peak_depth"]
        assert abs(large["peak_depth"] - 0.6) < 0.03, large["peak_depth"]
        assert small["peak_depth_ci_low"] <= 0.6 + 0.03
    assert peaks.loc[("small", "early"), "n_layers"] == 6
    assert peaks.loc[("large", "early"), "params"] == 1e7
    assert peaks.loc[("small", "early"), "width"] == 32
    assert pd.isna(peaks.loc[("large", "early"), "width"])
    # a relative_depth coordinate on the Scores wins over the layer position
    depth = [0.0, 0.1, 0.2, 0.6, 0.8, 1.0]
    again = study_table([items[0].assign_coords(relative_depth=("layer", depth))])
    np.testing.assert_allclose(again["relative_depth"].iloc[:6], depth)


def test_config_pairs(study):
    _, table = study
    pairs, notes = config_pairs(table, [["vit", "vit-untrained"], ["vit", "gpt"]])
    assert pairs == [("images", "vit", "vit-untrained", "ridge")]
    assert notes and "gpt" in notes[0]


# --------------------------------------------------------------------------------------------
# reports and summary (figures at a low resolution to stay fast)


@pytest.fixture(scope="module")
def small_study(scores_factory):
    items = _subjects(scores_factory, 5, model="vit")
    items += _subjects(
        scores_factory,
        5,
        model="random",
        untrained=1,
        control=1,
        n_layers=1,
        planted={"early": None, "mid": None, "late": None},
    )
    return items


@pytest.fixture(scope="module")
def reports(small_study, tmp_path_factory):
    """The group and comparison reports of the small study, written once."""
    from alignment.report.compare import write_compare_report
    from alignment.report.group import write_group_report

    root = tmp_path_factory.mktemp("study")
    truth = {"images": {"rois": {"early": {"layer": "layer_01"}, "late": {"layer": "layer_03"}}}}
    group = write_group_report(
        root / "group" / "report.html",
        "images",
        small_study,
        {"n_permutations": 1000, "n_bootstrap": 100},
        stats_out=root / "group" / "stats.csv",
        truth=truth,
        subject_reports={"01": "../../sub-01/report.html"},
        config={"models": {"vit": {"family": "vit"}}},
        dpi=30,
    )
    compare = write_compare_report(
        root / "compare" / "report.html",
        "images",
        small_study,
        {"n_permutations": 500, "n_bootstrap": 100},
        csv_out=root / "compare" / "comparison.csv",
        models={"vit": {"params": 5e6, "family": "vit"}},
        compare=[["vit", "random"]],
        dpi=30,
    )
    return {"group": group, "compare": compare}


def test_group_report_content(reports):
    html = reports["group"].read_text()
    assert "<script" not in html and "http://" not in html
    figures = re.findall(r"<figure>(.*?)</figure>", html, flags=re.S)
    # region chart; vit: profiles, consistency, 2 maps; random: profiles, 2 maps; differences
    assert len(figures) == 1 + 4 + 3 + 1
    assert all(re.search(r"<figcaption>[^<]{20,}</figcaption>", f) for f in figures)
    assert '<a href="../../sub-01/report.html">sub-01</a>' in html
    assert html.count('<td class="ok">yes</td>') == 2  # planted early and late recovered
    assert "RANDOM-FEATURE CONTROL" in html
    stats = pd.read_csv(reports["group"].parent / "stats.csv")
    assert {"p", "q", "delta", "r_ceiling"} <= set(stats.columns)
    assert not stats.loc[stats.model == "random", "significant"].any()
    late = stats[(stats.model == "vit") & (stats.layer == "layer_03") & (stats.roi == "late")]
    assert late["significant"].all()


def test_group_report_warns_when_sign_flip_cannot_pass(scores_factory):
    from alignment.report.group import render_group_report

    items = _subjects(scores_factory, 3, model="vit")
    html, stats = render_group_report(
        "images", [s.assign_attrs(space="MNI152") for s in items], dpi=25
    )
    assert "cannot give p below 0.125" in html
    assert not stats["significant"].any()
    assert "No group maps" in html


def test_compare_report_and_csv(reports):
    html = reports["compare"].read_text()
    assert '<a href="comparison.csv">' in html
    assert "Pairwise model differences" in html and "No pair to test" not in html
    figures = re.findall(r"<figure>(.*?)</figure>", html, flags=re.S)
    assert len(figures) == 3
    assert all(re.search(r"<figcaption>[^<]{20,}</figcaption>", f) for f in figures)
    csv = pd.read_csv(reports["compare"].parent / "comparison.csv", dtype={"subject": str})
    assert list(csv.columns[:10]) == [
        "dataset",
        "subject",
        "model",
        "encoder",
        "layer",
        "relative_depth",
        "roi",
        "r",
        "ceiling",
        "p",
    ]
    assert len(csv) == 5 * 3 * (4 + 1)
    assert set(csv["subject"]) == {f"{i:02d}" for i in range(1, 6)}


def test_summary_puts_the_group_answer_first(small_study):
    from alignment.report.summary import study_summary_lines

    lines = study_summary_lines(small_study, {"n_permutations": 1000})
    assert lines[0].startswith("== Group answer: images (5 subject(s)")
    split = lines.index("== Per-subject details ==")
    group, detail = lines[:split], lines[split + 1 :]
    late = next(x for x in group if x.startswith("images | vit | ridge | late"))
    assert "best layer_03 in" in late and "SIGNIFICANT" in late
    assert all("n.s." in x for x in group if "| random [RANDOM" in x)
    assert any("vs baseline random" in x and "model WINS" in x for x in group)
    assert len(detail) == 10 * 3 and detail[0].startswith("sub-01 | images | vit")


# --------------------------------------------------------------------------------------------
# headless Chromium: the reports render without console errors, every figure has its caption

_CHROMIUM = next(
    (p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None
)

_CHECK_JS = """(() => {
  const figs = [...document.querySelectorAll('figure')];
  return {
    figures: figs.length,
    captioned: figs.filter(f => (f.querySelector('figcaption')?.textContent || '').trim().length
                                > 20).length,
    decoded: figs.filter(f => { const i = f.querySelector('img');
                                return i && i.complete && i.naturalWidth > 0; }).length,
    title: document.title,
  };
})()"""


def _render_in_chromium(path, timeout=60.0):
    """Load ``path`` in headless Chromium over the DevTools pipe; return (check, errors)."""
    import json
    import os
    import subprocess
    import tempfile
    import time

    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()

    def setup_fds():  # Chromium reads commands on fd 3 and writes replies on fd 4
        os.dup2(to_child_r, 3)
        os.dup2(from_child_w, 4)

    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [
            _CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "about:blank",
        ],
        preexec_fn=setup_fds,
        close_fds=False,  # fds 3 and 4 are made by setup_fds; pass_fds would close them
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    reader = os.fdopen(from_child_r, "rb")
    buffer = b""
    events, errors, counter = [], [], [0]
    deadline = time.monotonic() + timeout

    def send(method, params=None, session=None):
        counter[0] += 1
        msg = {"id": counter[0], "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(to_child_w, json.dumps(msg).encode() + b"\0")
        return counter[0]

    def receive():
        nonlocal buffer
        while b"\0" not in buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(reader.fileno(), 65536)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            buffer += chunk
        raw, buffer = buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(method, params=None, session=None):
        wanted = send(method, params, session)
        while True:
            msg = receive()
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            events.append(msg)

    try:
        target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            call(domain, session=session)
        call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            events.append(receive())
        check = call(
            "Runtime.evaluate", {"expression": _CHECK_JS, "returnByValue": True}, session=session
        )["result"]["value"]
        for e in events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        with contextlib.suppress(OSError):
            send("Browser.close")
        return check, errors
    finally:
        os.close(to_child_w)
        reader.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(_CHROMIUM is None, reason="no chromium (apt-get install chromium)")
@pytest.mark.parametrize("which", ["group", "compare"])
def test_reports_render_in_headless_chromium(reports, which):
    check, errors = _render_in_chromium(reports[which])
    assert errors == []
    assert check["figures"] >= 3
    assert check["captioned"] == check["figures"]
    assert check["decoded"] == check["figures"]
    assert check["title"].startswith(
        {"group": "Group report", "compare": "Model comparison"}[which]
    )


@pytest.mark.skipif(_CHROMIUM is None, reason="no chromium (apt-get install chromium)")
def test_chromium_check_sees_console_errors_and_broken_figures(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body>"
        '<figure><img src="data:image/png;base64,AAAA" alt="x"></figure>'
        "<script>console.error('boom'); missing();</script></body></html>"
    )
    check, errors = _render_in_chromium(bad)
    assert len(errors) >= 2 and any("boom" in e for e in errors)
    assert check == {"figures": 1, "captioned": 0, "decoded": 0, "title": "bad"}


def test_config_schema_accepts_group_keys_and_checks_compare_names():
    from pathlib import Path

    import yaml

    from alignment.config import check_config
    from alignment.io import InputError

    repo = Path(__file__).resolve().parents[1]
    schema = repo / "workflow" / "schemas" / "config.schema.yaml"
    config = yaml.safe_load((repo / "config.yaml").read_text())
    assert config["group"]["test"] == "t-test" and config["compare"]
    check_config(config, schema)
    config["compare"] = [["minilm", "random-txt"]]
    with pytest.raises(InputError, match=r"compare: 'random-txt' .*did you mean 'random-text'"):
        check_config(config, schema)
    config["compare"] = [["minilm"]]
    config["group"] = {"test": "wilcoxon"}
    with pytest.raises(InputError, match=r"group\.test"):
        check_config(config, schema)
