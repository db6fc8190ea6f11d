"""Database helpers of the inner phase: reaching the database (connect timeouts, retries
with backoff, rejected credentials), reading the pending plan, and telling driver errors
apart (credentials, lock timeouts, SQLSTATE)."""

import time

from .config import (
    ALIAS,
    CONNECT_TIMEOUT,
    EXIT_CREDENTIALS,
    EXIT_TIMEOUT,
    MAX_BACKOFF_SECONDS,
    PHASE_DATABASE,
    RESULT_CREDENTIALS_REJECTED,
    RESULT_TIMEOUT,
    WAIT_TIMEOUT,
)
from .summary import StepEnded, elapsed, first_line


def is_credentials_error(error):
    cause = error.__cause__ or error
    code = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
    if code in ("28P01", "28000"):
        return True
    args = getattr(cause, "args", ())
    if args and args[0] in (1044, 1045, 1698):
        return True
    text = str(cause).lower()
    return (
        "password authentication failed" in text
        or "no password supplied" in text
        or "access denied for user" in text
        or ("role" in text and "does not exist" in text)
    )


def with_connect_timeout(connection, left=None):
    """Bounds each connection attempt when the settings set no connect timeout: at most
    CONNECT_TIMEOUT seconds, and never past the deadline."""
    if connection.vendor not in ("postgresql", "mysql"):
        return
    options = connection.settings_dict.setdefault("OPTIONS", {})
    if "connect_timeout" in options and not getattr(connection, "_django_migrate_timeout", False):
        return
    timeout = CONNECT_TIMEOUT if left is None else max(1, min(CONNECT_TIMEOUT, int(left)))
    options["connect_timeout"] = timeout
    connection._django_migrate_timeout = True


def wait_for_connection(connection, report, watchdog):
    from django.db.utils import Error as DatabaseError

    report.phase = PHASE_DATABASE
    started = time.monotonic()
    deadline = started + WAIT_TIMEOUT
    watchdog.arm(deadline, "database %r not reachable" % ALIAS)
    attempt = 0
    delay = 1.0
    while True:
        attempt += 1
        with_connect_timeout(connection, deadline - time.monotonic())
        try:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            report.database_seconds = time.monotonic() - started
            report.log("attempt %d: database %r is reachable (%s)" % (attempt, ALIAS, connection.vendor))
            watchdog.disarm()
            return
        except DatabaseError as e:
            try:
                connection.close()
            except DatabaseError:
                pass
            report.database_seconds = time.monotonic() - started
            if is_credentials_error(e):
                raise StepEnded(
                    EXIT_CREDENTIALS,
                    RESULT_CREDENTIALS_REJECTED,
                    "database %r rejected the credentials: %s" % (ALIAS, first_line(e)),
                ) from e
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepEnded(
                    EXIT_TIMEOUT,
                    RESULT_TIMEOUT,
                    "gave up after %.0fs and %d attempts: database %r not reachable: %s"
                    % (elapsed(), attempt, ALIAS, first_line(e)),
                ) from e
            pause = min(delay, left)
            report.log(
                "attempt %d: database %r not reachable: %s; retrying in %.0fs (%.0fs left)"
                % (attempt, ALIAS, first_line(e), pause, left)
            )
            time.sleep(pause)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def pending_migrations(connection):
    """The plan `migrate` would run now, as `app_label.name` strings."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    targets = executor.loader.graph.leaf_nodes()
    return ["%s.%s" % (m.app_label, m.name) for m, backwards in executor.migration_plan(targets) if not backwards]


def pending_now(connection, report):
    """pending_migrations on a connection that may have been closed by the server's idle
    limit since its last use (loading a large migration graph takes seconds): one retry
    on a new connection."""
    from django.db.utils import Error as DatabaseError

    try:
        return pending_migrations(connection)
    except DatabaseError as e:
        report.log("reading the migration state again on a new connection: %s" % first_line(e))
        connection.close()
        return pending_migrations(connection)


def close_quietly(connection):
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - a broken connection is closed all the same
        pass


def is_lock_timeout(error):
    """PostgreSQL lock_not_available (lock_timeout); MySQL/MariaDB 1205 (lock wait timeout,
    for metadata and row locks)."""
    if sqlstate(error) == "55P03":
        return True
    args = getattr(error.__cause__ or error, "args", ())
    return bool(args) and args[0] == 1205


def sqlstate(error):
    """PostgreSQL's SQLSTATE of a driver error (psycopg2 and 3), else None."""
    cause = error.__cause__ or error
    return getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
