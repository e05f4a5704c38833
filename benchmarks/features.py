"""Feature-extraction throughput: end to end (files on disk -> zarr store) vs the bare forward.

1. A ViT-B/16-sized random model at 224 px: images/s from uint8 JPEG files on disk to the zarr
   store (decode, preprocess, forward with hooks on every layer, mean pooling, write), against
   the bare model forward on ready tensors at the same batch size.
2. A 1B-parameter-class random decoder (Llama architecture) on a generated narrative with
   ``context_words`` of context: words/s end to end, and the fraction of the bare forward's
   token throughput (same window shapes) that the extraction reaches.

``--scale small`` (default) runs tiny versions on the CPU in seconds; ``--scale full --device
cuda`` is the real measurement (H100: ViT-B/16 bf16, batch 256; 1.1B decoder, 20,000 words,
512 words of context). Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SCALES = {
    "small": {
        "vit": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=128, image_size=64, patch_size=16),
        "n_images": 64, "image_batch": 16, "file_size": 80,
        "llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=2000),
        "n_words": 1500, "context_words": 64, "llm_batch": 4,
    },
    "full": {
        "vit": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, image_size=224, patch_size=16),
        "n_images": 4096, "image_batch": 256, "file_size": 256,
        "llm": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                    num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
        "n_words": 20000, "context_words": 512, "llm_batch": 8,
    },
}  # fmt: skip


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_vit(cfg, root: Path, device: str, dtype: str) -> dict:
    import pandas as pd
    from PIL import Image
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from alignment.features import prepare
    from alignment.features.huggingface import resolve_device, resolve_dtype
    from alignment.features.store import write_store

    v = cfg["vit"]
    path = root / "vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(**v), add_pooling_layer=False).save_pretrained(path)
    size = v["image_size"]
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir()
    rows = []
    s = cfg["file_size"]
    base = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    for i in range(cfg["n_images"]):
        img = np.roll(base, i, axis=(0, 1))  # distinct files, cheap to make
        f = folder / f"im{i:05d}.jpg"
        Image.fromarray(img).save(f, quality=90)
        rows.append({"stimulus_id": f"im{i:05d}", "path": str(f)})
    table = pd.DataFrame(rows)
    batch = cfg["image_batch"]
    spec = {"source": str(path), "modality": "image", "pooling": "mean", "layers": "all",
            "batch_size": batch, "device": device, "dtype": dtype,
            "n_workers": os.cpu_count() or 4}  # fmt: skip

    # end to end: files on disk -> zarr store (model load excluded, timed separately)
    t0 = time.perf_counter()
    job = prepare(spec, table, name="vit")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_store(job, root / "vit.zarr")
    e2e_s = time.perf_counter() - t0

    # bare forward at the same batch size, on ready tensors already on the device
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = job.loaded.model
    pixels = torch.randn(batch, 3, size, size, device=dev, dtype=dt)
    with torch.inference_mode():
        for _ in range(2):
            model(pixel_values=pixels)
        _sync(dev)
        n_iter = max(3, cfg["n_images"] // batch)
        t0 = time.perf_counter()
        for _ in range(n_iter):
            model(pixel_values=pixels)
        _sync(dev)
        bare_s = (time.perf_counter() - t0) / (n_iter * batch)
    e2e = cfg["n_images"] / e2e_s
    bare = 1.0 / bare_s
    return {
        "vit_images_per_s_end_to_end": round(e2e, 1),
        "vit_images_per_s_bare_forward": round(bare, 1),
        "vit_fraction_of_bare": round(e2e / bare, 3),
        "vit_model_load_s": round(load_s, 2),
        "vit_batch": batch,
        "vit_layers": v["num_hidden_layers"] + 1,
    }


def bench_llm(cfg, root: Path, device: str, dtype: str) -> dict:
    import pandas as pd
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignment.features import prepare
    from alignment.features.huggingface import resolve_device, resolve_dtype
    from alignment.features.store import write_store
    from alignment.features.text import plan_windows
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
    t0 = time.perf_counter()
    write_store(job, root / "llm.zarr")
    e2e_s = time.perf_counter() - t0

    # tokens the extraction pushed through the model: every window, BOS included
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    tokens_per_word = len(ids) / len(words)
    windows = plan_windows(["story"] * len(words), context, context // 2)
    n_tokens = sum(int((w.stop - w.start) * tokens_per_word) + 1 for w in windows)
    width = int(context * tokens_per_word) + 1
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = job.loaded.model
    x = torch.randint(0, len(tok), (batch, width), device=dev)
    with torch.inference_mode():
        model(input_ids=x, use_cache=False)
        _sync(dev)
        n_iter = max(2, len(windows) // batch)
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
        "llm_words_per_s_end_to_end": round(len(words) / e2e_s, 1),
        "llm_tokens_per_s_end_to_end": round(e2e_tokens_per_s, 1),
        "llm_tokens_per_s_bare_forward": round(bare_tokens_per_s, 1),
        "llm_fraction_of_bare": round(e2e_tokens_per_s / bare_tokens_per_s, 3),
        "llm_dtype": str(dt).replace("torch.", ""),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--only", choices=["vit", "llm"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = SCALES[args.scale]
    result = {"scale": args.scale, "device": args.device, "torch": torch.__version__}
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.only in (None, "vit"):
            (root / "v").mkdir()
            result.update(bench_vit(cfg, root / "v", args.device, args.dtype))
        if args.only in (None, "llm"):
            (root / "l").mkdir()
            result.update(bench_llm(cfg, root / "l", args.device, args.dtype))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
