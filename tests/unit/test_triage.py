"""The study flag is decided in one place: ``ichnode.triage``."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from ichnode.subtypes import ANY, SUBTYPES
from ichnode.triage import decide, over_threshold

ROOT = Path(__file__).resolve().parents[2]
#: The decision module itself applies thresholds; nothing else may.
DECIDER = ROOT / "ichnode" / "triage.py"


def _probs(**values: float) -> dict[str, float]:
    return dict.fromkeys(SUBTYPES, 0.0) | values


THRESHOLDS = dict.fromkeys(SUBTYPES, 0.5) | {ANY: 0.3}


def test_a_study_is_flagged_by_any_at_its_threshold_and_names_the_subtypes_over_theirs():
    d = decide(_probs(any=0.31, subdural=0.6, epidural=0.49), THRESHOLDS)
    assert d.flagged and d.subtypes == ("subdural",) and d.labels == ("subdural", ANY)
    assert d.summary_line() == "Intracranial hemorrhage suspected (subdural)"


def test_a_subtype_over_its_threshold_does_not_flag_a_study_whose_any_is_under_its_own():
    d = decide(_probs(any=0.29, intraventricular=0.9), THRESHOLDS)
    assert not d.flagged and d.subtypes == () and d.labels == ()
    assert d.calls["intraventricular"]  # the per-label call is still reported
    assert d.summary_line() == "No intracranial hemorrhage flagged"


def test_a_flag_without_a_named_subtype_says_so():
    d = decide(_probs(any=0.9), THRESHOLDS)
    assert d.flagged and d.summary_line().endswith("(unspecified subtype)")


def test_the_vectorised_calls_agree_with_decide():
    rng = np.random.default_rng(0)
    p = rng.random((50, len(SUBTYPES)))
    calls = over_threshold(p, THRESHOLDS)
    for row, call in zip(p, calls, strict=True):
        d = decide(dict(zip(SUBTYPES, row, strict=True)), THRESHOLDS)
        assert [d.calls[n] for n in SUBTYPES] == list(call)


def _threshold_comparisons(path: Path) -> list[str]:
    """Comparisons in ``path`` one of whose operands mentions a threshold."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Lt | ast.LtE | ast.Gt | ast.GtE) for op in node.ops
        ):
            text = ast.unparse(node)
            if "thresh" in text.lower():
                found.append(f"{path.name}:{node.lineno}: {text}")
    return found


@pytest.mark.parametrize("package", ["ichnode", "training", "phantoms"])
def test_no_code_but_the_decision_function_compares_a_probability_with_a_threshold(package):
    files = [p for p in (ROOT / package).rglob("*.py") if p != DECIDER]
    offenders = [hit for f in files for hit in _threshold_comparisons(f)]
    assert offenders == [], "thresholds applied outside ichnode.triage:\n" + "\n".join(offenders)


def test_the_scan_finds_a_threshold_comparison(tmp_path: Path):
    # The check above can fail: a file comparing with a threshold is reported.
    bad = tmp_path / "probe.py"
    bad.write_text("def f(p, thresholds):\n    return p >= thresholds['any']\n")
    assert _threshold_comparisons(bad) == ["probe.py:2: p >= thresholds['any']"]
