"""Group commit (``db.group_commit``) on a real SQLite file: writes queued while the write turn
is taken share one transaction and one commit, each caller gets its own result only once that
commit is made, and a failing write rolls its whole group back for every member to redo alone."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ichnode.db.engine import make_engine
from ichnode.db.group_commit import GroupCommit, GroupFailed
from ichnode.db.write_turn import WriteTurns


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "group.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE rows (name TEXT PRIMARY KEY)"))
    yield sessionmaker(bind=engine), WriteTurns(path)
    engine.dispose()


def _insert(name: str):  # noqa: ANN202
    def write(session: Session) -> str:
        session.execute(text("INSERT INTO rows (name) VALUES (:n)"), {"n": name})
        return name.upper()

    return write


def _names(sessions: sessionmaker) -> list[str]:
    with sessions() as session:
        return sorted(session.scalars(text("SELECT name FROM rows")))


def _run_while_turn_is_held(commits: GroupCommit, turns: WriteTurns, names: list[str]):  # noqa: ANN202
    """Start one thread per name while this thread holds the write turn, wait until all have
    queued, then let them go; returns each thread's result or exception by name."""
    outcomes: dict[str, object] = {}

    def member(name: str) -> None:
        try:
            outcomes[name] = commits.run(_insert(name))
        except GroupFailed as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=member, args=(name,)) for name in names]
    with turns.turn():
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(commits._queue) < len(names) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(commits._queue) == len(names)
        assert outcomes == {}  # nobody answered while its commit could not be made
    for thread in threads:
        thread.join(10)
    return outcomes


def test_a_lone_write_commits_at_once(database):
    sessions, turns = database
    commits = GroupCommit(sessions, turns)
    assert commits.run(_insert("a")) == "A"
    assert _names(sessions) == ["a"]
    assert (commits.groups, commits.writes) == (1, 1)


def test_writes_that_queue_behind_the_turn_share_one_commit(database):
    sessions, turns = database
    commits = GroupCommit(sessions, turns)
    names = ["a", "b", "c", "d", "e"]
    outcomes = _run_while_turn_is_held(commits, turns, names)
    assert outcomes == {name: name.upper() for name in names}
    assert _names(sessions) == names
    assert (commits.groups, commits.writes) == (1, 5)
    assert commits.run(_insert("f")) == "F"  # the lead was given back
    assert (commits.groups, commits.writes) == (2, 6)


def test_groups_are_at_most_max_group_and_the_rest_follow(database):
    sessions, turns = database
    commits = GroupCommit(sessions, turns, max_group=2)
    names = ["a", "b", "c", "d", "e"]
    outcomes = _run_while_turn_is_held(commits, turns, names)
    assert outcomes == {name: name.upper() for name in names}
    assert _names(sessions) == names
    assert (commits.groups, commits.writes) == (3, 5)


def test_one_failing_write_rolls_back_its_group_and_every_member_is_told(database):
    sessions, turns = database
    rolled_back = []
    commits = GroupCommit(sessions, turns, on_rollback=lambda: rolled_back.append(True))
    commits.run(_insert("taken"))
    outcomes = _run_while_turn_is_held(commits, turns, ["a", "taken", "b"])
    assert all(isinstance(o, GroupFailed) for o in outcomes.values()), outcomes
    assert _names(sessions) == ["taken"]  # neither a nor b kept: each redoes its write alone
    assert rolled_back == [True]
    with pytest.raises(IntegrityError):  # what the member redoing "taken" alone meets
        with sessions() as session:
            _insert("taken")(session)
            session.commit()
    assert commits.run(_insert("a")) == "A"  # the next group is not stuck
    assert _names(sessions) == ["a", "taken"]
