"""Keep an admitted instance: file written durably, then its row committed -- then the answer.

The one path of every received instance, C-STORE (:mod:`ichnode.node.scp`) and STOW-RS
(:mod:`ichnode.node.stow`) alike. A repeat of a recorded SOP instance is counted and the first
copy kept. Storage or database trouble raises :class:`~ichnode.node.intake.Refusal` with
0xA700 and leaves no orphan row; the written file is removed too, except when the commit itself
failed (its outcome unknown: the server may have committed before the connection dropped). That
file stays, so that a row never points at nothing; if no row was made it is an orphan file, and
the sender's retry (answered 0xA700, it resends) writes the same path again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from ichnode.config import Settings
from ichnode.db import ingest
from ichnode.db.engine import error_reason, sqlite_file
from ichnode.db.models import InstanceStatus
from ichnode.db.prepared import Writer
from ichnode.db.write_turn import WriteTurns
from ichnode.node.intake import Admitted, Refusal
from ichnode.node.selection import SelectionRules
from ichnode.node.statuses import OUT_OF_RESOURCES
from ichnode.store import Store, StoreError, uid_hash

log = logging.getLogger(__name__)


class Keeper:
    """What an intake (the SCP, the STOW-RS receiver) needs to keep what it admits: the store,
    the database, the selection rules it admits by and the ids it has already recorded."""

    def __init__(self, settings: Settings, store: Store, sessions: sessionmaker) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.rules = SelectionRules(settings.selection)
        self.known_ids = ingest.KnownIds()
        # The database the sessions write to (a test may pass other sessions than db_url's);
        # sqlite_file is None for PostgreSQL and in-memory databases: no turns there.
        bind = sessions.kw.get("bind")
        self.turns = WriteTurns(sqlite_file(bind.url) if bind is not None else None)

    def keep(
        self, admitted: Admitted, parts: Sequence[bytes | memoryview], now: datetime
    ) -> InstanceStatus | None:
        """:func:`keep` with this intake's store, database and limits."""
        return keep(
            self.sessions,
            self.store,
            admitted,
            parts,
            max_instance_bytes=self.settings.max_instance_bytes,
            skip_duplicate_positions=self.rules.settings.skip_duplicate_positions,
            known_ids=self.known_ids,
            now=now,
            turns=self.turns,
            touch_every=ingest.touch_every(self.settings.stable_seconds),
        )


def keep(
    sessions: sessionmaker,
    store: Store,
    admitted: Admitted,
    parts: Sequence[bytes | memoryview],
    *,
    max_instance_bytes: int,
    skip_duplicate_positions: bool,
    known_ids: ingest.KnownIds,
    now: datetime,
    turns: WriteTurns | None = None,
    touch_every: float = 0.0,
) -> InstanceStatus | None:
    """Write the file (CT only: ``parts`` joined are the Part 10 file, at most
    ``max_instance_bytes``) and the row; returns the row's status (None: a repeat, the first
    copy kept). Raises :class:`Refusal` (0xA700) when either cannot be made durable.
    ``turns``: the receivers' turns at SQLite's write lock (:mod:`ichnode.db.write_turn`);
    ``touch_every``: how often the study's ``last_received_at`` moves
    (:func:`ichnode.db.ingest.record_instance`)."""
    turns = turns or WriteTurns(None)
    received = admitted.received
    study_uid, series_uid, sop_uid = admitted.uids
    tag = uid_hash(sop_uid)
    try:
        # One pooled connection per instance, its statements prepared (db.prepared): the
        # duplicate check is a plain SELECT (no write lock on SQLite), the file is written,
        # then the rows are inserted and committed at once.
        with Writer.checkout(sessions) as db:
            if ingest.mark_duplicate(db, sop_uid, now):
                db.commit()
                log.info("instance %s received again: kept the first copy", tag)
                return None
            relative = None
            if admitted.is_ct:
                if sum(len(p) for p in parts) > max_instance_bytes:
                    raise Refusal(
                        OUT_OF_RESOURCES, f"instance {tag} is larger than max_instance_bytes"
                    )
                relative = store.relative_path(study_uid, series_uid, sop_uid)
                received.size_bytes = store.write(relative, list(parts))
                received.path = relative
            committing = False
            try:
                with turns.turn():
                    recorded = ingest.record_instance(
                        db, received, skip_duplicate_positions, known_ids, touch_every
                    )
                    committing = True
                    db.commit()
                if recorded.touched:
                    known_ids.touch(recorded.study_id)
            except IntegrityError:
                # The same SOP Instance arrived on another association at the same moment:
                # its row won; our identical bytes went to the same path.
                db.rollback()
                known_ids.clear()
                if not ingest.mark_duplicate(db, sop_uid, now):
                    # Not a duplicate: a real constraint failure (answer 0xA700).
                    if relative:
                        store.remove(relative)
                    raise
                db.commit()
                return None
            except SQLAlchemyError:
                known_ids.clear()
                # A commit that failed may have been made all the same (the connection dropped
                # after the server committed, before it answered): then the file stays, so that
                # the row never points at nothing and the sender's retry finds its first copy.
                if relative and not committing:
                    store.remove(relative)
                with contextlib.suppress(SQLAlchemyError):  # a dead connection cannot roll back
                    db.rollback()
                raise
    except StoreError as exc:
        raise Refusal(OUT_OF_RESOURCES, f"out of resources for instance {tag}: {exc}") from None
    except SQLAlchemyError as exc:
        raise Refusal(
            OUT_OF_RESOURCES, f"database failure for instance {tag}: {error_reason(exc)}"
        ) from None
    return recorded.status
