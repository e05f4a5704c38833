"""Loading Hugging Face models by local path or id: families, revisions, untrained controls.

Models load by local path or Hugging Face id through the same ``from_pretrained`` call, so a test
that saves a tiny model to a temporary folder exercises the code path real users take.
Layer ``layer_00`` is the embedding output; ``layer_NN`` is the output of block NN (for decoder
LLMs the last one is after the final norm, as ``output_hidden_states`` gives it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignment.features.spec import layer_name  # noqa: F401  (re-exported)
from alignment.io import InputError

log = logging.getLogger(__name__)

# model_type -> family. Families: vision (ViT-like towers), encoder (BERT-like text encoders),
# decoder (causal LLMs), mllm (image + text in, language-model hidden states out).
FAMILIES = {
    "vit": "vision",
    "dinov2": "vision",
    "dinov2_with_registers": "vision",
    "clip": "vision",
    "clip_vision_model": "vision",
    "siglip": "vision",
    "siglip_vision_model": "vision",
    "bert": "encoder",
    "roberta": "encoder",
    "xlm-roberta": "encoder",
    "distilbert": "encoder",
    "mpnet": "encoder",
    "gpt2": "decoder",
    "llama": "decoder",
    "qwen2": "decoder",
    "qwen3": "decoder",
    "mistral": "decoder",
    "gemma": "decoder",
    "gemma2": "decoder",
    "gemma3_text": "decoder",
    "llava": "mllm",
    "llava_onevision": "mllm",
    "qwen2_vl": "mllm",
    "qwen2_5_vl": "mllm",
    "idefics3": "mllm",
    "smolvlm": "mllm",
}
# vision towers whose hidden_states[-1] is the last block's output (before the final norm); for
# every other family it is the model's last_hidden_state (after the final norm, if any)
_UNTIED_LAST = {"vision"}


def supported_architectures() -> str:
    """One line listing the supported model types by family."""
    by_family: dict[str, list[str]] = {}
    for model_type, fam in FAMILIES.items():
        by_family.setdefault(fam, []).append(model_type)
    return "; ".join(f"{fam}: {', '.join(types)}" for fam, types in by_family.items())


@dataclass
class Loaded:
    """A model ready for extraction, and what it resolved to."""

    source: str
    model: torch.nn.Module  # the module whose forward is run
    family: str
    model_type: str
    blocks: list  # the transformer blocks whose inputs/outputs are the hidden states
    final: torch.nn.Module  # module whose output[0] is the last hidden state
    final_is_block: bool
    device: torch.device
    dtype: torch.dtype
    revision: str
    untrained: bool
    processor: object = None
    tokenizer: object = None
    extra: dict = field(default_factory=dict)

    @property
    def n_hidden_states(self) -> int:
        return len(self.blocks) + 1


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: float32 on CPU, bfloat16 on GPU. Half precision on a CPU is refused."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _sampled_digest(f: Path, digest, full_below: int = 64 * 2**20, n_blocks: int = 16) -> None:
    size = f.stat().st_size
    digest.update(f"{f.name}:{size}".encode())
    with f.open("rb") as fh:
        if size <= full_below:
            for block in iter(lambda: fh.read(2**20), b""):
                digest.update(block)
            return
        # large weight files: evenly spaced 64 KiB blocks (any retraining changes them all)
        for k in range(n_blocks):
            fh.seek(k * (size - 2**16) // (n_blocks - 1))
            digest.update(fh.read(2**16))


def model_revision(source: str, model=None) -> str:
    """A revision string that changes when the weights change.

    For a Hugging Face cache snapshot folder: its commit hash. For any other local folder: a
    content hash (every file up to 64 MiB in full, larger weight files by size and 16 evenly
    spaced 64 KiB blocks). For a hub id: the commit hash transformers resolved.
    """
    path = Path(source)
    if path.is_dir():
        resolved = path.resolve()
        if resolved.parent.name == "snapshots" and len(resolved.name) == 40:
            return resolved.name
        digest = hashlib.sha256()
        for f in sorted(p for p in resolved.rglob("*") if p.is_file()):
            _sampled_digest(f, digest)
        return "local-" + digest.hexdigest()[:12]
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return commit or "unknown"


def _load_config(source: str, revision: str | None, name: str):
    from transformers import AutoConfig

    local = Path(source).is_dir()
    if not local and source.startswith((".", "/", "~")):
        raise InputError(f"model {name!r}: {source}: cannot load the model: no such folder")
    try:
        return AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if offline and not local:
            raise InputError(
                f"model {name!r}: {source}: cannot load the model: it is not in the local Hugging "
                "Face cache and HF_HUB_OFFLINE is set; download it first (e.g. `hf download "
                f"{source}`) or pass a local folder"
            ) from err
        if "model_type" in str(err) or "Unrecognized model" in str(err):
            raise InputError(
                f"model {name!r}: {source}: unsupported architecture ({err}); supported: "
                f"{supported_architectures()}"
            ) from err
        raise InputError(
            f"model {name!r}: {source}: cannot load the model ({err}). Pass a local folder or a "
            "Hugging Face id available offline."
        ) from err


def _find_blocks(module: torch.nn.Module, n_blocks: int) -> list:
    """The ModuleList of ``n_blocks`` transformer blocks (preferring the shallowest)."""
    candidates = [
        (name.count("."), name, m)
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.ModuleList)
        and len(m) == n_blocks
        and name.split(".")[-1] in ("layer", "layers", "h", "blocks")
    ]
    if not candidates:
        raise InputError(
            f"{type(module).__name__}: cannot find its {n_blocks} transformer blocks; supported: "
            f"{supported_architectures()}"
        )
    return list(min(candidates, key=lambda c: (c[0], c[1]))[2])


def _model_class(family: str, model_type: str):
    import transformers as tf

    if model_type in ("clip", "clip_vision_model"):
        return tf.CLIPVisionModel
    if model_type in ("siglip", "siglip_vision_model"):
        return tf.SiglipVisionModel
    if family == "mllm":
        return tf.AutoModelForImageTextToText
    return tf.AutoModel


def load(
    source: str,
    *,
    revision: str | None = None,
    untrained: bool = False,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    name: str = "model",
    stream: str = "language",
) -> Loaded:
    """Load a supported model for extraction.

    Parameters
    ----------
    source : str
        Local folder or Hugging Face id (offline: it must be in the local cache).
    revision : str, optional
        Hub revision.
    untrained : bool
        Build the same architecture from its config with random weights (seeded by ``seed``):
        the untrained control.
    device, dtype : str
        ``auto`` = CUDA when present, bfloat16 there and float32 on CPU.
    name : str
        The model's name in the config, for error messages.
    stream : {"language", "vision"}
        For multimodal LLMs: the language model's layers, or the vision tower's own layers.

    Raises
    ------
    InputError
        Naming the model and the problem: not available offline, unsupported architecture
        (listing the supported ones), unloadable weights.
    """
    config = _load_config(source, revision, name)
    model_type = getattr(config, "model_type", "")
    family = FAMILIES.get(model_type)
    if family is None:
        raise InputError(
            f"model {name!r}: {source}: unsupported architecture {model_type!r}; supported: "
            f"{supported_architectures()}"
        )
    cls = _model_class(family, model_type)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if family == "vision" and model_type in ("clip", "siglip"):
        config = config.vision_config
    try:
        if untrained:
            torch.manual_seed(int(seed))
            model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        else:
            model = cls.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise InputError(f"model {name!r}: {source}: cannot load the model ({err})") from err
    model = model.to(device=dev, dtype=dt).eval()
    revision_str = model_revision(source, model)
    if untrained:
        revision_str = f"{revision_str}+untrained-seed{int(seed)}"

    extra: dict = {}
    if family == "mllm":
        base = getattr(model, "model", model)
        lm = getattr(base, "language_model", None) or getattr(base, "text_model", None)
        tower = (
            getattr(base, "vision_tower", None)
            or getattr(base, "visual", None)
            or getattr(base, "vision_model", None)
        )
        extra.update(language_model=lm, vision_tower=tower, base=base)
        if stream == "vision":
            vcfg = config.vision_config
            n = getattr(vcfg, "num_hidden_layers", None) or getattr(vcfg, "depth", None)
            blocks = _find_blocks(tower, n)
            final, final_is_block = blocks[-1], True
        else:
            tcfg = getattr(config, "text_config", config)
            blocks = _find_blocks(lm, tcfg.num_hidden_layers)
            final, final_is_block = lm, False
    else:
        cfg = model.config
        n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
        blocks = _find_blocks(model, n)
        if family in _UNTIED_LAST:
            final, final_is_block = blocks[-1], True
        else:
            final, final_is_block = model, False
    return Loaded(
        source=str(source),
        model=model,
        family=family,
        model_type=model_type,
        blocks=blocks,
        final=final,
        final_is_block=final_is_block,
        device=dev,
        dtype=dt,
        revision=revision_str,
        untrained=bool(untrained) or is_untrained(source),
        extra=extra,
    )


def load_model(source: str, revision: str | None = None):
    """Load a model (in eval mode) from a local folder or a Hugging Face id."""
    return load(source, revision=revision).model


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
