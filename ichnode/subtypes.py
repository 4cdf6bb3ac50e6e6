"""The six RSNA labels: their order, metric weights and display names.

This module is the only place the labels are spelled. The order is the one of the RSNA
Intracranial Hemorrhage Detection challenge (Kaggle, 2019) and of every model output.
"""

from __future__ import annotations

EPIDURAL = "epidural"
INTRAPARENCHYMAL = "intraparenchymal"
INTRAVENTRICULAR = "intraventricular"
SUBARACHNOID = "subarachnoid"
SUBDURAL = "subdural"
ANY = "any"

#: Model output order (= RSNA CSV label order).
SUBTYPES: tuple[str, ...] = (
    EPIDURAL,
    INTRAPARENCHYMAL,
    INTRAVENTRICULAR,
    SUBARACHNOID,
    SUBDURAL,
    ANY,
)

#: The five hemorrhage subtypes, without ``any``.
HEMORRHAGE_SUBTYPES: tuple[str, ...] = SUBTYPES[:5]

#: Weights of the competition's weighted multi-label log loss (``any`` counts twice).
METRIC_WEIGHTS: dict[str, float] = {name: (2.0 if name == ANY else 1.0) for name in SUBTYPES}

DISPLAY_NAMES: dict[str, str] = {
    EPIDURAL: "Epidural hemorrhage",
    INTRAPARENCHYMAL: "Intraparenchymal hemorrhage",
    INTRAVENTRICULAR: "Intraventricular hemorrhage",
    SUBARACHNOID: "Subarachnoid hemorrhage",
    SUBDURAL: "Subdural hemorrhage",
    ANY: "Intracranial hemorrhage (any)",
}


def index(name: str) -> int:
    """Position of ``name`` in :data:`SUBTYPES`; a clear error for an unknown label."""
    try:
        return SUBTYPES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown subtype {name!r}; expected one of {', '.join(SUBTYPES)}"
        ) from None
