"""Property-based: hypothesis mutates valid CT data sets (element values) and their encoded
bytes, sends each through a real association, and checks the invariant:

- every answer is a defined status (Success, 0xA900, 0xC000) -- never 0xA700, "out of
  resources", which tells a sender to try again: the disk and the database are fine here,
  so a data set the database refused (PostgreSQL's integer range, NUL in text) would be
  resent for ever;
- Success means a row and, for a CT image, a complete file; a failure means neither;
- the node stays up (C-ECHO).

A few tens of examples in CI, always the same ones (derandomized: CI must not fail by chance
on an input no change brought in); ``ICHNODE_HYPOTHESIS_EXAMPLES=500`` explores at random,
to find new bugs (each one found becomes a case in test_hostile_corpus.py).
"""

from __future__ import annotations

import copy
import os

import pytest
from dicom_client import echo, send_raw
from helpers import HOSTILE_PYDICOM_WARNINGS, study
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import CTImageStorage
from sqlalchemy import select
from test_hostile_corpus import encode

from ichnode.db.models import Instance
from ichnode.node.scp import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, SUCCESS

pytestmark = [pytest.mark.filterwarnings(f) for f in HOSTILE_PYDICOM_WARNINGS]

EXPLORE = "ICHNODE_HYPOTHESIS_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("ICHNODE_HYPOTHESIS_EXAMPLES", "40"))
DEFINED = {SUCCESS, DATASET_DOES_NOT_MATCH, CANNOT_UNDERSTAND}
KEYWORDS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "SamplesPerPixel",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelData",
    "PatientName",
    "BodyPartExamined",
    # read while the instance is described (metadata, selection rules)
    "ImageType",
    "SeriesDescription",
    "InstanceNumber",
    "Modality",
    "AccessionNumber",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "RescaleSlope",
]
values = st.one_of(
    st.none(),
    st.integers(-(2**31), 2**31),
    st.text(max_size=80),
    st.binary(max_size=200),
    st.sampled_from(["../..", "1.2/3", "1.2.3", "65535", "-1", "0", "\\", ""]),
    # Values one backend takes and another refuses: past PostgreSQL's int4, a NUL in text.
    st.sampled_from(["99999999999", "-2147483649", "AB\x00CD", "\x00"]),
)
mutation = st.tuples(st.sampled_from(KEYWORDS), values)
byte_edit = st.tuples(st.integers(0, 4000), st.binary(min_size=0, max_size=16))


def _mutated(base, mutations) -> bytes:  # noqa: ANN001
    """``base`` encoded with each mutation that pydicom can still encode applied."""
    ds = copy.deepcopy(base)
    encoded = encode(ds)
    for keyword, value in mutations:
        trial = copy.deepcopy(ds)
        try:
            if value is None:
                if keyword in trial:
                    delattr(trial, keyword)
            else:
                setattr(trial, keyword, value)
            encoded, ds = encode(trial), trial
        except Exception:  # noqa: BLE001, S112 - a value pydicom cannot encode: skip it
            continue
    return encoded


@pytest.mark.every_backend  # the backends refuse different values (PostgreSQL: int4, NUL)
@pytest.mark.slow
def test_mutated_data_sets_get_defined_statuses_and_consistent_storage(scp_factory):
    node = scp_factory()  # the receiver alone, as in test_hostile_corpus: no model, no threads
    base = study(1, size=32)[0]

    @settings(
        max_examples=EXAMPLES,
        derandomize=not EXPLORE,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        mutations=st.lists(mutation, min_size=1, max_size=3), edits=st.lists(byte_edit, max_size=3)
    )
    def check(mutations, edits) -> None:  # noqa: ANN001
        payload = bytearray(_mutated(base, mutations))
        for offset, data in edits:
            offset = min(offset, len(payload))
            payload[offset : offset + len(data)] = data
        uid = base.SOPInstanceUID
        status = send_raw(node.settings.port, bytes(payload), CTImageStorage, uid)
        assert status in DEFINED
        with node.sessions() as session:
            row = session.scalar(select(Instance).where(Instance.sop_instance_uid == uid))
        files = [p for p in node.store.root.rglob("*") if p.is_file()]
        if status == SUCCESS:
            assert row is not None
            if row.path:
                path = node.store.path(row.path)
                assert path.stat().st_size == row.size_bytes
                assert path.read_bytes().endswith(bytes(payload))
            with node.sessions.begin() as session:  # forget it: the next example starts clean
                session.delete(session.get(Instance, row.id))
            for p in files:
                p.unlink()
        else:
            assert row is None and files == []
        assert echo(node.settings.port) == SUCCESS

    check()
