"""Per-instance cost of the C-STORE header read, in isolation: pydicom's full ``read_dataset``
(what pynetdicom's ``event.dataset`` does) against ``intake.read_header`` (only the elements
the checks and rows need), each followed by ``intake.check``, on one 512 x 512 phantom slice.

    python benchmarks/header_read.py
"""

from __future__ import annotations

import sys
import timeit
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.filereader import read_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import phantom_slices  # noqa: E402

from ichnode.config import SelectionSettings  # noqa: E402
from ichnode.node import intake  # noqa: E402
from ichnode.node.selection import SelectionRules  # noqa: E402

NUMBER, REPEAT = 500, 3


def main() -> None:
    path = sorted(phantom_slices(1).glob("*.dcm"))[0]
    sent = pydicom.dcmread(path)
    syntax = sent.file_meta.TransferSyntaxUID
    raw = path.read_bytes()
    with BytesIO(raw) as fp:
        pydicom.filereader.read_preamble(fp, False)
        pydicom.filereader._read_file_meta_info(fp)  # noqa: SLF001 - skips to the data set
        data = BytesIO(raw[fp.tell() :])  # the data set as a C-STORE carries it
    request = intake.Request(
        str(sent.SOPInstanceUID), str(sent.SOPClassUID), str(syntax), "SCU", "127.0.0.1"
    )
    rules = SelectionRules(SelectionSettings())
    now = datetime.now(UTC)

    def full() -> None:
        data.seek(0)
        ds = read_dataset(data, syntax.is_implicit_VR, syntax.is_little_endian)
        intake.check(ds, request, rules, now)

    def header() -> None:
        intake.check(intake.read_header(data, syntax), request, rules, now)

    print(f"one slice: {len(sent)} elements, {syntax.name}; best of {REPEAT} x {NUMBER}")
    for name, fn in (("full read", full), ("header read", header)) * 2:
        best = min(timeit.repeat(fn, number=NUMBER, repeat=REPEAT)) / NUMBER
        print(f"{name:<12} + check: {best * 1e3:.3f} ms per instance")


if __name__ == "__main__":
    main()
