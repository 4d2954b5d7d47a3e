"""Class labels as files spell them: one class written in several letter cases ("Yes", "YES", "yes").

A hand-edited or merged export often spells one class in several cases. Left as they are, a
Yes/No target becomes four classes and a binary task a multiclass one. collect (tables and text
corpora alike) therefore merges labels that differ only in letter case into the class's most
frequent spelling, and logs each merge. Feature categories are not merged, because the service would
have to map them too. collect warns about them instead (``case_groups`` finds them for both).
"""

from __future__ import annotations

import logging
from typing import Mapping

__all__ = ["case_groups", "canonical_spellings", "describe_groups", "label_spellings"]

log = logging.getLogger(__name__)


def case_groups(counts: Mapping[str, int]) -> list[list[str]]:
    """Groups of two or more spellings (keys of ``counts``: value -> rows) that differ only in letter
    case. Each group runs from most to least frequent, with ties in sorted order, so its first
    spelling is the class's canonical one. Groups are sorted by that first spelling."""
    groups: dict[str, list[str]] = {}
    for spelling in counts:
        groups.setdefault(spelling.casefold(), []).append(spelling)
    return sorted((sorted(g, key=lambda s: (-counts[s], s)) for g in groups.values() if len(g) > 1),
                  key=lambda g: g[0])


def canonical_spellings(groups: list[list[str]]) -> dict[str, str]:
    """``{variant: canonical}`` for every spelling of ``groups`` but each group's first."""
    return {s: g[0] for g in groups for s in g[1:]}


def describe_groups(groups: list[list[str]], counts: Mapping[str, int], limit: int = 5) -> str:
    """``'Yes' (61 rows) / 'YES' (39)`` per group, ``; ``-separated; at most ``limit``, then a count."""
    parts = [" / ".join(f"{s!r} ({counts[s]}{' rows' if i == 0 else ''})" for i, s in enumerate(g))
             for g in groups]
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def label_spellings(counts: Mapping[str, int], where: str, column: str) -> dict[str, str]:
    """``{variant: canonical}`` for a target's labels (``counts``: label -> rows), logging the merge as a
    warning that names ``where`` and ``column``; empty when every class has one spelling."""
    groups = case_groups(counts)
    if groups:
        log.warning("%s: column %r: labels that differ only in letter case are one class, spelled as the most "
                    "frequent: %s", where, column, describe_groups(groups, counts))
    return canonical_spellings(groups)
