"""Generic Hugging Face adapter: every layer's hidden states for images, sentences and narratives.

Models load by local path or Hugging Face id through the same ``from_pretrained`` call, so a test
that saves a tiny model to a temporary folder exercises the code path real users take.
Layer ``layer_00`` is the embedding output; ``layer_NN`` is the output of block NN.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from alignment.io import InputError

log = logging.getLogger(__name__)


def layer_name(index: int) -> str:
    """Canonical name of hidden state ``index`` (0 = embeddings)."""
    return f"layer_{index:02d}"


def model_revision(source: str, model=None) -> str:
    """A revision string that changes when the weights change.

    For a local folder: a hash of its config and of the names and sizes of its weight files
    (cheap, unlike hashing gigabytes). For a hub model: the commit hash transformers resolved.
    """
    path = Path(source)
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(path.iterdir()):
            if f.name == "config.json":
                digest.update(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin", ".pt"):
                digest.update(f"{f.name}:{f.stat().st_size}".encode())
        return "local-" + digest.hexdigest()[:12]
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return commit or "unknown"


def load_model(source: str, revision: str | None = None):
    """Load a model (in eval mode) from a local folder or a Hugging Face id."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(source, revision=revision)
    except OSError as err:
        raise InputError(
            f"{source}: cannot load the model ({err}). Pass a local folder or a Hugging Face id "
            "available offline (HF_HUB_OFFLINE=1 is set in tests)."
        ) from err
    model.eval()
    return model


def _select(hidden_states, layers) -> dict[str, torch.Tensor]:
    n = len(hidden_states)
    indices = range(n) if layers in (None, "all") else list(layers)
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise InputError(
            f"layer index {bad} out of range: the model has {n} hidden states (0..{n - 1})"
        )
    return {layer_name(i % n): hidden_states[i] for i in indices}


def token_grid(model, pixel_values: torch.Tensor) -> tuple[int, int] | None:
    """(rows, columns) of the patch-token grid for the processed images, None if unknown.

    Computed from the processed pixel size, not ``config.image_size``: DINOv2's config says 518
    while its processor crops to 224.
    """
    cfg = getattr(model.config, "vision_config", model.config)
    patch = getattr(cfg, "patch_size", None)
    if isinstance(patch, list | tuple):
        patch = patch[0]
    if not patch:
        return None
    return int(pixel_values.shape[-2]) // patch, int(pixel_values.shape[-1]) // patch


def _n_special_tokens(grid, n_tokens: int) -> int:
    """Number of leading non-patch tokens (CLS, registers) in a ViT-like sequence."""
    if grid is None:
        return 1
    n_special = n_tokens - grid[0] * grid[1]
    if n_special < 0:
        raise InputError(
            f"{n_tokens} tokens but a {grid[0]}x{grid[1]} patch grid: cannot locate patch tokens"
        )
    return n_special


@torch.no_grad()
def image_features(
    source: str,
    images,
    *,
    pooling: str = "mean",
    layers="all",
    batch_size: int = 32,
    revision: str | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Layerwise features of images from a vision transformer.

    Parameters
    ----------
    source : str
        Local folder or Hugging Face id of a model with an image processor.
    images : list of PIL.Image
        RGB images.
    pooling : {"mean", "cls", "tokens"}
        ``mean`` averages the patch tokens (special tokens excluded); ``cls`` takes token 0;
        ``tokens`` keeps every patch token (CLS and register tokens dropped), row-major over
        the patch grid, giving (n_images, n_tokens, n_units) arrays.
    layers : "all" or list of int
        Hidden-state indices (0 = embeddings).
    batch_size : int
        Images per forward pass.
    revision : str, optional
        Hub revision.

    Returns
    -------
    features : dict of layer name to (n_images, n_units) float32 arrays
        ((n_images, n_tokens, n_units) for ``pooling="tokens"``)
    info : dict
        Provenance: source, revision, image_size, pooling, n_layers, and ``token_grid``
        ([rows, columns]) for ``tokens``.
    """
    from transformers import AutoImageProcessor

    if pooling not in ("mean", "cls", "tokens"):
        raise InputError(
            f"{source}: pooling {pooling!r} is not supported for images; use 'mean', 'cls' or "
            "'tokens'"
        )
    model = load_model(source, revision)
    processor = AutoImageProcessor.from_pretrained(source, revision=revision)
    chunks: dict[str, list[np.ndarray]] = {}
    for start in tqdm(range(0, len(images), batch_size), desc="image batches", unit="batch"):
        inputs = processor(images=images[start : start + batch_size], return_tensors="pt")
        out = model(**inputs, output_hidden_states=True)
        grid = token_grid(model, inputs["pixel_values"])
        for name, h in _select(out.hidden_states, layers).items():
            if pooling == "cls":
                pooled = h[:, 0]
            elif pooling == "tokens":
                if grid is None:
                    raise InputError(f"{source}: no patch_size in the config; cannot keep tokens")
                pooled = h[:, _n_special_tokens(grid, h.shape[1]) :]
            else:
                pooled = h[:, _n_special_tokens(grid, h.shape[1]) :].mean(dim=1)
            chunks.setdefault(name, []).append(pooled.float().numpy())
    features = {name: np.concatenate(parts) for name, parts in chunks.items()}
    size = inputs["pixel_values"].shape[-1]
    info = {
        "model_source": str(source),
        "model_revision": model_revision(source, model),
        "image_size": int(size),
        "pooling": pooling,
        "n_layers": len(features),
        "model_class": type(model).__name__,
    }
    if pooling == "tokens":
        info["token_grid"] = list(grid)
    return features, info


@torch.no_grad()
def word_features(
    source: str,
    words: list[str],
    runs: list[str],
    *,
    context_words: int = 50,
    layers="all",
    batch_size: int = 64,
    revision: str | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Contextual features of every word of a narrative, from a text transformer.

    Each word is encoded with up to ``context_words - 1`` preceding words of the same run (never
    later words, so no feature sees the future), and its feature is the mean of its sub-word
    tokens' hidden states.

    Parameters
    ----------
    source : str
        Local folder or Hugging Face id of a model with a fast tokenizer.
    words, runs : list of str
        The words in spoken order and the run (story) of each.
    context_words : int
        Words of context including the current one.
    layers, batch_size, revision
        As in :func:`image_features`.

    Returns
    -------
    features : dict of layer name to (n_words, n_units) float32 arrays
    info : dict
        Provenance: source, revision, context_words, n_layers.
    """
    from transformers import AutoTokenizer

    if len(words) != len(runs):
        raise InputError(f"{len(words)} words but {len(runs)} run labels")
    if context_words < 1:
        raise InputError(f"context_words must be >= 1, got {context_words}")
    model = load_model(source, revision)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    max_len = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
    windows = []
    for i in range(len(words)):
        start = i
        while start > 0 and i - start + 1 < context_words and runs[start - 1] == runs[i]:
            start -= 1
        windows.append(words[start : i + 1])
    chunks: dict[str, list[np.ndarray]] = {}
    for b in tqdm(range(0, len(windows), batch_size), desc="word batches", unit="batch"):
        batch = windows[b : b + batch_size]
        enc = tokenizer(
            batch,
            is_split_into_words=True,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_len,
        )
        # the window is truncated from the right by the tokenizer; keep the current (last) word
        # by checking it survived
        out = model(**enc, output_hidden_states=True)
        masks = []
        for k, window in enumerate(batch):
            ids = enc.word_ids(k)
            mask = torch.tensor([w == len(window) - 1 for w in ids], dtype=torch.float32)
            if mask.sum() == 0:
                raise InputError(
                    f"word {b + k} is past the model's {max_len}-token limit; lower context_words"
                )
            masks.append(mask / mask.sum())
        weights = torch.stack(masks)  # (batch, tokens)
        for name, h in _select(out.hidden_states, layers).items():
            chunks.setdefault(name, []).append(
                torch.einsum("bt,btu->bu", weights, h).float().numpy()
            )
    features = {name: np.concatenate(parts) for name, parts in chunks.items()}
    info = {
        "model_source": str(source),
        "model_revision": model_revision(source, model),
        "context_words": int(context_words),
        "n_layers": len(features),
        "model_class": type(model).__name__,
    }
    return features, info


def build_demo_vit(
    path: str | Path,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 96,
    n_layers: int = 6,
    init_range: float = 0.2,
    seed: int = 0,
) -> Path:
    """Build the demo's small, UNTRAINED ViT from a config with a fixed seed and save it.

    A larger-than-default initialisation scale keeps successive layers distinct, so a layer's
    features are not nearly collinear with its neighbours'. The saved config records
    ``untrained: true`` so outputs label it.
    """
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    model = ViTModel(config, add_pooling_layer=False)
    path = Path(path)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["untrained"] = True
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


def is_untrained(source: str) -> bool:
    """True when a local model's config marks it untrained (random initialisation)."""
    cfg = Path(source) / "config.json"
    return cfg.exists() and bool(json.loads(cfg.read_text()).get("untrained", False))
