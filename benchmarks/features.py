"""Feature-extraction throughput: end to end (files on disk -> zarr store) vs the bare forward.

1. A ViT-B/16-sized random model at 224 px: images/s from JPEG files on disk to the zarr store
   (decode in worker processes, resize/normalise on the device, forward with hooks on every
   layer, mean pooling, write), against the bare model forward on ready tensors at the same
   batch size. The JPEGs are synthetic photographs the size of NSD/COCO images (500 x 375,
   quality 90, about 80 KB: colour fields, fine texture, objects, blur and sensor noise), not
   224 px thumbnails, so decoding costs what it costs on real data.
2. A 1B-parameter-class random decoder (Llama architecture) on a generated narrative with
   ``context_words`` of context: words/s end to end, and the fraction of the bare forward's
   token throughput (same window shapes, same token count) that the extraction reaches. The
   extraction without the store (forward, gather, copy to host) is timed too, and the bytes
   written: float32 features of every layer for every word are GBs, so the store's write speed
   bounds the end-to-end figure.

The ViT run also says where the time goes, each stage alone in the same process:
``vit_decode_ms_per_image_one_process`` (JPEG -> RGB array), ``vit_loader_*`` (decoding
workers -> host batches, no model; on CUDA also without page-locking, the pin thread's share),
``vit_workers_start_s`` (forking the workers) and ``*_first_batch_s``,
``vit_preprocess_images_per_s`` (resize/normalise on the device, one resident batch; on CUDA
beside it torch's antialiased ``interpolate``, which the device path used before),
``vit_preprocess_forward_images_per_s`` (with the hooked forward), ``vit_images_per_s_without_
store`` (the whole pipeline but the store), ``vit_store_*`` (the same features written again
from memory), and ``vit_bound_by``, the slowest stage. The end-to-end figure is one cold run,
worker start-up included, as a real job is; ``*_after_first_batch`` leaves the start-up and
first batch out, ``*_second_run`` repeats the run warm, and ``*_projected_73000`` extrapolates
start-up plus the steady rate to an NSD-sized job (73,000 images): a projection, labelled so.

Both models get one warm-up forward before timing (as the bare forward does); imports (zarr)
happen before timing, like the model load. ``--scale small``
(default) runs tiny versions on the CPU in seconds; ``--scale full --device cuda`` is the real
measurement (ViT-B/16 bf16, batch 256, 10,000 images, an NSD subject's worth; 1.1B decoder,
20,000 words, 512 words of context). Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

SCALES = {
    "small": {
        "vit": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, image_size=64, patch_size=16),
        "n_images": 64, "image_batch": 16, "photo_size": (160, 120),
        "llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=2000),
        "n_words": 1500, "context_words": 64, "llm_batch": 4,
    },
    "full": {
        "vit": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, image_size=224, patch_size=16),
        "n_images": 10000, "image_batch": 256, "photo_size": (500, 375),
        "llm": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                    num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
        "n_words": 20000, "context_words": 512, "llm_batch": 8,
    },
}  # fmt: skip


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def synthetic_photo(seed: int, width: int = 500, height: int = 375):
    """A photo-like RGB image: smooth colour field, texture, objects, blur, sensor noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    bicubic = Image.Resampling.BICUBIC
    low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (width, height), bicubic
    )
    mid = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize(
        (width, height), bicubic
    )
    fine = Image.fromarray(rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8))
    img = Image.blend(Image.blend(low, mid, 0.35), fine.resize((width, height), bicubic), 0.4)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(10, 90)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(0.7))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 10, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _write_photo(args):
    seed, path, size = args
    synthetic_photo(seed, *size).save(path, quality=90)
    return os.path.getsize(path)


def bench_vit(cfg, root: Path, device: str, dtype: str, image_decoder: str = "pil") -> dict:
    import pandas as pd
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from alignment.features import prepare
    from alignment.features.huggingface import resolve_device, resolve_dtype
    from alignment.features.store import write_store
    from alignment.features.vision import n_loader_workers

    v = cfg["vit"]
    path = root / "vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(**v), add_pooling_layer=False).save_pretrained(path)
    size = v["image_size"]
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    folder = root / "images"
    folder.mkdir()
    files = [folder / f"im{i:05d}.jpg" for i in range(cfg["n_images"])]
    with Pool(_cpus()) as pool:
        sizes = pool.map(
            _write_photo, [(i, f, cfg["photo_size"]) for i, f in enumerate(files)], chunksize=64
        )
    table = pd.DataFrame({"stimulus_id": [f.stem for f in files], "path": [str(f) for f in files]})
    batch = cfg["image_batch"]
    spec = {"source": str(path), "modality": "image", "pooling": "mean", "layers": "all",
            "batch_size": batch, "device": device, "dtype": dtype,
            "image_decoder": image_decoder}  # fmt: skip

    t0 = time.perf_counter()
    job = prepare(spec, table, name="vit")
    load_s = time.perf_counter() - t0
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = job.loaded.model
    pixels = torch.randn(batch, 3, size, size, device=dev, dtype=dt)
    with torch.inference_mode():
        for _ in range(2):  # warm-up (kernel selection), before both timings
            model(pixel_values=pixels)
        _sync(dev)

    import xarray  # noqa: F401  (imports, like the model load, are not the extraction's time:
    import zarr  # noqa: F401  zarr's import alone is 0.2-0.5 s, charged to the first batch)

    # end to end: JPEG files on disk -> zarr store (model load excluded, timed separately);
    # worker start-up and the first batch are inside, and reported apart
    stamps = []

    def stamped(job, it, start):
        for item in it:
            stamps.append(time.perf_counter())
            yield item

    t0 = time.perf_counter()
    write_store(job, root / "vit.zarr", progress=stamped)
    e2e_s = time.perf_counter() - t0
    e2e_info = dict(job.info)
    n = cfg["n_images"]
    first_s = stamps[0] - t0  # worker start-up + decoding/forward of the first batch
    e2e_steady = (n - batch) / max(e2e_s - first_s, 1e-9) if n > batch else float("nan")

    # the same again, warm: page-locked buffers and device memory already allocated (workers
    # are forked again; a real job is one cold run, so the first figure is the headline)
    t0 = time.perf_counter()
    write_store(job, root / "vit_warm.zarr")
    warm_s = time.perf_counter() - t0
    if image_decoder != "pil":  # the default decoder (CPU workers), one cold run, same model
        pil_job = prepare({**spec, "image_decoder": "pil"}, table, name="vit")
        t0 = time.perf_counter()
        write_store(pil_job, root / "vit_pil.zarr")
        pil_s = time.perf_counter() - t0
        del pil_job

    # bare forward at the same batch size, on ready tensors already on the device
    with torch.inference_mode():
        n_iter = max(3, n // batch)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(n_iter):
            model(pixel_values=pixels)
        _sync(dev)
        bare_s = (time.perf_counter() - t0) / (n_iter * batch)
    e2e = n / e2e_s
    bare = 1.0 / bare_s
    out = {
        "vit_image_decoder": image_decoder,
        "vit_images_per_s_end_to_end": round(e2e, 1),
        "vit_images_per_s_bare_forward": round(bare, 1),
        "vit_fraction_of_bare": round(e2e / bare, 3),
        "vit_images_per_s_end_to_end_after_first_batch": round(e2e_steady, 1),
        "vit_fraction_of_bare_after_first_batch": round(e2e_steady / bare, 3),
        "vit_images_per_s_end_to_end_second_run": round(n / warm_s, 1),
        "vit_end_to_end_s": round(e2e_s, 2),
        "vit_end_to_end_first_batch_s": round(first_s, 3),
        "vit_workers_start_s": round(e2e_info.get("workers_start_s", float("nan")), 3),
        "vit_images": n,
        "vit_image_files": f"JPEG q90 {cfg['photo_size'][0]}x{cfg['photo_size'][1]} synthetic "
        f"photos, mean {np.mean(sizes) / 1e3:.0f} KB",
        "vit_decode_workers": e2e_info.get("decode_workers"),
        "vit_decode_workers_wanted": n_loader_workers(None),
        "vit_model_load_s": round(load_s, 2),
        "vit_batch": batch,
        "vit_layers": v["num_hidden_layers"] + 1,
    }
    if image_decoder != "pil":
        out["vit_images_per_s_end_to_end_pil"] = round(n / pil_s, 1)
        out["vit_fraction_of_bare_pil"] = round(n / pil_s / bare, 3)
    # NSD-sized job (73,000 images) from this run's start-up and steady rate: a projection
    nsd = 73000
    out["vit_images_per_s_projected_73000"] = round(nsd / (first_s + (nsd - batch) / e2e_steady), 1)
    out.update(vit_breakdown(job, table, spec, cfg, root, dev, dt, bare, files))
    out["vit_bound_by"] = _bound(out)
    return out


def _bound(r: dict) -> str:
    """The slowest stage alone (images/s), which bounds the end-to-end rate."""
    if "vit_gpu_decode_images_per_s_after_first_batch" in r:
        decode = {"GPU JPEG decode": r["vit_gpu_decode_images_per_s_after_first_batch"]}
    else:
        decode = {
            "loader (decoding workers -> host batches)": r[
                "vit_loader_images_per_s_after_first_batch"
            ]
        }
    stages = {
        **decode,
        "device preprocessing": r["vit_preprocess_images_per_s"],
        "preprocessing + hooked forward": r["vit_preprocess_forward_images_per_s"],
        "store writes": r["vit_store_images_per_s"],
    }
    name = min(stages, key=stages.get)
    return f"{name} ({stages[name]:.0f} images/s alone)"


def vit_breakdown(job, table, spec, cfg, root, dev, dt, bare, files) -> dict:
    """Where the end-to-end time goes, each stage alone, in the same process and run."""
    from alignment.features.hooks import LayerTap
    from alignment.features.store import write_store
    from alignment.features.vision import (
        device_preprocess,
        fast_path,
        host_batches,
        n_special_tokens,
        open_image,
        token_grid,
        upload,
    )

    loaded = job.loaded
    proc = loaded.processor
    fast = fast_path(proc)
    batch = cfg["image_batch"]
    n = cfg["n_images"]
    res = {"vit_preprocess_on": "device" if fast else "decoding workers (processor)"}

    # 1. decode cost in this process, one image at a time (JPEG -> RGB uint8 array)
    sample = [str(f) for f in files[: min(len(files), 200)]]
    for p in sample:
        Path(p).read_bytes()
    t0 = time.perf_counter()
    for p in sample:
        np.asarray(open_image(p, None))
    res["vit_decode_ms_per_image_one_process"] = round(
        (time.perf_counter() - t0) / len(sample) * 1e3, 3
    )

    # 1b. the hand-over's own cost per image: a worker writes each sub-batch into a fresh
    # shared-memory file (page faults on new tmpfs pages), against reused private memory
    nbytes = int(np.prod(np.asarray(open_image(sample[0], None)).shape))
    sub = 16
    t0 = time.perf_counter()
    for _ in range(10):
        st = torch.UntypedStorage._new_shared(sub * nbytes)
        torch.empty(0, dtype=torch.uint8).set_(st).numpy()[:] = 1
        del st
    res["vit_fresh_shm_write_ms_per_image"] = round((time.perf_counter() - t0) / 10 / sub * 1e3, 3)
    buf = np.empty(sub * nbytes, np.uint8)
    t0 = time.perf_counter()
    for _ in range(10):
        buf[:] = 1
    res["vit_reused_buffer_write_ms_per_image"] = round(
        (time.perf_counter() - t0) / 10 / sub * 1e3, 3
    )

    # 2. loader only: workers decode into reused shared slots, the host gets batches (the
    # slots page-locked on CUDA); no model. On CUDA also without page-locking
    paths = table["path"].tolist()

    def loader(device):
        info: dict = {}
        t0 = time.perf_counter()
        first, kept = None, None
        for _, _, group in host_batches(
            paths, proc=proc, fast=fast, draft=False, batch_size=batch, start=0,
            n_workers=spec.get("n_workers"), device=device, info=info,
        ):  # fmt: skip
            if first is None:  # a copy: the loader's buffers are reused for later batches
                first = time.perf_counter()
                kept = [(g[0].clone(), g[1]) if isinstance(g, tuple) else g for g in group]
        total = time.perf_counter() - t0
        return total, first - t0, info, kept

    loader_s, first_s, info, kept = loader(dev)
    res["vit_loader_images_per_s"] = round(n / loader_s, 1)
    res["vit_loader_images_per_s_after_first_batch"] = round(
        (n - batch) / max(loader_s - first_s, 1e-9), 1
    )
    res["vit_loader_workers_start_s"] = round(info.get("workers_start_s", float("nan")), 3)
    res["vit_loader_first_batch_s"] = round(first_s, 3)
    res["vit_loader_bytes_per_image"] = (
        int(sum(g[0].numel() for g in kept) / batch) if fast else None
    )
    if dev.type == "cuda":
        s_cpu, f_cpu, _, _ = loader(torch.device("cpu"))
        res["vit_loader_images_per_s_unpinned_after_first_batch"] = round(
            (n - batch) / max(s_cpu - f_cpu, 1e-9), 1
        )

    # 2c. with image_decoder nvimgcodec: reading and decoding on the GPU alone, no model
    if spec.get("image_decoder", "pil") != "pil":
        from alignment.features.gpu_jpeg import gpu_decoded_batches

        _sync(dev)
        t0, first = time.perf_counter(), None
        for _ in gpu_decoded_batches(paths, batch_size=batch, start=0, device=dev):
            first = first or time.perf_counter()
        _sync(dev)
        total = time.perf_counter() - t0
        res["vit_gpu_decode_images_per_s"] = round(n / total, 1)
        res["vit_gpu_decode_images_per_s_after_first_batch"] = round(
            (n - batch) / max(total - (first - t0), 1e-9), 1
        )

    # 3. device preprocessing alone, and preprocessing + hooked forward (every layer, mean
    # pooled, copied to the host), on one batch already uploaded: no decoding, no store
    group = upload(kept, dev)
    _sync(dev)
    reps = max(3, min(20, n // batch))
    with torch.inference_mode():
        device_preprocess(fast, group, dev, dt)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            pixels = device_preprocess(fast, group, dev, dt)
        _sync(dev)
        res["vit_preprocess_images_per_s"] = round(reps * batch / (time.perf_counter() - t0), 1)
        if fast and dev.type == "cuda":  # the direct antialiased 2-D filter, for comparison
            flat = torch.cat([g[0] for g in group])
            ih, iw = (int(v) for v in kept[0][1][0])
            x = flat[: batch * ih * iw * 3].view(batch, ih, iw, 3).permute(0, 3, 1, 2)

            def aa():
                return torch.nn.functional.interpolate(
                    x.float(), size=fast["size"][::-1], antialias=True,
                    mode={2: "bilinear", 3: "bicubic"}[fast["resample"]],
                ).round_().clamp_(0, 255)  # fmt: skip

            aa()
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(reps):
                aa()
            _sync(dev)
            res["vit_resize_images_per_s_interpolate_antialias"] = round(
                reps * batch / (time.perf_counter() - t0), 1
            )
        grid = token_grid(loaded, pixels)

        def reduce(h):
            return h[:, n_special_tokens(grid, h.shape[1]) :].mean(dim=1).float()

        with LayerTap(loaded, job.indices, reduce) as tap:
            tap.run(loaded.model, pixel_values=pixels)
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(reps):
                tap.run(loaded.model, pixel_values=device_preprocess(fast, group, dev, dt))
            _sync(dev)
            pf = reps * batch / (time.perf_counter() - t0)
    res["vit_preprocess_forward_images_per_s"] = round(pf, 1)
    res["vit_preprocess_forward_fraction_of_bare"] = round(pf / bare, 3)

    # 4. the whole pipeline without the store (loader, upload, preprocess, forward, copies)
    t0 = time.perf_counter()
    collected = []
    for a, b, arrays in job.batches(0, batch):
        collected.append((a, b, arrays))
    ns_s = time.perf_counter() - t0
    res["vit_images_per_s_without_store"] = round(n / ns_s, 1)

    # 5. the store alone: the same arrays written again from memory
    n_bytes = sum(x.nbytes for _, _, arrays in collected for x in arrays.values())
    replay = dataclasses.replace(job, batches=lambda start, bs: iter(collected))
    t0 = time.perf_counter()
    write_store(replay, root / "vit_replay.zarr")
    st = time.perf_counter() - t0
    res["vit_store_gb"] = round(n_bytes / 1e9, 3)
    res["vit_store_gb_per_s"] = round(n_bytes / 1e9 / st, 2)
    res["vit_store_images_per_s"] = round(n / st, 1)
    return res


def bench_llm(cfg, root: Path, device: str, dtype: str) -> dict:
    import pandas as pd
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignment.features import prepare
    from alignment.features.huggingface import resolve_device, resolve_dtype
    from alignment.features.store import write_store
    from alignment.features.text import _bos, plan_windows, tokenize_run_words
    from alignment.features.tiny import train_tokenizer
    from alignment.stimuli.narrative import generate_story

    words = []
    seed = 0
    while len(words) < cfg["n_words"]:
        words += " ".join(generate_story(200, random_state=seed)).split()
        seed += 1
    words = words[: cfg["n_words"]]
    path = root / "llm"
    tok = train_tokenizer([" ".join(words[i : i + 50]) for i in range(0, 5000, 50)], 1000)
    llm = dict(cfg["llm"])
    llm["vocab_size"] = max(llm["vocab_size"], len(tok))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**llm, max_position_embeddings=4096))
    n_params = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16 if dtype in ("auto", "bfloat16") else torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    table = pd.DataFrame({"word": words, "onset": np.arange(len(words)) * 0.4,
                          "offset": np.arange(len(words)) * 0.4 + 0.3, "run": "story"})  # fmt: skip
    context = cfg["context_words"]
    batch = cfg["llm_batch"]
    spec = {"source": str(path), "modality": "text", "context_words": context, "layers": "all",
            "batch_size": batch, "device": device, "dtype": dtype}  # fmt: skip
    job = prepare(spec, table, name="llm")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = job.loaded.model

    # the exact windows the extraction runs: token counts per window, BOS included
    _, last = tokenize_run_words(tok, words)
    first = np.r_[0, last[:-1] + 1]
    windows = plan_windows(["story"] * len(words), context, context // 2)
    n_bos = len(_bos(tok))
    lengths = [int(last[w.stop - 1] - first[w.start] + 1 + n_bos) for w in windows]
    n_tokens = sum(lengths)
    width = int(np.median(lengths))
    x = torch.randint(0, len(tok), (batch, width), device=dev)
    with torch.inference_mode():
        model(input_ids=x, use_cache=False)  # warm-up, before both timings
        _sync(dev)

    # the extraction without the store: forward, gather, copy to host. The first pass over
    # the windows is cold (each new window shape grows the CUDA caching allocator, page-locked
    # host buffers are allocated for the copies); timed alone it made "without the store"
    # look slower than with it. It is reported as such, and the comparison uses a warm pass
    # after the end-to-end run.
    def without_store():
        t0 = time.perf_counter()
        n_bytes = 0
        for _, _, arrays in job.batches(0, batch):
            n_bytes += sum(a.nbytes for a in arrays.values())
        return time.perf_counter() - t0, n_bytes

    cold_s, n_bytes = without_store()

    # end to end: words -> zarr store (after the cold pass, so warm as well)
    t0 = time.perf_counter()
    write_store(job, root / "llm.zarr")
    e2e_s = time.perf_counter() - t0
    extract_s, _ = without_store()

    with torch.inference_mode():
        n_iter = max(2, len(windows) // batch)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(n_iter):
            model(input_ids=x, use_cache=False)
        _sync(dev)
        bare_tokens_per_s = n_iter * batch * width / (time.perf_counter() - t0)
    e2e_tokens_per_s = n_tokens / e2e_s
    return {
        "llm_params_millions": round(n_params / 1e6, 1),
        "llm_words": len(words),
        "llm_context_words": context,
        "llm_forwards": len(windows),
        "llm_tokens": n_tokens,
        "llm_words_per_s_end_to_end": round(len(words) / e2e_s, 1),
        "llm_tokens_per_s_end_to_end": round(e2e_tokens_per_s, 1),
        "llm_tokens_per_s_bare_forward": round(bare_tokens_per_s, 1),
        "llm_fraction_of_bare": round(e2e_tokens_per_s / bare_tokens_per_s, 3),
        "llm_words_per_s_without_store": round(len(words) / extract_s, 1),
        "llm_fraction_of_bare_without_store": round(n_tokens / extract_s / bare_tokens_per_s, 3),
        "llm_words_per_s_without_store_first_pass": round(len(words) / cold_s, 1),
        "llm_store_seconds_beyond_extraction": round(e2e_s - extract_s, 2),
        "llm_store_gb": round(n_bytes / 1e9, 2),
        "llm_store_gb_per_s": round(n_bytes / 1e9 / e2e_s, 2),  # bytes over the e2e time
        "llm_dtype": str(dt).replace("torch.", ""),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--only", choices=["vit", "llm"])
    parser.add_argument(
        "--image-decoder",
        choices=["pil", "nvimgcodec"],
        default="pil",
        help="ViT: decode in CPU workers (pil) or on the GPU; nvimgcodec also times pil",
    )
    parser.add_argument("--tmp", default=None, help="folder for the images and stores")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = SCALES[args.scale]
    result = {"scale": args.scale, "device": args.device, "torch": torch.__version__,
              "cpus": _cpus()}  # fmt: skip
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
    try:  # decoding workers hand images over in shared memory
        import shutil

        result["shm_free_gb"] = round(shutil.disk_usage("/dev/shm").free / 1e9, 1)
    except OSError:
        pass
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        if args.only in (None, "vit"):
            (root / "v").mkdir()
            result.update(bench_vit(cfg, root / "v", args.device, args.dtype, args.image_decoder))
        if args.only in (None, "llm"):
            (root / "l").mkdir()
            result.update(bench_llm(cfg, root / "l", args.device, args.dtype))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
