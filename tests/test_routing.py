"""The attention-routing encoder on synthetic patch tokens with planted blobs and quadrants.

One module-scoped fixture trains the encoder (with and without positional encodings) and
ridge on flattened tokens once; the tests assert several things on those fits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from alignment import dims
from alignment.data.responses import make_responses
from alignment.encoders import EncoderContext, make_encoder
from alignment.encoders.ridge import RidgeEncoder
from alignment.encoders.routing import (
    RoutingEncoder,
    _build_module,
    check_token_grid,
    label_attention,
    quadrant_mask,
    query_layout,
    sine_positional_encoding,
    synthetic_routing_data,
)
from alignment.evaluation import score_layers
from alignment.io import InputError
from alignment.viz.attention import head_attention_maps

# Settings for small synthetic data: one head (so the head-averaged map is the head's map),
# tokens of width 64 projected to 32, a learning rate for a few hundred steps.
FAST = {
    "n_heads": 1,
    "width": 32,
    "ffn_dim": 128,
    "batch_size": 16,
    "lr": 3e-3,
    "max_epochs": 30,
    "patience": 6,
    "verbose": False,
}
N_TRAIN = 420


def _r(y, p):
    y, p = y - y.mean(0), p - p.mean(0)
    return (y * p).sum(0) / np.sqrt((y * y).sum(0) * (p * p).sum(0))


@pytest.fixture(scope="module")
def fits():
    d = synthetic_routing_data(n_images=560, strength=1.5, noise=0.3, random_state=0)
    tr, te = np.arange(N_TRAIN), np.arange(N_TRAIN, len(d["X"]))
    common = {"roi": d["roi"], "hemi": d["hemi"], "token_grid": d["grid"], "cv": 4, **FAST}
    out = {"data": d, "test": te}
    for name, positional in (("routing", True), ("nopos", False)):
        enc = RoutingEncoder(positional=positional, **common).fit(d["X"][tr], d["Y"][tr])
        out[name] = enc
        out[f"{name}_r"] = _r(d["Y"][te], enc.predict(d["X"][te]))
    flat = d["X"].reshape(len(d["X"]), -1)
    ridge = RidgeEncoder(alphas=np.logspace(0, 5, 6), cv=3).fit(flat[tr], d["Y"][tr])
    out["ridge_r"] = _r(d["Y"][te], ridge.predict(flat[te]))
    out["attention"] = out["routing"].attention(d["X"][te])
    return out


def _roi_r(fits, name, roi):
    return float(np.mean(fits[f"{name}_r"][fits["data"]["roi"] == roi]))


def _query(enc, hemi, roi):
    return enc.layout_.labels.index((hemi, roi))


def test_content_attention_sits_in_the_blob_and_follows_it(fits):
    d, te = fits["data"], fits["test"]
    cat0 = d["category"][te] == 0
    blob = d["blob"][te][cat0]
    for hemi in ("left", "right"):
        att = fits["attention"][:, _query(fits["routing"], hemi, "content")][cat0]
        np.testing.assert_allclose(fits["attention"].sum((2, 3)), 1.0, atol=1e-4)
        mass = (att * blob).sum((1, 2))
        assert mass.mean() >= 0.7, mass.mean()
        rows, cols = np.mgrid[: d["grid"][0], : d["grid"][1]]
        centroid = np.stack([(att * rows).sum((1, 2)), (att * cols).sum((1, 2))], 1)
        centre = np.stack([(blob * rows).sum((1, 2)), (blob * cols).sum((1, 2))], 1)
        centre = centre / blob.sum((1, 2))[:, None]
        for axis in range(2):  # the centroid moves with the blob from image to image
            assert np.corrcoef(centroid[:, axis], centre[:, axis])[0, 1] > 0.9
        assert np.median(np.linalg.norm(centroid - centre, axis=1)) < 1.0  # within a token


def test_retinotopic_attention_stays_in_its_quadrant_whatever_the_content(fits):
    d = fits["data"]
    att = fits["attention"][:, _query(fits["routing"], "left", "retinotopic")]
    inside = att[:, quadrant_mask(d["grid"], "upper-left")].sum(1)
    # a quarter of the tokens would get 25%; the query keeps most of its mass there on every
    # test image, wherever the blob of whatever category lies
    assert inside.min() > 0.5 and inside.mean() > 0.65, (inside.min(), inside.mean())


def test_routing_beats_ridge_on_content_and_does_not_lose_on_retinotopic(fits):
    content = _roi_r(fits, "routing", "content") - _roi_r(fits, "ridge", "content")
    retino = _roi_r(fits, "routing", "retinotopic") - _roi_r(fits, "ridge", "retinotopic")
    assert _roi_r(fits, "routing", "content") > 0.85
    assert content > 0.3
    assert retino > -0.05  # ridge on flattened tokens can express a quadrant read-out
    assert content > 2 * retino
    assert _roi_r(fits, "routing", "mixed") > _roi_r(fits, "ridge", "mixed")


def test_without_positional_encoding_only_the_retinotopic_roi_fails(fits):
    assert _roi_r(fits, "nopos", "content") > 0.85  # content routing needs no position
    assert _roi_r(fits, "nopos", "retinotopic") < _roi_r(fits, "routing", "retinotopic") - 0.3
    assert _roi_r(fits, "nopos", "retinotopic") < 0.35


def test_fit_records_early_stopping(fits):
    enc = fits["routing"]
    val = [h["val_r"] for h in enc.history_]  # select_on="r": the best validation mean r
    assert enc.best_epoch_ == int(np.argmax(val)) + 1
    assert len(val) <= FAST["max_epochs"]
    assert all(h["seconds"] > 0 for h in enc.history_)


def test_vertex_outside_an_roi_gets_no_gradient_from_its_query():
    roi = np.array(["a", "a", "b", "a+b", "none", "b"])
    hemi = np.array(["left"] * 6)
    layout = query_layout(roi, hemi)
    assert layout.labels == [("left", "a"), ("left", "b"), ("left", "rest")]
    torch.manual_seed(0)
    model = _build_module(
        16, layout, (4, 4), width=None, n_heads=2, ffn_dim=32, dropout=0.0, positional=True
    ).eval()
    x = torch.randn(3, 16, 16)
    for vertex, members in {0: {"a"}, 2: {"b"}, 3: {"a", "b"}, 4: {"rest"}}.items():
        model.zero_grad()
        model(x)[:, vertex].sum().backward()
        grad = model.query.grad.abs().sum(1)
        for q, (_, name) in enumerate(layout.labels):
            if name in members:
                assert grad[q] > 0, (vertex, name)
            else:
                assert grad[q] == 0, (vertex, name)


def test_gated_einsum_readout_equals_an_explicit_sum_over_member_queries():
    roi = np.array(["a", "b", "a+b", "none", "a", "b", "none"])
    hemi = np.array(["left", "left", "left", "left", "right", "right", "right"])
    layout = query_layout(roi, hemi)
    torch.manual_seed(1)
    model = _build_module(
        8, layout, (2, 3), width=None, n_heads=2, ffn_dim=16, dropout=0.0, positional=True
    ).eval()
    x = torch.randn(4, 6, 8)
    with torch.no_grad():
        out = model(x)
        z, _ = model.decode(x)
    expected = torch.zeros_like(out)
    for h, (qi, cols) in enumerate(zip(layout.query_index, layout.vertex_index, strict=True)):
        for j, col in enumerate(cols):
            for k, q in enumerate(qi):
                if layout.membership[h][k, j]:
                    expected[:, col] += z[:, q] @ model.readout[h][j]
            expected[:, col] += model.readout_bias[h][j]
    torch.testing.assert_close(out, expected)


def test_per_vertex_mode_has_one_query_per_vertex():
    d = synthetic_routing_data(n_images=48, grid=(4, 4), width=16, n_voxels=3)
    enc = RoutingEncoder(
        roi=d["roi"],
        hemi=d["hemi"],
        mode="vertex",
        n_heads=2,
        ffn_dim=16,
        max_epochs=2,
        batch_size=16,
        verbose=False,
    ).fit(d["X"], d["Y"])
    assert enc.layout_.n_queries == d["Y"].shape[1]
    assert enc.predict(d["X"][:5]).shape == (5, d["Y"].shape[1])
    maps = enc.interpret(d["X"][:5])
    assert maps["attention_left_content"].shape == (5, 4, 4)
    assert "attention_right_mixed" in maps and "attention_left_rest" in maps


def test_sine_positional_encoding_is_detr_style():
    pos = sine_positional_encoding((3, 4), 8)
    assert pos.shape == (12, 8)
    # token (row 1, column 2): rows use channels 0-3, columns 4-7, sin/cos alternating
    y = 2 / 3 * 2 * np.pi
    x = 3 / 4 * 2 * np.pi
    t = 10000 ** (2 * (np.arange(4) // 2) / 4)
    want = [np.sin(y / t[0]), np.cos(y / t[1]), np.sin(y / t[2]), np.cos(y / t[3])]
    want += [np.sin(x / t[0]), np.cos(x / t[1]), np.sin(x / t[2]), np.cos(x / t[3])]
    np.testing.assert_allclose(pos[1 * 4 + 2], want, atol=1e-4)
    assert len({tuple(np.round(p, 5)) for p in pos}) == 12  # every position is distinct
    assert sine_positional_encoding((2, 2), 6).shape == (4, 6)  # odd half-widths work


def test_training_is_deterministic_on_cpu():
    d = synthetic_routing_data(n_images=64, grid=(4, 4), width=16, n_voxels=4)
    kw = {"roi": d["roi"], "hemi": d["hemi"], "n_heads": 2, "ffn_dim": 16, "max_epochs": 2,
          "batch_size": 16, "verbose": False, "random_state": 3}  # fmt: skip
    a = RoutingEncoder(**kw).fit(d["X"], d["Y"]).predict(d["X"][:8])
    b = RoutingEncoder(**kw).fit(d["X"], d["Y"]).predict(d["X"][:8])
    c = RoutingEncoder(**{**kw, "random_state": 4}).fit(d["X"], d["Y"]).predict(d["X"][:8])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # trained on z-scored responses, predicts in the responses' units
    scaled = RoutingEncoder(**kw).fit(d["X"], 10 * d["Y"] + 50).predict(d["X"][:8])
    np.testing.assert_allclose(scaled, 10 * a + 50, rtol=1e-4, atol=1e-3)


def test_bad_inputs_fail_clearly_and_odd_layouts_are_handled():
    d = synthetic_routing_data(n_images=40, grid=(4, 4), width=16, n_voxels=3)
    kw = {"n_heads": 2, "ffn_dim": 16, "max_epochs": 1, "batch_size": 16, "verbose": False}
    # an ROI asked for but absent
    with pytest.raises(InputError, match=r"\['FFA'\] have no vertex"):
        RoutingEncoder(roi=d["roi"], hemi=d["hemi"], rois=["content", "FFA"], **kw).fit(
            d["X"], d["Y"]
        )
    # a token grid that does not hold the tokens (e.g. CLS kept), at fit and at predict
    with pytest.raises(InputError, match="token_grid \\[4, 5\\] holds 20 tokens"):
        RoutingEncoder(roi=d["roi"], token_grid=(4, 5), **kw).fit(d["X"], d["Y"])
    with pytest.raises(InputError, match="no token_grid"):
        check_token_grid(17)
    enc = RoutingEncoder(roi=d["roi"], hemi=d["hemi"], **kw).fit(d["X"], d["Y"])
    with pytest.raises(InputError, match="fitted on 16 tokens"):
        enc.predict(np.zeros((2, 17, 16), np.float32))
    with pytest.raises(InputError, match="samples, tokens, units"):
        enc.fit(d["X"][:, 0], d["Y"])
    with pytest.raises(InputError, match="ROI labels for"):
        RoutingEncoder(roi=d["roi"][:-1], **kw).fit(d["X"], d["Y"])
    # one hemisphere only; a hemisphere without rest vertices; no labels at all
    left = d["hemi"] == "left"
    one = RoutingEncoder(roi=d["roi"][left], hemi=d["hemi"][left], **kw).fit(
        d["X"], d["Y"][:, left]
    )
    assert {h for h, _ in one.layout_.labels} == {"left"}
    assert one.predict(d["X"][:3]).shape == (3, int(left.sum()))
    in_roi = d["roi"] != "none"
    no_rest = RoutingEncoder(roi=d["roi"][in_roi], hemi=d["hemi"][in_roi], **kw)
    no_rest.fit(d["X"], d["Y"][:, in_roi])
    assert "rest" not in {r for _, r in no_rest.layout_.labels}
    bare = RoutingEncoder(**kw).fit(d["X"], d["Y"])
    assert bare.layout_.labels == [("all", "rest")]


def _token_experiment(n_img=60, seed=0):
    """Responses with repeats and tokens features, as the CV loop receives them."""
    d = synthetic_routing_data(n_images=n_img, grid=(4, 4), width=16, n_voxels=4,
                               random_state=seed)  # fmt: skip
    rng = np.random.default_rng(seed)
    ids = np.array([f"img{i:03d}" for i in range(n_img)])
    rows, trial_ids, reps = [], [], []
    for rep in range(2):
        order = rng.permutation(n_img)
        rows.append(d["signal"][order] + 0.5 * rng.standard_normal(d["signal"].shape))
        trial_ids.append(ids[order])
        reps.append(np.full(n_img, rep))
    reps = np.concatenate(reps)
    resp = make_responses(
        np.concatenate(rows), kind="images", stimulus_id=np.concatenate(trial_ids),
        repetition=reps, session=reps, roi=d["roi"], hemi=d["hemi"],
        vertex=np.arange(len(d["roi"])),
    )  # fmt: skip
    layer = xr.DataArray(
        d["X"],
        dims=(dims.STIMULUS, dims.TOKEN, dims.UNIT),
        coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)},
        attrs={"token_grid": [4, 4]},
    )
    return resp, {"layer_03": layer}


def test_the_cv_loop_builds_it_from_the_registry_and_gathers_attention():
    resp, layers = _token_experiment()
    spec = {"kind": "routing", "n_heads": 2, "ffn_dim": 16, "max_epochs": 2, "batch_size": 16,
            "position_heads": 1, "verbose": False}  # fmt: skip
    context = EncoderContext(
        voxels={"roi": resp.roi.values, "hemi": resp.hemi.values},
        features={"token_grid": [4, 4]},
        inner_cv=[(np.arange(10, 40), np.arange(10))],
        fold=2,
        random_state=1,
    )
    enc = make_encoder(spec, context)
    assert isinstance(enc, RoutingEncoder)
    assert enc.token_grid == [4, 4] and enc.random_state == 3 and len(enc.cv) == 1
    scores, interp = score_layers(
        resp, layers, encoder_spec=spec, cv={"n_folds": 3, "inner_folds": 2},
        stats_spec={"n_permutations": 20}, return_interpretation=True,
    )  # fmt: skip
    assert scores.attrs["encoder_kind"] == "routing"
    assert scores[dims.R].shape == (1, resp.sizes[dims.VOXEL])
    att = interp["layer_03"]
    assert "attention_left_retinotopic" in att and "attention_right_mixed" in att
    values = att["attention_left_content"].values
    assert values.shape == (60, 4, 4) and np.isfinite(values).all()  # every image tested once
    np.testing.assert_allclose(values.sum((1, 2)), 1.0, atol=1e-4)
    # per-head maps: their mean is the stored map; head 0 reads position only, so its map is
    # the same for every image of a fold
    heads = label_attention(att, spec)["head_attention_left_content"]
    assert heads.dims == (dims.STIMULUS, "head", "row", "column") and heads.shape == (60, 2, 4, 4)
    np.testing.assert_allclose(heads.mean("head").values, values, atol=1e-6)
    assert label_attention(att, spec)["position_head"].values.tolist() == [True, False]
    maps, chosen = head_attention_maps(label_attention(att, spec), position=True)
    assert chosen == [0]
    np.testing.assert_allclose(maps["left content"], heads.values[:, 0], atol=1e-6)
    assert len({m.round(5).tobytes() for m in maps["left content"][:20]}) == 1  # fold 0
    norms = label_attention(att, spec)["head_norm_left_content"]
    assert norms.dims == (dims.STIMULUS, "head") and bool((norms > 0).all())


def _scores(r_by_layer, roi, kind, model, source="vit", hemi=None):
    r = np.asarray(r_by_layer, dtype=np.float32)
    coords = {dims.LAYER: [f"layer_{i:02d}" for i in range(len(r))], dims.ROI: (dims.VOXEL, roi)}
    if hemi is not None:
        coords[dims.HEMI] = (dims.VOXEL, hemi)
    return xr.Dataset(
        {
            dims.R: ((dims.LAYER, dims.VOXEL), r),
            dims.Q: ((dims.LAYER, dims.VOXEL), np.full(r.shape, 0.01, np.float32)),
            dims.R_NULL_P95: ((dims.LAYER, dims.VOXEL), np.full(r.shape, 0.1, np.float32)),
            dims.R_NULL_MEAN: ((dims.LAYER, dims.VOXEL), np.zeros(r.shape, np.float32)),
            dims.CEILING: (dims.VOXEL, np.full(r.shape[1], 0.25, np.float32)),
        },
        coords=coords,
        attrs={
            "dataset": "d",
            "model": model,
            "model_source": source,
            "encoder": kind,
            "encoder_kind": kind,
            "subject": "01",
            "space": "unknown",
        },
    )


def test_gain_over_ridge_table_and_attention_overlay(tmp_path):
    from PIL import Image

    from alignment.report.gain import find_baseline, gain_table
    from alignment.report.html import _attention_html, _gain_html

    roi = np.array(["faces", "faces", "retinotopic", "none"])
    ridge = _scores([[0.1, 0.1, 0.05, 0.0], [0.2, 0.2, 0.0, 0.0]], roi, "ridge", "vit")
    routing = _scores([[0.4, 0.3, 0.35, 0.1]], roi, "routing", "vit-tokens")
    control = _scores([[0.9, 0.9, 0.9, 0.9]], roi, "ridge", "random", source="random")
    assert find_baseline(routing, [control, ridge, routing]) is ridge
    assert find_baseline(ridge, [ridge, routing]) is None
    table, gain = gain_table(routing, ridge)
    faces = table.set_index("roi").loc["faces"]
    assert faces["baseline_layer"] == "layer_01" and faces["layer"] == "layer_00"
    assert faces["gain_r"] == pytest.approx(0.35 - 0.2)
    assert faces["gain_r_over_ceiling"] == pytest.approx((0.35 - 0.2) / 0.5)
    # per vertex at its ROI's best layer; "none" at each encoder's best layer overall
    np.testing.assert_allclose(gain, [0.4 - 0.2, 0.3 - 0.2, 0.35 - 0.05, 0.1 - 0.0], atol=1e-6)
    assert "Gain of vit-tokens · routing over vit · ridge" in _gain_html(routing, [ridge], 40)
    # attention overlays: maps matched to the Scores, images read from the stimulus table
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(tmp_path / f"im{i}.png")
    (tmp_path / "stimuli.tsv").write_text(
        "stimulus_id\tpath\n" + "".join(f"im{i}\tim{i}.png\n" for i in range(3))
    )
    routing.attrs["stimuli"] = str(tmp_path / "stimuli.tsv")
    maps = np.random.default_rng(0).dirichlet(np.ones(4), size=3).reshape(3, 2, 2)
    att = xr.Dataset(
        {f"attention_right_{r}": ((dims.STIMULUS, "row", "col"), maps) for r in ("faces", "rest")},
        coords={dims.STIMULUS_ID: (dims.STIMULUS, ["im0", "im1", "im2"])},
        attrs=dict(routing.attrs),
    )
    html = _attention_html(routing, [att], 40)
    assert "Where the queries look" in html and "unavailable" not in html
    assert "mean over heads" in html
    # with per-head maps, the overlay shows the position-only heads and says which
    per_head = np.stack([maps, np.roll(maps, 1, axis=1)], axis=1)
    att_heads = label_attention(
        att.assign(head_attention_right_faces=((dims.STIMULUS, "h", "r", "c"), per_head)),
        {"position_heads": 1},
    )
    html = _attention_html(routing, [att_heads], 40)
    assert "the 1 position-only heads [0] of 2" in html
    # weighting heads by their output norm: a head with norm 0 does not count
    both = att_heads.assign_coords(position_head=("head", [True, True]))
    both["head_norm_right_faces"] = ((dims.STIMULUS, "head"), np.tile([1.0, 0.0], (3, 1)))
    weighted, _ = head_attention_maps(both, position=True, by_norm=True)
    np.testing.assert_allclose(weighted["right faces"], per_head[:, 0], atol=1e-6)
    plain, _ = head_attention_maps(both, position=True)
    np.testing.assert_allclose(plain["right faces"], per_head.mean(1), atol=1e-6)
    assert _attention_html(ridge, [att], 40) == ""


def test_position_heads_attend_the_same_way_to_every_image():
    d = synthetic_routing_data(n_images=8, grid=(4, 4), width=16, n_voxels=2, random_state=1)
    layout = query_layout(d["roi"], d["hemi"])
    spec = {"width": None, "n_heads": 4, "ffn_dim": 8, "dropout": 0.0, "positional": True}
    torch.manual_seed(0)
    mixed = _build_module(16, layout, d["grid"], position_heads=2, **spec).eval()
    x = torch.as_tensor(d["X"])
    with torch.no_grad():
        k = mixed.attn.keys(mixed.proj(x), mixed.pos)  # (images, heads, tokens, head width)
    # position heads: one key set for all images; content heads: keys follow the tokens
    assert torch.allclose(k[:, :2], k[:1, :2].expand_as(k[:, :2]))
    assert not torch.allclose(k[:, 2:], k[:1, 2:].expand_as(k[:, 2:]))
    only_pos = _build_module(16, layout, d["grid"], position_heads=4, **spec).eval()
    with torch.no_grad():
        _, w = only_pos(x, return_weights=True)
    assert torch.allclose(w, w[:1].expand_as(w), atol=1e-6)
    with pytest.raises(InputError, match="position_heads"):
        _build_module(16, layout, d["grid"], position_heads=5, **spec)
    with pytest.raises(InputError, match="positional"):
        _build_module(16, layout, d["grid"], position_heads=1, **{**spec, "positional": False})


def test_position_scale_multiplies_the_position_heads_logits():
    d = synthetic_routing_data(n_images=4, grid=(4, 4), width=16, n_voxels=2, random_state=1)
    layout = query_layout(d["roi"], d["hemi"])
    spec = {"width": None, "n_heads": 4, "ffn_dim": 8, "dropout": 0.0, "positional": True}
    x = torch.as_tensor(d["X"])
    weights = {}
    for scale in (1.0, 3.0):
        torch.manual_seed(0)
        m = _build_module(16, layout, d["grid"], position_heads=2, position_scale=scale, **spec)
        assert torch.allclose(m.attn.log_position_scale.exp(), torch.full((2,), scale))
        with torch.no_grad():
            weights[scale] = m.eval()(x, return_weights=True)[1]  # (b, heads, queries, tokens)
    # position heads: softmax(3 * logits) = normalised softmax(logits) ** 3; others unchanged
    cubed = weights[1.0][:, :2] ** 3
    torch.testing.assert_close(weights[3.0][:, :2], cubed / cubed.sum(-1, keepdim=True))
    torch.testing.assert_close(weights[3.0][:, 2:], weights[1.0][:, 2:])
    torch.manual_seed(0)
    plain = _build_module(16, layout, d["grid"], position_heads=2, **spec)
    assert plain.attn.log_position_scale is None  # 0: no learned scale (the reference)
    # position_bias: a learned logit per query and token on the position heads only; the fused
    # (SDPA) path and the explicit path agree
    torch.manual_seed(0)
    m = _build_module(16, layout, d["grid"], position_heads=2, position_bias=True, **spec).eval()
    assert m.attn.spatial_bias.shape == (2, layout.n_queries, 16)
    with torch.no_grad():
        before = m(x, return_weights=True)[1]
        qi = layout.labels.index(("left", "retinotopic"))
        m.attn.spatial_bias[:, qi] = 10.0 * torch.as_tensor(
            quadrant_mask((4, 4), "upper-left").ravel()
        )
        pred, after = m(x, return_weights=True)
        torch.testing.assert_close(m(x), pred)
    mask = torch.as_tensor(quadrant_mask((4, 4), "upper-left").ravel())
    assert float(after[:, :2, qi][..., mask].sum(-1).min()) > 0.99
    torch.testing.assert_close(after[:, 2:], before[:, 2:])


@pytest.mark.parametrize("centering", ["image", "median"])
def test_image_centring_ignores_what_all_tokens_of_an_image_share(centering):
    d = synthetic_routing_data(n_images=40, grid=(4, 4), width=16, n_voxels=2, random_state=2)
    kw = {"roi": d["roi"], "hemi": d["hemi"], "token_grid": d["grid"], "n_heads": 2}
    enc = RoutingEncoder(token_centering=centering, max_epochs=2, verbose=False, **kw)
    enc.fit(d["X"], d["Y"])
    shift = np.random.default_rng(0).normal(0, 3, (40, 1, 16)).astype(np.float32)
    np.testing.assert_allclose(
        enc.predict(d["X"] + shift), enc.predict(d["X"]), rtol=1e-4, atol=1e-4
    )
    for bad in ({"token_centering": "pixel"}, {"select_on": "mse"}):
        with pytest.raises(InputError, match=next(iter(bad))):
            RoutingEncoder(verbose=False, **kw, **bad).fit(d["X"], d["Y"])


def test_mean_centring_copies_a_quadrant_into_the_other_tokens():
    # white-noise tokens on a per-image background, an object in the upper-left quadrant
    torch = pytest.importorskip("torch")
    from alignment.encoders._routing_torch import centre_tokens

    rng = np.random.default_rng(0)
    n, grid, width = 400, (8, 8), 8
    X = rng.standard_normal((n, 64, width)) + rng.normal(0, 3, (n, 1, width))
    inside = quadrant_mask(grid, "upper-left").ravel()
    held = rng.normal(0, 2, (n, 1, width))  # what the upper-left quadrant holds
    X[:, inside] += held
    X = torch.as_tensor(X, dtype=torch.float32)

    def r_outside_vs_inside(how):
        c = centre_tokens(X, how).numpy()
        return np.corrcoef(c[:, ~inside, 0].mean(1), held[:, 0, 0])[0, 1]

    # the image mean: the rest of the image reads minus the quadrant (r about -1), so attending
    # outside the quadrant predicts what it holds; uncentred, the rest knows nothing of it. The
    # median is moved less by a quadrant (on the demo's tokens far less, see
    # benchmarks/routing_demo.py --regions), but here a quarter of the tokens moves it too.
    r = {how: r_outside_vs_inside(how) for how in ("image", "median", None)}
    assert r["image"] < -0.98
    assert r["image"] < r["median"] < -0.5
    assert abs(r[None]) < 0.2
    with pytest.raises(ValueError, match="centring"):
        centre_tokens(X, "pixel")
