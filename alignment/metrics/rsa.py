"""Representational similarity analysis (RSA) and linear CKA.

- :func:`rdm`: representational dissimilarity matrix, correlation distance ``1 - r`` between
  the response patterns of every pair of stimuli (rows).
- :func:`compare_rdms`: Spearman correlation or Kendall's tau-a of the upper triangles
  (tau-a, not tau-b, for models with tied dissimilarities: Nili et al. 2014).
- :func:`rdm_noise_ceiling`: subject-based ceiling: upper bound = mean over subjects of the
  comparison of each subject's RDM with the mean RDM of all subjects; lower bound = the same
  with the mean of the OTHER subjects (leave one subject out).
- :func:`rdm_permutation_test`: null of an RDM comparison by permuting the stimulus labels of
  one RDM (rows and columns together).
- :func:`linear_cka`: linear centred kernel alignment of two representations of the same
  stimuli (Kornblith et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "RDMCeiling",
    "compare_rdms",
    "kendall_tau_a",
    "linear_cka",
    "rdm",
    "rdm_noise_ceiling",
    "rdm_permutation_test",
    "upper_triangle",
]

METHODS = ("spearman", "kendall_tau_a", "pearson")


def rdm(patterns) -> np.ndarray:
    """Correlation-distance RDM of response patterns.

    Parameters
    ----------
    patterns : array-like of shape (n_stimuli, n_features)
        One response pattern (voxels, or model units) per stimulus.

    Returns
    -------
    ndarray of shape (n_stimuli, n_stimuli)
        ``1 - pearson_r(pattern_i, pattern_j)``; zero diagonal, symmetric. A constant pattern
        has NaN distances.
    """
    x = np.asarray(patterns, dtype=float)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(
            f"patterns must be 2-D (stimuli, features) with >= 3 stimuli and >= 2 features; "
            f"got shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("patterns contain NaN or inf")
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x / norm[:, None]
    d = 1.0 - np.clip(x @ x.T, -1.0, 1.0)
    np.fill_diagonal(d, 0.0)
    return d


def upper_triangle(rdm_matrix) -> np.ndarray:
    """The entries above the diagonal of a square RDM (row-major), or a vector as given."""
    m = np.asarray(rdm_matrix, dtype=float)
    if m.ndim == 1:
        return m
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"an RDM must be square; got shape {m.shape}")
    return m[np.triu_indices(m.shape[0], 1)]


def kendall_tau_a(a, b) -> float:
    """Kendall's tau-a: (concordant - discordant pairs) / (n (n - 1) / 2); ties count 0.

    ``O(n^2)`` in memory by blocks; fine for RDMs of up to a few hundred stimuli.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = a.size
    if b.size != n or n < 2:
        raise ValueError("kendall_tau_a needs two vectors of one length >= 2")
    total = 0.0
    step = max(1, 4_000_000 // n)
    for lo in range(0, n, step):
        sa = np.sign(a[lo : lo + step, None] - a[None, :])
        sb = np.sign(b[lo : lo + step, None] - b[None, :])
        total += float((sa * sb).sum())
    return total / (n * (n - 1))  # each pair counted twice


def compare_rdms(a, b, method: str = "spearman") -> float:
    """Similarity of two RDMs (square or upper-triangle vectors).

    Parameters
    ----------
    a, b : array-like
        RDMs of the same stimuli, in the same order.
    method : {"spearman", "kendall_tau_a", "pearson"}, default="spearman"

    Returns
    -------
    float
        NaN where an RDM is constant or has NaN entries.
    """
    va, vb = upper_triangle(a), upper_triangle(b)
    if va.shape != vb.shape:
        raise ValueError(f"RDMs of different sizes: {va.shape} and {vb.shape}")
    if not (np.all(np.isfinite(va)) and np.all(np.isfinite(vb))):
        return float("nan")
    if np.ptp(va) == 0 or np.ptp(vb) == 0:
        return float("nan")
    if method == "spearman":
        return float(stats.spearmanr(va, vb)[0])
    if method == "kendall_tau_a":
        return kendall_tau_a(va, vb)
    if method == "pearson":
        return float(np.corrcoef(va, vb)[0, 1])
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")


@dataclass(frozen=True)
class RDMCeiling:
    """Subject-based noise ceiling of an RDM comparison.

    Attributes
    ----------
    lower, upper : float
        Mean over subjects of the comparison of the subject's RDM with the mean RDM of the
        other subjects (lower) and of all subjects (upper).
    lower_per_subject, upper_per_subject : ndarray of shape (n_subjects,)
    method : str
    """

    lower: float
    upper: float
    lower_per_subject: np.ndarray
    upper_per_subject: np.ndarray
    method: str


def rdm_noise_ceiling(rdms, method: str = "spearman") -> RDMCeiling:
    """Upper and lower noise ceiling of a group of subjects' RDMs.

    Parameters
    ----------
    rdms : array-like of shape (n_subjects, n_stimuli, n_stimuli) or (n_subjects, n_pairs)
        One RDM per subject, same stimuli in the same order (at least 2 subjects).
    method : str
        As :func:`compare_rdms`. The RDMs are averaged as they are (for ``spearman`` the mean
        of the raw dissimilarities, as in Nili et al. 2014 for correlation-distance RDMs).

    Returns
    -------
    RDMCeiling
    """
    rdms = np.asarray(rdms, dtype=float)
    vecs = np.stack([upper_triangle(m) for m in rdms]) if rdms.ndim == 3 else rdms
    if vecs.ndim != 2 or vecs.shape[0] < 2:
        raise ValueError(f"need the RDMs of at least 2 subjects; got shape {rdms.shape}")
    n = vecs.shape[0]
    total = vecs.sum(axis=0)
    mean_all = total / n
    upper = np.array([compare_rdms(v, mean_all, method) for v in vecs])
    lower = np.array([compare_rdms(v, (total - v) / (n - 1), method) for v in vecs])
    return RDMCeiling(float(np.mean(lower)), float(np.mean(upper)), lower, upper, method)


def rdm_permutation_test(
    model_rdm,
    data_rdm,
    method: str = "spearman",
    n_permutations: int = 1000,
    random_state=0,
    return_null: bool = False,
):
    """Compare two RDMs and test the comparison against permuted stimulus labels.

    The null relabels the stimuli of ``model_rdm`` (permuting its rows and columns together),
    which keeps its structure but breaks the correspondence of stimuli.

    Parameters
    ----------
    model_rdm, data_rdm : array-like of shape (n_stimuli, n_stimuli)
        Square RDMs (several data RDMs: shape (n_subjects, n, n), compared with their mean
        comparison).
    method : str
        As :func:`compare_rdms`.
    n_permutations : int, default=1000
    random_state : int, Generator or None

    Returns
    -------
    observed : float
    p : float
        One-sided ``(1 + #(null >= observed)) / (1 + n_permutations)``.
    null : ndarray of shape (n_permutations,)
        Only with ``return_null``.
    """
    model = np.asarray(model_rdm, dtype=float)
    data = np.asarray(data_rdm, dtype=float)
    if data.ndim == 2:
        data = data[None]
    if model.ndim != 2 or model.shape[0] != model.shape[1] or data.shape[1:] != model.shape:
        raise ValueError(
            f"model and data RDMs must be square of one size; got {model.shape} and {data.shape}"
        )
    rng = np.random.default_rng(random_state)
    iu = np.triu_indices(model.shape[0], 1)
    data_vecs = [d[iu] for d in data]
    if method in ("spearman", "pearson") and np.all(np.isfinite(model[iu])):
        # relabelling stimuli only rearranges the model's pairs, so its ranks are rearranged
        # too: rank once, then every permutation is a Pearson r of rank vectors
        if method == "spearman":
            ranked = np.zeros_like(model)
            ranked[iu] = stats.rankdata(model[iu])
            model = ranked + ranked.T
            data_vecs = [stats.rankdata(d) for d in data_vecs]
        z = np.stack([(d - d.mean()) / (d.std() * np.sqrt(d.size)) for d in data_vecs])

        def score(m):
            v = m[iu]
            sd = v.std()
            if sd == 0 or not np.all(np.isfinite(z)):
                return float("nan")
            return float(np.mean(z @ ((v - v.mean()) / (sd * np.sqrt(v.size)))))

    else:

        def score(m):
            return float(np.mean([compare_rdms(m[iu], d, method) for d in data_vecs]))

    observed = score(model)
    null = np.empty(int(n_permutations))
    for i in range(null.size):
        perm = rng.permutation(model.shape[0])
        null[i] = score(model[np.ix_(perm, perm)])
    p = (1.0 + np.sum(null >= observed - 1e-12)) / (1.0 + null.size)
    return (observed, float(p), null) if return_null else (observed, float(p))


def linear_cka(x, y) -> float:
    """Linear centred kernel alignment of two representations of the same stimuli.

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc``
    (Kornblith et al. 2019), computed in the feature space (or the stimulus space when that is
    smaller); invariant to orthogonal transforms and isotropic scaling of either
    representation.

    Parameters
    ----------
    x : array-like of shape (n_stimuli, n_features_x)
    y : array-like of shape (n_stimuli, n_features_y)

    Returns
    -------
    float
        In [0, 1]; NaN when a representation is constant.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must be 2-D with the same stimuli (rows); got {x.shape} and {y.shape}"
        )
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T  # Gram matrices (stimuli x stimuli)
        num = float((kx * ky).sum())
        den = float(np.sqrt((kx * kx).sum() * (ky * ky).sum()))
    else:
        num = float(np.sum((y.T @ x) ** 2))
        den = float(np.sqrt(np.sum((x.T @ x) ** 2) * np.sum((y.T @ y) ** 2)))
    return num / den if den > 0 else float("nan")


def rsa_scores(
    responses: list,
    index: int,
    layers: dict,
    method: str = "spearman",
    n_permutations: int = 1000,
    random_state=0,
    attrs: dict | None = None,
):
    """RDM correlation of every layer with every ROI of one subject, with ceilings and nulls.

    Parameters
    ----------
    responses : list of xarray.Dataset
        Image Responses of every subject of the dataset (same stimuli); trials are z-scored
        per session and averaged per stimulus.
    index : int
        The subject scored.
    layers : dict of str to DataArray (stimulus, unit)
        Features per layer, with ``stimulus_id``.
    method : str
        RDM comparison (:func:`compare_rdms`).
    n_permutations : int
        Stimulus-label permutations of the null.

    Returns
    -------
    xarray.Dataset
        Variables ``rdm_r`` and ``p`` (layer, roi_name), ``ceiling_lower`` and
        ``ceiling_upper`` (roi_name), the subject's ROI RDMs ``roi_rdm`` (roi_name, stimulus_i,
        stimulus_j) and the layers' ``layer_rdm`` (layer, stimulus_i, stimulus_j).
    """
    import xarray as xr

    from alignment import dims, timeseries
    from alignment.data.responses import average_repeats

    def roi_patterns(ds):
        sessions = ds[dims.SESSION].values if dims.SESSION in ds.coords else None
        y = timeseries.zscore_runs(ds[dims.RESPONSES].values, sessions, allow_constant=True)
        means, ids = average_repeats(y, ds[dims.STIMULUS_ID].values.astype(str))
        rois = ds[dims.ROI].values.astype(str)
        return means, np.asarray(ids), rois

    _, ids, rois = roi_patterns(responses[index])
    names = [r for r in dict.fromkeys(rois.tolist()) if r != dims.NO_ROI]
    others = [roi_patterns(ds) for ds in responses]
    roi_rdms = {}
    ceilings = {}
    for name in names:
        group = []
        for means, other_ids, other_rois in others:
            order = {s: i for i, s in enumerate(other_ids)}
            if set(order) != set(ids.tolist()):
                raise ValueError("RSA needs every subject to have seen the same stimuli")
            rows = [order[s] for s in ids]
            group.append(rdm(means[rows][:, other_rois == name]))
        roi_rdms[name] = group[index]
        if len(group) >= 2:
            c = rdm_noise_ceiling(np.stack(group), method)
            ceilings[name] = (c.lower, c.upper)
        else:
            ceilings[name] = (np.nan, np.nan)
    layer_rdms, r, p = {}, [], []
    for lname, layer in layers.items():
        position = {s: i for i, s in enumerate(layer[dims.STIMULUS_ID].values.astype(str))}
        feats = np.asarray(layer.values, dtype=float)[[position[s] for s in ids]]
        layer_rdms[lname] = rdm(feats)
        row_r, row_p = [], []
        for name in names:
            obs, pv = rdm_permutation_test(
                layer_rdms[lname], roi_rdms[name], method, n_permutations, random_state
            )
            row_r.append(obs)
            row_p.append(pv)
        r.append(row_r)
        p.append(row_p)
    return xr.Dataset(
        {
            "rdm_r": ((dims.LAYER, "roi_name"), np.array(r)),
            "p": ((dims.LAYER, "roi_name"), np.array(p)),
            "ceiling_lower": ("roi_name", np.array([ceilings[n][0] for n in names])),
            "ceiling_upper": ("roi_name", np.array([ceilings[n][1] for n in names])),
            "roi_rdm": (("roi_name", "stimulus_i", "stimulus_j"),
                        np.stack([roi_rdms[n] for n in names])),
            "layer_rdm": ((dims.LAYER, "stimulus_i", "stimulus_j"),
                          np.stack(list(layer_rdms.values()))),
        },
        coords={dims.LAYER: list(layers), "roi_name": names, dims.STIMULUS_ID: ("stimulus_i", ids)},
        attrs={**(attrs or {}), "method": method, "n_permutations": n_permutations,
               "null_kind": "permuted stimulus labels", "distance": "correlation"},
    )  # fmt: skip
