"""Report objects ichnode sends back to the PACS (no database dependency).

- :func:`build_sr` — Comprehensive SR, TID 1500 measurement report of the findings.
- :func:`build_summary` — RGB Secondary Capture of the key slice with the findings burned in.
- :func:`build_kos` — Key Object Selection flagging the key slice(s) of a positive study.
- :func:`grad_cam` — saliency map for the summary image's overlay.

All take a :class:`StudyFindings`; bad arguments raise :class:`ReportError` naming them.
"""

from ichnode.report.findings import ReportError, StudyFindings
from ichnode.report.kos import build_kos
from ichnode.report.saliency import grad_cam
from ichnode.report.sr import DISCLAIMER, build_sr, device_uid, to_bytes
from ichnode.report.summary import build_summary

__all__ = [
    "DISCLAIMER",
    "ReportError",
    "StudyFindings",
    "build_kos",
    "build_sr",
    "build_summary",
    "device_uid",
    "grad_cam",
    "to_bytes",
]
