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

Without torchvision, the processors of LLaVA-OneVision, Qwen2-VL / Qwen2.5-VL and SmolVLM do not
load through ``AutoProcessor`` (their video processors need it); :func:`image_only_processor`
rebuilds them from their image processor, tokenizer and settings (SmolVLM's also needs the small
``num2words`` package).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

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


def image_only_processor(source: str, revision=None):
    """The model's processor built from its parts, without a video processor.

    In transformers 5, the processors of LLaVA-OneVision, Qwen2-VL / Qwen2.5-VL and SmolVLM
    take a video processor, and every video processor needs torchvision (there is no CPU build
    of it; DESIGN.md section 8): ``AutoProcessor.from_pretrained`` raises ImportError, and even
    passing ``video_processor=None`` fails in ``ProcessorMixin.check_argument_for_proper_class``
    (it looks the expected class up in ``VIDEO_PROCESSOR_MAPPING``, a torchvision placeholder).
    Images never touch the video processor, so this builds the same processor class from the
    image processor (its PIL backend, which ``AutoImageProcessor`` falls back to), the tokenizer
    and the saved processor settings, with the video slot left empty. The image-token expansion
    is then the processor's own code, not a copy of it.
    """
    import transformers as tf
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(source)
    if not folder.is_dir():  # a hub id: resolve the cached snapshot folder
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, revision=revision, local_files_only=True))
    settings = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (folder / name).exists():
            d = json.loads((folder / name).read_text())
            if "processor_class" in d and name == "processor_config.json":
                settings = d
                break
            settings.setdefault("processor_class", d.get("processor_class"))
    cls_name = settings.get("processor_class")
    if not cls_name or not hasattr(tf, cls_name):
        raise InputError(f"{source}: cannot tell its processor class (processor_config.json)")
    base = getattr(tf, cls_name)

    class _ImageOnly(base):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    _ImageOnly.__name__ = _ImageOnly.__qualname__ = f"{cls_name}ImageOnly"
    image_processor = AutoImageProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    accepted = set(inspect.signature(base.__init__).parameters)
    kwargs = {k: v for k, v in settings.items() if k in accepted and not k.endswith("processor")}
    kwargs.pop("tokenizer", None)
    if getattr(tokenizer, "chat_template", None) and "chat_template" in accepted:
        kwargs.setdefault("chat_template", tokenizer.chat_template)
    return _ImageOnly(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs
    )


def attach_processor(loaded, spec: dict, *, name: str = "model") -> None:
    """Load the processor and check the prompt (default: the image placeholder alone)."""
    from transformers import AutoProcessor

    try:
        loaded.processor = AutoProcessor.from_pretrained(spec["source"], revision=spec["revision"])
    except ImportError as first:  # LLaVA-OneVision, Qwen2-VL, SmolVLM: video processors
        try:
            loaded.processor = image_only_processor(spec["source"], spec["revision"])
        except (ImportError, OSError, ValueError, TypeError) as err:
            raise InputError(
                f"model {name!r}: {spec['source']}: cannot build its processor without "
                f"torchvision ({str(first).splitlines()[0]}; then: {err})"
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


def _tiles_per_image(loaded, image_sizes) -> list[int]:
    """Crops per image that an anyres model (LLaVA-OneVision) sends through its tower."""
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        image_size_to_num_patches,
    )

    cfg = loaded.model.config
    return [
        image_size_to_num_patches(
            image_size=size, grid_pinpoints=cfg.image_grid_pinpoints,
            patch_size=cfg.vision_config.image_size,
        )
        for size in image_sizes.tolist()
    ]  # fmt: skip


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
        if "tiles" in state and h.shape[0] != len(state["tiles"]):
            # LLaVA-OneVision (anyres): each image is several crops; mean over all of them
            parts = torch.split(h, state["tiles"])
            return torch.stack([p.mean((0, 1)) for p in parts])
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
            if "image_sizes" in inputs and inputs["pixel_values"].dim() == 5:
                state["tiles"] = _tiles_per_image(loaded, inputs["image_sizes"])
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
