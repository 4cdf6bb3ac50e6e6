"""Rendering of ``ichnode results``: table, JSON or CSV on stdout."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from typing import Any

from ichnode.config import Settings
from ichnode.errors import IchnodeError
from ichnode.results import list_studies, study_detail
from ichnode.subtypes import SUBTYPES


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
    finally:
        engine.dispose()
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        _csv(rows[0]["instances"] if study else rows, per_instance=bool(study))
    else:
        _table(rows, detail=bool(study))


def _flat(row: dict[str, Any], keys: list[str]) -> list[Any]:
    probs = row.get("probabilities") or {}
    return [row.get(k) for k in keys] + [probs.get(n) for n in SUBTYPES]


def _csv(rows: list[dict[str, Any]], per_instance: bool) -> None:
    keys = (
        ["sop_instance_uid", "series_instance_uid", "z", "status", "error"]
        if per_instance
        else [
            "study_instance_uid",
            "status",
            "flagged",
            "key_sop_instance_uid",
            "version",
            "n_instances",
        ]
    )
    writer = csv.writer(sys.stdout)
    writer.writerow(keys + [f"p_{n}" for n in SUBTYPES])
    for row in rows:
        writer.writerow(_flat(row, keys))


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def _table(rows: list[dict[str, Any]], detail: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="ichnode studies")
    for col in ("study", "status", "flagged", "version", "slices"):
        table.add_column(col)
    for n in SUBTYPES:
        table.add_column(n, justify="right")
    for r in rows:
        probs = r.get("probabilities") or {}
        table.add_row(
            r["study_instance_uid"],
            r["status"],
            {True: "YES", False: "no", None: "-"}[r["flagged"]],
            str(r["version"]),
            str(r["n_instances"]),
            *(_fmt(probs.get(n)) for n in SUBTYPES),
        )
    console.print(table)
    if detail:
        inst = Table(title="slices (by z)")
        for col in ("z", "sop instance", "status", "reason"):
            inst.add_column(col)
        for n in SUBTYPES:
            inst.add_column(n, justify="right")
        for i in rows[0]["instances"]:
            probs = i.get("probabilities") or {}
            z = "-" if i["z"] is None else f"{i['z']:.1f}"
            inst.add_row(
                z,
                i["sop_instance_uid"],
                i["status"],
                i["error"] or "",
                *(_fmt(probs.get(n)) for n in SUBTYPES),
            )
        console.print(inst)
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
        console.print("report objects: none queued")
        return
    table = Table(title="report objects sent to the PACS")
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
    """The table of ``ichnode destinations check`` (rows: outbox.EchoResult)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not rows:
        console.print("no destinations configured")
        return
    table = Table(title="destinations (C-ECHO)")
    for col in ("name", "AE title", "host:port", "status"):
        table.add_column(col)
    table.add_column("round trip", justify="right")
    for r in rows:
        table.add_row(
            r.name,
            r.ae_title,
            f"{r.host}:{r.port}",
            Text("OK", style="green") if r.ok else Text(r.status, style="red"),
            "-" if r.round_trip_ms is None else f"{r.round_trip_ms:.0f} ms",
        )
    console.print(table)
