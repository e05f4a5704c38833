"""Multimodal LLMs (LLaVA, LLaVA-OneVision, Qwen2-VL / Qwen2.5-VL, Idefics3 / SmolVLM).

An image and an instruction prompt go in; the language model's hidden states come out for every
chosen layer, pooled over one token stream:

- ``image_tokens``: mean over the positions holding image tokens;
- ``text_tokens``: mean over the prompt's text positions (attended, not image, not special);
- ``last_token``: the last attended position (what the model would answer from).

``stream: vision`` gives the vision tower's own layers instead (mean over its tokens per
image), a separate feature set. The prompt is part of the spec and of the cache key; it must
hold the processor's image placeholder (e.g. ``<image>``, or for Qwen2-VL
``<|vision_start|><|image_pad|><|vision_end|>``).
"""

from __future__ import annotations

import json

import torch

from alignment.features.hooks import LayerTap
from alignment.io import InputError
from alignment.stimuli.images import load_images

MLLM_POOLINGS = ("image_tokens", "text_tokens", "last_token")
VISION_POOLINGS = ("mean",)


def _placeholder(processor) -> str:
    token = getattr(processor, "image_token", None) or "<image>"
    if token == "<|image_pad|>":  # Qwen2-VL wants the whole vision block
        return "<|vision_start|><|image_pad|><|vision_end|>"
    return token


def attach_processor(loaded, spec: dict, *, name: str = "model") -> None:
    """Load the processor and check the prompt (default: the image placeholder alone)."""
    from transformers import AutoProcessor

    try:
        loaded.processor = AutoProcessor.from_pretrained(spec["source"], revision=spec["revision"])
    except ImportError as err:  # Qwen2-VL, LLaVA-OneVision, SmolVLM: video processors
        raise InputError(
            f"model {name!r}: {spec['source']}: its processor needs a package that is not "
            f"installed ({str(err).splitlines()[0]}); on a GPU machine install torchvision "
            "matching your torch"
        ) from err
    except (OSError, ValueError) as err:
        raise InputError(
            f"model {name!r}: {spec['source']}: cannot load the processor ({err})"
        ) from err
    placeholder = _placeholder(loaded.processor)
    prompt = spec["prompt"]
    if prompt is None:
        prompt = placeholder
    token = getattr(loaded.processor, "image_token", None) or "<image>"
    if token not in prompt:
        raise InputError(
            f"model {name!r}: prompt {prompt!r} has no image placeholder; "
            f"{type(loaded.processor).__name__} needs {placeholder!r} where the image goes"
        )
    loaded.extra["prompt"] = prompt


def preprocessing(processor) -> str:
    """The image processor's settings as canonical JSON (part of the cache key)."""
    ip = getattr(processor, "image_processor", processor)
    d = ip.to_dict() if hasattr(ip, "to_dict") else {}
    return json.dumps(d, sort_keys=True, default=str)


def _image_token_id(loaded) -> int:
    cfg = loaded.model.config
    for key in ("image_token_id", "image_token_index"):
        if getattr(cfg, key, None) is not None:
            return int(getattr(cfg, key))
    raise InputError(f"{loaded.source}: the config names no image token id")


def image_prompt_batches(
    loaded, paths, *, prompt, pooling, stream, indices, batch_size, start=0, info=None
):
    """Yield ``(row_start, row_stop, {index: (n, units)})`` for images with one prompt."""
    prompt = loaded.extra.get("prompt", prompt)
    if stream == "language" and pooling not in MLLM_POOLINGS:
        raise InputError(
            f"{loaded.source}: pooling {pooling!r} is not supported for multimodal LLMs; use "
            f"{', '.join(MLLM_POOLINGS)}"
        )
    image_id = _image_token_id(loaded)
    tokenizer = getattr(loaded.processor, "tokenizer", None)
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    state: dict = {}

    def reduce_language(h):
        return torch.einsum("bt,btu->bu", state["w"], h.float())

    def reduce_vision(h):
        h = h.float()
        if h.dim() == 2:  # Qwen2-VL: (all patches, units) for the whole batch
            parts = torch.split(h, state["sizes"])
            return torch.stack([p.mean(0) for p in parts])
        return h.mean(1)

    reduce = reduce_vision if stream == "vision" else reduce_language
    with LayerTap(loaded, indices, reduce) as tap:
        for b in range(start, len(paths), batch_size):
            images = load_images(paths[b : b + batch_size])
            nested = loaded.model_type in ("idefics3", "smolvlm")  # a list of images per prompt
            inputs = loaded.processor(
                text=[prompt] * len(images),
                images=[[im] for im in images] if nested else images,
                return_tensors="pt",
                padding=True,
            )
            ids = inputs["input_ids"]
            attended = inputs["attention_mask"].bool()
            is_image = ids == image_id
            if pooling == "image_tokens":
                mask = is_image & attended
            elif pooling == "text_tokens":
                special = torch.zeros_like(attended)
                for sid in special_ids:
                    special |= ids == sid
                mask = attended & ~is_image & ~special
            else:
                mask = torch.zeros_like(attended)
                last = attended.long().cumsum(1).argmax(1)
                mask[torch.arange(len(images)), last] = True
            if stream == "language" and (mask.sum(1) == 0).any():
                raise InputError(f"{loaded.source}: prompt {prompt!r} has no {pooling}")
            w = mask.float()
            state["w"] = (w / w.sum(1, keepdim=True).clamp(min=1)).to(loaded.device)
            if "image_grid_thw" in inputs:
                thw = inputs["image_grid_thw"]
                state["sizes"] = [int(t * h * w) for t, h, w in thw.tolist()]
            inputs = {
                k: (
                    v.to(loaded.device, dtype=loaded.dtype)
                    if v.is_floating_point()
                    else v.to(loaded.device)
                )
                for k, v in inputs.items()
            }
            with torch.inference_mode():
                captured = tap.run(loaded.model, **inputs, use_cache=False)
            if info is not None:
                info["n_image_tokens"] = int(is_image[0].sum())
            yield b, b + len(images), {i: captured[i].numpy() for i in indices}
