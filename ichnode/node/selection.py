"""Which received CT slices are scored: the series-selection rules.

Localizers, non-axial series, non-head CT and duplicate slice positions are recorded as
skipped with the reason. The rules come from :class:`ichnode.config.SelectionSettings`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from pydicom.dataset import Dataset

from ichnode.config import SelectionSettings
from ichnode.imaging import first_frame_value


@dataclass(frozen=True)
class Geometry:
    """Where a slice lies: its position along the slice normal and the normal's tilt."""

    z: float | None
    tilt_deg: float | None


_IOP, _IPP = "ImageOrientationPatient", "ImagePositionPatient"
#: Where an Enhanced CT holds them (per frame, or shared).
_IOP_SEQUENCE, _IPP_SEQUENCE = "PlaneOrientationSequence", "PlanePositionSequence"


def geometry(ds: Dataset) -> Geometry:
    """z = ImagePositionPatient projected on the slice normal (InstanceNumber may run the
    other way); tilt = angle between the normal and the patient z axis."""
    try:
        iop = [float(v) for v in cast(Iterable, first_frame_value(ds, _IOP, _IOP_SEQUENCE))]
        ipp = [float(v) for v in cast(Iterable, first_frame_value(ds, _IPP, _IPP_SEQUENCE))]
    except (AttributeError, TypeError, ValueError):  # absent (None) or malformed
        return Geometry(None, None)
    if len(iop) != 6 or len(ipp) != 3:
        return Geometry(None, None)
    # Plain floats: numpy's cross and norm cost more than the arithmetic on 3-vectors.
    (r0, r1, r2), (c0, c1, c2) = iop[:3], iop[3:]
    normal = (r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0)
    norm = math.sqrt(sum(v * v for v in normal))
    if not math.isfinite(norm) or norm < 1e-6:
        return Geometry(None, None)
    # Sign: keep the normal pointing towards +z so z grows head-wards for every scanner.
    sign = -1.0 if normal[2] < 0 else 1.0
    n0, n1, n2 = (sign * v / norm for v in normal)
    tilt = math.degrees(math.acos(min(1.0, abs(n2))))
    z = ipp[0] * n0 + ipp[1] * n1 + ipp[2] * n2
    return Geometry(z if math.isfinite(z) else None, tilt)


class SelectionRules:
    """Compiled selection settings; :meth:`skip_reason` says why a CT slice is not scored."""

    def __init__(self, settings: SelectionSettings) -> None:
        self.settings = settings
        self._series_exclude = re.compile(settings.series_description_exclude)
        self._protocol_exclude = re.compile(settings.protocol_name_exclude)
        self._body_part = re.compile(settings.body_part_include)

    def skip_reason(self, ds: Dataset, geo: Geometry) -> str | None:
        """None if the slice should be scored, else a short reason."""
        s = self.settings
        if _frames(ds) > 1:
            return "multi-frame image: only single-slice CT is scored"
        image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
        excluded = image_type & {v.upper() for v in s.image_type_exclude}
        if excluded:
            return f"ImageType {'/'.join(sorted(excluded))} excluded"
        if s.image_type_include and not image_type & {v.upper() for v in s.image_type_include}:
            return "ImageType not in the include list"
        description = str(ds.get("SeriesDescription", "") or "")
        if description and self._series_exclude.search(description):
            return "SeriesDescription excluded"
        protocol = str(ds.get("ProtocolName", "") or "")
        if protocol and self._protocol_exclude.search(protocol):
            return "ProtocolName excluded"
        body_part = str(ds.get("BodyPartExamined", "") or "")
        if not self._body_part.match(body_part):
            return f"BodyPartExamined {body_part!r} is not head"
        if geo.tilt_deg is None:
            return "no usable ImageOrientationPatient/ImagePositionPatient"
        if geo.tilt_deg > s.orientation_tolerance_deg:
            return f"not axial (tilt {geo.tilt_deg:.0f} degrees)"
        return None


def _frames(ds: Dataset) -> int:
    """NumberOfFrames (1 when absent or malformed: pixel_problem has refused the malformed)."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1
