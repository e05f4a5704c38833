"""Feature adapters: tiny models saved to a temp dir and loaded by path, and the random control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _images import write_image_table

from alignment import dims
from alignment.features import cache_key, extract_features, random_features
from alignment.io import InputError, read_zarr_attrs, read_zarr_layers, write_zarr_layers
from alignment.stimuli.narrative import generate_story, time_words


@pytest.fixture(scope="module")
def image_table(tmp_path_factory):
    return write_image_table(tmp_path_factory.mktemp("images"), 12, random_state=1)


def test_image_features_every_layer_keyed_by_id(tiny_vit, image_table):
    spec = {"source": str(tiny_vit), "modality": "image", "pooling": "mean"}
    layers, attrs = extract_features(spec, image_table, name="tiny")
    assert list(layers) == [f"layer_{i:02d}" for i in range(4)]  # embeddings + 3 blocks
    for arr in layers.values():
        assert arr.dims == (dims.STIMULUS, dims.UNIT)
        assert arr.shape == (12, 32)
        assert list(arr[dims.STIMULUS_ID].values) == list(image_table["stimulus_id"])
        assert np.isfinite(arr.values).all()
    assert attrs["untrained"] is True
    assert attrs["image_size"] == 32
    assert attrs["model_revision"].startswith("local-")
    # distinct layers are not copies of each other
    assert not np.allclose(layers["layer_01"].values, layers["layer_03"].values)


def test_image_features_match_a_direct_forward_pass(tiny_vit, image_table):
    import torch
    from transformers import AutoImageProcessor, AutoModel

    layers, _ = extract_features(
        {"source": str(tiny_vit), "modality": "image", "layers": [2], "device": "cpu"},
        image_table,
    )
    model = AutoModel.from_pretrained(tiny_vit).eval()
    from alignment.stimuli.images import load_images

    inputs = AutoImageProcessor.from_pretrained(tiny_vit)(
        images=load_images(image_table["path"]), return_tensors="pt"
    )
    with torch.no_grad():
        h = model(**inputs, output_hidden_states=True).hidden_states[2]
    np.testing.assert_allclose(
        layers["layer_02"].values, h[:, 1:].mean(1).numpy(), rtol=1e-4, atol=1e-5
    )


def test_cls_pooling_differs_and_cache_key_tracks_it(tiny_vit, image_table):
    mean, _ = extract_features(
        {"source": str(tiny_vit), "modality": "image", "layers": [1]}, image_table
    )
    cls, _ = extract_features(
        {"source": str(tiny_vit), "modality": "image", "layers": [1], "pooling": "cls"}, image_table
    )
    assert not np.allclose(mean["layer_01"].values, cls["layer_01"].values)
    base = {"source": "m", "modality": "image"}
    assert cache_key(base) != cache_key({**base, "pooling": "cls"})
    assert cache_key(base) != cache_key({**base, "revision": "abc"})
    assert cache_key(base) == cache_key({**base, "batch_size": 7})  # speed only, same numbers


def test_word_features_use_only_past_context(minilm_path):
    words = time_words(generate_story(4, random_state=2), run="r1")
    spec = {
        "source": minilm_path,
        "modality": "text",
        "context_words": 5,
        "layers": [0, 6],
        "device": "cpu",  # float32: the no-look-ahead check is to 1e-5
    }
    layers, attrs = extract_features(spec, words)
    assert list(layers) == ["layer_00", "layer_06"]
    arr = layers["layer_06"]
    assert arr.dims == (dims.WORD, dims.UNIT) and arr.shape == (len(words), 384)
    np.testing.assert_allclose(arr[dims.ONSET].values, words["onset"].to_numpy())
    assert attrs["untrained"] is False and attrs["context_words"] == 5
    # changing a LATER word leaves an earlier word's features unchanged (no look-ahead)
    changed = words.copy()
    changed.loc[len(words) - 1, "word"] = "zebra"
    other, _ = extract_features(spec, changed)
    np.testing.assert_allclose(other["layer_06"].values[:-1], arr.values[:-1], atol=1e-5)
    assert not np.allclose(other["layer_06"].values[-1], arr.values[-1])


def test_word_context_resets_at_run_boundaries(minilm_path):
    a = time_words(["The cat sat on the mat."], run="a")
    b = time_words(["The cat sat on the mat."], run="b")
    spec = {
        "source": minilm_path,
        "modality": "text",
        "context_words": 50,
        "layers": [3],
        "device": "cpu",
    }
    layers, _ = extract_features(spec, pd.concat([a, b], ignore_index=True))
    values = layers["layer_03"].values
    np.testing.assert_allclose(values[: len(a)], values[len(a) :], atol=1e-5)


def test_random_features_keyed_by_id_not_position():
    a = random_features(["x", "y", "z"], n_units=5, n_layers=2, seed=3)
    b = random_features(["z", "x"], n_units=5, n_layers=2, seed=3)
    np.testing.assert_array_equal(a["layer_00"][0], b["layer_00"][1])
    assert not np.allclose(a["layer_00"], a["layer_01"])


def test_zarr_roundtrip_keeps_labels(tmp_path, image_table):
    layers, attrs = extract_features(
        {"kind": "random", "modality": "image", "n_units": 4, "n_layers": 2},
        image_table,
        name="rand",
    )
    write_zarr_layers(layers, tmp_path / "f.zarr", attrs)
    back = read_zarr_layers(tmp_path / "f.zarr")
    assert list(back) == list(layers)
    np.testing.assert_array_equal(back["layer_01"].values, layers["layer_01"].values)
    assert list(back["layer_01"][dims.STIMULUS_ID].values) == list(image_table["stimulus_id"])
    assert read_zarr_attrs(tmp_path / "f.zarr")["model"] == "rand"
    assert not list(tmp_path.glob(".*tmp"))  # the temporary sibling is gone
    with pytest.raises(InputError, match="no layer"):
        read_zarr_layers(tmp_path / "f.zarr", layers=["layer_07"])


def test_bad_model_specs_fail_clearly(image_table, tmp_path):
    with pytest.raises(InputError, match="modality"):
        extract_features({"kind": "random", "modality": "audio"}, image_table)
    with pytest.raises(InputError, match="source"):
        extract_features({"modality": "image"}, image_table)
    with pytest.raises(InputError, match="cannot load the model"):
        extract_features({"source": str(tmp_path / "nowhere"), "modality": "image"}, image_table)


def test_layer_index_out_of_range_names_the_model_depth(tiny_vit, image_table):
    with pytest.raises(InputError, match=r"out of range: the model has 4 hidden states"):
        extract_features({"source": str(tiny_vit), "modality": "image", "layers": [9]}, image_table)
