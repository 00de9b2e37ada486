"""The cue-conflict stimuli of Geirhos et al. (ICLR 2019) as a folder: their 16 categories, the ImageNet class
indices each category averages, and the listing (with its one-line layout checks) of a stimuli folder.

Torch-free, so that the ``shape_bias`` section checks its folder when it is built (configs.py), before any model is
loaded. The decision and the bias are in :mod:`.shape_bias`.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..base.errors import DataError

IMAGES_PER_CATEGORY = 80
GET_STIMULI = ("get them with `git clone --depth 1 https://github.com/rgeirhos/texture-vs-shape` and set "
               "shape_bias.root to texture-vs-shape/stimuli/style-transfer-preprocessed-512")


@lru_cache(maxsize=1)
def category_indices() -> dict[str, tuple[int, ...]]:
    """The 16 categories (sorted, as ``get_human_object_recognition_categories``) -> their ImageNet class indices."""
    table = json.loads(resources.files(__package__).joinpath("cue_conflict_categories.json").read_text())
    return {c: tuple(int(i) for i in v) for c, v in sorted(table["categories"].items())}


def categories() -> tuple[str, ...]:
    return tuple(category_indices())


def texture_category(file_name: str) -> str:
    """``plotting/analyses.py:113-128``: 'airplane1-bicycle2.png' -> 'bicycle' (after the last '_', before the
    first '.', the last '-' part, digits removed)."""
    part = file_name.split("_")[-1].split(".")[0].split("-")[-1]
    return "".join(ch for ch in part if not ch.isdigit())


def stimuli(root: str | os.PathLike, check_layout: bool = True) -> list[tuple[Path, str, str]]:
    """(path, shape category, texture category) of every stimulus, sorted by folder then file name; a folder that
    is not the released layout stops here, with one line naming what is wrong and where to get the stimuli."""
    root = Path(root)
    cats = categories()
    if not root.is_dir():
        raise DataError(f"cue-conflict stimuli not found: {root}; {GET_STIMULI}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [c for c in cats if c not in folders]
    unknown = [f for f in folders if f not in cats]
    if missing or unknown:
        what = "; ".join(x for x in (f"missing category folder(s) {', '.join(missing)}" if missing else "",
                                      f"unexpected folder(s) {', '.join(unknown)}" if unknown else "") if x)
        raise DataError(f"{root} is not the cue-conflict stimuli folder ({what}; expected the 16 folders "
                        f"{', '.join(cats)}); {GET_STIMULI}")
    items: list[tuple[Path, str, str]] = []
    wrong_count: list[str] = []
    for c in cats:
        files = sorted(p for p in (root / c).iterdir() if not p.name.startswith("."))
        not_png = [p.name for p in files if not (p.is_file() and p.suffix.lower() == ".png")]
        if not_png:
            raise DataError(f"{root / c} holds {len(not_png)} file(s) that are not PNG images (e.g. {not_png[0]}); "
                            f"the cue-conflict stimuli are PNGs; {GET_STIMULI}")
        if check_layout and len(files) != IMAGES_PER_CATEGORY:
            wrong_count.append(f"{c} {len(files)}")
        for p in files:
            tex = texture_category(p.name)
            if tex not in cats:
                raise DataError(f"{p}: file name names no texture category (expected <shape><n>-<texture><m>.png "
                                f"with a texture among {', '.join(cats)}); {GET_STIMULI}")
            items.append((p, c, tex))
    if wrong_count:
        raise DataError(f"{root}: the released stimuli have {IMAGES_PER_CATEGORY} PNGs per category, found "
                        f"{', '.join(wrong_count)} ({len(items)} in all, 1280 expected); {GET_STIMULI} (or set "
                        "shape_bias.check_layout false for a subset)")
    if not items:
        raise DataError(f"{root}: no PNG stimuli in the 16 category folders; {GET_STIMULI}")
    return items
