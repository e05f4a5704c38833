"""Small random-weight models built offline from configs (demo and tests).

Nothing is downloaded: the tokenizer is a byte-pair model trained on the given texts, the
weights are drawn from the config's initialiser with a fixed seed, and everything is saved with
``save_pretrained`` so the pipeline loads it by path like any other model. The saved config
records ``untrained: true``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGE_TOKEN = "<image>"


def train_tokenizer(texts, vocab_size: int = 400, extra_special=()):
    """A Llama-style (metaspace BPE, BOS prepended) fast tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<unk>", "<s>", "</s>", "<pad>", *extra_special]
    tok.train_from_iterator(
        list(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    if extra_special:
        fast.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return fast


def _mark_untrained(path: Path) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["untrained"] = True
    (path / "config.json").write_text(json.dumps(cfg, indent=2))


def _text_config(vocab_size, hidden_size, n_layers, init_range):
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=init_range,
    )


def build_tiny_decoder(
    path, texts, *, hidden_size=64, n_layers=4, init_range=0.2, seed=0, vocab_size=400
) -> Path:
    """Save a small random Llama-architecture decoder LLM and its tokenizer to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = train_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(**_text_config(len(tok), hidden_size, n_layers, init_range))
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    _mark_untrained(path)
    return path


def build_tiny_llava(
    path,
    texts,
    *,
    image_size=64,
    patch_size=8,
    hidden_size=64,
    n_layers=4,
    vision_layers=2,
    init_range=0.2,
    seed=0,
    vocab_size=400,
) -> Path:
    """Save a small random LLaVA (CLIP vision tower + Llama) with its processor to ``path``."""
    import transformers as tf

    path = Path(path)
    tok = train_tokenizer(texts, vocab_size, extra_special=(IMAGE_TOKEN,))
    vision = tf.CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = tf.LlamaConfig(**_text_config(len(tok), hidden_size, n_layers, init_range))
    config = tf.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    tf.LlavaForConditionalGeneration(config).save_pretrained(path)
    processor = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(path)
    _mark_untrained(path)
    return path


def _idefics_like(path, texts, family, *, image_size, patch_size, hidden_size, n_layers, seed):
    """Save a small random Idefics3-architecture model (``family``: Idefics3 or SmolVLM) and
    return its tokenizer, image-processor settings and number of image tokens."""
    import transformers as tf

    specials = (IMAGE_TOKEN, "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
    tok = train_tokenizer(texts, 400, extra_special=specials)
    vision = dict(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size,
    )  # fmt: skip
    text = {"model_type": "llama", **_text_config(len(tok), hidden_size, n_layers, 0.02)}
    config = getattr(tf, f"{family}Config")(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        scale_factor=2,
    )
    torch.manual_seed(seed)
    getattr(tf, f"{family}ForConditionalGeneration")(config).save_pretrained(path)
    image_settings = dict(
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        do_image_splitting=False,
    )
    return tok, image_settings, (image_size // patch_size) ** 2 // 4


def build_tiny_idefics3(
    path, texts, *, image_size=32, patch_size=8, hidden_size=32, n_layers=2, seed=0
) -> Path:
    """Save a small random Idefics3 (SigLIP-style tower + Llama) with its processor."""
    import transformers as tf

    path = Path(path)
    tok, image_settings, n_tokens = _idefics_like(
        path, texts, "Idefics3", image_size=image_size, patch_size=patch_size,
        hidden_size=hidden_size, n_layers=n_layers, seed=seed,
    )  # fmt: skip
    ip = tf.Idefics3ImageProcessor(**image_settings)
    tf.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=n_tokens).save_pretrained(
        path
    )
    return path


def _save_image_only_processor(path: Path, processor_class: str, image_processor, tok, **settings):
    """Save the parts of a processor whose class needs a video processor (torchvision) to load.

    The image processor, the tokenizer and ``processor_config.json`` (class and settings); the
    pipeline rebuilds the processor from them (:func:`alignment.features.multimodal.
    image_only_processor`).
    """
    image_processor.save_pretrained(path)
    tok.save_pretrained(path)
    cfg = {"processor_class": processor_class, **settings}
    (path / "processor_config.json").write_text(json.dumps(cfg, indent=2))


QWEN_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")


def build_tiny_qwen2_vl(
    path, texts, *, version="2", image_size=32, hidden_size=32, n_layers=2, seed=0
) -> Path:
    """Save a small random Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``) to ``path``.

    Patch 8, merge 2: a 32 x 32 image is a 4 x 4 patch grid, 4 image tokens.
    """
    import transformers as tf

    path = Path(path)
    tok = train_tokenizer(texts, 400, extra_special=QWEN_TOKENS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    text = dict(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [2, 3, 3]},
    )  # fmt: skip
    vision = dict(depth=2, num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        vision.update(embed_dim=hidden_size, hidden_size=hidden_size, mlp_ratio=2)
        cfg_cls, model_cls, proc_cls = (
            tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, "Qwen2VLProcessor"
        )  # fmt: skip
    else:
        vision.update(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            out_hidden_size=hidden_size,
            fullatt_block_indexes=[1],
            window_size=16,
        )
        cfg_cls, model_cls, proc_cls = (
            tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor"
        )  # fmt: skip
    config = cfg_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(path)
    ip = tf.Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2,
        min_pixels=image_size * image_size, max_pixels=image_size * image_size,
    )  # fmt: skip
    _save_image_only_processor(path, proc_cls, ip, tok)
    _mark_untrained(path)
    return path


def build_tiny_llava_onevision(
    path, texts, *, image_size=32, patch_size=8, hidden_size=32, n_layers=2, seed=0
) -> Path:
    """Save a small random LLaVA-OneVision (SigLIP tower + Qwen2) with its processor's parts.

    One grid pinpoint equal to the image size: the base image and one tile, unpadded.
    """
    import transformers as tf

    path = Path(path)
    tok = train_tokenizer(texts, 400, extra_special=(IMAGE_TOKEN, "<video>"))
    vision = tf.SiglipVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size,
    )  # fmt: skip
    text = tf.Qwen2Config(**_text_config(len(tok), hidden_size, n_layers, 0.02))
    config = tf.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[image_size, image_size]],
        vision_aspect_ratio="anyres_max_1",
    )
    torch.manual_seed(seed)
    tf.LlavaOnevisionForConditionalGeneration(config).save_pretrained(path)
    ip = tf.LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=[[image_size, image_size]],
    )
    _save_image_only_processor(
        path, "LlavaOnevisionProcessor", ip, tok,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_1",
    )  # fmt: skip
    _mark_untrained(path)
    return path


def build_tiny_smolvlm(
    path, texts, *, image_size=32, patch_size=8, hidden_size=32, n_layers=2, seed=0
) -> Path:
    """Save a small random SmolVLM (SigLIP-style tower + Llama) with its processor's parts."""
    import transformers as tf

    path = Path(path)
    tok, image_settings, n_tokens = _idefics_like(
        path, texts, "SmolVLM", image_size=image_size, patch_size=patch_size,
        hidden_size=hidden_size, n_layers=n_layers, seed=seed,
    )  # fmt: skip
    ip = tf.SmolVLMImageProcessorPil(**image_settings)
    _save_image_only_processor(path, "SmolVLMProcessor", ip, tok, image_seq_len=n_tokens)
    _mark_untrained(path)
    return path
