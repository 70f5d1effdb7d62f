"""Editing a run's SQLite files as an attacker with file access would: triggers dropped first."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def tamper_sql(database: Path, sql: str, *args: object) -> None:
    """Run ``sql`` on ``database`` after dropping its append-only triggers (anyone with file access can)."""
    conn = sqlite3.connect(database)
    for trigger in [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]:
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute(sql, args)
    conn.commit()
    conn.close()
