"""The shared corpus's feature table (``FEATURES.tsv``), as the corpus tests parametrize by it.

One row per message: ``source`` and ``path`` (the file is ``CORPUS / source / path``),
``bytes`` and ``features`` (comma-separated tags such as ``mixed-eol``), so that a failing
case names the feature it exercises.
"""

from __future__ import annotations

import csv

from tests.conftest import CORPUS

__all__ = ["feature_rows"]


def feature_rows() -> list[dict[str, str]]:
    """Every row of ``FEATURES.tsv``; none when the corpus is not there."""
    if not CORPUS.is_dir():
        return []
    with (CORPUS / "FEATURES.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))
