"""Memory planning for voxelwise encoders: batch sizes from free memory, and a preflight check.

:func:`voxel_batch` sizes the voxel batches of the ridge sweep from the free memory of its
device (CUDA free memory, or the available RAM on a CPU). :func:`encode_peak_bytes` estimates
the peak memory of a whole ``alignment encode`` job from its shapes, and :func:`preflight`
fails early, naming the setting to change, when it cannot fit.
"""

from __future__ import annotations

import os

import torch

FLOAT = 4  # bytes of a float32
# the share of free memory a batch may take: the rest covers allocator slack and temporaries
BATCH_SHARE = 0.5


def free_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory of a device: CUDA free memory, or MemAvailable (else cgroup limit) on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
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
    n_samples: int, n_features: int, n_layers: int, n_alphas: int, rank: int
) -> int:
    """Peak bytes per voxel of one batch of the ridge sweep (:func:`.sweep.ridge_sweep`).

    Per voxel: its responses (n), the cross-products, held-out parts and fitted weights
    (about 6 L p), the basis projections (2 L r), the per-alpha coefficients, their product with
    the validation Gram and the elementwise product (3 L A r), the scores (2 L A, float64),
    or materialised validation predictions when they are smaller.
    """
    L, p, A, r = n_layers, n_features, n_alphas, rank
    return FLOAT * (n_samples + 6 * L * p + 2 * L * r + 3 * L * A * r) + 16 * L * A


def voxel_batch(
    *,
    n_samples: int,
    n_features: int,
    n_layers: int,
    n_alphas: int,
    rank: int,
    device="cpu",
    available: int | None = None,
    share: float = BATCH_SHARE,
) -> int:
    """Voxels per batch of the ridge sweep that fit in ``share`` of the free memory.

    Parameters
    ----------
    n_samples, n_features, n_layers, n_alphas, rank : int
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
    per_voxel = sweep_bytes_per_voxel(n_samples, n_features, n_layers, n_alphas, rank)
    return max(1, int(available * share) // per_voxel)
