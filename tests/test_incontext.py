"""In-context encoder (BraInCoRL) and decoder (BrainCoDec) on synthetic subjects with a known prior.

Voxel weights come from a shared low-rank-plus-noise Gaussian prior and y = w.x + b + noise with
unit-norm x (:data:`alignment.data.synthetic_voxels.FEW_SHOT_PRIOR`: three strong directions in
a 32-dimensional embedding space, oracle EV about 0.48). One small model is meta-trained on
three subjects (module fixture) and tested on a fourth: against cross-validated ridge on the
same images, the Bayes posterior mean under the true prior (closed form) and the oracle.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import xarray as xr

from alignment.data import synthetic_voxels as syn
from alignment.decoding import (
    analytic_inversion,
    decode,
    meta_train_decoder,
    retrieval_accuracy,
    select_voxels,
)
from alignment.encoders import EncoderContext, make_encoder
from alignment.encoders import incontext as ic
from alignment.encoders.ridge import RidgeEncoder
from alignment.io import InputError

PRIOR = syn.FEW_SHOT_PRIOR
E = PRIOR["embed_dim"]
TRAIN_CONTEXT = (8, 40)
MODEL = {"width": 48, "depth": 2, "heads": 4, "ffn_hidden": 96, "dropout": 0.0}
TRAINING = {
    "steps": 400,
    "batch_size": 32,
    "context_range": TRAIN_CONTEXT,
    "n_query": 32,
    "lr": 2e-3,
    "weight_decay": 0.01,
    "warmup": 30,
}
EMBEDDING = {"model": "synthetic-clip", "cache_key": "0123456789abcdef", "layer": "layer_00"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small models: one thread is predictable, and far cheaper than two on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small hypernetwork and decoder meta-trained on subjects 01-03; subject 04 held out."""
    start = time.process_time()
    prior = syn.make_prior(**PRIOR, seed=0)
    subjects = [syn.sample_subject(prior, 400, 1200, seed=s) for s in range(3)]
    X_list, Y_list = [s[0] for s in subjects], [s[1] for s in subjects]
    model, info = ic.meta_train(X_list, Y_list, MODEL, TRAINING, device="cpu", random_state=0)
    decoder, dinfo = meta_train_decoder(
        model,
        X_list,
        Y_list,
        MODEL,
        {**TRAINING, "steps": 400, "batch_size": 48},
        voxel_range=(4, 48),
        n_context=200,
        device="cpu",
        random_state=0,
    )
    path = tmp_path_factory.mktemp("incontext") / "heldout-04.pt"
    ic.save_checkpoint(
        path,
        model,
        embedding=EMBEDDING,
        training_subjects=[("synth", "01"), ("synth", "02"), ("synth", "03")],
        extra={"decoder_lambda": dinfo["lambda"]},
        decoder=decoder,
    )
    test = syn.sample_subject(prior, 700, 300, seed=99)
    print(f"meta-training: {time.process_time() - start:.1f} s CPU")
    return {
        "prior": prior,
        "path": path,
        "ckpt": ic.load_checkpoint(path),
        "test": test,
        "info": info,
    }


def _evs(trained, n, ctx_offset=0):
    """EV on 300 held-out images of subject 04 for in-context, ridge, Bayes and the oracle."""
    X, Y, _, signal = trained["test"]
    ctx = np.arange(ctx_offset, ctx_offset + n)
    test = np.arange(400, 700)
    enc = ic.InContextEncoder(checkpoint=trained["ckpt"], device="cpu").fit(X[ctx], Y[ctx])
    ridge = RidgeEncoder(alphas=np.logspace(-2, 4, 13), cv=5).fit(X[ctx], Y[ctx])
    bayes = syn.bayes_weights(trained["prior"], X[ctx], Y[ctx])
    ev = lambda pred: float(np.mean(ic.explained_variance(Y[test], pred)))  # noqa: E731
    return {
        "incontext": ev(enc.predict(X[test])),
        "ridge": ev(ridge.predict(X[test])),
        "bayes": ev(X[test] @ bayes[:, :-1].T + bayes[:, -1]),
        "oracle": ev(signal[test]),
    }


def test_bayes_estimator_is_the_closed_form_posterior_mean():
    # with one voxel and a tiny context the closed form agrees with a brute-force Gaussian update
    prior = syn.make_prior(embed_dim=4, rank=1, seed=3)
    X, Y, _, _ = syn.sample_subject(prior, 6, 1, seed=1)
    phi = np.hstack([X, np.ones((6, 1))])
    joint_cov = phi @ prior.cov @ phi.T + prior.noise_sd**2 * np.eye(6)
    expected = prior.mean + prior.cov @ phi.T @ np.linalg.solve(
        joint_cov, Y[:, 0] - phi @ prior.mean
    )
    np.testing.assert_allclose(syn.bayes_weights(prior, X, Y)[0], expected, rtol=1e-6, atol=1e-8)


def test_few_shot_beats_ridge_and_approaches_bayes(trained):
    evs = {n: _evs(trained, n) for n in (10, 30, 100)}

    def over(e, k):
        return f"{e[k] / e['ridge']:.2f}" if e["ridge"] > 0 else "inf (ridge <= 0)"

    for n, e in evs.items():
        print(
            f"N={n}: in-context {e['incontext']:.3f}, ridge {e['ridge']:.3f}, Bayes "
            f"{e['bayes']:.3f}, oracle {e['oracle']:.3f}; in-context / ridge "
            f"{over(e, 'incontext')} (Bayes / ridge {over(e, 'bayes')}), "
            f"fraction of Bayes {e['incontext'] / e['bayes']:.2f}"
        )
    # N=10 and N=30: at least 1.5x cross-validated ridge, which cannot know the prior's subspace
    # (the Bayes posterior mean, the best any estimator does on average, is far ahead of it)
    for n in (10, 30):
        assert evs[n]["bayes"] >= 2.0 * max(evs[n]["ridge"], 0.0) + 0.1
        assert evs[n]["incontext"] >= 1.5 * max(evs[n]["ridge"], 0.0) + 0.05
    for n in (10, 30, 100):
        assert evs[n]["incontext"] > 0.78 * evs[n]["bayes"]


def test_converges_toward_the_oracle_as_context_grows(trained):
    evs = {n: _evs(trained, n) for n in (10, 40)}
    gaps = {n: e["oracle"] - e["incontext"] for n, e in evs.items()}
    print("oracle gaps", gaps)
    assert evs[40]["incontext"] > evs[10]["incontext"] + 0.03
    assert gaps[40] < 0.75 * gaps[10]


def test_generalises_to_a_longer_context_than_trained(trained):
    longest = TRAIN_CONTEXT[1]
    at_trained, longer = _evs(trained, longest), _evs(trained, 3 * longest)
    print("trained length", at_trained["incontext"], "3x longer", longer["incontext"])
    assert longer["incontext"] >= at_trained["incontext"] - 0.01
    assert longer["incontext"] > 0.5 * longer["oracle"]


def test_output_is_invariant_to_context_order(trained):
    X, Y, _, _ = trained["test"]
    ctx = np.arange(30)
    model = trained["ckpt"].model
    W1, b1 = ic.predict_weights(model, X[ctx], Y[ctx], device="cpu")
    perm = np.random.default_rng(0).permutation(30)
    W2, b2 = ic.predict_weights(model, X[ctx][perm], Y[ctx][perm], device="cpu")
    np.testing.assert_allclose(W1, W2, atol=1e-4)
    np.testing.assert_allclose(b1, b2, atol=1e-5)
    # attention of token 0 over the context follows the images it is given
    _, _, att = ic.predict_weights(model, X[ctx], Y[ctx], device="cpu", return_attention=True)
    _, _, att_p = ic.predict_weights(
        model, X[ctx][perm], Y[ctx][perm], device="cpu", return_attention=True
    )
    np.testing.assert_allclose(att[:, perm], att_p, atol=1e-5)
    np.testing.assert_allclose(att.sum(1), 1.0 - 0 * att.sum(1), atol=0.2)  # mostly on images
    assert ic.top_context_images(att, 3).shape == (Y.shape[1], 3)


def test_batched_pass_shares_the_context_and_runs_in_bfloat16(trained):
    # one context for every voxel of a batch (the image part of the tokens computed once) gives
    # what a per-voxel copy of the context gives; bf16 weights (the CUDA default) stay close
    X, Y, _, _ = trained["test"]
    model = trained["ckpt"].model
    x, y = torch.as_tensor(X[:40]), torch.as_tensor(Y[:40, :6].T)
    with torch.no_grad():
        shared, copied = model(x, y), model(x.expand(6, -1, -1), y)
    for a, b in zip(shared, copied, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    W, b = ic.predict_weights(model, X[:40], Y[:40, :50], batch_voxels=7, device="cpu")
    W16, b16 = ic.predict_weights(model, X[:40], Y[:40, :50], device="cpu", dtype=torch.bfloat16)
    assert np.abs(W16 - W).max() < 0.05 * np.abs(W).max()
    assert np.abs(b16 - b).max() < 0.05 * np.abs(b).max() + 0.01
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


def test_decoding_beats_chance_and_the_analytic_inversion_with_few_voxels(trained):
    X, Y, _, _ = trained["test"]
    ckpt = trained["ckpt"]
    ctx = np.arange(200)
    W, b = ic.predict_weights(ckpt.model, X[ctx], Y[ctx], device="cpu")
    lam = ckpt.extra["decoder_lambda"]
    # three sets of 100 candidates (chance 1%, 5%): one set's top-5 moves in steps of 0.01
    sets = [np.arange(400, 500), np.arange(500, 600), np.arange(600, 700)]
    results = {}
    for n_vox in (8, 16, 300):
        sel = select_voxels(W, X[ctx], n_vox)
        acc = {"incontext": [], "analytic": []}
        for cand in sets:
            beta = Y[cand][:, sel]
            pred = decode(ckpt.decoder, W[sel], b[sel], beta, "cpu")
            acc["incontext"].append(retrieval_accuracy(pred, X[cand]))
            ana = analytic_inversion(W[sel], b[sel], beta, lam)
            acc["analytic"].append(retrieval_accuracy(ana, X[cand]))
        results[n_vox] = {
            m: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for m, rs in acc.items()
        }
    print({n: {m: (r["top1"], r["top5"]) for m, r in d.items()} for n, d in results.items()})
    chance = results[300]["incontext"]["chance_top1"]
    assert results[300]["incontext"]["top1"] > 10 * chance
    assert results[300]["analytic"]["top1"] > 10 * chance
    few = [results[n] for n in (8, 16)]
    assert np.mean([r["incontext"]["top5"] - r["analytic"]["top5"] for r in few]) > 0.02
    assert results[16]["incontext"]["top5"] > results[16]["analytic"]["top5"]


def test_registry_builds_it_from_the_checkpoint_and_refuses_other_embeddings(trained):
    X, Y, _, _ = trained["test"]
    context = EncoderContext(
        inputs={"checkpoint": str(trained["path"])},
        features={**EMBEDDING},
        subject="04",
        dataset="synth",
    )
    enc = make_encoder({"kind": "incontext", "layers": ["layer_00"]}, context).fit(X[:50], Y[:50])
    assert enc.predict(X[50:60]).shape == (10, Y.shape[1])
    wrong = EncoderContext(
        inputs=context.inputs,
        features={**EMBEDDING, "model": "dinov2", "cache_key": "ffffffffffffffff"},
    )
    with pytest.raises(InputError, match="meta-trained on features cache key"):
        make_encoder({"kind": "incontext"}, wrong)
    other_layer = EncoderContext(inputs=context.inputs, features={**EMBEDDING, "layer": "layer_05"})
    with pytest.raises(InputError, match="layer"):
        make_encoder({"kind": "incontext"}, other_layer)
    with pytest.raises(InputError, match="meta-trained on subject '02'"):
        make_encoder(
            {"kind": "incontext"},
            EncoderContext(
                inputs=context.inputs, features=EMBEDDING, subject="02", dataset="synth"
            ),
        )
    with pytest.raises(InputError, match="checkpoint"):
        make_encoder({"kind": "incontext"}, EncoderContext(features=EMBEDDING))


def test_scaling_curve_table(trained):
    X, Y, _, _ = trained["test"]
    X, Y = X[:150], Y[:, :40][:150]
    folds = [(np.arange(50, 150), np.arange(50)), (np.arange(50), np.arange(50, 150))]
    roi = np.array(["a"] * 20 + ["none"] * 20)
    table = ic.scaling_curve(
        X,
        Y,
        folds,
        trained["ckpt"],
        [10, 30, 1000],
        roi=roi,
        ridge_spec={"alphas": [0.1, 10.0, 1000.0]},
        device="cpu",
    )
    assert set(table["n_context"]) == {10, 30, 50}  # what the folds allow, plus all of them
    assert set(table["encoder"]) == {"incontext", "ridge"}
    assert set(table["roi"]) == {"all", "all ROIs", "a"}
    small = table[(table["n_context"] == 10) & (table["roi"] == "all")].set_index("encoder")
    assert small.loc["incontext", "ev_mean"] > small.loc["ridge", "ev_mean"]


def _responses(X, Y, subject, ids):
    from alignment.data.responses import make_responses

    reps = np.repeat([0, 1], len(ids))
    noisy = np.concatenate([Y, Y + 0.1 * np.random.default_rng(1).standard_normal(Y.shape)])
    return make_responses(
        noisy,
        kind="images",
        stimulus_id=np.concatenate([ids, ids]),
        repetition=reps,
        session=reps,
        roi=np.array(["a"] * Y.shape[1]),
        attrs={"dataset": "synth", "subject": subject},
    )


def test_meta_training_from_files_is_leave_one_subject_out(tmp_path):
    prior = syn.make_prior(**PRIOR, seed=0)
    X, _, _, _ = syn.sample_subject(prior, 60, 1, seed=0)
    ids = np.array([f"img{i:03d}" for i in range(60)])
    layer = xr.DataArray(X, dims=("stimulus", "unit"), coords={"stimulus_id": ("stimulus", ids)})
    responses = {
        s: _responses(X, syn.sample_subject(prior, 60, 20, seed=int(s))[1], s, ids)
        for s in ("01", "02", "03")
    }
    spec = {
        "layers": ["layer_00"],
        "model": {"width": 16, "depth": 1, "heads": 2, "ffn_hidden": 16},
        "training": {"steps": 2, "batch_size": 4, "context_range": [5, 20], "n_query": 5},
    }
    attrs = {"model": "synthetic-clip", "cache_key": "0123456789abcdef"}
    with pytest.raises(InputError, match="held-out subject"):
        ic.meta_train_checkpoint(
            [responses["01"], responses["02"]],
            {"layer_00": layer},
            attrs,
            spec,
            {"n_folds": 3},
            tmp_path / "x.pt",
            heldout="02",
        )
    out = tmp_path / "heldout-03.pt"
    ic.meta_train_checkpoint(
        [responses["01"], responses["02"]],
        {"layer_00": layer},
        attrs,
        spec,
        {"n_folds": 3},
        out,
        heldout="03",
    )
    ckpt = ic.load_checkpoint(out)
    assert ckpt.training_subjects == [("synth", "01"), ("synth", "02")]
    assert ckpt.embedding["layer"] == "layer_00" and ckpt.feature_mean.shape == (E,)
    ckpt.check_held_out("03", "synth")
    with pytest.raises(InputError, match="meta-trained on subject '01'"):
        ckpt.check_held_out("01", "synth")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, minilm_path):
    """A tiny random CLIP (projection width E) with the MiniLM tokenizer, saved to a folder."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    tok = AutoTokenizer.from_pretrained(minilm_path)
    text = {
        "vocab_size": tok.vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "eos_token_id": tok.sep_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 16,
    }
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=E)).save_pretrained(
        path
    )
    tok.save_pretrained(path)
    return str(path)


def test_language_query_maps_a_phrase(tiny_clip):
    t = ic.text_embedding(tiny_clip, ["faces", "houses"])
    assert t.shape == (2, E) and not np.allclose(t[0], t[1])
    W = np.random.default_rng(0).standard_normal((5, E)).astype(np.float32)
    b = np.arange(5, dtype=np.float32)
    values = ic.selectivity_map(W, b, t[0])
    np.testing.assert_allclose(values, W @ (t[0] / np.linalg.norm(t[0])) + b, rtol=1e-5)


def test_query_cli_end_to_end_and_held_out_check(trained, tiny_clip, tmp_path):
    from alignment.cli import main
    from alignment.io import read_netcdf, write_netcdf, write_zarr_layers

    X, Y, _, _ = trained["test"]
    ids = np.array([f"img{i:03d}" for i in range(120)])
    layer = xr.DataArray(
        X[:120], dims=("stimulus", "unit"), coords={"stimulus_id": ("stimulus", ids)}
    )
    write_zarr_layers({"layer_00": layer}, tmp_path / "f.zarr", dict(EMBEDDING))
    for subject in ("04", "02"):
        resp = _responses(X[:120], Y[:120, :30], subject, ids)
        write_netcdf(resp, tmp_path / f"sub-{subject}.nc")
    common = [
        "--features",
        str(tmp_path / "f.zarr"),
        "--checkpoint",
        str(trained["path"]),
        "--text",
        "faces",
        "--text-model",
        tiny_clip,
        "--device",
        "cpu",
    ]
    out = tmp_path / "faces.nc"
    assert (
        main(["query", "--responses", str(tmp_path / "sub-04.nc"), *common, "--out", str(out)]) == 0
    )
    got = read_netcdf(out)["selectivity"].values[0]
    data = ic.subject_data(
        read_netcdf(tmp_path / "sub-04.nc"), {"layer_00": layer}, {"layers": ["layer_00"]}, {}
    )
    enc = ic.InContextEncoder(checkpoint=trained["ckpt"], device="cpu").fit(data["X"], data["Y"])
    t = ic.text_embedding(tiny_clip, ["faces"])[0]
    np.testing.assert_allclose(
        got, enc.coef_ @ (t / np.linalg.norm(t)) + enc.intercept_, rtol=1e-4, atol=1e-4
    )
    # subject 02 was a training subject of this checkpoint: refused, exit status 2
    bad = ["query", "--responses", str(tmp_path / "sub-02.nc"), *common, "--out", str(out)]
    assert main(bad) == 2


def test_fewshot_cli_shares_its_fits_with_decoding_and_attention(trained, tmp_path):
    # one fewshot job writes the scaling curve, the decoding table and token 0's attention from
    # one set of in-context fits: the decoding table equals `alignment decode`'s, which fits anew
    import pandas as pd

    from alignment.cli import main
    from alignment.io import write_netcdf, write_zarr_layers

    X, Y, _, _ = trained["test"]
    n = 90
    ids = np.array([f"img{i:03d}" for i in range(n)])
    layer = xr.DataArray(
        X[:n], dims=("stimulus", "unit"), coords={"stimulus_id": ("stimulus", ids)}
    )
    write_zarr_layers({"layer_00": layer}, tmp_path / "f.zarr", dict(EMBEDDING))
    resp = _responses(X[:n], Y[:n, :24], "04", ids)
    resp = resp.assign_coords(roi=("voxel", np.array(["a"] * 12 + ["b"] * 8 + ["none"] * 4)))
    write_netcdf(resp, tmp_path / "sub-04.nc")
    spec = {
        "scaling": {"n_context": [10, 30]},
        "decoding": {"n_voxels": [8], "eval_context": [30]},
        "attention_top": 3,
    }
    common = [
        "--responses", str(tmp_path / "sub-04.nc"), "--features", str(tmp_path / "f.zarr"),
        "--checkpoint", str(trained["path"]), "--encoder-spec", json.dumps(spec),
        "--cv", json.dumps({"n_folds": 3}), "--device", "cpu",
    ]  # fmt: skip
    out = {k: tmp_path / f"{k}.tsv" for k in ("fewshot", "decoding", "attention", "decode")}
    argv = ["fewshot", *common, "--ridge-spec", json.dumps({"alphas": [1.0, 100.0]})]
    argv += ["--decoding-out", str(out["decoding"]), "--attention-out", str(out["attention"])]
    assert main([*argv, "--out", str(out["fewshot"])]) == 0
    assert main(["decode", *common, "--out", str(out["decode"])]) == 0
    shared, alone = (pd.read_csv(out[k], sep="\t") for k in ("decoding", "decode"))
    pd.testing.assert_frame_equal(shared, alone)
    assert set(shared["n_context"]) == {30, 60} and set(shared["method"]) == {
        "incontext",
        "analytic",
    }
    att = pd.read_csv(out["attention"], sep="\t")
    # the 20 ROI voxels (none of the 4 outside), 3 images each, most attended first
    assert len(att) == 20 * 3 and set(att["roi"]) == {"a", "b"}
    assert (att.groupby("voxel")["attention"].apply(lambda a: a.is_monotonic_decreasing)).all()
    assert att["attention"].between(0, 1).all() and att["uniform"].iloc[0] == pytest.approx(1 / 60)
    assert att["stimulus_id"].isin(ids).all()
    # the voxel's EV is the in-context EV pooled over folds at the largest N of the curve
    curve = pd.read_csv(out["fewshot"], sep="\t")
    full = curve[(curve["encoder"] == "incontext") & (curve["n_context"] == 60)]
    ev_a = att[att["roi"] == "a"].drop_duplicates("voxel")["ev"].mean()
    assert ev_a == pytest.approx(full.set_index("roi").loc["a", "ev_mean"], rel=1e-5)


def test_stage_one_prior_is_fitted_to_ridge_weights_of_real_voxels():
    prior = syn.make_prior(embed_dim=8, rank=2, noise_sd=0.1, seed=1)
    subjects = [syn.sample_subject(prior, 2000, 3000, seed=s) for s in range(2)]
    mean, cov, noise = ic.ridge_prior([s[0] for s in subjects], [s[1] for s in subjects], 1e-3)
    # the Gaussian over [w, b] fitted to the voxels' ridge weights recovers the true prior
    scale = np.sqrt(np.diag(prior.cov))
    np.testing.assert_allclose(mean, prior.mean, atol=0.1 * scale.max())
    np.testing.assert_allclose(np.diag(cov), np.diag(prior.cov), rtol=0.2)
    assert abs(noise - 0.1) < 0.02
    # stage 1 runs on synthetic voxels drawn from it before the real ones
    _, info = ic.meta_train(
        [s[0][:200] for s in subjects],
        [s[1][:200, :50] for s in subjects],
        {"width": 16, "depth": 1, "heads": 2, "ffn_hidden": 16},
        {"steps": 2, "pretrain_steps": 2, "batch_size": 4, "context_range": (5, 20), "n_query": 5},
        device="cpu",
    )
    assert [h["stage"] for h in info["history"]] == ["stage 1"] * 2 + ["meta"] * 2


def test_report_section_shows_the_scaling_curve_and_decoding(tmp_path):
    from alignment.report.html import render_subject_report
    from alignment.report.incontext import incontext_section

    rows = [
        {
            "subject": "01",
            "dataset": "d",
            "model": "m",
            "layer": "layer_05",
            "encoder": enc,
            "n_context": n,
            "roi": roi,
            "n_voxels": 10,
            "ev_mean": ev,
            "ev_median": ev,
            "r_mean": ev,
            "checkpoint_model": "width 48, depth 2",
        }
        for enc, evs in (("incontext", (0.2, 0.3, 0.35)), ("ridge", (0.0, 0.2, 0.34)))
        for n, ev in zip((10, 30, 100), evs, strict=True)
        for roi in ("all", "all ROIs")
    ]
    dec = [
        {
            "method": m,
            "n_context": 100,
            "n_voxels": v,
            "top1": 0.1 * k,
            "top5": 0.3 * k,
            "chance_top1": 0.02,
            "chance_top5": 0.1,
            "n_candidates": 48,
        }
        for k, m in ((1, "incontext"), (2, "analytic"))
        for v in (10, 100)
    ]
    pd = pytest.importorskip("pandas")
    pd.DataFrame(rows).to_csv(tmp_path / "fewshot.tsv", sep="\t", index=False)
    pd.DataFrame(dec).to_csv(tmp_path / "decoding.tsv", sep="\t", index=False)
    section = incontext_section([tmp_path / "fewshot.tsv", tmp_path / "decoding.tsv"], dpi=40)
    assert section.count("<img") == 2 and "The model is small" in section
    assert "width 48, depth 2" in section and "analytic" in section
    # token 0's most attended context images: the best voxels of each ROI, with thumbnails
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "face.png")
    att = pd.DataFrame(
        {
            "model": "m",
            "voxel": [0, 0, 1, 1, 2, 2],
            "hemi": "left",
            "vertex": [10, 10, 11, 11, 12, 12],
            "roi": ["faces"] * 4 + ["early"] * 2,
            "rank": [0, 1] * 3,
            "stimulus_id": ["img1", "img2"] * 3,
            "attention": [0.3, 0.1] * 3,
            "uniform": 0.01,
            "ev": [0.5, 0.5, 0.1, 0.1, 0.2, 0.2],
            "category": ["face", "house"] * 3,
            "path": [str(tmp_path / "face.png"), str(tmp_path / "missing.png")] * 3,
        }
    )
    att.to_csv(tmp_path / "attention.tsv", sep="\t", index=False)
    paths = [tmp_path / f"{k}.tsv" for k in ("fewshot", "decoding", "attention")]
    section = incontext_section(paths, dpi=40)
    table = section[section.index("Most attended") :]
    assert table.count("<tr>") == 1 + 3 and table.count("<img") == 3  # one readable image each
    assert "30.0&times; uniform" in table and table.index("left 10") < table.index("left 11")
    assert incontext_section([]) == ""
    # the subject report places it before the provenance
    scores = xr.Dataset(
        {
            v: (("layer", "voxel"), np.full((1, 2), 0.1, np.float32))
            for v in ("r", "q", "r_null_mean", "r_null_p95", "r2", "p")
        },
        coords={
            "layer": ["layer_00"],
            "roi": ("voxel", ["a", "a"]),
            "hemi": ("voxel", ["left", "left"]),
            "vertex": ("voxel", [0, 1]),
        },
        attrs={"dataset": "d", "model": "m", "encoder": "incontext", "space": "fsaverage5"},
    )
    scores["ceiling"] = ("voxel", np.array([0.5, 0.5], np.float32))
    page = render_subject_report("01", [scores], {}, {}, dpi=30, extra_sections=[section])
    assert page.index("In-context encoder") < page.index('id="provenance"')
