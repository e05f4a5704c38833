"""Every model family from a tiny random config, saved to a temp dir and loaded by path.

Decoder LLMs (GPT-2, Llama, Qwen2, Qwen3, Mistral, Gemma) on narratives and sentences, vision
towers (CLIP, SigLIP), the untrained control, relative depths and the cache key.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _images import write_image_table

from alignment import dims
from alignment.features import cache_key, extract_features, resolve_layers
from alignment.features.text import plan_windows
from alignment.io import InputError
from alignment.stimuli.images import load_images
from alignment.stimuli.narrative import generate_story, time_words


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


STORY = generate_story(120, random_state=0)


def _tokenizer(style: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "bytelevel":  # GPT-2: no BOS added, spaces inside tokens
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|endoftext|>"],
        )
        tok.train_from_iterator(STORY, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
    # Llama/Gemma style: metaspace pieces and a BOS token prepended
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        STORY, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def _decoder_config(model_type: str):
    import transformers as tf

    common = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=512)  # fmt: skip
    if model_type == "gpt2":
        return tf.GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=512)
    if model_type == "llama":
        return tf.LlamaConfig(**common, num_key_value_heads=1)
    if model_type == "qwen2":
        return tf.Qwen2Config(**common, num_key_value_heads=1)
    if model_type == "qwen3":
        return tf.Qwen3Config(**common, num_key_value_heads=1, head_dim=16)
    if model_type == "mistral":
        return tf.MistralConfig(**common, num_key_value_heads=1)
    if model_type == "gemma":
        return tf.GemmaConfig(**common, num_key_value_heads=1, head_dim=16)
    raise ValueError(model_type)


DECODERS = ["gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma"]


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """Tiny decoder LLMs with tokenizers, saved to temp dirs."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("decoders")
    out = {}
    for model_type in DECODERS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_decoder_config(model_type))
        model.save_pretrained(root / model_type)
        _tokenizer("bytelevel" if model_type == "gpt2" else "metaspace").save_pretrained(
            root / model_type
        )
        out[model_type] = root / model_type
    return out


@pytest.fixture(scope="module")
def words():
    a = time_words(STORY[:2], run="a", random_state=0)
    b = time_words(STORY[2:3], run="b", random_state=1)
    return pd.concat([a, b], ignore_index=True)


def _per_word_reference(path, words, context, stride):
    """One forward per word over exactly the words its window gives it (the slow way)."""
    from transformers import AutoModel, AutoTokenizer

    from alignment.features.text import _bos, tokenize_run_words

    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    wl, runs = words["word"].tolist(), words["run"].tolist()
    ids_of, first_last = {}, {}
    for run in dict.fromkeys(runs):
        idx = [i for i, r in enumerate(runs) if r == run]
        ids, last = tokenize_run_words(tok, [wl[i] for i in idx])
        ids_of[run] = ids
        for k, i in enumerate(idx):
            first_last[i] = (0 if k == 0 else last[k - 1] + 1, last[k], idx[0])
    out = np.zeros((3, len(wl), 32), np.float32)
    for w in plan_windows(runs, context, stride):
        for i in range(w.read_from, w.stop):
            run0 = first_last[i][2]
            t0 = first_last[w.start][0] if w.start > run0 else 0
            seq = _bos(tok) + ids_of[runs[i]][t0 : first_last[i][1] + 1]
            with torch.no_grad():
                hs = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
            out[:, i] = np.stack([h[0, -1].numpy() for h in hs])
    return out


@pytest.mark.parametrize("model_type", DECODERS)
def test_decoder_windows_equal_per_word_forwards(decoders, words, model_type):
    spec = {"source": str(decoders[model_type]), "modality": "text", "context_words": 8,
            "window_stride_words": 3, "batch_size": 4, "device": "cpu"}  # fmt: skip
    layers, attrs = extract_features(spec, words, name=model_type)
    assert list(layers) == ["layer_00", "layer_01", "layer_02"]
    assert attrs["n_hidden_states"] == 3 and attrs["family"] == "decoder"
    assert attrs["model_type"] == model_type and attrs["untrained"] is False
    arr = layers["layer_02"]
    assert arr.dims == (dims.WORD, dims.UNIT) and arr.shape == (len(words), 32)
    assert float(arr["relative_depth"]) == 1.0 and int(arr["layer_index"]) == 2
    ctx = arr["n_context_words"].values
    in_run = words.groupby("run").cumcount().to_numpy()  # words before this one in its run
    assert ctx.max() == 8 and (ctx <= in_run + 1).all()  # never across a run boundary
    assert (ctx[in_run >= 8] >= 8 - 3 + 1).all()  # between window - stride + 1 and window
    reference = _per_word_reference(decoders[model_type], words, 8, 3)
    for k, layer in enumerate(layers.values()):
        np.testing.assert_allclose(layer.values, reference[k], rtol=1e-4, atol=1e-4)


def test_decoder_never_sees_later_words(decoders, words):
    spec = {"source": str(decoders["llama"]), "modality": "text", "context_words": 6}
    layers, _ = extract_features(spec, words)
    changed = words.copy()
    k = 12
    changed.loc[k, "word"] = "zebra"
    other, _ = extract_features(spec, changed)
    for name in layers:
        np.testing.assert_allclose(other[name].values[:k], layers[name].values[:k], atol=1e-6)
    assert not np.allclose(other["layer_02"].values[k], layers["layer_02"].values[k])


def test_windows_cost_tens_of_forwards_for_long_stories():
    windows = plan_windows(["story"] * 10_000, 512, 256)
    assert len(windows) == 39
    read = np.concatenate([np.arange(w.read_from, w.stop) for w in windows])
    np.testing.assert_array_equal(read, np.arange(10_000))  # every word once, in order
    assert all(w.stop - w.start <= 512 for w in windows)


def test_sentences_last_and_mean(decoders, minilm_path):
    from transformers import AutoModel, AutoTokenizer

    table = pd.DataFrame({"stimulus_id": ["s1", "s2", "s3"], "sentence": STORY[:3]})
    path = decoders["qwen2"]
    layers, attrs = extract_features({"source": str(path), "modality": "text"}, table)
    assert attrs["pooling"] == "last" and layers["layer_02"].shape == (3, 32)
    assert list(layers["layer_01"][dims.STIMULUS_ID].values) == ["s1", "s2", "s3"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        h = model(**tok(STORY[1], return_tensors="pt"), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(layers["layer_02"].values[1], h[2][0, -1].numpy(), atol=1e-5)
    mean, _ = extract_features({"source": str(path), "modality": "text", "pooling": "mean"}, table)
    np.testing.assert_allclose(mean["layer_01"].values[1], h[1][0, 1:].mean(0).numpy(), atol=1e-5)
    # encoder LMs read sentences too (mean over non-special tokens by default)
    enc, attrs = extract_features({"source": minilm_path, "modality": "text", "layers": [6]}, table)
    assert enc["layer_06"].shape == (3, 384) and attrs["family"] == "encoder"
    with pytest.raises(InputError, match="empty sentence"):
        bad = pd.DataFrame({"stimulus_id": ["x"], "sentence": ["  "]})
        extract_features({"source": str(path), "modality": "text"}, bad)


@pytest.fixture(scope="module")
def image_table(tmp_path_factory):
    return write_image_table(tmp_path_factory.mktemp("family-images"), 5, random_state=4)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """Tiny CLIP and SigLIP vision towers with their image processors."""
    import transformers as tf

    root = tmp_path_factory.mktemp("towers")
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    tf.CLIPVisionModel(tf.CLIPVisionConfig(**common)).save_pretrained(root / "clip")
    tf.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "clip")
    tf.SiglipVisionModel(tf.SiglipVisionConfig(**common)).save_pretrained(root / "siglip")
    tf.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    return {"clip": root / "clip", "siglip": root / "siglip"}


@pytest.mark.parametrize("tower,n_special", [("clip", 1), ("siglip", 0)])
def test_vision_towers_pool_like_output_hidden_states(towers, image_table, tower, n_special):
    from transformers import AutoImageProcessor, AutoModel

    path = towers[tower]
    model = AutoModel.from_pretrained(path).eval()
    inputs = AutoImageProcessor.from_pretrained(path)(
        images=load_images(image_table["path"]), return_tensors="pt"
    )
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    spec = {"source": str(path), "modality": "image", "pooling": "tokens", "device": "cpu"}
    tokens, attrs = extract_features(spec, image_table)
    assert attrs["family"] == "vision" and attrs["token_grid"] == [4, 4]
    for k, name in enumerate(tokens):  # hooks == output_hidden_states, every layer
        np.testing.assert_allclose(tokens[name].values, hs[k][:, n_special:].numpy(), atol=1e-5)
    mean, _ = extract_features({**spec, "pooling": "mean"}, image_table)
    np.testing.assert_allclose(mean["layer_02"].values, hs[2][:, n_special:].mean(1), atol=1e-5)
    if n_special:
        cls, _ = extract_features({**spec, "pooling": "cls"}, image_table)
        np.testing.assert_allclose(cls["layer_01"].values, hs[1][:, 0].numpy(), atol=1e-5)
    else:
        with pytest.raises(InputError, match="no CLS token"):
            extract_features({**spec, "pooling": "cls"}, image_table)


@pytest.mark.parametrize("family", ["decoder", "encoder", "vision"])
def test_untrained_control_rebuilds_the_architecture(
    family, decoders, minilm_path, towers, words, image_table
):
    source, stimuli = {
        "decoder": (str(decoders["gpt2"]), words.iloc[:12]),
        "encoder": (minilm_path, words.iloc[:6]),
        "vision": (str(towers["clip"]), image_table),
    }[family]
    modality = "image" if family == "vision" else "text"
    spec = {"source": source, "modality": modality, "layers": [-1], "context_words": 4}
    trained, t_attrs = extract_features(spec, stimuli)
    rand, r_attrs = extract_features({**spec, "untrained": True, "seed": 1}, stimuli)
    again, _ = extract_features({**spec, "untrained": True, "seed": 1}, stimuli)
    other, _ = extract_features({**spec, "untrained": True, "seed": 2}, stimuli)
    (name,) = trained
    assert t_attrs["untrained"] is False and r_attrs["untrained"] is True
    assert r_attrs["model_revision"].endswith("+untrained-seed1")
    assert trained[name].shape == rand[name].shape
    assert not np.allclose(trained[name].values, rand[name].values, atol=1e-3)
    np.testing.assert_array_equal(rand[name].values, again[name].values)
    assert not np.allclose(rand[name].values, other[name].values, atol=1e-3)
    assert r_attrs["cache_key"] != t_attrs["cache_key"]


def test_relative_depths_pick_layers_and_are_stored(tiny_vit, image_table):
    assert resolve_layers([0.0, 0.5, 1.0], 13) == [0, 6, 12]
    assert resolve_layers([0, 0.5, 1], 5) == [0, 2, 4]  # any float: all relative
    assert resolve_layers("all", 3) == [0, 1, 2] and resolve_layers([-1, 0], 3) == [0, 2]
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        resolve_layers([0.5, 1.5], 5)
    spec = {"source": str(tiny_vit), "modality": "image", "layers": [0.0, 0.5, 1.0]}
    layers, attrs = extract_features(spec, image_table)  # 4 hidden states: 0, round(1.5), 3
    assert list(layers) == ["layer_00", "layer_02", "layer_03"]
    assert attrs["n_hidden_states"] == 4
    depths = [float(a["relative_depth"]) for a in layers.values()]
    np.testing.assert_allclose(depths, [0.0, 2 / 3, 1.0])
    assert [int(a["layer_index"]) for a in layers.values()] == [0, 2, 3]


def test_cache_key_tracks_every_field_but_batch_size():
    base = {"source": "m", "modality": "image"}
    resolved = {"revision": "abc", "dtype": "float32", "preprocessing": "{size: 224}"}
    key = cache_key(base, resolved)
    assert key == cache_key({**base, "batch_size": 7, "device": "cpu"}, resolved)
    # descriptive entries (for the reports) change no number, so not the key either
    labels = {"family": "llama", "params": 1.1e9, "instruction_tuned": True, "trained": False}
    assert key == cache_key({**base, **labels}, resolved)
    assert cache_key({**base, "family": "qwen"}, resolved) == key
    changes = {"source": "n", "revision": "v2", "pooling": "cls", "prompt": "Describe.",
               "context_words": 9, "window_stride_words": 2, "layers": [0, 1], "untrained": True,
               "seed": 3, "image_size": 96, "dtype": "bfloat16", "float16": True,
               "stream": "vision", "jpeg_draft": True, "kind": "random", "modality": "text",
               "n_units": 5, "n_layers": 2, "image_decoder": "nvimgcodec"}  # fmt: skip
    for field, value in changes.items():
        assert cache_key({**base, field: value}, resolved) != key, field
    for field, value in {"revision": "def", "dtype": "bfloat16", "preprocessing": "{}"}.items():
        assert cache_key(base, {**resolved, field: value}) != key, field
    # the workflow passes the spec without its descriptive and speed entries to the features
    # rule, and the speed entries apart (a resource, so changing them reruns no job)
    from alignment.config import model_extraction_spec, model_speed_spec

    spec = {**base, "prompt": "<image> Hi", "batch_size": 4, "device": "cpu", **labels}
    assert model_extraction_spec(spec) == {**base, "prompt": "<image> Hi"}
    assert model_speed_spec(spec) == {"batch_size": 4, "device": "cpu"}
