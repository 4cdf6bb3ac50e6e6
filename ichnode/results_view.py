"""Rendering of ``ichnode results``: table, JSON or CSV on stdout."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from typing import Any

from ichnode.config import Settings
from ichnode.errors import IchnodeError
from ichnode.results import accession_numbers, list_studies, study_detail
from ichnode.subtypes import SHORT_NAMES, SUBTYPES

#: Terminal width from which ``results`` prints the wide table (full UIDs, times, counts).
WIDE_WIDTH = 150
#: A UID longer than this is shown as its first 8 and last 4 characters in narrow tables.
SHORT_UID_HEAD, SHORT_UID_TAIL = 8, 4


def show_results(
    settings: Settings,
    *,
    study: str | None,
    flagged: bool,
    since: datetime | None,
    limit: int,
    fmt: str,
    accession: str | None = None,
) -> None:
    from ichnode.db.session import open_database

    engine, sessions = open_database(settings, create=False)
    try:
        with sessions() as session:
            if study:
                detail = study_detail(session, study)
                if detail is None:
                    raise IchnodeError(f"no study {study} in the database")
                rows: list[dict[str, Any]] = [detail]
            else:
                rows = list_studies(
                    session,
                    flagged=True if flagged else None,
                    since=since,
                    accession=accession,
                    limit=limit,
                )
            show_ids = settings.http.show_patient_identifiers
            accessions = (
                accession_numbers(session, [r["study_instance_uid"] for r in rows])
                if fmt == "table" and show_ids
                else {}
            )
    finally:
        engine.dispose()
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        _csv(rows[0]["instances"] if study else rows, per_instance=bool(study))
    else:
        _table(rows, detail=bool(study), accessions=accessions if show_ids else None)


STUDY_CSV_KEYS = [
    "study_instance_uid",
    "status",
    "flagged",
    "flagged_subtypes",
    "key_sop_instance_uid",
    "version",
    "n_instances",
    "n_scored",
    "model_id",
    "received_at",
    "last_received_at",
    "resulted_at",
]
INSTANCE_CSV_KEYS = ["sop_instance_uid", "series_instance_uid", "z", "status", "error"]


def _csv_value(value: Any) -> Any:
    """Booleans as ``true``/``false`` (as in the JSON), lists joined by ``;``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return value


def _flat(row: dict[str, Any], keys: list[str]) -> list[Any]:
    probs = row.get("probabilities") or {}
    return [_csv_value(row.get(k)) for k in keys] + [probs.get(n) for n in SUBTYPES]


def _csv(rows: list[dict[str, Any]], per_instance: bool) -> None:
    keys = INSTANCE_CSV_KEYS if per_instance else STUDY_CSV_KEYS
    writer = csv.writer(sys.stdout)
    writer.writerow(keys + [f"p_{n}" for n in SUBTYPES])
    for row in rows:
        writer.writerow(_flat(row, keys))


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def short_uid(uid: str | None) -> str:
    """``1.2.826.…1234``: the first 8 and last 4 characters of a long UID."""
    if uid is None:
        return "-"
    if len(uid) <= SHORT_UID_HEAD + SHORT_UID_TAIL + 1:
        return uid
    return f"{uid[:SHORT_UID_HEAD]}…{uid[-SHORT_UID_TAIL:]}"


def flag_text(row: dict[str, Any]) -> str:
    """``-`` before a result, ``no``, or the flagged subtypes' abbreviations (``SAH SDH any``)."""
    if row.get("flagged") is None:
        return "-"
    if not row["flagged"]:
        return "no"
    names = [SHORT_NAMES.get(n, n) for n in row.get("flagged_subtypes") or []]
    return " ".join(names) or "YES"


def _new_table(title: str) -> Any:
    from rich import box
    from rich.table import Table

    # One space between columns (the box's own divider): six probabilities fit in 80 columns.
    return Table(title=title, box=box.SIMPLE_HEAD, padding=0, show_edge=False)


def _add_probability_columns(table: Any) -> None:
    for n in SUBTYPES:
        table.add_column(SHORT_NAMES[n], justify="right", no_wrap=True)


def _time(value: str | None) -> str:
    """An ISO time to the second, without the offset (the database's times are UTC)."""
    return "-" if not value else value[:19].replace("T", " ")


def _study_table(
    rows: list[dict[str, Any]], wide: bool, accessions: dict[str, str | None] | None
) -> Any:
    table = _new_table("ichnode studies" + (" (times UTC)" if wide else ""))
    table.add_column("study", no_wrap=True)
    if accessions is not None:
        table.add_column("accession", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("flagged", overflow="fold")
    if wide:
        for col in ("version", "slices", "scored"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("received", no_wrap=True)
    _add_probability_columns(table)
    for r in rows:
        uid = r["study_instance_uid"]
        cells = [uid if wide else short_uid(uid)]
        if accessions is not None:
            cells.append(accessions.get(uid) or "-")
        cells += [r["status"], flag_text(r)]
        if wide:
            n_scored = r.get("n_scored")
            cells += [
                str(r["version"]),
                str(r["n_instances"]),
                "-" if n_scored is None else str(n_scored),
                _time(r.get("last_received_at")),
            ]
        probs = r.get("probabilities") or {}
        cells += [_fmt(probs.get(n)) for n in SUBTYPES]
        table.add_row(*cells)
    return table


def _slice_table(instances: list[dict[str, Any]], wide: bool) -> Any:
    table = _new_table("slices (by z)")
    table.add_column("z", justify="right", no_wrap=True)
    table.add_column("sop instance", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", overflow="fold")
    _add_probability_columns(table)
    for i in instances:
        probs = i.get("probabilities") or {}
        uid = i["sop_instance_uid"]
        table.add_row(
            "-" if i["z"] is None else f"{i['z']:.1f}",
            uid if wide else short_uid(uid),
            i["status"],
            i["error"] or "",
            *(_fmt(probs.get(n)) for n in SUBTYPES),
        )
    return table


def _table(
    rows: list[dict[str, Any]],
    detail: bool,
    accessions: dict[str, str | None] | None = None,
) -> None:
    """The studies (and with ``--study`` its slices): narrow at 80 columns, wide from 150."""
    from rich.console import Console

    console = Console()
    wide = console.width >= WIDE_WIDTH
    console.print(_study_table(rows, wide, accessions))
    if detail:
        console.print(_slice_table(rows[0]["instances"], wide))
        _report_state(console, rows[0].get("versions") or [])
        _deliveries(console, rows[0].get("deliveries") or [])


def _report_state(console: Any, versions: list[dict[str, Any]]) -> None:
    """One line when the latest version's report objects are not built (yet)."""
    if not versions:
        return
    latest = versions[-1]
    if latest.get("reports") == "failed":
        console.print(
            f"report objects of v{latest['version']} failed: {latest.get('report_error')} "
            "(fix the cause, then `ichnode resend --study ...`)",
            markup=False,
        )
    elif latest.get("reports") == "pending":
        console.print(f"report objects of v{latest['version']}: being built", markup=False)


def _deliveries(console: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not rows:
        console.print("report objects and notifications: none queued")
        return
    table = Table(title="report objects sent to the PACS, notifications (hl7v2, fhir)")
    for col in ("version", "object", "destination", "status", "attempts", "sent at", "last error"):
        table.add_column(col)
    for d in rows:
        table.add_row(
            str(d["version"]),
            d["kind"],
            d["destination"],
            d["status"],
            str(d["attempts"]),
            d["sent_at"] or "-",
            d["last_error"] or "",
        )
    console.print(table)


def show_destination_checks(rows: list[Any]) -> None:
    """The table of ``ichnode destinations check`` (rows: scu.EchoResult)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not rows:
        console.print("no destinations configured")
        return
    table = Table(title="destinations (C-ECHO; QIDO-RS for DICOMweb)")
    for col in ("name", "AE title", "address", "status"):
        table.add_column(col)
    table.add_column("round trip", justify="right")
    for r in rows:
        table.add_row(
            r.name,
            r.ae_title,
            f"{r.host}:{r.port}" if r.port else r.host,
            Text("OK", style="green") if r.ok else Text(r.status, style="red"),
            "-" if r.round_trip_ms is None else f"{r.round_trip_ms:.0f} ms",
        )
    console.print(table)
