"""Image features from vision transformers (ViT, DINOv2, CLIP and SigLIP vision towers).

Pooling: ``cls`` (token 0), ``mean`` over patch tokens, or ``tokens`` (every patch token,
row-major over the patch grid; CLS and register tokens dropped). Images are decoded and
preprocessed by worker threads while the model runs the previous batch.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from alignment.io import InputError
from alignment.stimuli.images import load_images

IMAGE_POOLINGS = ("mean", "cls", "tokens")


def load_processor(source: str, revision=None, image_size: int | None = None):
    """The model's image processor, resized to ``image_size`` when given."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise InputError(f"{source}: cannot load the image processor ({err})") from err
    if image_size:
        s = int(image_size)
        if getattr(proc, "crop_size", None) and getattr(proc, "do_center_crop", False):
            proc.size = {"shortest_edge": s}
            proc.crop_size = {"height": s, "width": s}
        else:
            proc.size = {"height": s, "width": s}
    return proc


def preprocessing(proc) -> str:
    """The processor's settings as canonical JSON (part of the cache key)."""
    d = proc.to_dict() if hasattr(proc, "to_dict") else {}
    return json.dumps(d, sort_keys=True, default=str)


def token_grid(loaded, pixel_values: torch.Tensor) -> tuple[int, int] | None:
    """(rows, columns) of the patch-token grid for the processed images, None if unknown.

    Computed from the processed pixel size, not ``config.image_size``: DINOv2's config says 518
    while its processor crops to 224.
    """
    cfg = loaded.model.config
    cfg = getattr(cfg, "vision_config", cfg)
    patch = getattr(cfg, "patch_size", None)
    if isinstance(patch, list | tuple):
        patch = patch[0]
    if not patch:
        return None
    return int(pixel_values.shape[-2]) // patch, int(pixel_values.shape[-1]) // patch


def n_special_tokens(grid, n_tokens: int) -> int:
    """Number of leading non-patch tokens (CLS, registers) in a ViT-like sequence."""
    if grid is None:
        return 1
    n_special = n_tokens - grid[0] * grid[1]
    if n_special < 0:
        raise InputError(
            f"{n_tokens} tokens but a {grid[0]}x{grid[1]} patch grid: cannot locate patch tokens"
        )
    return n_special


def _prepare(proc, paths) -> torch.Tensor:
    return proc(images=load_images(paths), return_tensors="pt")["pixel_values"]


def fast_path(proc) -> dict | None:
    """Settings for preprocessing on the model's device, or None to use the processor.

    Only for processors that resize to a fixed height x width, then rescale and normalise
    (ViT, SigLIP): worker threads then only decode and resize (uint8, in PIL, as the processor
    does), and rescaling/normalising happens on the GPU. Equal to the processor's output within
    float rounding (tested).
    """
    size = getattr(proc, "size", None) or {}
    if isinstance(size, dict):
        h, w = size.get("height"), size.get("width")
    else:  # SizeDict
        h, w = getattr(size, "height", None), getattr(size, "width", None)
    flags = {k: getattr(proc, k, None) for k in ("do_center_crop", "do_pad", "do_reduce_labels")}
    if not (h and w) or any(flags.values()) or not getattr(proc, "do_resize", False):
        return None
    mean = getattr(proc, "image_mean", None) if getattr(proc, "do_normalize", False) else None
    std = getattr(proc, "image_std", None) if getattr(proc, "do_normalize", False) else None
    scale = getattr(proc, "rescale_factor", 1 / 255) if getattr(proc, "do_rescale", False) else 1.0
    return {
        "size": (int(w), int(h)),
        "resample": int(getattr(proc, "resample", 2) or 2),
        "scale": float(scale),
        "mean": None if mean is None else [float(m) for m in mean],
        "std": None if std is None else [float(x) for x in std],
    }


def _prepare_uint8(fast: dict, paths) -> torch.Tensor:
    from PIL import Image

    arrays = [
        np.asarray(img.resize(fast["size"], resample=Image.Resampling(fast["resample"])))
        for img in load_images(paths)
    ]
    return torch.from_numpy(np.stack(arrays))  # (batch, height, width, 3) uint8


def _normalise(fast: dict, pixels: torch.Tensor, device, dtype) -> torch.Tensor:
    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float() * fast["scale"]
    if fast["mean"] is not None:
        mean = torch.tensor(fast["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(fast["std"], device=device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x.to(dtype)


def image_batches(
    loaded,
    paths,
    *,
    pooling: str,
    indices,
    batch_size: int,
    start: int = 0,
    n_workers: int = 4,
    info: dict,
):
    """Yield ``(row_start, row_stop, {hidden index: array})`` for batches of images.

    ``info`` receives ``token_grid`` ([rows, columns]) and ``image_size`` after the first batch.
    """
    from alignment.features.hooks import LayerTap

    if pooling not in IMAGE_POOLINGS:
        raise InputError(
            f"{loaded.source}: pooling {pooling!r} is not supported for images; use "
            f"{', '.join(IMAGE_POOLINGS)}"
        )
    proc = loaded.processor
    fast = fast_path(proc)
    paths = list(paths)
    starts = list(range(start, len(paths), batch_size))
    sub = max(1, batch_size // max(1, n_workers))
    state: dict = {}

    def reduce(h):
        grid = state["grid"]
        if pooling == "cls":
            if n_special_tokens(grid, h.shape[1]) < 1:
                raise InputError(f"{loaded.source}: the model has no CLS token; use mean")
            out = h[:, 0]
        elif pooling == "tokens":
            out = h[:, n_special_tokens(grid, h.shape[1]) :]
        else:
            out = h[:, n_special_tokens(grid, h.shape[1]) :].mean(dim=1)
        return out.float()

    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        fn, arg = (_prepare_uint8, fast) if fast else (_prepare, proc)

        def submit(a):
            b = min(a + batch_size, len(paths))
            return (
                a,
                b,
                [pool.submit(fn, arg, paths[i : min(i + sub, b)]) for i in range(a, b, sub)],
            )

        queue = deque(submit(a) for a in starts[:2])
        k = 2
        with LayerTap(loaded, indices, reduce) as tap, torch.inference_mode():
            while queue:
                a, b, futures = queue.popleft()
                if k < len(starts):
                    queue.append(submit(starts[k]))
                    k += 1
                pixels = torch.cat([f.result() for f in futures])
                if loaded.device.type == "cuda":
                    pixels = pixels.pin_memory()
                if fast:
                    pixels = _normalise(fast, pixels, loaded.device, loaded.dtype)
                grid = token_grid(loaded, pixels)
                if pooling == "tokens" and grid is None:
                    raise InputError(
                        f"{loaded.source}: no patch_size in the config; cannot keep tokens"
                    )
                state["grid"] = grid
                if grid is not None:
                    info["token_grid"] = list(grid)
                h, w = int(pixels.shape[-2]), int(pixels.shape[-1])
                info["image_size"] = h if h == w else [h, w]
                pixels = pixels.to(loaded.device, dtype=loaded.dtype, non_blocking=True)
                captured = tap.run(loaded.model, pixel_values=pixels)
                yield a, b, {i: captured[i].numpy() for i in indices}
