"""The coded concepts of the six labels are pinned: a change must be deliberate and cited."""

from ichnode.subtypes import RADELEMENT, SNOMED_CT, SUBTYPES


def test_snomed_codes_are_the_cited_ones():
    codes = {name: (c.code if c else None) for name, c in SNOMED_CT.items()}
    assert codes == {
        "any": "1386000",
        "subarachnoid": "21454007",
        "intraparenchymal": "274100004",
        "subdural": "35486000",
        "intraventricular": "23276006",
        "epidural": None,
    }
    assert set(SNOMED_CT) == set(SUBTYPES)
    assert all(c.source for c in SNOMED_CT.values() if c)


def test_epidural_carries_the_radelement_code_and_no_guessed_snomed_code():
    assert SNOMED_CT["epidural"] is None
    assert RADELEMENT["epidural"].code == "RDES89"
    assert RADELEMENT["epidural"].meaning == "epidural hematoma"
    assert set(RADELEMENT) == {"epidural"}
