"""The receivers' turns at SQLite's write lock (``db.write_turn``): while one holds its turn,
another process cannot take it, and it is given back when the transaction fails."""

from __future__ import annotations

import fcntl
import os

import pytest

from ichnode.db.write_turn import LOCK_SUFFIX, WriteTurns


def _can_lock(path) -> bool:  # noqa: ANN001 - another open file description, as another process has
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def test_a_turn_held_here_is_not_free_for_another_process(tmp_path):
    turns = WriteTurns(tmp_path / "ichnode.db")
    with turns.turn():
        assert not _can_lock(tmp_path / f"ichnode.db{LOCK_SUFFIX}")
    assert _can_lock(tmp_path / f"ichnode.db{LOCK_SUFFIX}")


def test_a_turn_is_given_back_when_the_transaction_fails(tmp_path):
    turns = WriteTurns(tmp_path / "ichnode.db")
    with pytest.raises(RuntimeError), turns.turn():
        raise RuntimeError("the statement failed")
    assert _can_lock(tmp_path / f"ichnode.db{LOCK_SUFFIX}")
