"""Sentence stimulus sets (e.g. Pereira 2018): one sentence per stimulus id."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alignment.io import InputError, require_file

SENTENCE_COLUMNS = ("stimulus_id", "sentence")


def read_sentence_table(path: str | Path) -> pd.DataFrame:
    """Read a sentence table (TSV, or CSV by extension) with ``stimulus_id`` and ``sentence``.

    Raises :class:`~alignment.io.InputError` naming the file for a missing column, duplicate ids
    or an empty sentence.
    """
    path = require_file(path, "sentence table")
    table = pd.read_csv(
        path,
        sep="," if path.suffix == ".csv" else "\t",
        dtype={"stimulus_id": str, "sentence": str},
        keep_default_na=False,
    )
    missing = set(SENTENCE_COLUMNS) - set(table.columns)
    if missing:
        raise InputError(
            f"{path}: missing column(s) {sorted(missing)}; found {list(table.columns)}"
        )
    duplicated = table["stimulus_id"][table["stimulus_id"].duplicated()].tolist()
    if duplicated:
        raise InputError(f"{path}: duplicate stimulus_id(s) {duplicated[:5]}")
    check_sentences(table, str(path))
    return table.reset_index(drop=True)


def check_sentences(table: pd.DataFrame, where: str = "sentences") -> None:
    """Raise InputError naming the first empty sentence."""
    empty = table.index[table["sentence"].astype(str).str.strip() == ""].tolist()
    if empty:
        sid = table.loc[empty[0], "stimulus_id"]
        raise InputError(f"{where}: empty sentence for stimulus_id {sid!r} ({len(empty)} empty)")
