"""image_decoder: nvimgcodec (JPEG decoding on the GPU): clear errors anywhere; on a CUDA machine
with nvImageCodec, PIL's pixels (but for rare single grey levels) and the same features."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from alignment.features import extract_features
from alignment.features.gpu_jpeg import check_decoder
from alignment.io import InputError

HAS_NVIMGCODEC = importlib.util.find_spec("nvidia") is not None and (
    importlib.util.find_spec("nvidia.nvimgcodec") is not None
)
gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_NVIMGCODEC),
    reason="needs a CUDA device and nvImageCodec (nvidia-nvimgcodec-cu13 nvidia-nvjpeg)",
)
FAST = {"size": (32, 32), "resample": 3, "scale": 1 / 255, "mean": None, "std": None}
CUDA = torch.device("cuda")  # a device object only: nothing here touches a GPU


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Photo-like JPEGs of two sizes, a greyscale JPEG and a PNG: the stimulus table."""
    from benchmarks.features import synthetic_photo

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for k in range(7):
        img = synthetic_photo(k, *((500, 375) if k % 3 else (320, 240)))
        if k == 5:
            img = img.convert("L")
        paths.append(folder / (f"p{k}.png" if k == 6 else f"p{k}.jpg"))
        img.save(paths[-1], **({} if k == 6 else {"quality": 90}))
    return pd.DataFrame({"stimulus_id": [p.stem for p in paths], "path": [str(p) for p in paths]})


def test_unknown_decoder_names_the_choices():
    with pytest.raises(InputError, match="image_decoder 'nvjpeg' is unknown; use pil, nvimgcodec"):
        check_decoder("nvjpeg", fast=FAST, device=CUDA, jpeg_draft=False, source="m")


def test_gpu_decoder_on_the_cpu_fails_clearly(tiny_vit, photos):
    spec = {"source": str(tiny_vit), "modality": "image", "device": "cpu"}
    with pytest.raises(InputError, match="decodes on a CUDA device, but the model runs on cpu"):
        extract_features({**spec, "image_decoder": "nvimgcodec"}, photos)


def test_gpu_decoder_needs_a_device_resize_and_no_draft():
    with pytest.raises(InputError, match="crops, so use image_decoder: pil"):
        check_decoder("nvimgcodec", fast=None, device=CUDA, jpeg_draft=False, source="clip")
    with pytest.raises(InputError, match="jpeg_draft applies to image_decoder pil only"):
        check_decoder("nvimgcodec", fast=FAST, device=CUDA, jpeg_draft=True, source="vit")


def test_gpu_decoder_is_for_vision_models_only(minilm_path):
    words = pd.DataFrame({"stimulus_id": ["s0"], "sentence": ["A cat sat."]})
    spec = {"source": str(minilm_path), "modality": "text", "image_decoder": "nvimgcodec"}
    with pytest.raises(InputError, match="applies to vision transformers on images only"):
        extract_features(spec, words)


@pytest.mark.skipif(HAS_NVIMGCODEC, reason="nvImageCodec is installed")
def test_missing_nvimgcodec_says_what_to_install():
    with pytest.raises(InputError, match="pip install nvidia-nvimgcodec-cu"):
        check_decoder("nvimgcodec", fast=FAST, device=CUDA, jpeg_draft=False, source="vit")


@gpu
def test_gpu_decoded_pixels_are_pils(photos):
    """Baseline JPEGs within one grey level on < 0.1% of the values, the PNG exactly; batches
    in order, of mixed sizes, from a resumed start."""
    from PIL import Image

    from alignment.features.gpu_jpeg import gpu_decoded_batches

    paths = photos["path"].tolist()
    want = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    spans, got = [], []
    for a, b, group, event in gpu_decoded_batches(paths, batch_size=3, start=1, device=CUDA):
        event.synchronize()
        spans.append((a, b))
        for flat, shapes in group:
            flat, o = flat.cpu().numpy(), 0
            for h, w in shapes.tolist():
                got.append(flat[o : o + h * w * 3].reshape(h, w, 3))
                o += h * w * 3
    assert spans == [(1, 4), (4, 7)]
    for k, (g, w) in enumerate(zip(got, want[1:], strict=True), start=1):
        assert g.shape == w.shape, paths[k]
        diff = np.abs(g.astype(int) - w.astype(int))
        if paths[k].endswith(".png"):
            assert diff.max() == 0
        else:
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (paths[k], diff.mean())


@gpu
def test_gpu_decoded_features_equal_pils(tiny_vit, photos):
    spec = {"source": str(tiny_vit), "modality": "image", "device": "cuda", "dtype": "float32",
            "layers": [0, 3], "batch_size": 4}  # fmt: skip
    pil, attrs = extract_features(spec, photos)
    nv, nv_attrs = extract_features({**spec, "image_decoder": "nvimgcodec"}, photos)
    assert nv_attrs["cache_key"] != attrs["cache_key"]
    for layer in pil:
        np.testing.assert_allclose(nv[layer].values, pil[layer].values, rtol=1e-3, atol=1e-3)


@gpu
def test_an_unreadable_file_is_named(tiny_vit, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    table = pd.concat([photos, pd.DataFrame({"stimulus_id": ["broken"], "path": [str(bad)]})])
    spec = {"source": str(tiny_vit), "modality": "image", "device": "cuda", "image_decoder":
            "nvimgcodec"}  # fmt: skip
    with pytest.raises(InputError, match=r"broken\.jpg: cannot be read as an image"):
        extract_features(spec, table.reset_index(drop=True))
