"""Every SQLAlchemy statement is built in ``ichnode/db/``: loops, the web layer and the
commands call its functions (take a session, never commit), as procrastinate's worker holds
no SQL. The scan reads the source (AST), so it holds for code no test reaches."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ichnode"
DB = PACKAGE / "db"
#: What code outside ichnode/db may import from SQLAlchemy: errors to catch, and the types of
#: the session and sessionmaker it passes on (it owns the transaction: begin, commit).
ALLOWED_IMPORTS = {"sqlalchemy.exc": None, "sqlalchemy.orm": {"Session", "sessionmaker"}}
#: Session methods that run or stage a statement.
STATEMENT_METHODS = {
    "execute", "scalar", "scalars", "query", "get", "get_one", "add", "add_all", "delete",
    "merge", "flush", "connection", "refresh",
}  # fmt: skip


def statements_outside_db(path: Path) -> list[str]:
    """``file:line what`` for each SQLAlchemy import or session statement in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [
                f"{where} import {a.name}" for a in node.names if a.name.startswith("sqlalchemy")
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            allowed = ALLOWED_IMPORTS.get(node.module or "", set())
            for alias in node.names:
                if allowed is not None and alias.name not in allowed:
                    found.append(f"{where} from {node.module} import {alias.name}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in STATEMENT_METHODS
            and isinstance(node.func.value, (ast.Name, ast.Attribute))
            and ast.unparse(node.func.value).lower().endswith("session")
        ):
            found.append(f"{where} {ast.unparse(node.func)}(...)")
    return found


def test_no_sqlalchemy_statement_is_built_outside_ichnode_db():
    sources = [p for p in PACKAGE.rglob("*.py") if DB not in p.parents]
    assert len(sources) > 40
    found = [line for path in sources for line in statements_outside_db(path)]
    assert found == []


def test_the_scan_finds_a_statement_and_a_session_call(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sqlalchemy import select\nfrom sqlalchemy.orm import Session, aliased\n"
        "def f(session: Session):\n    return session.get(Study, 1)\n"
        "def g(sessions):\n    with sessions.begin() as session:\n        session.add(x)\n"
    )
    assert statements_outside_db(bad) == [
        "bad.py:1 from sqlalchemy import select",
        "bad.py:2 from sqlalchemy.orm import aliased",
        "bad.py:4 session.get(...)",
        "bad.py:7 session.add(...)",
    ]
