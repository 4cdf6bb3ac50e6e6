"""The ``ichnode`` command line: thin typer commands that parse and call the library."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ichnode.errors import IchnodeError
from training.config import cli_parameters

app = typer.Typer(
    name="ichnode",
    help="A DICOM node that triages head CT for intracranial hemorrhage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")
destinations_app = typer.Typer(
    help="The DICOM nodes that receive report objects.", no_args_is_help=True
)
app.add_typer(destinations_app, name="destinations")
review_app = typer.Typer(
    help="Review a study's result (confirmed, rejected, missed), or see the agreement.",
    invoke_without_command=True,
)
app.add_typer(review_app, name="review")

_state = {"debug": False}


def _show_flags_bare() -> None:
    """Help lists flags without a type: typer's rich help prints ``--json <bool>`` as if the
    flag took a value (its plain help and click's do not)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag or self.count else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_show_flags_bare()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Config file (default: config/ichnode.toml if present)."),
]
DbUrlOpt = Annotated[
    str | None,
    typer.Option("--db-url", help="Database URL (sqlite:///... or postgresql+psycopg://...)."),
]
StoreOpt = Annotated[Path | None, typer.Option("--store", help="Folder of received files.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="Checkpoint (default: the bundled demo model).")
]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only since this ISO 8601 date or date-time (without an offset: UTC), "
        "e.g. 2020-01-01, 2020-01-01T08:00:00 or 2020-01-01T10:00:00+02:00.",
    ),
]


def _since(value: str | None) -> datetime | None:
    """``--since`` as an aware UTC datetime; a usage error names the option."""
    from ichnode.times import parse_utc

    if value is None:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date or date-time", param_hint="'--since'"
        ) from None


def _show_version(value: bool) -> None:
    if value:
        from ichnode import __version__

        typer.echo(f"ichnode {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Third-party chatter stays out of the node's log unless debugging.
    for noisy in ("alembic", "pynetdicom"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


# --------------------------------------------------------------------------- machine learning


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (RSNA layout).")],
    studies: Annotated[int, typer.Option("--studies", min=1, help="Number of studies.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same files).")] = 0,
    size: Annotated[int, typer.Option("--size", min=64, help="Rows and columns.")] = 512,
    valid_uids: Annotated[
        bool,
        typer.Option(
            "--valid-uids", help="Write numeric DICOM UIDs instead of RSNA's ID_... ones."
        ),
    ] = False,
    preset: Annotated[
        str,
        typer.Option(
            "--preset", help="Parameter ranges: train (default) or heldout (never train on it)."
        ),
    ] = "train",
) -> None:
    """Write synthetic head-CT phantoms in the RSNA training layout."""
    from phantoms.presets import PRESETS
    from phantoms.synth import generate

    if preset not in PRESETS:
        typer.echo(
            f"error: unknown preset {preset!r}; known presets: {', '.join(PRESETS)}", err=True
        )
        raise typer.Exit(2)
    summary = generate(
        out, studies=studies, seed=seed, size=size, valid_uids=valid_uids, preset=preset
    )
    typer.echo(summary)


def train(**options: Any) -> None:
    """Train a model on RSNA-layout data: the slice network (best epoch by validation loss),
    then the study model on its embeddings; calibrated, with slice and study thresholds."""
    from training.config import from_cli
    from training.loop import run

    cfg = from_cli(options, lambda message, flag: typer.BadParameter(message, param_hint=flag))
    best = run(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        typer.echo(f"best checkpoint: {best}")


# The options are generated from training.config.TrainConfig: written once, there.
train.__signature__ = inspect.Signature(cli_parameters())  # type: ignore[attr-defined]
app.command()(train)


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", help="RSNA-layout folder or a training run's.")],
    out: Annotated[
        Path, typer.Option("--out", help="Report folder (report.json, report.md, PNGs).")
    ],
    model: ModelOpt = None,
    split: Annotated[
        Path | None,
        typer.Option(
            "--split", help="A training run's split.json: evaluate its test patients only."
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    compare_with: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            help="A second checkpoint (e.g. fine-tuned from --model): both on the same "
            "images, side by side (OUT/old, OUT/new, OUT/compare.md).",
        ),
    ] = None,
) -> None:
    """Evaluate a checkpoint: per-subtype metrics, weighted log loss, plots."""
    from training.evaluate import evaluate as run_evaluation

    if compare_with is not None:
        from training.compare import compare

        result = compare(
            data, model, compare_with, out, split=split, device=device, batch_size=batch_size
        )
        typer.echo(result.text())
        return

    report = run_evaluation(
        data=data, model=model, out=out, split=split, device=device, batch_size=batch_size
    )
    typer.echo(report.summary_text())


@app.command()
def predict(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH",
            help="DICOM files to score, or one folder: each study in it, as the node.",
        ),
    ],
    model: ModelOpt = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Write annotated brain-window PNGs (a file, or a folder)."),
    ] = None,
) -> None:
    """Score slices: six probabilities each, the predicted subtypes and the top subtype.

    Given one folder, every study in it is scored as the node scores it (the study model over
    its slices in z order) and flagged or not.
    """
    from ichnode.predict import (
        predict_folder,
        predict_paths,
        render_json,
        render_studies,
        render_studies_json,
        render_table,
    )

    if len(files) == 1 and files[0].is_dir():
        if png is not None:
            raise typer.BadParameter("--png takes files, not a study folder", param_hint="--png")
        scores = predict_folder(files[0], model=model, device=device)
        if as_json:
            typer.echo(render_studies_json(scores))
        else:
            render_studies(scores)
        if not scores.studies:
            raise IchnodeError(f"{files[0]}: no CT slice could be scored")
        return
    if png is not None:
        from ichnode.predict import png_target_error

        problem = png_target_error(png, len(files))
        if problem:
            raise typer.BadParameter(problem, param_hint="'--png'")
    rows = predict_paths(files, model=model, device=device, png=png)
    if as_json:
        typer.echo(render_json(rows))
    else:
        render_table(rows)
    if any(r.error for r in rows):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- the node


def _settings(config: Path | None, **flags: object):  # noqa: ANN202
    from ichnode.config import load_settings

    return load_settings(config, **flags)


@app.command()
def serve(
    config: ConfigOpt = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Our AE title.")] = None,
    bind: Annotated[str | None, typer.Option("--bind", help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="DICOM port.")] = None,
    db_url: DbUrlOpt = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="In-process worker threads (0: none).")
    ] = None,
    stable_seconds: Annotated[
        float | None,
        typer.Option("--stable-seconds", help="Quiet time before a study is resulted."),
    ] = None,
) -> None:
    """Run the DICOM node: receive CT, score every slice, result every study."""
    from ichnode.node.preflight import preflight

    settings = _settings(
        config,
        ae_title=ae_title,
        bind=bind,
        port=port,
        db_url=db_url,
        store=store,
        model=model,
        device=device,
        workers=workers,
        stable_seconds=stable_seconds,
    )
    logging.getLogger().setLevel(settings.log_level)
    http_sock = preflight(settings)  # before torch: a failing start is quick
    from ichnode.node.server import serve as run_node

    run_node(settings, http_sock)


@app.command()
def worker(
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    torch_threads: Annotated[
        int | None, typer.Option("--torch-threads", min=0, help="0: torch's default.")
    ] = None,
    exit_when_empty: Annotated[
        bool, typer.Option("--exit-when-empty", help="Stop once the queue is empty.")
    ] = False,
) -> None:
    """Run one worker process against the configured database and store."""
    from ichnode.node.standalone import run_worker

    settings = _settings(
        config,
        db_url=db_url,
        store=store,
        model=model,
        device=device,
        batch_size=batch_size,
        torch_threads=torch_threads,
    )
    run_worker(settings, exit_when_empty=exit_when_empty)


@app.command()
def results(
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Show one study with every slice.")
    ] = None,
    flagged: Annotated[
        bool, typer.Option("--flagged", help="Only studies flagged for hemorrhage.")
    ] = False,
    since: SinceOpt = None,
    accession: Annotated[
        str | None,
        typer.Option("--accession", help="Only studies with this accession number."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
) -> None:
    """List studies and their results (newest first), or one study in detail."""
    from ichnode.results_view import show_results

    if fmt not in ("table", "json", "csv"):
        raise typer.BadParameter("expected table, json or csv", param_hint="'--format'")
    since_utc = _since(since)
    settings = _settings(config, db_url=db_url)
    show_results(
        settings,
        study=study,
        flagged=flagged,
        since=since_utc,
        limit=limit,
        fmt=fmt,
        accession=accession,
    )


@destinations_app.command("check")
def destinations_check(config: ConfigOpt = None) -> None:
    """C-ECHO every configured destination; exit 1 if any does not answer."""
    from ichnode.node.scu import check_destinations
    from ichnode.results_view import show_destination_checks

    rows = check_destinations(_settings(config))
    show_destination_checks(rows)
    if any(not r.ok for r in rows):
        raise typer.Exit(1)


@app.command()
def resend(
    study: Annotated[str, typer.Option("--study", help="StudyInstanceUID to send again.")],
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    store: StoreOpt = None,
) -> None:
    """Queue the latest report objects of a study again (the running node sends them).

    When building them failed, asks the running node to build them again instead.
    """
    from ichnode.resend import resend_study

    done = resend_study(_settings(config, db_url=db_url, store=store), study)
    if done.rebuild:
        typer.echo(
            f"report objects of study {study} v{done.version} will be built again by the "
            f"running node (last attempt failed: {done.error})"
        )
    else:
        typer.echo(
            f"queued {done.queued} report object(s) and {done.notified} notification(s) "
            f"of study {study} again"
        )


@app.command()
def audit(
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows per table.")] = 100,
) -> None:
    """The audit trail: associations (who sent what, and how it ended) and deliveries."""
    from ichnode.audit import list_associations, list_deliveries, render, render_deliveries
    from ichnode.db.session import open_database

    since_utc = _since(since)
    settings = _settings(config, db_url=db_url)
    engine, sessions = open_database(settings, create=False)
    try:
        with sessions() as session:
            typer.echo("Associations\n" + render(list_associations(session, since_utc, limit)))
            typer.echo(
                "\nDeliveries\n" + render_deliveries(list_deliveries(session, since_utc, limit))
            )
    finally:
        engine.dispose()


@review_app.callback()
def review(
    ctx: typer.Context,
    study: Annotated[
        str | None, typer.Option("--study", help="StudyInstanceUID of the study reviewed.")
    ] = None,
    verdict: Annotated[
        str | None,
        typer.Option(
            "--verdict",
            help="confirmed (the result is right), rejected (a false alarm) or missed "
            "(a hemorrhage it did not report).",
        ),
    ] = None,
    subtypes: Annotated[
        str | None,
        typer.Option(
            "--subtypes",
            help="Subtypes present, comma-separated ('' for none); default: the result's.",
        ),
    ] = None,
    slices: Annotated[
        str | None,
        typer.Option("--slices", help="SOP instance UIDs of the slices that show them."),
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="A free-text note.")] = None,
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Who reviews (default: $USER).")
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Result version (default: latest).")
    ] = None,
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
) -> None:
    """Record a review of a study's latest result; a newer review supersedes, none is lost."""
    if ctx.invoked_subcommand is not None:
        return
    if study is None or verdict is None:
        raise typer.BadParameter("give --study and --verdict", param_hint="'--study'")
    from ichnode.review_view import record_review

    done = record_review(
        _settings(config, db_url=db_url),
        study,
        verdict,
        reviewer=reviewer or os.environ.get("USER") or "cli",
        subtypes=None if subtypes is None else subtypes.split(","),
        slices=None if slices is None else [s for s in slices.split(",") if s.strip()],
        note=note,
        version=version,
    )
    typer.echo(f"review {done['id']}: {done['verdict']} on version {done['version']}")


@review_app.command("stats")
def review_stats(
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    since: SinceOpt = None,
    overall: Annotated[
        bool, typer.Option("--overall", help="One row per model id, not per month.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Flagged studies confirmed vs rejected, sensitivity and specificity against reviews."""
    from ichnode.review_view import read_agreement, render_agreement

    rows = read_agreement(_settings(config, db_url=db_url), _since(since), by_month=not overall)
    typer.echo(render_agreement(rows, as_json))


@app.command("export-reviewed")
def export_reviewed(
    out: Annotated[Path, typer.Option("--out", help="A new folder (RSNA training layout).")],
    config: ConfigOpt = None,
    db_url: DbUrlOpt = None,
    store: StoreOpt = None,
    since: SinceOpt = None,
    deidentify: Annotated[
        bool,
        typer.Option("--deidentify", help="Apply the DICOM PS3.15 basic profile to every copy."),
    ] = False,
) -> None:
    """Write the reviewed studies, labelled from their reviews, for 'ichnode train'."""
    from ichnode.export import export_reviewed as run_export

    summary = run_export(
        _settings(config, db_url=db_url, store=store),
        out,
        since=_since(since),
        deidentify=deidentify,
    )
    typer.echo(str(summary))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, db_url: DbUrlOpt = None) -> None:
    """Bring the database schema up to date (Alembic migrations)."""
    from ichnode.db import migrate
    from ichnode.db.engine import make_engine
    from ichnode.db.session import display_url

    settings = _settings(config, db_url=db_url)
    engine = make_engine(settings.db_url)
    migrate.upgrade(engine)
    typer.echo(f"database {display_url(settings.db_url)} is at {migrate.current_revision(engine)}")


def main() -> None:
    """Console entry point: one-line errors, no tracebacks unless ``--debug``.

    Usage errors (a bad value, an unknown option or command) exit 2, like ichnode's own errors.
    """
    try:
        code = app(standalone_mode=False)
    except IchnodeError as exc:
        _fail(str(exc), exc)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors and anything unexpected
        from sqlalchemy.exc import DBAPIError

        from ichnode.db.engine import error_reason

        if _is_usage_error(exc):
            _usage_error(exc)
        if isinstance(exc, DBAPIError):  # the database is down, refuses us, or is not ours
            _fail(f"database error: {error_reason(exc)}", exc)
        _fail(f"{type(exc).__name__}: {exc}", exc)
    # Without standalone mode click returns the code of a ``typer.Exit`` instead of raising.
    if isinstance(code, int) and code:
        sys.exit(code)


def _click_exception_types() -> tuple[type[Exception], ...]:
    """click's exception base, and typer's own copy of it (typer 0.2x vendors click)."""
    types: list[type[Exception]] = []
    if hasattr(typer, "TyperException"):
        types.append(typer.TyperException)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(types)


def _is_usage_error(exc: Exception) -> bool:
    return isinstance(exc, _click_exception_types()) and hasattr(exc, "format_message")


def _usage_error(exc: Exception) -> None:
    """``error: <message>`` and where to find help (no class names); exit 2 (1 for others)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # ``ichnode`` alone: the help is the answer
        typer.echo(exc.format_message(), err=True)  # type: ignore[attr-defined]
        sys.exit(2)
    message = exc.format_message().strip()  # type: ignore[attr-defined]
    typer.echo(f"error: {message.splitlines()[0] if message else 'invalid usage'}", err=True)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        typer.echo(f"(see '{ctx.command_path} --help')", err=True)
    code = getattr(exc, "exit_code", 2)
    sys.exit(2 if code == 2 or ctx is not None else code)


def _fail(message: str, exc: BaseException) -> None:
    if _state["debug"]:
        import traceback

        traceback.print_exception(exc)
    typer.echo(f"error: {message.splitlines()[0] if message else type(exc).__name__}", err=True)
    sys.exit(2)
