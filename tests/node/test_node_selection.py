"""Series selection: each rule, as a unit and through real associations."""

from __future__ import annotations

import math

import pytest
from dicom_client import send
from helpers import study, wait_for
from sqlalchemy import select

from ichnode.config import SelectionSettings
from ichnode.db.models import Instance, InstanceStatus
from ichnode.node.scp import SUCCESS
from ichnode.node.selection import SelectionRules, geometry


def _slice(**attrs):
    ds = study(1, size=16)[0]
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _reason(ds, **settings):
    return SelectionRules(SelectionSettings(**settings)).skip_reason(ds, geometry(ds))


def _tilted(degrees: float) -> list[float]:
    """Row along x; column in the y-z plane, tilted by ``degrees`` (a gantry tilt)."""
    t = math.radians(degrees)
    return [1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)]


def test_routine_axial_head_slice_is_scored():
    assert _reason(_slice()) is None


def test_localizer_is_skipped():
    assert _reason(_slice(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])) == (
        "ImageType LOCALIZER excluded"
    )


def test_image_type_include_list_skips_the_rest():
    ds = _slice(ImageType=["DERIVED", "SECONDARY", "AXIAL"])
    assert _reason(ds, image_type_include=["ORIGINAL"]) == "ImageType not in the include list"
    assert _reason(ds) is None


def test_sagittal_series_is_not_axial():
    assert _reason(_slice(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])).startswith("not axial")


def test_orientation_tolerance_is_a_setting():
    ds = _slice(ImageOrientationPatient=_tilted(12))
    assert _reason(ds) is None  # default tolerance 20 degrees
    assert _reason(ds, orientation_tolerance_deg=5).startswith("not axial (tilt 12")


def test_missing_orientation_is_skipped_with_a_reason():
    ds = _slice()
    del ds.ImageOrientationPatient
    assert "ImageOrientationPatient" in _reason(ds)


@pytest.mark.parametrize("body_part", ["CHEST", "ABDOMEN", "SPINE"])
def test_non_head_body_part_is_skipped(body_part):
    assert (
        _reason(_slice(BodyPartExamined=body_part)) == f"BodyPartExamined {body_part!r} is not head"
    )


def test_body_part_rule_is_a_setting():
    ds = _slice(BodyPartExamined="NECK")
    assert _reason(ds) is not None
    assert _reason(ds, body_part_include=r"(?i)^(head|neck)$") is None


@pytest.mark.parametrize("description", ["SCOUT", "Topogram 0.6 T20s", "Dose Report", "MIP 3D"])
def test_series_description_pattern_skips(description):
    assert _reason(_slice(SeriesDescription=description)) == "SeriesDescription excluded"


def test_protocol_name_pattern_skips():
    assert _reason(_slice(ProtocolName="CHEST ROUTINE")) == "ProtocolName excluded"
    assert _reason(_slice(ProtocolName="HEAD ROUTINE")) is None


def _statuses(node):
    with node.sessions() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.status, Instance.reason)
        ).all()
    return {uid: (status, reason) for uid, status, reason in rows}


def test_rules_apply_to_a_received_study(node_factory):
    node = node_factory()
    slices = study(5, size=32)
    slices[1].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    slices[2].ImagePositionPatient = slices[0].ImagePositionPatient  # same z as slice 0
    slices[3].BodyPartExamined = "CHEST"
    assert send(node.settings.port, slices) == [SUCCESS] * 5
    got = wait_for(lambda: (s := _statuses(node)) and len(s) == 5 and s)
    by = [got[ds.SOPInstanceUID] for ds in slices]
    assert by[1] == (InstanceStatus.SKIPPED, "ImageType LOCALIZER excluded")
    assert by[2] == (InstanceStatus.SKIPPED, "duplicate slice position")
    assert by[3] == (InstanceStatus.SKIPPED, "BodyPartExamined 'CHEST' is not head")
    wait_for(lambda: _statuses(node)[slices[4].SOPInstanceUID][0] == InstanceStatus.DONE)
    assert _statuses(node)[slices[0].SOPInstanceUID][0] == InstanceStatus.DONE


def test_duplicate_positions_are_kept_when_configured(node_factory):
    from ichnode.config import SelectionSettings as S

    node = node_factory(selection=S(skip_duplicate_positions=False))
    slices = study(2, size=32)
    slices[1].ImagePositionPatient = slices[0].ImagePositionPatient
    assert send(node.settings.port, slices) == [SUCCESS, SUCCESS]
    wait_for(
        lambda: (
            all(s == InstanceStatus.DONE for s, _ in _statuses(node).values())
            and len(_statuses(node)) == 2
        )
    )
