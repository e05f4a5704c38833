"""JPEG decoding on the GPU (nvImageCodec), for ``image_decoder: nvimgcodec``.

The default image path decodes in CPU worker processes (:mod:`alignment.features.vision`); on a
machine with a fast GPU that CPU decode, not the model, bounds the throughput (about 3 ms a
500 x 375 photograph per core). With ``image_decoder: nvimgcodec`` the files are read by
nvImageCodec and decoded straight into GPU memory, on the GPU's hardware JPEG
engines where it has them (A100, H100: measured 10,500 photographs/s on one H100) and with
libjpeg-turbo on the CPU for what those cannot decode; the decoded uint8 pixels then take the
same device resize, rescale and normalise as the default path. JPEG upsampling is "fancy" as in
libjpeg, so the pixels are PIL's but for about 1 in 10,000 one grey level off (measured on
photographs); the choice is recorded in the cache key. Images it cannot decode (PNG, HDF5
frames, an unreadable file) go through PIL, which names a broken file.

Needs ``pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg`` (``-cu12`` for CUDA 12 builds of
torch), the extra ``alignment[nvimgcodec]``, and a CUDA device.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading

import numpy as np
import torch

from alignment.io import InputError
from alignment.stimuli.images import _HDF5Images

log = logging.getLogger(__name__)
IMAGE_DECODERS = ("pil", "nvimgcodec")


def check_decoder(image_decoder: str, *, fast, device, jpeg_draft: bool, source: str) -> None:
    """A clear error when ``image_decoder`` cannot be used for this model and device."""
    if image_decoder not in IMAGE_DECODERS:
        raise InputError(
            f"{source}: image_decoder {image_decoder!r} is unknown; use {', '.join(IMAGE_DECODERS)}"
        )
    if image_decoder == "pil":
        return
    if device.type != "cuda":
        raise InputError(
            f"{source}: image_decoder nvimgcodec decodes on a CUDA device, but the model runs on "
            f"{device}; use image_decoder: pil"
        )
    if fast is None:
        raise InputError(
            f"{source}: image_decoder nvimgcodec needs a processor that resizes on the device "
            "(a fixed height x width, bilinear or bicubic: ViT, SigLIP); this one crops, so use "
            "image_decoder: pil"
        )
    if jpeg_draft:
        raise InputError(f"{source}: jpeg_draft applies to image_decoder pil only")
    _nvimgcodec()


def _nvimgcodec():
    try:
        from nvidia import nvimgcodec
    except ImportError as err:
        cuda = torch.version.cuda or "12"
        raise InputError(
            "image_decoder nvimgcodec needs nvImageCodec: pip install "
            f"nvidia-nvimgcodec-cu{cuda.split('.')[0]} nvidia-nvjpeg ({err})"
        ) from err
    return nvimgcodec


#: nvImageCodec backends, in order: the GPU's hardware JPEG engines alone (with the CPU backend
#: beside them nvImageCodec hands part of every batch to the CPU: 2.5x slower on an H100);
#: what they cannot decode goes through PIL (:func:`_decode_batch`)
BACKENDS = ("HW_GPU_ONLY",)


def _decoder(nv, device):
    """A decoder on ``device``: the hardware engines, else nvImageCodec's own choice (GPUs
    without them); chroma upsampled "fancy", as libjpeg (PIL) does."""
    options = ":fancy_upsampling=1"
    try:
        backends = [nv.Backend(getattr(nv.BackendKind, b)) for b in BACKENDS]
        return nv.Decoder(device_id=device.index or 0, backends=backends, options=options)
    except Exception:
        return nv.Decoder(device_id=device.index or 0, options=options)


def _is_file(path: str) -> bool:
    """A file for nvImageCodec to read (not an HDF5 frame reference, which PIL opens)."""
    from alignment.stimuli.images import split_reference

    return split_reference(path)[1] is None


def _nv_images(nv, decoder, params, files, stream) -> list:
    """nvImageCodec's images of ``files`` (read and decoded by it, in C++, without the GIL);
    None for a file it cannot read or decode."""
    if not files:
        return []
    try:
        return list(decoder.read(files, params=params, cuda_stream=stream.cuda_stream))
    except Exception:  # a file it rejects outright: one at a time, None for the bad ones
        out = []
        for f in files:
            try:
                out.append(decoder.read(f, params=params, cuda_stream=stream.cuda_stream))
            except Exception:
                out.append(None)
        return out


def _decode_batch(nv, decoder, params, paths, device, stream, hdf5):
    """One batch decoded on ``stream``: ``[(flat uint8 on device, (n, 2) shapes)]``."""
    from alignment.features.vision import open_image

    todo = [k for k, p in enumerate(paths) if _is_file(p)]
    decoded = [None] * len(paths)
    images = _nv_images(nv, decoder, params, [paths[k] for k in todo], stream)
    for k, image in zip(todo, images, strict=True):
        decoded[k] = image
    with torch.cuda.stream(stream):
        pixels = []
        for k, image in enumerate(decoded):
            t = None
            if image is not None:
                t = torch.as_tensor(image, device=device)
                if t.dim() != 3 or t.shape[2] != 3 or t.dtype != torch.uint8:
                    t = None  # e.g. a 16-bit or CMYK image: PIL converts it as the processor does
            if t is None:  # PIL names a file that cannot be read
                t = torch.from_numpy(np.array(open_image(paths[k], hdf5))).to(device)
            pixels.append(t)
        shapes = np.array([t.shape[:2] for t in pixels], dtype=np.int64).reshape(-1, 2)
        flat = torch.cat([t.reshape(-1) for t in pixels])
    stream.synchronize()  # the decoder's buffers may go once their pixels are copied out
    return [(flat, shapes)]


def gpu_decoded_batches(paths, *, batch_size: int, start: int, device, info=None):
    """Yield ``(row_start, row_stop, [(flat, shapes)], event)``, decoded on ``device``.

    The same batches, on the device, as :func:`alignment.features.vision.host_batches` after
    upload: a thread has nvImageCodec read and decode the next two batches, on a stream of
    their own, while the current one runs.
    """
    nv = _nvimgcodec()
    paths = list(paths)
    if start >= len(paths):
        return
    decoder = _decoder(nv, device)
    params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB)
    stream = torch.cuda.Stream(device)
    spans = [(a, min(a + batch_size, len(paths))) for a in range(start, len(paths), batch_size)]
    if info is not None:
        info["decode_workers"] = 0
        info["image_decoder"] = "nvimgcodec"
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    hdf5 = _HDF5Images()

    def produce():
        try:
            for a, b in spans:
                if stop.is_set():
                    return
                group = _decode_batch(nv, decoder, params, paths[a:b], device, stream, hdf5)
                event = torch.cuda.Event()
                event.record(stream)
                _put(ready, (a, b, group, event), stop)
        except BaseException as err:  # raised again by the consumer
            _put(ready, err, stop)
            return
        _put(ready, None, stop)

    worker = threading.Thread(target=produce, name="nvimgcodec-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.1)
        worker.join()


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
