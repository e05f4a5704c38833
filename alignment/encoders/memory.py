"""Memory planning for voxelwise encoders: batch sizes from free memory, and a preflight check.

:func:`voxel_batch` sizes the voxel batches of the ridge sweep from the free memory of its
device (CUDA free memory, or the available RAM on a CPU). :func:`encode_peak_bytes` estimates
the peak memory of a whole ``alignment encode`` job from its shapes, and :func:`preflight`
fails early, naming the setting to change, when it cannot fit.
"""

from __future__ import annotations

import os

from alignment.io import InputError

FLOAT = 4  # bytes of a float32
# the share of free memory a batch may take: the rest covers allocator slack and temporaries
BATCH_SHARE = 0.5


def free_bytes(device="cpu") -> int:
    """Free memory of a device: CUDA free memory, or MemAvailable (else cgroup limit) on a CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # blocks torch's caching allocator holds but no tensor uses are free to this process
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
            if text.isdigit():
                limit = int(text)
                avail = limit if avail is None else min(avail, limit)
        except OSError:
            continue
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return int(avail)


def sweep_bytes_per_voxel(
    n_samples: int, n_features: int, n_layers: int, n_alphas: int, rank: int, n_folds: int = 5
) -> int:
    """Peak bytes per voxel of one batch of the ridge sweep (:func:`.sweep.ridge_sweep`).

    Per voxel: its responses (n), the folds' validation cross-products (K L p), the full one,
    a training one, the basis projections and fitted weights (about 6 L p), the product of the
    per-alpha validation factor (L A rank, ``rank`` = its rows) with its norm, and the scores and
    selection sums (4 L A, float64).
    """
    L, p, A, r, K = n_layers, n_features, n_alphas, rank, n_folds
    return FLOAT * (n_samples + (K + 6) * L * p + 2 * L * A * r) + 32 * L * A


def voxel_batch(
    *,
    n_samples: int,
    n_features: int,
    n_layers: int,
    n_alphas: int,
    rank: int,
    n_folds: int = 5,
    device="cpu",
    available: int | None = None,
    share: float = BATCH_SHARE,
) -> int:
    """Voxels per batch of the ridge sweep that fit in ``share`` of the free memory.

    Parameters
    ----------
    n_samples, n_features, n_layers, n_alphas, rank, n_folds : int
        Shapes of the sweep (rank = the size of the inner folds' bases).
    device : torch device or str
    available : int, optional
        Free bytes (default: measured on ``device``).
    share : float
        Fraction of the free memory a batch may use.

    Returns
    -------
    int, at least 1.
    """
    available = free_bytes(device) if available is None else available
    per_voxel = sweep_bytes_per_voxel(n_samples, n_features, n_layers, n_alphas, rank, n_folds)
    return max(1, int(available * share) // per_voxel)


def encode_peak_bytes(
    *,
    n_rows: int,
    n_trials: int,
    n_voxels: int,
    n_features: int,
    n_layers: int,
    n_permutations: int,
    refit_null: bool = False,
) -> int:
    """Estimated peak host memory of an ``alignment encode`` job (one subject, one model).

    Parameters
    ----------
    n_rows : int
        Rows scored (images, or TRs).
    n_trials : int
        Rows of the responses file (trials with repeats).
    n_voxels : int
        Voxels fitted by the job (one shard's, when sharded).
    n_features : int
        Width of the widest layer (after FIR delays).
    n_layers : int
        Layers fitted at once (``layer_batch``).
    n_permutations : int
    refit_null : bool
        The refit image null keeps a (permutations, voxels) null per layer and a batch of
        permuted responses (256 MiB).

    Returns
    -------
    int, bytes.
    """
    v = n_voxels
    responses = 2 * n_trials * v * FLOAT  # loaded and z-scored
    design = n_rows * v * FLOAT
    per_layer = n_rows * n_features * FLOAT + n_rows * v * FLOAT + n_features * v * FLOAT
    scoring = 4 * n_rows * v * 8 + n_permutations * 8  # centred float64 copies, one null row
    null = n_layers * n_permutations * v * FLOAT + 2**28 if refit_null else 0
    scores = 8 * n_layers * v * FLOAT
    return int(responses + design + n_layers * per_layer + scoring + null + scores)


def preflight(peak: int, source: str, available: int | None = None, margin: float = 0.9) -> None:
    """Fail early (InputError naming what to change) when a job's peak exceeds free memory."""
    available = free_bytes("cpu") if available is None else available
    if peak > margin * available:
        raise InputError(
            f"{source}: this encode job needs about {peak / 2**30:.1f} GiB but "
            f"{available / 2**30:.1f} GiB are available: raise mem_mb of the encode rule "
            "(profiles/*/config.yaml), fit fewer layers at once (encoder layer_batch: 1) or "
            "split the voxels over jobs (encoder shards: N)"
        )
