"""The kinds of report object ichnode builds: the only place they are spelled.

A small module of its own (not :mod:`ichnode.report`, which imports torch; not
:mod:`ichnode.db`, which imports Alembic) because the settings name kinds too
(``destinations[].objects``).
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10
    from enum import Enum

    class StrEnum(str, Enum):
        """``enum.StrEnum`` for Python 3.10."""

        def __str__(self) -> str:
            return str(self.value)


class ReportKind(StrEnum):
    """The report objects built for a result version, in the order they are built and queued
    (the SR first: it is the result)."""

    SR = "sr"  # Comprehensive SR, TID 1500 (ichnode.report.sr)
    SUMMARY = "summary"  # RGB Secondary Capture of the key slice (ichnode.report.summary)
    KOS = "kos"  # Key Object Selection, positive studies only (ichnode.report.kos)
