"""Multimodal LLMs whose processors need a video processor (torchvision) to load through
AutoProcessor: LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL and SmolVLM, from tiny random configs.

Their processors are rebuilt from the image processor (PIL backend), the tokenizer and the saved
settings (alignment.features.multimodal.image_only_processor), with no torchvision anywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _images import write_image_table

from alignment import dims
from alignment.features import extract_features, tiny
from alignment.features.multimodal import image_only_processor
from alignment.stimuli.images import load_images
from alignment.stimuli.narrative import generate_story


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TEXTS = [*generate_story(80, random_state=0), "Describe the image.", "What colour is it?"]
QWEN = "<|vision_start|><|image_pad|><|vision_end|>"
# family: (builder, image placeholder, image tokens per 32 px image, model type)
FAMILIES = {
    "qwen2_vl": (tiny.build_tiny_qwen2_vl, QWEN, 4),  # 4x4 patches, merged 2x2
    "qwen2_5_vl": (lambda p, t: tiny.build_tiny_qwen2_vl(p, t, version="2.5"), QWEN, 4),
    # base image 4x4 + one 4x4 tile, unpadded, + 4 row newlines
    "llava_onevision": (tiny.build_tiny_llava_onevision, "<image>", 36),
    "smolvlm": (tiny.build_tiny_smolvlm, "<image>", 4),  # 4x4 patches, pixel shuffle 2
}


@pytest.fixture(scope="module")
def image_table(tmp_path_factory):
    return write_image_table(tmp_path_factory.mktemp("mllm-family-images"), 3, random_state=6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_streams_match_output_hidden_states(family, image_table, tmp_path):
    from transformers import AutoModelForImageTextToText

    build, placeholder, n_image = FAMILIES[family]
    path = build(tmp_path / family, TEXTS)
    prompt = f"{placeholder} Describe the image."
    # the reference: the processor's own inputs, the model's output_hidden_states
    proc = image_only_processor(str(path))
    assert proc.video_processor is None
    images = load_images(image_table["path"])
    nested = family == "smolvlm"
    inputs = proc(text=[prompt] * 3, images=[[i] for i in images] if nested else images,
                  return_tensors="pt", padding=True)  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.model_type == family
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    is_image = inputs["input_ids"] == model.config.image_token_id
    assert (is_image.sum(1) == n_image).all()

    # on the CPU, like the float32 reference forward (device auto runs bf16 on a GPU)
    spec = {"source": str(path), "modality": "image", "prompt": prompt, "device": "cpu"}
    for pooling in ("image_tokens", "last_token"):
        layers, attrs = extract_features({**spec, "pooling": pooling}, image_table, name=family)
        assert list(layers) == ["layer_00", "layer_01", "layer_02"]
        assert attrs["family"] == "mllm" and attrs["model_type"] == family
        assert attrs["pooling"] == pooling and attrs["n_image_tokens"] == n_image
        assert attrs["untrained"] is True  # built from a config: marked untrained
        for k, arr in enumerate(layers.values()):
            assert arr.dims == (dims.STIMULUS, dims.UNIT) and arr.shape == (3, 32)
            h = hs[k]
            want = (
                torch.stack([h[b, is_image[b]].mean(0) for b in range(3)])
                if pooling == "image_tokens"
                else h[:, -1]
            )
            np.testing.assert_allclose(arr.values, want.numpy(), atol=1e-4)
    # the vision tower's own layers: a separate feature set, one vector per image
    vision, v_attrs = extract_features({**spec, "stream": "vision"}, image_table, name=family)
    assert v_attrs["stream"] == "vision" and v_attrs["n_hidden_states"] == 3
    assert all(a.shape == (3, 32) for a in vision.values())
    assert not np.allclose(vision["layer_02"].values, layers["layer_02"].values, atol=1e-3)
