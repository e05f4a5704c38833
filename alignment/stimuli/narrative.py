"""Narrative stimuli: word timings (TSV or Praat TextGrid) and the demo story.

A narrative is a table of words with onset and offset times in seconds and the run (story) they
belong to. Word features are computed per word and later resampled to TRs
(:mod:`alignment.timeseries`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from alignment.io import InputError, require_file

WORD_COLUMNS = ("word", "onset", "offset", "run")

_NAMES = [
    "Mara",
    "Tobias",
    "the old fisherman",
    "Ines",
    "the baker",
    "Jonas",
    "the girl",
    "Aunt Ruth",
]
_PLACES = [
    "the harbour",
    "the market",
    "the forest",
    "the lighthouse",
    "the station",
    "the kitchen",
    "the hill above the town",
    "the river bank",
    "the empty school",
    "the library",
]
_OBJECTS = [
    "letter",
    "lantern",
    "map",
    "bicycle",
    "key",
    "boat",
    "violin",
    "basket",
    "photograph",
    "clock",
]
_ADJ = ["small", "broken", "red", "heavy", "strange", "golden", "wet", "ancient", "quiet", "bright"]
_FEEL = ["afraid", "happy", "tired", "curious", "angry", "calm", "lonely", "proud"]
_WEATHER = [
    "It started to rain",
    "The wind grew colder",
    "The sun came out",
    "Fog rolled in from the sea",
    "Snow began to fall",
    "The night was very still",
]
_TEMPLATES = [
    "{name} walked slowly to {place} and found a {adj} {obj}.",
    "{weather}, and {name} felt {feel}.",
    "Nobody in town knew why {name} kept the {adj} {obj} hidden in {place}.",
    "{name} asked {name2} whether the {obj} had always been so {adj}.",
    "When {name2} reached {place}, the {obj} was gone.",
    "{name} laughed, because the {obj} looked {adj} in the morning light.",
    "They talked for hours about {place} and the {adj} {obj}.",
    "{name2} promised to bring the {obj} back before dark.",
    "{weather}. {name} stayed at {place} and waited.",
    "Years later, {name} still remembered the {adj} {obj} and felt {feel}.",
    "{name} counted the boats in {place} and wrote the number on the {obj}.",
    "Was it the {adj} {obj} that {name2} had lost at {place}?",
]


def generate_story(n_sentences: int = 60, random_state: int = 0) -> list[str]:
    """Compose a story from a small grammar, one sentence per item (seeded, reproducible)."""
    rng = np.random.default_rng(random_state)
    pick = lambda seq: seq[rng.integers(len(seq))]  # noqa: E731
    sentences = []
    for _ in range(n_sentences):
        name, name2 = rng.choice(len(_NAMES), 2, replace=False)
        text = pick(_TEMPLATES).format(
            name=_NAMES[name],
            name2=_NAMES[name2],
            place=pick(_PLACES),
            obj=pick(_OBJECTS),
            adj=pick(_ADJ),
            feel=pick(_FEEL),
            weather=pick(_WEATHER),
        )
        sentences.append(text[0].upper() + text[1:])
    return sentences


def time_words(
    sentences: list[str], run: str, start: float = 4.0, random_state: int = 0
) -> pd.DataFrame:
    """Give each word of the sentences a plausible spoken onset and offset (about 2.5 words/s).

    Duration grows with word length; a pause follows each sentence. Returns a table with
    :data:`WORD_COLUMNS`.
    """
    rng = np.random.default_rng(random_state)
    rows, t = [], start
    for sentence in sentences:
        words = sentence.split()
        for k, word in enumerate(words):
            duration = 0.12 + 0.055 * len(word) + rng.uniform(0, 0.05)
            rows.append(
                {"word": word, "onset": round(t, 3), "offset": round(t + duration, 3), "run": run}
            )
            t += duration + (
                rng.uniform(0.35, 0.6) if k == len(words) - 1 else rng.uniform(0.02, 0.08)
            )
    return pd.DataFrame(rows, columns=list(WORD_COLUMNS))


#: Interval labels that mark silence or noise rather than a word (compared case-insensitively):
#: Praat/MFA/Gentle conventions and those of the LeBel et al. (2023) TextGrids.
SILENCE_LABELS = frozenset(
    {"", "sp", "sil", "spn", "<sil>", "<sp>", "<unk>", "#", "{sl}", "{lg}", "{ns}", "{br}", "{cg}"}
)


def read_word_table(
    path: str | Path, run: str | None = None, tier: str | None = None
) -> pd.DataFrame:
    """Read word timings from a TSV (word, onset, offset[, run]) or a Praat TextGrid.

    Parameters
    ----------
    path : path-like
        ``.tsv``/``.csv`` table, or ``.TextGrid`` (long or short Praat text format) whose word
        tier is named ``word`` or ``words`` (any case), or ``tier``.
    run : str, optional
        Run label for a file without a ``run`` column (a TextGrid holds one story); default
        the file's stem.
    tier : str, optional
        Name of the TextGrid tier that holds the words.

    Returns
    -------
    DataFrame with :data:`WORD_COLUMNS`, sorted by run then onset. Raises InputError naming the
    file for missing columns, non-numeric or decreasing times, or offsets before onsets.
    """
    path = require_file(path, "word timing file")
    if path.suffix.lower() == ".textgrid":
        table = _read_textgrid_words(path, tier)
    else:
        table = pd.read_csv(path, sep="\t" if path.suffix != ".csv" else ",", keep_default_na=False)
    if "run" not in table.columns:
        table["run"] = run if run is not None else path.stem
    missing = set(WORD_COLUMNS) - set(table.columns)
    if missing:
        raise InputError(
            f"{path}: missing column(s) {sorted(missing)}; found {list(table.columns)}"
        )
    try:
        table["onset"] = table["onset"].astype(float)
        table["offset"] = table["offset"].astype(float)
    except ValueError as err:
        raise InputError(f"{path}: onset/offset must be numbers ({err})") from err
    table["run"] = table["run"].astype(str)
    bad = table.index[table["offset"] < table["onset"]].tolist()
    if bad:
        raise InputError(f"{path}: offset before onset in {len(bad)} row(s), first row {bad[0]}")
    for run_name, part in table.groupby("run", sort=False):
        if (np.diff(part["onset"].to_numpy()) < 0).any():
            raise InputError(
                f"{path}: onsets decrease within run {run_name!r}; words must be in spoken order"
            )
    return table[list(WORD_COLUMNS)].reset_index(drop=True)


_TOKEN = re.compile(
    r'"((?:[^"]|"")*)"'  # a quoted string ("" is an escaped quote)
    r"|(?<![\w\[.-])(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?![\w\]])"  # a number, not "[3]"
    r"|(<exists>|<absent>)"
)


def _decode(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="replace")
    return raw.decode("utf-8", errors="replace")


def read_textgrid(path: str | Path) -> dict[str, pd.DataFrame]:
    """Every tier of a Praat TextGrid, in the long or the short ("chronological") text format.

    Both formats hold the same sequence of values; the long one adds ``name =`` labels and
    ``item [1]:`` headers, which are skipped (as Praat's own reader skips them).

    Parameters
    ----------
    path : path-like
        The ``.TextGrid`` file (UTF-8 or UTF-16 with a byte-order mark).

    Returns
    -------
    dict of tier name to DataFrame
        Interval tiers have columns ``onset``, ``offset``, ``label`` (every interval, empty
        ones included); point tiers have ``onset`` = ``offset`` = the point's time.
    """
    path = require_file(path, "TextGrid")
    text = _decode(path.read_bytes())
    tokens = []
    for m in _TOKEN.finditer(text):
        if m.group(1) is not None:
            tokens.append(m.group(1).replace('""', '"'))
        elif m.group(2) is not None:
            tokens.append(float(m.group(2)))
        else:
            tokens.append(m.group(3))
    pos = 0

    def take(kind):
        nonlocal pos
        if pos >= len(tokens):
            raise InputError(f"{path}: TextGrid ends early (truncated file?)")
        value = tokens[pos]
        pos += 1
        if kind is float and not isinstance(value, float):
            raise InputError(f"{path}: expected a number, found {value!r} (not a TextGrid?)")
        if kind is str and not isinstance(value, str):
            raise InputError(f"{path}: expected a quoted text, found {value!r}")
        return value

    if tokens[:2] != ["ooTextFile", "TextGrid"]:
        raise InputError(
            f'{path}: not a Praat text TextGrid (it must start with File type = "ooTextFile" '
            'and Object class = "TextGrid")'
        )
    pos = 2
    take(float), take(float)  # xmin, xmax of the whole grid
    if take(str) != "<exists>":
        return {}
    tiers: dict[str, pd.DataFrame] = {}
    for _ in range(int(take(float))):
        tier_class, name = take(str), take(str)
        take(float), take(float)
        n = int(take(float))
        rows = []
        if tier_class == "IntervalTier":
            for _ in range(n):
                rows.append((take(float), take(float), take(str)))
        elif tier_class == "TextTier":
            for _ in range(n):
                t = take(float)
                rows.append((t, t, take(str)))
        else:
            raise InputError(f"{path}: unknown tier class {tier_class!r} in tier {name!r}")
        tiers[name] = pd.DataFrame(rows, columns=["onset", "offset", "label"])
    return tiers


def _read_textgrid_words(path: Path, tier: str | None = None) -> pd.DataFrame:
    """The words of a TextGrid's word tier, without empty intervals and silence labels."""
    tiers = read_textgrid(path)
    if tier is not None:
        names = [tier] if tier in tiers else []
    else:
        names = [n for n in tiers if n.strip().lower() in ("word", "words")]
    if not names:
        wanted = repr(tier) if tier is not None else "'word' or 'words'"
        raise InputError(f"{path}: no tier named {wanted} in this TextGrid; tiers: {list(tiers)}")
    table = tiers[names[0]]
    labels = table["label"].str.strip()
    keep = ~labels.str.lower().isin(SILENCE_LABELS)
    return pd.DataFrame(
        {
            "word": labels[keep].to_numpy(),
            "onset": table["onset"][keep].to_numpy(),
            "offset": table["offset"][keep].to_numpy(),
        }
    )
