"""Owns the sqlite ``BEGIN IMMEDIATE`` fix shared by the WSGI modules of real Glance and real Keystone.

oslo.db begins every sqlite transaction with a deferred ``BEGIN``, and both services read and then write
inside one transaction, so with several uwsgi workers on one sqlite file two concurrent writers both hold a
read lock, neither can upgrade it, and one fails at once with "database is locked" (the busy timeout does
not help a deadlocked upgrade). Taking the write lock up front with ``BEGIN IMMEDIATE`` makes the second
writer wait on the busy timeout (``?timeout=60`` in the database URL) instead. The harness switches each
database to WAL so that readers are not blocked by the writer. Importing this module installs the fix; it
must be imported before the service creates its engine.

This module runs inside the Glance or Keystone venv under uwsgi, not in the project's venv.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from sqlalchemy import event

# oslo.db's own marker for "a transaction was begun explicitly on this connection"; its engine-level
# sqlite ``begin`` listener skips its deferred BEGIN when the marker is already set.
_MARKER = "in_transaction"


# Class-level listeners run before the engine-level ones oslo.db registers, so this BEGIN IMMEDIATE is
# the one that opens the transaction.
@event.listens_for(sqlalchemy.engine.Engine, "begin")
def _begin_immediate(conn: Any) -> None:
    if conn.dialect.name == "sqlite" and _MARKER not in conn.info:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.info[_MARKER] = True


@event.listens_for(sqlalchemy.engine.Engine, "commit")
@event.listens_for(sqlalchemy.engine.Engine, "rollback")
def _end_transaction(conn: Any) -> None:
    # oslo.db pops the marker itself on its engines; this covers any engine it did not set up.
    conn.info.pop(_MARKER, None)
