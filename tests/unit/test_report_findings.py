"""StudyFindings: validation and the flagged rule."""

from __future__ import annotations

import pytest
from report_fixtures import SHA, make_findings

from ichnode.report import ReportError, StudyFindings
from ichnode.subtypes import SUBTYPES

KEY = "1.2.3.4.5"


def _kwargs(**over):
    base = dict(
        probabilities=dict.fromkeys(SUBTYPES, 0.1),
        thresholds=dict.fromkeys(SUBTYPES, 0.5),
        key_sop_instance_uid=KEY,
        model_id="ichnet-abababababab",
        model_architecture="ichnet",
        model_sha256=SHA,
        version=1,
        ichnode_version="0.1.0",
    )
    return base | over


def test_flagged_is_probability_at_or_above_threshold():
    probs = dict.fromkeys(SUBTYPES, 0.1) | {"subdural": 0.5, "any": 0.7}
    f = StudyFindings(**_kwargs(probabilities=probs))
    assert f.flagged == {s: s in ("subdural", "any") for s in SUBTYPES}
    assert f.positive and f.flagged_subtypes == ("subdural", "any")


def test_negative_findings_are_not_positive():
    f = make_findings(KEY, positive=False)
    assert not f.positive and f.summary_line() == "No intracranial hemorrhage flagged"


def test_missing_subtype_names_the_argument():
    probs = dict.fromkeys(SUBTYPES[:-1], 0.1)
    with pytest.raises(ReportError, match="probabilities"):
        StudyFindings(**_kwargs(probabilities=probs))


def test_probability_outside_unit_interval_is_refused():
    with pytest.raises(ReportError, match=r"thresholds\['any'\]"):
        StudyFindings(**_kwargs(thresholds=dict.fromkeys(SUBTYPES, 0.5) | {"any": 1.5}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("key_sop_instance_uid", "not-a-uid"),
        ("model_sha256", "xyz"),
        ("version", 0),
        ("model_id", ""),
    ],
)
def test_bad_field_is_named_in_the_error(field, value):
    with pytest.raises(ReportError, match=field):
        StudyFindings(**_kwargs(**{field: value}))


def test_report_error_is_a_value_error():
    assert issubclass(ReportError, ValueError)
