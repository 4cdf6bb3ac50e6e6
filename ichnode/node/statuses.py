"""C-STORE response statuses (PS3.4 Annex B.2.3, PS3.7 Annex C), named once for the
receiver (what ichnode answers) and the sender (what a destination's answer means)."""

from __future__ import annotations

SUCCESS = 0x0000
#: Failure: Refused: Out of Resources (a full disk, a database error: nothing was kept).
OUT_OF_RESOURCES = 0xA700
#: Error: Data Set Does Not Match SOP Class (the object is refused).
DATASET_DOES_NOT_MATCH = 0xA900
#: Error: Cannot Understand (the bytes are not a readable data set).
CANNOT_UNDERSTAND = 0xC000
#: Warnings: the object was stored all the same.
COERCION_OF_DATA_ELEMENTS = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007

#: The statuses that mean a destination stored the object.
DELIVERED = frozenset(
    {SUCCESS, COERCION_OF_DATA_ELEMENTS, ELEMENTS_DISCARDED, DATA_SET_DOES_NOT_MATCH_SOP_CLASS}
)
