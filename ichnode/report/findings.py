"""The study-level result that every report object is built from.

A :class:`StudyFindings` is what the monitor knows once a study is stable: one calibrated
probability and one threshold per label, the key slice, and the identity of the model and of
ichnode. It validates itself on construction so the builders can trust it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from highdicom import SpecificCharacterSetValues
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import RE_VALID_UID

from ichnode.errors import IchnodeError
from ichnode.subtypes import ANY, SUBTYPES
from ichnode.triage import Decision, decide

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ReportError(IchnodeError, ValueError):
    """A report object cannot be built from these arguments (the message names the argument)."""


#: For text that cannot keep its source's character set: UTF-8 encodes every name.
UTF8 = "ISO_IR 192"


def character_set(source: Dataset) -> str | list[str] | None:
    """The SpecificCharacterSet for a report object that copies ``source``'s names, in a form
    highdicom accepts; None when the source has none (default repertoire).

    An empty first value (code extensions from the default repertoire, as Japanese sites send
    ``\\ISO 2022 IR 87``) is spelled ``ISO 2022 IR 6``; a value highdicom does not know becomes
    UTF-8, which encodes any decoded name.
    """
    value = source.get("SpecificCharacterSet")
    if not value:
        return None
    values = [str(v).strip() for v in (value if isinstance(value, MultiValue) else [value])]
    if values and values[0] == "":
        values[0] = SpecificCharacterSetValues.DEFAULT_REPERTOIRE_CODE_EXTENSIONS.value
    try:
        for v in values:
            SpecificCharacterSetValues(v)
    except ValueError:
        return UTF8
    return values[0] if len(values) == 1 else values


def check_uid(value: object, argument: str) -> str:
    """``value`` as a valid DICOM UID string, or :class:`ReportError` naming ``argument``."""
    if not isinstance(value, str) or len(value) > 64 or not RE_VALID_UID.match(value):
        raise ReportError(f"{argument} must be a valid DICOM UID, got {value!r}")
    return value


def _per_subtype(values: object, argument: str, *, low: float, high: float) -> dict[str, float]:
    if not isinstance(values, dict):
        raise ReportError(
            f"{argument} must be a dict keyed by subtype, got {type(values).__name__}"
        )
    missing = [s for s in SUBTYPES if s not in values]
    extra = [k for k in values if k not in SUBTYPES]
    if missing or extra:
        raise ReportError(
            f"{argument} must have exactly the keys {', '.join(SUBTYPES)}"
            f" (missing: {missing or 'none'}, unknown: {extra or 'none'})"
        )
    out: dict[str, float] = {}
    for name in SUBTYPES:
        try:
            v = float(values[name])
        except (TypeError, ValueError):
            raise ReportError(f"{argument}[{name!r}] is not a number: {values[name]!r}") from None
        if not (math.isfinite(v) and low <= v <= high):
            raise ReportError(f"{argument}[{name!r}] = {v} is outside [{low}, {high}]")
        out[name] = v
    return out


@dataclass(frozen=True)
class StudyFindings:
    """Per-subtype probabilities and thresholds of one study, with model and key-slice identity.

    ``version`` counts the results of this study (1 for the first report, 2 after the study was
    reopened, ...). ``model_sha256`` is the weights' hash (the model's identity everywhere).
    """

    probabilities: dict[str, float]
    thresholds: dict[str, float]
    key_sop_instance_uid: str
    model_id: str
    model_architecture: str
    model_sha256: str
    version: int
    ichnode_version: str
    _flagged: dict[str, bool] = field(init=False, repr=False, compare=False)
    _decision: Decision = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        probs = _per_subtype(self.probabilities, "probabilities", low=0.0, high=1.0)
        thr = _per_subtype(self.thresholds, "thresholds", low=0.0, high=1.0)
        object.__setattr__(self, "probabilities", probs)
        object.__setattr__(self, "thresholds", thr)
        check_uid(self.key_sop_instance_uid, "key_sop_instance_uid")
        for name in ("model_id", "model_architecture", "ichnode_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ReportError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.model_sha256, str) or not _SHA256.match(self.model_sha256):
            raise ReportError(
                f"model_sha256 must be 64 lowercase hex digits, got {self.model_sha256!r}"
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ReportError(f"version must be an integer >= 1, got {self.version!r}")
        decision = decide(probs, thr)
        flagged = {name: name in decision.labels for name in SUBTYPES}
        object.__setattr__(self, "_flagged", flagged)
        object.__setattr__(self, "_decision", decision)

    @property
    def decision(self) -> Decision:
        """The study's call (:func:`ichnode.triage.decide`), shared with the node and web."""
        return self._decision

    @property
    def flagged(self) -> dict[str, bool]:
        """Per label: part of the flag (``any`` raises it; a subtype is named in it)."""
        return dict(self._flagged)

    @property
    def positive(self) -> bool:
        """True when the study is flagged (study-level ``any`` over its threshold)."""
        return self._decision.flagged

    @property
    def flagged_subtypes(self) -> tuple[str, ...]:
        """The flagged labels, in :data:`~ichnode.subtypes.SUBTYPES` order (``any`` last)."""
        return self._decision.labels

    @property
    def saliency_subtype(self) -> str:
        """The label the summary's heat map explains: the flagged subtype furthest above its
        threshold (probability / threshold), else ``any`` -- for a radiologist the question
        is where the model saw *that* bleed."""
        subtypes = [name for name in self.flagged_subtypes if name != ANY]
        if not subtypes:
            return ANY
        return max(subtypes, key=lambda n: self.probabilities[n] / max(self.thresholds[n], 1e-6))

    def summary_line(self) -> str:
        """One line for descriptions: ``ICH suspected (subdural)`` or ``No ICH flagged``."""
        return self._decision.summary_line()
