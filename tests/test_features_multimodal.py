"""Multimodal LLMs from tiny random configs: token streams, prompts, the vision tower's layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _images import write_image_table

from alignment import dims
from alignment.features import extract_features
from alignment.features.tiny import IMAGE_TOKEN, build_tiny_idefics3, build_tiny_llava
from alignment.io import InputError
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


@pytest.fixture(scope="module")
def image_table(tmp_path_factory):
    return write_image_table(tmp_path_factory.mktemp("mllm-images"), 4, random_state=6)


@pytest.fixture(scope="module")
def mllms(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllms")
    return {
        "llava": build_tiny_llava(
            root / "llava", TEXTS, image_size=32, hidden_size=32, n_layers=2, vision_layers=2
        ),
        "idefics3": build_tiny_idefics3(root / "idefics3", TEXTS),
    }


def _reference(path, table, prompt, nested):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    images = load_images(table["path"])
    inputs = proc(text=[prompt] * len(images), images=[[i] for i in images] if nested else images,
                  return_tensors="pt", padding=True)  # fmt: skip
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return inputs, out, model


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_language_streams_match_output_hidden_states(mllms, image_table, family):
    prompt = f"{IMAGE_TOKEN} Describe the image."
    # on the CPU, like the float32 reference forwards (device auto runs bf16 on a GPU)
    spec = {"source": str(mllms[family]), "modality": "image", "prompt": prompt, "device": "cpu"}
    inputs, out, model = _reference(mllms[family], image_table, prompt, family == "idefics3")
    is_image = inputs["input_ids"] == model.config.image_token_id
    from transformers import AutoProcessor

    special_ids = AutoProcessor.from_pretrained(mllms[family]).tokenizer.all_special_ids
    n_image = int(is_image[0].sum())
    assert n_image > 0
    hs = out.hidden_states
    for pooling in ("image_tokens", "text_tokens", "last_token"):
        layers, attrs = extract_features({**spec, "pooling": pooling}, image_table)
        assert list(layers) == ["layer_00", "layer_01", "layer_02"]
        assert attrs["family"] == "mllm" and attrs["pooling"] == pooling
        assert attrs["prompt"] == prompt and attrs["n_image_tokens"] == n_image
        for k, arr in enumerate(layers.values()):
            assert arr.dims == (dims.STIMULUS, dims.UNIT) and arr.shape == (4, 32)
            h = hs[k]
            if pooling == "image_tokens":
                want = torch.stack([h[b, is_image[b]].mean(0) for b in range(4)])
            elif pooling == "text_tokens":  # attended, not image, not special (BOS, wrappers)
                special = torch.isin(inputs["input_ids"], torch.tensor(special_ids))
                text = (inputs["attention_mask"] == 1) & ~is_image & ~special
                want = torch.stack([h[b, text[b]].mean(0) for b in range(4)])
            else:
                want = h[:, -1]
            np.testing.assert_allclose(arr.values, want.numpy(), atol=1e-5)
    # the token streams differ from one another
    a, _ = extract_features({**spec, "pooling": "image_tokens", "layers": [2]}, image_table)
    b, _ = extract_features({**spec, "pooling": "text_tokens", "layers": [2]}, image_table)
    assert not np.allclose(a["layer_02"].values, b["layer_02"].values, atol=1e-3)


def test_prompts_change_features_and_keys(mllms, image_table):
    base = {"source": str(mllms["llava"]), "modality": "image", "layers": [-1], "device": "cpu"}
    one, a1 = extract_features(
        {**base, "prompt": f"{IMAGE_TOKEN} Describe the image."}, image_table
    )
    two, a2 = extract_features({**base, "prompt": f"{IMAGE_TOKEN} What colour is it?"}, image_table)
    assert a1["cache_key"] != a2["cache_key"]
    assert not np.allclose(one["layer_02"].values, two["layer_02"].values, atol=1e-3)
    # image tokens come before the text: causal attention keeps them prompt-independent
    i1, _ = extract_features({**base, "prompt": f"{IMAGE_TOKEN} Describe the image.",
                              "pooling": "image_tokens"}, image_table)  # fmt: skip
    i2, _ = extract_features({**base, "prompt": f"{IMAGE_TOKEN} What colour is it?",
                              "pooling": "image_tokens"}, image_table)  # fmt: skip
    np.testing.assert_allclose(i1["layer_02"].values, i2["layer_02"].values, atol=1e-5)
    with pytest.raises(InputError, match=r"no image placeholder.*'<image>'"):
        extract_features({**base, "prompt": "Describe the image."}, image_table)


def test_vision_tower_layers_are_a_separate_feature_set(mllms, image_table):
    spec = {"source": str(mllms["llava"]), "modality": "image", "stream": "vision"}
    spec["device"] = "cpu"
    layers, attrs = extract_features(spec, image_table)
    assert attrs["stream"] == "vision" and attrs["n_hidden_states"] == 3
    _, _, model = _reference(mllms["llava"], image_table, IMAGE_TOKEN, False)
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(mllms["llava"])
    pv = proc.image_processor(images=load_images(image_table["path"]), return_tensors="pt")
    with torch.no_grad():
        hs = model.model.vision_tower(pv["pixel_values"], output_hidden_states=True).hidden_states
    for k, arr in enumerate(layers.values()):
        np.testing.assert_allclose(arr.values, hs[k].mean(1).numpy(), atol=1e-5)


def test_untrained_mllm(mllms, image_table):
    spec = {"source": str(mllms["idefics3"]), "modality": "image", "layers": [1]}
    trained, t_attrs = extract_features(spec, image_table)
    rand, r_attrs = extract_features({**spec, "untrained": True, "seed": 4}, image_table)
    assert t_attrs["untrained"] is False and r_attrs["untrained"] is True
    assert not np.allclose(trained["layer_01"].values, rand["layer_01"].values, atol=1e-3)
