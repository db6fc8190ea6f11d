"""Reads every server session a pooler keeps for the database of DB_NAME, DB_HOST,
DB_PORT, DB_USER and DB_PASSWORD (PostgreSQL).

python pooled_sessions.py N   opens N client connections through the pooler, each in a
                              transaction so that each holds a server session of its own,
                              and prints a JSON list with one object per session: its
                              backend pid, the settings the migration step uses as that
                              session sees them, and the advisory locks it holds
"""

import json
import os
import sys

import psycopg

SETTINGS = ("lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout", "statement_timeout")


def main(count):
    connections = []
    sessions = []
    try:
        for _ in range(count):
            connection = psycopg.connect(
                host=os.environ["DB_HOST"],
                port=os.environ["DB_PORT"],
                dbname=os.environ["DB_NAME"],
                user=os.environ["DB_USER"],
                password=os.environ["DB_PASSWORD"],
                autocommit=True,
                prepare_threshold=None,
            )
            connections.append(connection)
            connection.execute("BEGIN")
            pid, advisory = connection.execute(
                "SELECT pg_backend_pid(), "
                "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())"
            ).fetchone()
            settings = {
                name: connection.execute("SELECT current_setting(%s)", [name]).fetchone()[0] for name in SETTINGS
            }
            sessions.append({"pid": pid, "advisory_locks": advisory, "settings": settings})
    finally:
        for connection in connections:
            connection.execute("ROLLBACK")
            connection.close()
    print(json.dumps(sessions))


if __name__ == "__main__":
    main(int(sys.argv[1]))
