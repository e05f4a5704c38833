"""Praat TextGrids: long and short text formats, empty intervals, silences, several tiers."""

from __future__ import annotations

import pytest

from alignment.io import InputError
from alignment.stimuli.narrative import read_textgrid, read_word_table

LONG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 3.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "phone"
        xmin = 0
        xmax = 3.5
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 1.2
            text = "sil"
        intervals [2]:
            xmin = 1.2
            xmax = 3.5
            text = "AH0"
    item [2]:
        class = "IntervalTier"
        name = "word"
        xmin = 0
        xmax = 3.5
        intervals: size = 6
        intervals [1]:
            xmin = 0
            xmax = 1.2
            text = ""
        intervals [2]:
            xmin = 1.2
            xmax = 1.5
            text = "the"
        intervals [3]:
            xmin = 1.5
            xmax = 1.9
            text = "sp"
        intervals [4]:
            xmin = 1.9
            xmax = 2.4
            text = "cat's ""toy"""
        intervals [5]:
            xmin = 2.4
            xmax = 3
            text = "{NS}"
        intervals [6]:
            xmin = 3
            xmax = 3.5
            text = "2nd"
'''

SHORT = '''File type = "ooTextFile"
Object class = "TextGrid"

0
3.5
<exists>
2
"IntervalTier"
"phone"
0
3.5
2
0
1.2
"sil"
1.2
3.5
"AH0"
"IntervalTier"
"Words"
0
3.5
6
0
1.2
""
1.2
1.5
"the"
1.5
1.9
"sp"
1.9
2.4
"cat's ""toy"""
2.4
3
"{NS}"
3
3.5
"2nd"
'''


def test_long_and_short_formats_give_the_same_words(tmp_path):
    (tmp_path / "long.TextGrid").write_text(LONG)
    (tmp_path / "short.TextGrid").write_bytes(SHORT.encode("utf-16"))  # Praat's UTF-16 + BOM
    long = read_word_table(tmp_path / "long.TextGrid")
    short = read_word_table(tmp_path / "short.TextGrid")
    assert long["word"].tolist() == ["the", 'cat\'s "toy"', "2nd"]  # silences and "" dropped
    assert long["onset"].tolist() == [1.2, 1.9, 3.0]
    assert long["offset"].tolist() == [1.5, 2.4, 3.5]
    assert set(long["run"]) == {"long"} and set(short["run"]) == {"short"}
    assert long.drop(columns="run").equals(short.drop(columns="run"))


def test_every_tier_and_interval_is_kept_by_read_textgrid(tmp_path):
    (tmp_path / "g.TextGrid").write_text(LONG)
    tiers = read_textgrid(tmp_path / "g.TextGrid")
    assert list(tiers) == ["phone", "word"]
    assert tiers["phone"]["label"].tolist() == ["sil", "AH0"]
    assert len(tiers["word"]) == 6 and tiers["word"]["label"][0] == ""


def test_named_tier_and_missing_tier(tmp_path):
    (tmp_path / "g.TextGrid").write_text(LONG)
    phones = read_word_table(tmp_path / "g.TextGrid", tier="phone")
    assert phones["word"].tolist() == ["AH0"]
    with pytest.raises(
        InputError, match=r"g.TextGrid: no tier named 'words2'.*\['phone', 'word'\]"
    ):
        read_word_table(tmp_path / "g.TextGrid", tier="words2")


def test_truncated_or_foreign_file_is_named(tmp_path):
    (tmp_path / "cut.TextGrid").write_text(LONG[: LONG.index("intervals [4]")])
    with pytest.raises(InputError, match=r"cut\.TextGrid: TextGrid ends early"):
        read_word_table(tmp_path / "cut.TextGrid")
    (tmp_path / "x.TextGrid").write_text("hello 1 2 3")
    with pytest.raises(InputError, match=r"x\.TextGrid: not a Praat text TextGrid"):
        read_word_table(tmp_path / "x.TextGrid")
