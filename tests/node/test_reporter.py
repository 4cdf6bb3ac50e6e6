"""The reporter: every result version gets its report objects once, also across a crash.

Real nodes (in-process), real databases (SQLite and PostgreSQL), DCMTK ``storescp`` as the
destination, the real store's free-space check as the passing failure.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading

import pytest
from db_fixtures import add_instances
from delivery_fixtures import all_sent, bleed_study, destination, latest_result, rows
from dicom_client import send
from helpers import free_port, wait_for
from orthanc import StoreSCP
from sqlalchemy import delete, select
from typer.testing import CliRunner

from ichnode.cli import app
from ichnode.db.models import (
    Instance,
    InstanceStatus,
    OutboxEntry,
    ReportObject,
    ReportStatus,
    Study,
    StudyResult,
)
from ichnode.model import demo_model_path, load_checkpoint
from ichnode.node import reporting
from ichnode.store import Store


@pytest.fixture
def quick_reporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catch-up passes and retries within a second, so the tests need not wait minutes."""
    monkeypatch.setattr(reporting, "POLL_SECONDS", 0.3)
    monkeypatch.setattr(reporting, "RETRY_SECONDS", 0.3)


def report_status(node, result_id: int) -> tuple[ReportStatus | None, str | None]:  # noqa: ANN001
    with node.sessions() as session:
        result = session.get(StudyResult, result_id)
        return result.report_status, result.report_error


def test_a_result_a_crash_left_unreported_is_reported_at_the_next_start(node_factory, tmp_path):
    with StoreSCP(tmp_path / "received") as scp:
        settings = {"destinations": [destination(scp.port, ["sr"])]}
        node = node_factory(**settings)
        datasets = bleed_study(seed=11, n_slices=4, size=128)
        send(node.settings.port, datasets)
        [first] = wait_for(lambda: all_sent(node, count=1), timeout=60)
        result_id = first.study_result_id
        assert report_status(node, result_id) == (ReportStatus.DONE, None)
        node.stop()
        # What a crash between the result's commit and the report transaction leaves: the
        # version is pending and has no objects (the build and the DONE mark commit together).
        with node.sessions.begin() as session:
            session.execute(delete(ReportObject))  # and, cascading, their outbox rows
            session.get(StudyResult, result_id).report_status = ReportStatus.PENDING

        again = node_factory(**settings)
        [sent] = wait_for(lambda: all_sent(again, count=1), timeout=60)
        wait_for(lambda: len(scp.files()) == 2, timeout=10)
    assert sent.study_result_id == result_id and sent.kind == "sr"
    assert sent.sop_instance_uid != first.sop_instance_uid  # built again, not an old row
    assert report_status(again, result_id) == (ReportStatus.DONE, None)


def test_a_passing_store_failure_is_retried_until_the_objects_are_built(
    node_factory, tmp_path, caplog, quick_reporter
):
    caplog.set_level(logging.ERROR, logger="ichnode.node.reporting")
    with StoreSCP(tmp_path / "received") as scp:
        node = node_factory(destinations=[destination(scp.port, ["sr"])])
        send(node.settings.port, bleed_study(seed=12, n_slices=4, size=128))
        # Every slice is stored; now the disk is "full" for the report objects.
        node.store.min_free_bytes = 1 << 62
        wait_for(lambda: "retrying in" in caplog.text, timeout=60)
        result = latest_result(node)
        assert report_status(node, result.id) == (ReportStatus.PENDING, None)
        assert rows(node) == []
        node.store.min_free_bytes = 0
        [sent] = wait_for(lambda: all_sent(node, count=1), timeout=30)
    assert "free disk space below the configured minimum" in caplog.text
    assert sent.study_result_id == result.id
    assert report_status(node, result.id) == (ReportStatus.DONE, None)


def test_a_report_that_cannot_be_built_is_failed_and_resend_builds_it_again(
    node_factory, tmp_path, db_url, quick_reporter
):
    store_dir = tmp_path / "store"
    with StoreSCP(tmp_path / "received") as scp:
        node = node_factory(destinations=[destination(scp.port, ["sr"])], stable_seconds=2.0)
        datasets = bleed_study(seed=13, n_slices=4, size=128)
        uid = str(datasets[0].StudyInstanceUID)
        send(node.settings.port, datasets)

        def scored() -> bool:
            with node.sessions() as session:
                states = session.scalars(select(Instance.status)).all()
            return len(states) == 4 and set(states) == {InstanceStatus.DONE}

        wait_for(scored, timeout=60)
        # The study's files vanish before its result is reported (an operator's mistake).
        study_dir = store_dir / uid
        moved = shutil.move(study_dir, tmp_path / "aside")
        result = wait_for(lambda: latest_result(node), timeout=30)
        status, error = wait_for(
            lambda: (s := report_status(node, result.id))[0] == ReportStatus.FAILED and s,
            timeout=30,
        )
        assert "key slice" in error and "stored file unreadable" in error
        runner = CliRunner()
        shown = runner.invoke(
            app, ["results", "--study", uid, "--db-url", db_url, "--format", "json"]
        )
        [version] = json.loads(shown.output)[0]["versions"]
        assert (version["reports"], version["report_error"]) == ("failed", error)
        table = runner.invoke(app, ["results", "--study", uid, "--db-url", db_url])
        assert "report objects of v1 failed: key slice" in table.output

        shutil.move(moved, study_dir)
        done = runner.invoke(
            app, ["resend", "--study", uid, "--db-url", db_url, "--store", str(store_dir)]
        )
        assert done.exit_code == 0, done.output
        assert "will be built again by the running node" in done.output
        [sent] = wait_for(lambda: all_sent(node, count=1), timeout=30)
    assert sent.study_result_id == result.id
    assert report_status(node, result.id) == (ReportStatus.DONE, None)


def _study_with_versions(session_factory, versions: int) -> tuple[str, list[int]]:  # noqa: ANN001
    """A study whose results v1..v``versions`` are all pending; returns its UID and their ids."""
    with session_factory.begin() as session:
        [instance_id] = add_instances(session, 1)
        study = session.get(Instance, instance_id).study
        study.result_version = versions
        results = [
            StudyResult(
                study_id=study.id,
                version=v,
                model_id="m",
                flagged=False,
                n_instances=1,
                n_scored=0,
                n_failed=0,
                n_skipped=1,
            )  # fmt: skip
            for v in range(1, versions + 1)
        ]
        session.add_all(results)
        session.flush()
        return study.study_instance_uid, [r.id for r in results]


def test_resend_before_the_objects_are_built_says_so(session_factory, tmp_path):
    from ichnode.resend import DeliveryError, resend

    uid, _ = _study_with_versions(session_factory, 1)
    with session_factory() as session, pytest.raises(DeliveryError, match="not built yet"):
        resend(session, Store(tmp_path / "store"), uid)


@pytest.mark.every_backend  # the claim statement differs (SKIP LOCKED)
def test_an_overtaken_version_is_superseded_and_the_latest_is_built_once(session_factory, tmp_path):
    from ichnode.config import Settings

    _, (old, new) = _study_with_versions(session_factory, 2)
    settings = Settings(store=tmp_path / "store", destinations=[destination(free_port())])
    checkpoint = load_checkpoint(demo_model_path(), "cpu")
    store = Store(settings.store)
    seen: list[tuple[int, ReportStatus]] = []
    reporter = reporting.Reporter(
        session_factory, store, settings, checkpoint, on_done=lambda i, s: seen.append((i, s))
    )
    assert reporter.run_once() == 2
    # v2 scored nothing: it is done with no objects; v1 was overtaken by it.
    assert seen == [(old, ReportStatus.SUPERSEDED), (new, ReportStatus.DONE)]
    assert reporter.run_once() == 0  # nothing is built twice
    assert reporting.report_result(session_factory, store, settings, checkpoint, new) is None
    with session_factory() as session:
        assert session.scalar(select(OutboxEntry.id)) is None
        assert session.scalar(select(Study.result_version)) == 2


@pytest.mark.every_backend  # the claim statement differs (SKIP LOCKED)
def test_two_reporters_racing_for_one_version_queue_its_objects_once(node_factory, tmp_path):
    node = node_factory(destinations=[destination(free_port(), ["sr", "summary"])])
    send(node.settings.port, bleed_study(seed=14, n_slices=4, size=128))
    result_id = wait_for(lambda: len(rows(node)) == 2 and rows(node)[0].study_result_id, 60)
    node.stop()
    with node.sessions.begin() as session:  # back to the state before the reporter ran
        session.execute(delete(ReportObject))
        session.get(StudyResult, result_id).report_status = ReportStatus.PENDING

    before = stored_files(node)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def race() -> None:
        barrier.wait(10)
        try:
            outcomes.append(
                reporting.report_result(
                    node.sessions, node.store, node.settings, node.saliency.checkpoint(), result_id
                )
            )
        except Exception as exc:  # noqa: BLE001 - a passing failure is a legal outcome here
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # One claims and builds it; the other finds it claimed.
    assert outcomes.count(ReportStatus.DONE) == 1, outcomes
    assert {rows(node)[i].kind for i in range(2)} == {"sr", "summary"} and len(rows(node)) == 2
    assert report_status(node, result_id) == (ReportStatus.DONE, None)
    # The loser's objects were removed: the new files are exactly the queued ones.
    assert stored_files(node) - before == {r.path for r in rows(node)}


def stored_files(node) -> set[str]:  # noqa: ANN001
    root = node.store.root
    return {str(p.relative_to(root)) for p in root.rglob("*.dcm")}
