"""Test helper: small generated images written to a folder as PNGs, with their stimulus table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alignment.stimuli.images import generate_images


def write_image_table(folder: Path, n: int, random_state: int) -> pd.DataFrame:
    """Write ``n`` generated 32-px images to ``folder`` as PNGs; their table with a ``path``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, table = generate_images(n, image_size=32, random_state=random_state)
    for img, sid in zip(images, table["stimulus_id"], strict=True):
        img.save(folder / f"{sid}.png")
    table["path"] = [str(folder / f"{sid}.png") for sid in table["stimulus_id"]]
    return table
