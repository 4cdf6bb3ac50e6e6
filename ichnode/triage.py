"""The study flag and its explanation: the one place thresholds are applied.

``flagged`` is the study-level probability of ``any`` at its study-level threshold (chosen on
validation *studies*: the highest threshold that keeps study sensitivity >= 0.95). The subtypes
named in a flag are those whose own study-level probability passes its threshold. The node's
monitor, ``ichnode evaluate``, ``ichnode predict``, the SR, the summary image, the web pages and
``ichnode results`` all read the flag from :func:`decide`; none compares a probability with a
threshold itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ichnode.subtypes import ANY, HEMORRHAGE_SUBTYPES, SUBTYPES


@dataclass(frozen=True)
class Decision:
    """The call on one study (or one slice): flagged or not, and which subtypes say why."""

    flagged: bool
    #: The hemorrhage subtypes over their thresholds, in SUBTYPES order (empty unless flagged).
    subtypes: tuple[str, ...]
    #: Per label: probability >= threshold (``any`` included), for reports that list each.
    calls: dict[str, bool]

    @property
    def labels(self) -> tuple[str, ...]:
        """The flagged labels as stored in ``study_results.flagged_subtypes``: the named
        subtypes, then ``any`` (empty when not flagged)."""
        return (*self.subtypes, ANY) if self.flagged else ()

    def summary_line(self) -> str:
        """One line: ``Intracranial hemorrhage suspected (subdural)`` or ``No ... flagged``."""
        if not self.flagged:
            return "No intracranial hemorrhage flagged"
        what = ", ".join(self.subtypes) if self.subtypes else "unspecified subtype"
        return f"Intracranial hemorrhage suspected ({what})"


def decide(probabilities: Mapping[str, float], thresholds: Mapping[str, float]) -> Decision:
    """Apply ``thresholds`` to ``probabilities`` (both keyed by every label in SUBTYPES).

    A subtype is named only when ``any`` flags the study: a flag is raised by the label the
    operating point was chosen for, and the subtypes explain it.
    """
    row = np.array([[float(probabilities[name]) for name in SUBTYPES]])
    calls = dict(zip(SUBTYPES, (bool(c) for c in over_threshold(row, thresholds)[0]), strict=True))
    flagged = calls[ANY]
    named = tuple(name for name in HEMORRHAGE_SUBTYPES if flagged and calls[name])
    return Decision(flagged=flagged, subtypes=named, calls=calls)


def over_threshold(probabilities: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
    """Per row and label of ``(N, 6)`` probabilities (SUBTYPES order): at or over threshold.

    The vectorised form of :func:`decide`'s per-label calls, for metrics over many slices or
    studies.
    """
    limits = np.array([float(thresholds[name]) for name in SUBTYPES])
    return np.asarray(probabilities, dtype=np.float64) >= limits
