"""GPU JPEG hand-over: how much of nvImageCodec's decode rate reaches torch.

``image_decoder: nvimgcodec`` loses most of nvImageCodec's own rate between the decoder and the
model (H200: ``decoder.read`` 12,731 images/s, ``gpu_decoded_batches`` 2,820). This times, on
one stream and with no model, the decode of batches of synthetic NSD-sized photographs
(500 x 375, q90, as ``benchmarks/features.py``) in these ways:

- ``read``: nvImageCodec's ``decoder.read`` alone (its own buffers, no torch): the baseline;
- ``wrapper``: :func:`alignment.features.gpu_jpeg._decode_batch`, what the features use;
- ``dlpack``: ``read``, then ``torch.from_dlpack`` per image and one ``cat`` (candidate);
- ``into_buffer``: each header parsed, one torch buffer allocated for the batch, its slices
  wrapped by ``nvimgcodec.as_images`` and decoded into in place: no per-image allocation by
  nvImageCodec and no copy (candidate; checked equal to ``wrapper``'s pixels).

Each figure is images/s over the batches after the first, with the ratio to ``read``. CUDA and
nvImageCodec only. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from alignment.features import gpu_jpeg
from benchmarks.features import _write_photo


def decode_into_one_buffer(nv, decoder, params, paths, device, stream):
    """One batch decoded into a single torch buffer: ``[(flat uint8, (n, 2) shapes)]``."""
    code = [nv.CodeStream(p) for p in paths]
    shapes = np.array([(c.height, c.width) for c in code], dtype=np.int64).reshape(-1, 2)
    offsets = np.r_[0, np.cumsum(shapes[:, 0] * shapes[:, 1] * 3)]
    with torch.cuda.stream(stream):
        flat = torch.empty(int(offsets[-1]), dtype=torch.uint8, device=device)
        views = [
            flat[offsets[k] : offsets[k + 1]].view(int(h), int(w), 3)
            for k, (h, w) in enumerate(shapes)
        ]
        decoder.decode(
            code, params=params, image=nv.as_images(views), cuda_stream=stream.cuda_stream
        )
    stream.synchronize()
    return [(flat, shapes)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    nv = gpu_jpeg._nvimgcodec()
    decoder = gpu_jpeg._decoder(nv, device)
    params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB)
    stream = torch.cuda.Stream(device)
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(Path(tmp) / f"im{i:05d}.jpg") for i in range(args.images)]
        with Pool(os.cpu_count()) as pool:
            pool.map(_write_photo, [(i, f, (500, 375)) for i, f in enumerate(files)], 32)
        batches = [files[a : a + args.batch] for a in range(0, len(files), args.batch)]

        def read(fs):
            images = decoder.read(fs, params=params, cuda_stream=stream.cuda_stream)
            stream.synchronize()
            return images

        def dlpack(fs):
            images = read(fs)
            with torch.cuda.stream(stream):
                flat = torch.cat([torch.from_dlpack(im).reshape(-1) for im in images])
            stream.synchronize()
            return flat

        variants = {
            "read": read,
            "wrapper": lambda fs: gpu_jpeg._decode_batch(
                nv, decoder, params, fs, device, stream, None
            ),
            "dlpack": dlpack,
            "into_buffer": lambda fs: decode_into_one_buffer(
                nv, decoder, params, fs, device, stream
            ),
        }
        out = {"benchmark": "gpu_jpeg", "gpu": torch.cuda.get_device_name(device),
               "images": args.images, "batch": args.batch}  # fmt: skip
        for name, fn in variants.items():
            try:
                fn(batches[0])  # warm-up: the decoder's and the allocator's first buffers
                t0 = time.perf_counter()
                for fs in batches[1:]:
                    fn(fs)
                out[f"{name}_images_per_s"] = round(
                    (args.images - len(batches[0])) / (time.perf_counter() - t0), 1
                )
            except Exception as err:  # a candidate this nvImageCodec version cannot run
                out[f"{name}_error"] = repr(err)[:300]
        base = out.get("read_images_per_s")
        for name in ("wrapper", "dlpack", "into_buffer"):
            if base and f"{name}_images_per_s" in out:
                out[f"{name}_ratio_to_read"] = round(out[f"{name}_images_per_s"] / base, 3)
        try:  # the candidate must give the wrapper's pixels
            a = variants["wrapper"](batches[0])[0][0]
            b = variants["into_buffer"](batches[0])[0][0]
            out["into_buffer_equals_wrapper"] = bool(torch.equal(a, b))
        except Exception as err:
            out["into_buffer_equals_wrapper"] = repr(err)[:300]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
