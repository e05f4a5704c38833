"""Errors name the model and the problem."""

from __future__ import annotations

import pandas as pd
import pytest

from alignment.features import extract_features
from alignment.io import InputError


def test_id_missing_from_the_offline_cache_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    table = pd.DataFrame({"stimulus_id": ["a"], "sentence": ["A cat."]})
    spec = {"source": "no-such-org/no-such-model", "modality": "text"}
    with pytest.raises(
        InputError, match=r"model 'lm'.*no-such-org/no-such-model.*local Hugging Face"
    ):
        extract_features(spec, table, name="lm")


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=32, vocab_size=50).save_pretrained(
        tmp_path / "t5"
    )
    table = pd.DataFrame({"stimulus_id": ["a"], "sentence": ["A cat."]})
    with pytest.raises(
        InputError, match=r"model 't5'.*unsupported architecture 't5'.*decoder: gpt2"
    ):
        extract_features({"source": str(tmp_path / "t5"), "modality": "text"}, table, name="t5")


@pytest.mark.parametrize("n_workers", [1, 2])  # in this process; in forked decoding workers
def test_unreadable_image_is_named(tiny_vit, tmp_path, n_workers):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    table = pd.DataFrame({"stimulus_id": ["x"], "path": [str(bad)]})
    spec = {"source": str(tiny_vit), "modality": "image", "n_workers": n_workers}
    with pytest.raises(InputError, match=r"^\S*broken.png: cannot be read as an image") as err:
        extract_features(spec, table)
    assert "\n" not in str(err.value)  # one line, not a worker's traceback


def test_sentence_table_reader(tmp_path):
    from alignment.stimuli.sentences import read_sentence_table

    good = tmp_path / "s.tsv"
    good.write_text("stimulus_id\tsentence\n1\tThe cat sat.\n2\tA dog ran.\n")
    table = read_sentence_table(good)
    assert table["stimulus_id"].tolist() == ["1", "2"]
    empty = tmp_path / "e.tsv"
    empty.write_text("stimulus_id\tsentence\n1\tThe cat sat.\n2\t \n")
    with pytest.raises(InputError, match=r"e.tsv: empty sentence for stimulus_id '2'"):
        read_sentence_table(empty)
    with pytest.raises(InputError, match="missing column"):
        (tmp_path / "m.tsv").write_text("id\ttext\n1\tx\n")
        read_sentence_table(tmp_path / "m.tsv")
