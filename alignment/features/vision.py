"""Image features from vision transformers (ViT, DINOv2, CLIP and SigLIP vision towers).

Pooling: ``cls`` (token 0), ``mean`` over patch tokens, or ``tokens`` (every patch token,
row-major over the patch grid; CLS and register tokens dropped).

The image path (no torchvision):

- worker processes (a torch DataLoader, one per available core but one, forked) read and decode
  the files in small sub-batches, in order, each straight into a free slot of a ring of shared
  buffers made before the fork (page-locked on CUDA) and returned once uploaded;
- for processors that resize to a fixed height x width with bilinear or bicubic filtering and
  then rescale and normalise (ViT, SigLIP), the workers only decode: the uint8 pixels go to the
  device as they are (one packed buffer per sub-batch, copied on a side stream while the
  previous batch runs) and are resized there, then rescaled, normalised and cast. The resize
  is PIL's own two-pass resampling (its fixed-point weights, rounding to uint8 levels after
  each pass) as two matrix products: PIL exactly in float64 (CUDA data-centre GPUs), about
  1e-4 of the pixels one grey level off in float32 (CPU, other GPUs); that is 0.0079 in
  normalised units for mean/std 0.5 (tested). ``preprocessing`` records
  ``"resize": "device-pil-weights"`` in the cache key;
- other processors (centre crops: CLIP, DINOv2) run in the workers as they are;
- with ``jpeg_draft: true`` JPEGs at least twice the target size are decoded at a reduced
  scale (PIL ``Image.draft``, DCT scaling), which is faster but differs from the processor by up
  to about 17 grey levels at sharp edges (mean about 0.8); off by default, part of the key.

Hooks reduce each chosen layer on the device and copy it to the host on a side stream; the
next batch is fetched and uploaded while the current one runs.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import time

import numpy as np
import torch

from alignment.io import InputError

log = logging.getLogger(__name__)
IMAGE_POOLINGS = ("mean", "cls", "tokens")
# PIL resample codes resampled on the device (bilinear; bicubic with PIL's a = -0.5)
_DEVICE_RESAMPLE = {2: "bilinear", 3: "bicubic"}


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


def preprocessing(proc, jpeg_draft: bool = False) -> str:
    """The processor's settings and how they are applied, as canonical JSON (cache key)."""
    d = proc.to_dict() if hasattr(proc, "to_dict") else {}
    d["_applied"] = {"resize": "device-pil-weights" if fast_path(proc) else "processor",
                     "jpeg_draft": bool(jpeg_draft)}  # fmt: skip
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


def fast_path(proc) -> dict | None:
    """Settings for preprocessing on the model's device, or None to use the processor.

    Only for processors that resize to a fixed height x width (bilinear or bicubic), then
    rescale and normalise (ViT, SigLIP).
    """
    size = getattr(proc, "size", None) or {}
    if isinstance(size, dict):
        h, w = size.get("height"), size.get("width")
    else:  # SizeDict
        h, w = getattr(size, "height", None), getattr(size, "width", None)
    flags = {k: getattr(proc, k, None) for k in ("do_center_crop", "do_pad", "do_reduce_labels")}
    resample = _resample_code(getattr(proc, "resample", 2))
    if (
        not (h and w)
        or any(flags.values())
        or not getattr(proc, "do_resize", False)
        or resample not in _DEVICE_RESAMPLE
        or getattr(proc, "do_convert_rgb", True) is False
    ):
        return None
    mean = getattr(proc, "image_mean", None) if getattr(proc, "do_normalize", False) else None
    std = getattr(proc, "image_std", None) if getattr(proc, "do_normalize", False) else None
    scale = getattr(proc, "rescale_factor", 1 / 255) if getattr(proc, "do_rescale", False) else 1.0
    return {
        "size": (int(w), int(h)),
        "resample": resample,
        "scale": float(scale),
        "mean": None if mean is None else [float(m) for m in mean],
        "std": None if std is None else [float(x) for x in std],
    }


def _resample_code(resample) -> int | None:
    """PIL's resample code (2 bilinear, 3 bicubic, ...) of a processor setting, None if unknown."""
    if resample is None:
        return 2
    try:
        return int(resample)
    except (TypeError, ValueError):  # e.g. torchvision's InterpolationMode in "fast" processors
        name = str(getattr(resample, "name", resample)).lower()
        return {"bilinear": 2, "bicubic": 3}.get(name)


# ----------------------------------------------------------------------------- host side


def open_image(path: str, hdf5, draft=None):
    """An RGB PIL image; ``draft`` = (width, height) lets JPEGs decode at a reduced scale."""
    from PIL import Image

    from alignment.stimuli.images import _open_image, split_reference

    if split_reference(path)[1] is not None:
        return _open_image(path, hdf5)
    try:
        with Image.open(path) as img:
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)
            img.load()
            # an RGB image as decoded: convert("RGB") would copy it once more
            return img if img.mode == "RGB" else img.convert("RGB")
    except OSError as err:
        raise InputError(f"{path}: cannot be read as an image ({err})") from err


class ImageFiles(torch.utils.data.Dataset):
    """Sub-batches of images: decoded uint8 pixels, or the processor's output.

    Item ``k`` is images ``[k * sub, (k + 1) * sub)`` of ``paths``: for the device path a
    packed uint8 buffer and its (height, width) shapes (with a :class:`SlotRing`: the slot
    index, byte count and shapes), else the processor's pixel values.
    """

    def __init__(self, paths, sub: int, proc, fast: dict | None, draft: bool):
        self.paths, self.sub, self.proc, self.fast = list(paths), int(sub), proc, fast
        self.draft = fast["size"] if (draft and fast) else None
        self._hdf5 = None
        self.ring: SlotRing | None = None  # set before the workers fork

    def __len__(self) -> int:
        return -(-len(self.paths) // self.sub)

    def __getitem__(self, k: int):
        from alignment.stimuli.images import _HDF5Images

        if self._hdf5 is None or self._hdf5[0] != os.getpid():  # one set of files per process
            self._hdf5 = (os.getpid(), _HDF5Images())
        paths = self.paths[k * self.sub : (k + 1) * self.sub]
        try:
            images = [open_image(p, self._hdf5[1], self.draft) for p in paths]
        except InputError as err:  # raised again, as one line, by the main process
            return _Failed(str(err))
        if self.fast is None:
            return self.proc(images=images, return_tensors="pt")["pixel_values"]
        arrays = [np.asarray(im) for im in images]
        # shapes as a numpy array: pickled inline, not one more shared-memory file to pass
        shapes = np.array([a.shape[:2] for a in arrays], dtype=np.int64).reshape(-1, 2)
        n = sum(a.size for a in arrays)
        ring = self.ring
        if ring is not None and n <= ring.slots.shape[1]:
            k = ring.free.get()  # waits while every slot is in use (see SlotRing)
            flat = ring.slots[k, :n]
        else:  # in this process, or larger than a slot: a fresh buffer
            k, flat = None, _empty_uint8(n)
        out, o = flat.numpy(), 0
        for a in arrays:  # each image straight into the shared buffer (one copy)
            out[o : o + a.size] = a.reshape(-1)
            o += a.size
        return _Slot(k, n, shapes) if k is not None else (flat, shapes)


_Slot = collections.namedtuple("_Slot", "index nbytes shapes")  # a sub-batch in a ring slot


class SlotRing:
    """Reusable shared-memory buffers for decoded sub-batches, made before the workers fork.

    A worker takes a free slot index from ``free``, decodes into ``slots[k]`` and returns only
    ``k`` and the shapes (no fresh shared-memory file per sub-batch, whose first-touch page
    faults cost about ten times the copy). The main process puts ``k`` back once the batch is
    consumed (on CUDA: once its host-to-device copy has completed). With ``n`` slots =
    workers x prefetch (the DataLoader's items in flight) + one batch's sub-batches (held by
    the consumer), a free slot always exists when a worker asks: no overwrite, no deadlock.
    """

    def __init__(self, n: int, nbytes: int, context):
        storage = torch.UntypedStorage._new_shared(n * nbytes)
        self.slots = torch.empty(0, dtype=torch.uint8).set_(storage).view(n, nbytes)
        self.free = context.SimpleQueue()
        for k in range(n):
            self.free.put(k)
        self.pinned = False

    def pin(self) -> bool:
        """Register the slots as page-locked (CUDA), so uploads from them are asynchronous."""
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(self.slots.data_ptr(), self.slots.numel(), 0)
        self.pinned = int(getattr(err, "value", err)) == 0
        if not self.pinned:
            log.warning("cannot page-lock the decoding buffers (cudaHostRegister: %s)", err)
        return self.pinned

    def unpin(self) -> None:
        if self.pinned:
            torch.cuda.cudart().cudaHostUnregister(self.slots.data_ptr())
            self.pinned = False


class _Failed(str):
    """An error message from a worker (DataLoader would wrap the exception in a traceback)."""


def _empty_uint8(n: int) -> torch.Tensor:
    """A uint8 buffer, in shared memory inside a DataLoader worker (no copy on the way out)."""
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.UntypedStorage._new_shared(n)
        return torch.empty(0, dtype=torch.uint8).set_(storage).view(-1)[:n]
    return torch.empty(n, dtype=torch.uint8)


def _unbatched(item):
    return item


def n_loader_workers(n_workers: int | None) -> int:
    """Worker processes: ``n_workers`` or every available core but one; 0 = in this process."""
    if n_workers is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        n_workers = cores - 1
    return int(n_workers) if int(n_workers) > 1 else 0


def _fit_shared_memory(path, workers: int, sub: int, fast) -> tuple[int, int]:
    """Workers and prefetch depth whose sub-batches in flight fit in /dev/shm.

    Workers hand their sub-batches over in shared memory; containers often mount a small
    /dev/shm (Docker: 64 MB), where a full one kills the run. The in-flight size is estimated
    from the first image (decoded RGB, or the processed float pixels).
    """
    import shutil

    if workers == 0:
        return 0, 2
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return workers, 4
    per_image = _image_bytes(path) if fast else 3 * 4 * 224 * 224 * 4
    for prefetch in (4, 2, 1):
        if workers * prefetch * sub * per_image * 2 <= free:
            return workers, prefetch
    fitted = int(free // (2 * sub * per_image))
    log.warning(
        "/dev/shm has %.0f MB free: %d image decoding workers instead of %d (mount a larger "
        "/dev/shm, e.g. docker --shm-size=8g, for full speed)", free / 2**20, fitted, workers,
    )  # fmt: skip
    return (fitted if fitted > 1 else 0), 1


def host_batches(
    paths, *, proc, fast, draft, batch_size, start, n_workers, device, info=None, copy_stream=None
):
    """Yield ``(row_start, row_stop, [sub-batch, ...])`` read by worker processes, in order.

    With workers on the device path the sub-batches are views of reusable shared slots
    (:class:`SlotRing`, page-locked on CUDA): a batch's views are valid until the generator is
    resumed, which first waits for ``copy_stream`` (the stream that uploads them) to finish.
    """
    n = len(paths) - start
    if n <= 0:
        return
    import alignment.stimuli.images  # noqa: F401  (imported once here, not in every worker)

    workers = n_loader_workers(n_workers)
    # small sub-batches keep every worker busy to the end; at most batch_size images each
    sub = max(1, min(batch_size, -(-batch_size // max(1, workers)), 32))
    # each model batch is a whole number of sub-batches
    sub = next(s for s in range(sub, 0, -1) if batch_size % s == 0)
    per_batch = batch_size // sub
    data = ImageFiles(paths[start:], sub, proc, fast, draft)
    workers, prefetch = _fit_shared_memory(paths[start], workers, sub, fast)
    context = None
    if workers and hasattr(os, "fork"):
        import multiprocessing

        context = multiprocessing.get_context("fork")
    if fast and context is not None:  # slots sized from the first image; larger go fresh
        data.ring = SlotRing(workers * prefetch + per_batch, sub * _image_bytes(paths[start]),
                             context)  # fmt: skip
    if info is not None:
        info["decode_workers"] = workers
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,
        collate_fn=_unbatched,
        num_workers=workers,
        pin_memory=device.type == "cuda" and data.ring is None,
        prefetch_factor=prefetch if workers else None,
        multiprocessing_context=context,
    )
    ring = data.ring
    group, held, a = [], [], start
    t0 = time.perf_counter()
    items = iter(loader)  # forks the workers
    if ring is not None and device.type == "cuda":
        ring.pin()  # after the fork: the workers never touch CUDA
    if info is not None:
        info["workers_start_s"] = time.perf_counter() - t0
    try:
        for item in items:
            if isinstance(item, _Failed):
                raise InputError(str(item))
            if isinstance(item, _Slot):
                held.append(item.index)
                item = (ring.slots[item.index, : item.nbytes], item.shapes)
            group.append(item)
            if len(group) == per_batch:
                b = min(a + batch_size, len(paths))
                if info is not None and "first_batch_s" not in info:
                    info["first_batch_s"] = time.perf_counter() - t0
                yield a, b, group
                _release(ring, held, copy_stream)
                group, held, a = [], [], b
        if group:
            yield a, len(paths), group
            _release(ring, held, copy_stream)
    finally:
        del items  # the workers stop before the slots are unregistered
        if ring is not None:
            if copy_stream is not None:
                copy_stream.synchronize()
            ring.unpin()


def _release(ring, held, copy_stream) -> None:
    """Give a consumed batch's slots back to the workers, once its upload has completed."""
    if held:
        if copy_stream is not None:
            copy_stream.synchronize()  # only the uploads run there, not the model
        for k in held:
            ring.free.put(k)


def _image_bytes(path) -> int:
    """Bytes of one decoded RGB image, from the file's header (640 x 480 if unreadable)."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            w, h = img.size
    except Exception:
        w, h = 640, 480
    return w * h * 3


# ----------------------------------------------------------------------------- device side


def upload(group, device, stream=None):
    """Copy a batch's sub-batches to ``device`` (on ``stream`` when given, non-blocking)."""
    ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with ctx:
        out = []
        for item in group:
            if isinstance(item, tuple):
                out.append((item[0].to(device, non_blocking=True), item[1]))
            else:
                out.append(item.to(device, non_blocking=True))
    return out


def device_preprocess(fast: dict | None, group, device, dtype) -> torch.Tensor:
    """(batch, 3, height, width) pixel values on ``device`` in ``dtype``.

    For the device path: resize the images as PIL does (images of one size together, see
    :func:`pil_weights`), rescale and normalise.
    """
    if fast is None:
        return torch.cat(group).to(device=device, dtype=dtype)
    w, h = fast["size"]
    shapes = np.concatenate([np.asarray(s).reshape(-1, 2) for _, s in group])
    if (shapes == shapes[0]).all():  # one image size (the usual case): no per-image views
        ih, iw = (int(v) for v in shapes[0])
        x = torch.cat([flat for flat, _ in group]).view(len(shapes), ih, iw, 3)
        out = _resize(x.permute(0, 3, 1, 2), (ih, iw), (h, w), fast)
    else:
        images = []
        for flat, s in group:
            s = np.asarray(s).reshape(-1, 2)
            offsets = np.r_[0, np.cumsum(s[:, 0] * s[:, 1] * 3)]
            for k, (ih, iw) in enumerate(s.tolist()):
                images.append(flat[offsets[k] : offsets[k + 1]].view(ih, iw, 3))
        out = torch.empty((len(images), 3, h, w), device=device, dtype=torch.float32)
        by_shape: dict[tuple, list[int]] = {}
        for k, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape), []).append(k)
        for (ih, iw, _), ks in by_shape.items():
            x = torch.stack([images[k] for k in ks]).permute(0, 3, 1, 2)
            out[ks] = _resize(x, (ih, iw), (h, w), fast)
    out.mul_(fast["scale"])
    if fast["mean"] is not None:
        mean = torch.tensor(fast["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(fast["std"], device=device).view(1, -1, 1, 1)
        out.sub_(mean).div_(std)
    return out.to(dtype)


_PRECISION_BITS = 22  # PIL's fixed-point coefficients for 8-bit images (Resample.c)
_SUPPORT = {2: 1.0, 3: 2.0}  # bilinear (triangle), bicubic (a = -0.5)


def _filter(resample: int, x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    if resample == 2:
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def pil_weights(n_in: int, n_out: int, resample: int) -> np.ndarray:
    """(n_out, n_in) matrix of PIL's resampling weights along one axis, as PIL rounds them.

    ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of Pillow's Resample.c: an antialiased
    filter scaled by the reduction factor, normalised per output pixel, then rounded to
    integers in units of 2**-22. Row ``o`` dotted with the input, plus one half, floored and
    clipped to 0..255, is PIL's output pixel ``o`` for this axis.
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = _SUPPORT[resample] * filterscale
    out = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = _filter(resample, (np.arange(lo, hi) - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        unit = float(1 << _PRECISION_BITS)
        out[o, lo:hi] = np.where(w < 0, np.trunc(-0.5 + w * unit), np.trunc(0.5 + w * unit))
    return out / (1 << _PRECISION_BITS)


def _sum_dtype(device) -> torch.dtype:
    """float64 where it is cheap (CUDA data-centre parts: P100, V100, A100, H100, B200) or
    where float32 products would lose bits (TF32 on); float32 elsewhere."""
    if device.type != "cuda":
        return torch.float32
    major, minor = torch.cuda.get_device_capability(device)
    if (major >= 6 and minor == 0) or torch.backends.cuda.matmul.allow_tf32:
        return torch.float64
    return torch.float32


def resize_pil(x: torch.Tensor, dst, resample: int, dtype=None) -> torch.Tensor:
    """Resize (n, 3, h, w) uint8-level pixels to ``dst`` (h, w) as PIL does; float32 out.

    PIL's two passes (horizontal, then vertical, each rounded and clipped to uint8 levels) as
    two matrix products with PIL's own fixed-point weights (:func:`pil_weights`). In float64
    this is PIL's integer arithmetic exactly (tested equal); in float32 a level differs where
    a sum falls within about 1e-5 of a half (about 1e-4 of the pixels when reducing, up to a
    few % for bilinear enlargement, whose exact halves float32 breaks). On a GPU this is far
    cheaper than a direct antialiased 2-D filter; on a CPU about 2-3x dearer (a small share
    of a CPU forward pass).
    """
    (ih, iw), (h, w) = x.shape[-2:], dst
    dt = dtype or (torch.float64 if x.dtype == torch.float64 else _sum_dtype(x.device))
    x = x.contiguous().to(dt)  # contiguous while still uint8: the cheap copy
    if iw != w:
        ww = torch.from_numpy(pil_weights(iw, w, resample)).to(x.device, dt)
        x = torch.matmul(x, ww.T).add_(0.5).floor_().clamp_(0, 255)
    if ih != h:
        wh = torch.from_numpy(pil_weights(ih, h, resample)).to(x.device, dt)
        x = torch.matmul(wh, x).add_(0.5).floor_().clamp_(0, 255)
    return x.float()


def _resize(x: torch.Tensor, src, dst, fast) -> torch.Tensor:
    """Resize uint8-level (n, 3, h, w) pixels on their device as PIL does (:func:`resize_pil`).

    Not torch's antialiased ``interpolate``: on photographs its bicubic is up to two grey
    levels from PIL on about 1/6 of the pixels, and on a GPU it is a slow direct 2-D filter.
    """
    if tuple(src) == tuple(dst):
        return x.float()
    return resize_pil(x, tuple(dst), fast["resample"])


def image_batches(
    loaded,
    paths,
    *,
    pooling: str,
    indices,
    batch_size: int,
    start: int = 0,
    n_workers: int | None = None,
    jpeg_draft: bool = False,
    image_decoder: str = "pil",
    info: dict,
):
    """Yield ``(row_start, row_stop, {hidden index: array})`` for batches of images.

    ``image_decoder`` ``"pil"`` decodes in worker processes, ``"nvimgcodec"`` on the GPU
    (:mod:`alignment.features.gpu_jpeg`). ``info`` receives ``token_grid`` ([rows, columns])
    and ``image_size`` after the first batch.
    """
    from alignment.features import gpu_jpeg
    from alignment.features.hooks import LayerTap

    if pooling not in IMAGE_POOLINGS:
        raise InputError(
            f"{loaded.source}: pooling {pooling!r} is not supported for images; use "
            f"{', '.join(IMAGE_POOLINGS)}"
        )
    proc = loaded.processor
    fast = fast_path(proc)
    device = loaded.device
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

    gpu_jpeg.check_decoder(image_decoder, fast=fast, device=device, jpeg_draft=jpeg_draft,
                           source=loaded.source)  # fmt: skip
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    batches = host_batches(
        list(paths), proc=proc, fast=fast, draft=jpeg_draft, batch_size=batch_size,
        start=start, n_workers=n_workers, device=device, info=info, copy_stream=stream,
    )  # fmt: skip

    def uploaded():
        for a, b, group in batches:
            on_device = upload(group, device, stream)
            event = None
            if cuda:
                event = torch.cuda.Event()
                event.record(stream)
            yield a, b, on_device, event

    with LayerTap(loaded, indices, reduce) as tap, torch.inference_mode():
        if image_decoder == "nvimgcodec":
            it = gpu_jpeg.gpu_decoded_batches(paths, batch_size=batch_size, start=start,
                                              device=device, info=info)  # fmt: skip
        else:
            it = uploaded()
        # the model runs on a stream of its own, not the legacy default stream, which waits
        # for (and holds up) the work of the decoder's and the uploads' streams
        run = torch.cuda.stream(torch.cuda.Stream(device)) if cuda else contextlib.nullcontext()
        nxt = next(it, None)
        while nxt is not None:
            a, b, group, event = nxt
            with run:
                if event is not None:
                    compute = torch.cuda.current_stream(device)
                    compute.wait_event(event)
                    for item in group:  # memory made on the copy stream, used on this one
                        (item[0] if isinstance(item, tuple) else item).record_stream(compute)
                pixels = device_preprocess(fast, group, device, loaded.dtype)
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
                tap.launch(loaded.model, pixel_values=pixels)
            nxt = next(it, None)  # the next batch is read and uploaded while this one runs
            with run:
                captured = tap.collect()
            yield a, b, {i: captured[i].numpy() for i in indices}
