"""The image loader's hand-over (decoding workers -> host batches) and the benchmark breakdown."""

import numpy as np
import pytest
import torch


@pytest.fixture()
def same_size_jpegs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    for k in range(6):
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((120, 90), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(img) + rng.normal(0, 8, (90, 120, 3)), 0, 255)
        paths.append(str(tmp_path / f"im{k}.jpg"))
        Image.fromarray(noisy.astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def test_one_size_batches_from_workers_equal_the_processor(tiny_vit, same_size_jpegs):
    """Sub-batches of one image size (the packed path, no per-image views) from two forked
    workers: the same pixels as in-process decoding, within one grey level of the processor;
    the loader reports its start-up."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from alignment.features.vision import ImageFiles, device_preprocess, fast_path, host_batches

    proc = AutoImageProcessor.from_pretrained(tiny_vit)
    proc.size = {"height": 32, "width": 32}
    fast = fast_path(proc)
    cpu = torch.device("cpu")
    flat, shapes = ImageFiles(same_size_jpegs, 3, proc, fast, False)[1]
    assert isinstance(shapes, np.ndarray) and shapes.tolist() == [[90, 120]] * 3
    direct = np.asarray(Image.open(same_size_jpegs[3]).convert("RGB"))
    np.testing.assert_array_equal(flat[: direct.size].numpy().reshape(direct.shape), direct)

    want = proc(images=[Image.open(p).convert("RGB") for p in same_size_jpegs],
                return_tensors="pt")["pixel_values"]  # fmt: skip
    got = {}
    for workers in (0, 2):
        info: dict = {}
        batches = list(host_batches(
            same_size_jpegs, proc=proc, fast=fast, draft=False, batch_size=4, start=0,
            n_workers=workers, device=cpu, info=info,
        ))  # fmt: skip
        assert [(a, b) for a, b, _ in batches] == [(0, 4), (4, 6)]
        # in process: one sub-batch per batch; two workers: two sub-batches of two images
        assert len(batches[0][2]) == (1 if workers == 0 else 2)
        assert info["decode_workers"] == workers
        assert 0 <= info["workers_start_s"] <= info["first_batch_s"]
        got[workers] = torch.cat([device_preprocess(fast, g, cpu, torch.float32)
                                  for _, _, g in batches])  # fmt: skip
    torch.testing.assert_close(got[0], got[2], rtol=0, atol=0)
    diff = (got[2] - want).abs()
    assert diff.max() <= 1 / 255 / 0.5 + 1e-5  # one grey level (std 0.5)
    assert diff.mean() < 2e-3


def test_benchmark_reports_where_vit_time_goes(tmp_path):
    """The benchmark's ViT breakdown: every stage alone, in the same run, consistent."""
    from benchmarks.features import SCALES, bench_vit

    cfg = {**SCALES["small"], "n_images": 16, "image_batch": 8, "photo_size": (80, 60)}
    r = bench_vit(cfg, tmp_path, "cpu", "float32")
    for key in (
        "vit_loader_images_per_s",
        "vit_preprocess_images_per_s",
        "vit_preprocess_forward_images_per_s",
        "vit_images_per_s_without_store",
        "vit_store_images_per_s",
        "vit_images_per_s_end_to_end",
        "vit_images_per_s_end_to_end_second_run",
        "vit_decode_ms_per_image_one_process",
    ):
        assert r[key] > 0, key  # fmt: skip
    assert r["vit_end_to_end_first_batch_s"] < r["vit_end_to_end_s"]
    # 3 layers x 16 images x 64 float32 units
    assert r["vit_store_gb"] == round(3 * 16 * 64 * 4 / 1e9, 3)
    # a stage alone is never slower than the pipeline that contains it (generous: CPU noise)
    assert r["vit_preprocess_forward_images_per_s"] > 0.5 * r["vit_images_per_s_without_store"]
    assert r["vit_bound_by"].rsplit(" (", 1)[0] in (
        "loader (decoding workers -> host batches)", "device preprocessing",
        "preprocessing + hooked forward", "store writes",
    )  # fmt: skip


@pytest.mark.parametrize("resample", [2, 3])
def test_device_resize_is_pils_resize(resample):
    """PIL's fixed-point two-pass resampling as matrix products: in float64 equal to PIL
    bit for bit (down, up, one axis only); in float32 at most one level, on few pixels."""
    from PIL import Image

    from alignment.features.vision import _resize, resize_pil

    rng = np.random.default_rng(resample)
    low = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((150, 113), Image.Resampling.BICUBIC)
    arr = np.clip(np.asarray(img) + rng.normal(0, 20, (113, 150, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    for w, h in ((48, 32), (224, 224), (150, 60), (17, 113)):
        want = np.asarray(img.resize((w, h), resample=resample)).astype(np.int64)
        exact = resize_pil(x, (h, w), resample, torch.float64)
        np.testing.assert_array_equal(exact[0].permute(1, 2, 0).numpy(), want)
        np.testing.assert_array_equal(
            _resize(x.double(), (113, 150), (h, w), {"resample": resample}), exact
        )
    want = np.asarray(img.resize((48, 32), resample))
    diff = np.abs(resize_pil(x, (32, 48), resample, torch.float32)[0].permute(1, 2, 0) - want)
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-2
    got = _resize(x, (113, 150), (32, 48), {"resample": resample})  # float32 on the CPU
    np.testing.assert_array_equal(got, resize_pil(x, (32, 48), resample, torch.float32))


def test_device_preprocessing_of_photos_is_the_processors(tiny_vit, tmp_path):
    """Photo-like JPEGs (500 x 375, bicubic as SigLIP): in float64 the device path gives the
    processor's pixel values, but for a rare grey level where Pillow's fixed-point rounding
    (which differs between Pillow builds) falls the other way."""
    from PIL import Image
    from transformers import AutoImageProcessor

    import alignment.features.vision as vision
    from benchmarks.features import synthetic_photo

    paths = [str(tmp_path / f"p{k}.jpg") for k in range(2)]
    for k, p in enumerate(paths):
        synthetic_photo(k).save(p, quality=90)
    proc = AutoImageProcessor.from_pretrained(tiny_vit)
    proc.size, proc.resample = {"height": 40, "width": 40}, 3
    fast = vision.fast_path(proc)
    want = proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    batches = vision.host_batches(
        paths, proc=proc, fast=fast, draft=False, batch_size=2, start=0, n_workers=0,
        device=torch.device("cpu"),
    )  # fmt: skip
    flat, _ = next(batches)[2][0]
    x = flat.view(2, 375, 500, 3).permute(0, 3, 1, 2)
    exact = vision.resize_pil(x, (40, 40), 3, torch.float64)
    got = (exact / 255 - 0.5) / 0.5
    levels = (got - want["pixel_values"]).abs() * 255 * 0.5  # in grey levels
    assert levels.max() <= 1 + 1e-4
    assert (levels > 1e-4).double().mean() < 0.005, "more than 1 value in 200 a grey level off"
    assert vision.preprocessing(proc).count("device-pil-weights") == 1


def test_workers_reuse_slots_without_overwriting_a_batch(tiny_vit, tmp_path):
    """Two forked workers, more sub-batches than ring slots: slots are reused, every batch
    (consumed before the next is asked for) holds its own images, and an image larger than a
    slot comes in a buffer of its own."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from alignment.features.vision import fast_path, host_batches

    rng = np.random.default_rng(2)
    paths, arrays = [], []
    for k in range(40):
        w, h = (48, 36) if k != 30 else (64, 48)  # image 30 does not fit a slot
        arrays.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(str(tmp_path / f"im{k}.png"))
        Image.fromarray(arrays[-1]).save(paths[-1])
    proc = AutoImageProcessor.from_pretrained(tiny_vit)
    fast = fast_path(proc)
    buffers, n = set(), 0
    for a, b, group in host_batches(
        paths, proc=proc, fast=fast, draft=False, batch_size=2, start=0, n_workers=2,
        device=torch.device("cpu"),
    ):  # fmt: skip
        assert len(group) == 2  # sub-batches of one image
        for k, (flat, shapes) in zip(range(a, b), group, strict=True):
            np.testing.assert_array_equal(flat.numpy().reshape(arrays[k].shape), arrays[k])
            assert shapes.tolist() == [list(arrays[k].shape[:2])]
            # a view of the ring's one storage, but image 30 (a buffer of its own)
            in_ring = flat.untyped_storage().nbytes() > flat.numel()
            assert in_ring == (k != 30)
            buffers.add(flat.data_ptr())
            n += 1
    assert n == 40
    assert len(buffers) < 39  # reused slots: at most workers x prefetch + 2
