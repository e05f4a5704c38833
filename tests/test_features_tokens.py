"""Patch tokens: (stimulus, token, unit) with the grid recorded, CLS/registers dropped, chunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _images import write_image_table

from alignment import dims
from alignment.features import extract_features
from alignment.io import read_zarr_attrs, read_zarr_layers, write_zarr_layers
from alignment.stimuli.images import load_images


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def image_table(tmp_path_factory):
    return write_image_table(tmp_path_factory.mktemp("token-images"), 6, random_state=3)


@pytest.fixture(scope="module")
def dinov2_registers(tmp_path_factory):
    """A tiny DINOv2 with 2 register tokens (1 CLS + 2 registers before the patches)."""
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    path = tmp_path_factory.mktemp("models") / "dinov2-reg"
    config = Dinov2WithRegistersConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_register_tokens=2,
    )  # fmt: skip
    torch.manual_seed(0)
    Dinov2WithRegistersModel(config).save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    ).save_pretrained(path)
    return path


def _forward(path, table, index):
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(path).eval()
    inputs = AutoImageProcessor.from_pretrained(path)(
        images=load_images(table["path"]), return_tensors="pt"
    )
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states[index].numpy()


def test_tokens_keep_the_patch_grid_and_drop_cls(tiny_vit, image_table, tmp_path):
    # on the CPU, like the float32 reference forward (device auto would run bf16 on a GPU)
    spec = {"source": str(tiny_vit), "modality": "image", "pooling": "tokens", "layers": [0, 2]}
    spec["device"] = "cpu"
    layers, attrs = extract_features(spec, image_table, name="tiny")
    arr = layers["layer_02"]
    assert arr.dims == (dims.STIMULUS, dims.TOKEN, dims.UNIT)
    assert arr.shape == (6, 16, 32) and arr.dtype == np.float32  # 32 px / 8 px patches = 4x4
    assert arr.attrs["token_grid"] == [4, 4] and attrs["token_grid"] == [4, 4]
    # (float32 sums in another order than the reference's on some CPUs: 1e-5 relative)
    np.testing.assert_allclose(arr.values, _forward(tiny_vit, image_table, 2)[:, 1:], atol=1e-4)
    # the mean over tokens is the `mean` pooling
    mean, _ = extract_features({**spec, "pooling": "mean"}, image_table)
    np.testing.assert_allclose(arr.values.mean(1), mean["layer_02"].values, atol=1e-5)

    write_zarr_layers(layers, tmp_path / "tok.zarr", attrs)
    back = read_zarr_layers(tmp_path / "tok.zarr")
    assert list(back) == ["layer_00", "layer_02"]
    got = back["layer_02"]
    assert got.dims == (dims.STIMULUS, dims.TOKEN, dims.UNIT) and got.dtype == np.float32
    assert list(got.attrs["token_grid"]) == [4, 4]
    assert list(got[dims.STIMULUS_ID].values) == list(image_table["stimulus_id"])
    np.testing.assert_array_equal(got.values, arr.values)
    assert read_zarr_attrs(tmp_path / "tok.zarr")["pooling"] == "tokens"


def test_tokens_in_float16_chunked_on_stimulus(tiny_vit, image_table, tmp_path):
    import zarr

    spec = {"source": str(tiny_vit), "modality": "image", "pooling": "tokens", "layers": [1]}
    layers, attrs = extract_features({**spec, "float16": True}, image_table)
    assert layers["layer_01"].dtype == np.float16 and attrs["dtype"] == "float16"
    write_zarr_layers(layers, tmp_path / "half.zarr", attrs)
    stored = zarr.open_group(str(tmp_path / "half.zarr"), mode="r")["layer_01/features"]
    assert stored.dtype == np.float16
    assert stored.chunks[1:] == (16, 32)  # whole stimuli per chunk
    back = read_zarr_layers(tmp_path / "half.zarr")["layer_01"]
    full, _ = extract_features(spec, image_table)
    np.testing.assert_allclose(back.values, full["layer_01"].values, rtol=2e-3, atol=2e-3)


def test_tokens_drop_register_tokens(dinov2_registers, image_table):
    spec = {"source": str(dinov2_registers), "modality": "image", "pooling": "tokens"}
    spec["device"] = "cpu"  # like the float32 reference forward
    layers, attrs = extract_features(spec, image_table)
    assert list(layers) == ["layer_00", "layer_01", "layer_02"]
    assert attrs["token_grid"] == [4, 4]
    h = _forward(dinov2_registers, image_table, 1)
    assert h.shape[1] == 1 + 2 + 16
    np.testing.assert_allclose(layers["layer_01"].values, h[:, 3:], atol=1e-4)


def test_device_side_preprocessing_equals_the_processor(tiny_vit, dinov2_registers, tmp_path):
    """Decode in workers, resize/normalise on the device: within one grey level of the
    Hugging Face processor, for photo-sized JPEGs of several sizes and a PNG."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from alignment.features.vision import (
        device_preprocess,
        fast_path,
        host_batches,
        n_loader_workers,
    )

    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate([(500, 375), (375, 500), (500, 375), (64, 48), (200, 200)]):
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(img) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(tmp_path / f"im{k}.{'png' if k == 4 else 'jpg'}")
        Image.fromarray(noisy).save(paths[-1])
    paths = [str(p) for p in paths]
    for size, resample in ((32, 2), (48, 3)):  # ViT (bilinear), SigLIP-like (bicubic)
        proc = AutoImageProcessor.from_pretrained(tiny_vit)
        proc.size, proc.resample = {"height": size, "width": size}, resample
        fast = fast_path(proc)
        assert fast is not None and fast["size"] == (size, size)
        want = proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
        for workers in (0, 2):  # in this process, and two forked decoding processes
            got = torch.cat([
                device_preprocess(fast, group, torch.device("cpu"), torch.float32)
                for _, _, group in host_batches(
                    paths, proc=proc, fast=fast, draft=False, batch_size=2, start=0,
                    n_workers=workers, device=torch.device("cpu"),
                )
            ])  # fmt: skip
            diff = (got - want["pixel_values"]).abs()
            assert diff.max() <= 1 / 255 / 0.5 + 1e-5  # one grey level (std 0.5)
            assert diff.mean() < 2e-3
    assert n_loader_workers(1) == 0 and n_loader_workers(3) == 3
    # processors that crop (DINOv2's BitImageProcessor) keep the processor path
    assert fast_path(AutoImageProcessor.from_pretrained(dinov2_registers)) is None
