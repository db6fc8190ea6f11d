"""`migrate` followed statement by statement: the lock timeout scoped to each transaction
`migrate` opens, the lock checked before each migration starts and before it commits,
the statements that ran (for a half-applied migration's message), the signal being sent,
the MySQL/MariaDB session settings put back when it ends, and the PostgreSQL session kept
from idling past the server's idle_session_timeout."""

import contextlib
import functools
import threading

from .config import LOCK_TIMEOUT
from .database import sqlstate
from .lock import MYSQL_WAIT_TIMEOUT, LockLost, pg_scope_sql
from .summary import first_line, shorten


# MySQL/MariaDB session settings of `migrate`'s connection, restored when it ends: there
# is no transactional DDL to scope them to. `wait_timeout` is raised so that the server
# does not close the connection while a migration's Python code runs.
def mysql_session_settings(lock_timeout):
    return {
        "lock_wait_timeout": lock_timeout,
        "innodb_lock_wait_timeout": lock_timeout,
        "wait_timeout": MYSQL_WAIT_TIMEOUT,
    }


class MysqlSession:
    """Sets the MySQL/MariaDB session settings of `migrate` and puts the previous values
    back when it ends."""

    def __init__(self, connection, report):
        self.connection = connection
        self.report = report
        self.saved = {}

    def apply(self):
        if self.connection.vendor != "mysql":
            return
        settings = mysql_session_settings(LOCK_TIMEOUT)
        with self.connection.cursor() as cursor:
            if not self.saved:
                cursor.execute("SELECT %s" % ", ".join("@@SESSION.%s" % n for n in settings))
                self.saved = dict(zip(settings, cursor.fetchone()))
            cursor.execute("SET " + ", ".join("SESSION %s = %d" % (n, int(v)) for n, v in settings.items()))

    def restore(self):
        if not self.saved or self.connection.connection is None:
            return
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("SET " + ", ".join("SESSION %s = %d" % (n, int(v)) for n, v in self.saved.items()))
        except Exception as e:  # noqa: BLE001 - the connection closes right after
            self.report.log("restoring the session settings: %s" % first_line(e))


class Progress:
    """Which migration `migrate` is applying and how many of its statements ran."""

    def __init__(self):
        self.migration = None
        self.atomic = True
        self.statements = 0
        self.failed_sql = None
        # The first statements of the running migration that changed something, shortened.
        self.ran = []
        # "pre_migrate" or "post_migrate" while `migrate` sends that signal.
        self.signal = None
        # A migration recorded after the lock was found lost (it had committed already).
        self.recorded_after_loss = None

    def count(self, sql):
        """One more statement of the running migration that changed something."""
        if self.migration is None:
            return
        self.statements += 1
        if len(self.ran) < HALF_APPLIED_STATEMENTS:
            self.ran.append(shorten(" ".join(str(sql).split()), HALF_APPLIED_STATEMENT_CHARS))


# How many statements of a half-applied migration its message names, and how long each.
HALF_APPLIED_STATEMENTS = 3
HALF_APPLIED_STATEMENT_CHARS = 120

READ_ONLY_STATEMENTS = ("SELECT", "SHOW", "SET", "EXPLAIN", "DESCRIBE", "SAVEPOINT", "RELEASE", "ROLLBACK")


def changes_something(sql):
    """False for statements that leave the schema and data as they were (introspection,
    session settings, savepoints)."""
    words = str(sql).lstrip().split(None, 1)
    return bool(words) and words[0].upper() not in READ_ONLY_STATEMENTS


def pg_transaction_idle(raw):
    """True when the libpq connection is between transactions (psycopg 2 and 3)."""
    return raw.info.transaction_status == 0


class IdleKeeper:
    """Keeps `migrate`'s PostgreSQL session from sitting idle past the server's
    `idle_session_timeout`. A migration that pauses between its own transactions (a
    throttled, non-atomic backfill) leaves the session idle, and the server would close it
    under the migration. While the connection is in autocommit between transactions, a
    `SELECT 1` every third of the limit; nothing is set on the session, so a pooled server
    connection goes back to the pool as it came. `migrate`'s statements, autocommit changes
    and close hold `busy`, so the keeper's statement never runs inside or between them."""

    def __init__(self, connection, report):
        self.connection = connection
        self.report = report
        self.busy = threading.RLock()
        self.stopped = threading.Event()

    def limit_seconds(self):
        """The session's idle limit in seconds (0: none, or a server before PostgreSQL 14)."""
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'idle_session_timeout'")
            row = cursor.fetchone()
        return row[0] / 1000.0 if row and row[0] else 0

    @contextlib.contextmanager
    def running(self):
        try:
            limit = self.limit_seconds()
        except Exception as e:  # noqa: BLE001 - `migrate` meets the same error and reports it
            self.report.log("cannot read idle_session_timeout: %s" % first_line(e))
            limit = 0
        if not limit:
            yield
            return
        connection = self.connection

        def holding(method):
            @functools.wraps(method)
            def wrapper(*args, **kwargs):
                with self.busy:
                    return method(*args, **kwargs)

            return wrapper

        def execute(run, sql, params, many, context):
            with self.busy:
                return run(sql, params, many, context)

        connection._set_autocommit = holding(connection._set_autocommit)
        connection._close = holding(connection._close)
        thread = threading.Thread(target=self.keep, args=(max(limit / 3.0, 0.1),), name="django-migrate-idle")
        thread.daemon = True
        self.report.log(
            "the server closes sessions idle for %gs: migrate's is kept busy between its transactions" % limit
        )
        try:
            with connection.execute_wrapper(execute):
                thread.start()
                yield
        finally:
            self.stopped.set()
            with self.busy:
                del connection._set_autocommit
                del connection._close
            thread.join()

    def keep(self, interval):
        while not self.stopped.wait(interval):
            if not self.busy.acquire(blocking=False):
                continue  # a statement of `migrate` runs: the session is not idle
            try:
                raw = self.connection.connection
                if raw is None or raw.closed or not raw.autocommit or not pg_transaction_idle(raw):
                    continue
                cursor = raw.cursor()
                try:
                    cursor.execute("SELECT 1")
                    cursor.fetchall()
                finally:
                    cursor.close()
            except Exception:  # noqa: BLE001 - a broken connection is `migrate`'s to report
                pass
            finally:
                self.busy.release()


TRANSACTION_CONTROL = ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT")


def first_word(sql):
    words = str(sql).lstrip().split(None, 1)
    return words[0].upper().rstrip(";") if words else ""


@contextlib.contextmanager
def track_progress(connection, lock, report):
    """Wraps MigrationExecutor, the schema editor and the connection's execute to follow
    `migrate` statement by statement (into the Progress it yields, and the migrations it
    applies into `report`) and keep the rules of the lock:

    - PostgreSQL: the lock timeout is set for each transaction `migrate` opens, with
      SET LOCAL semantics, as its first statement; a statement outside a transaction (a
      non-atomic migration) gets a transaction of its own for it, and a transaction the
      migration opens itself (RunSQL "BEGIN") gets the setting after its BEGIN. Nothing
      outlives the transaction, so a pooled server connection goes back to the pool as it
      came. CREATE/DROP INDEX CONCURRENTLY runs without the lock timeout (and cannot run
      in a transaction): it waits for older transactions by design, blocks no reads or
      writes, and a timeout would leave an invalid index behind.
    - Before each migration starts, and again before it commits (before its deferred
      SQL, inside its transaction where it has one), the lock must still be held; a lost
      lock raises LockLost, which rolls back an atomic migration."""
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.recorder import MigrationRecorder

    progress = Progress()
    original_apply = MigrationExecutor.apply_migration
    original_record = MigrationRecorder.record_applied
    editor_class = connection.SchemaEditorClass
    original_exit = editor_class.__exit__

    def apply_migration(self, state, migration, fake=False, fake_initial=False):
        name = "%s.%s" % (migration.app_label, migration.name)
        if lock is not None and lock.lost is not None:
            raise LockLost("before %s: %s" % (name, lock.lost))
        progress.migration = name
        progress.atomic = migration.atomic and connection.features.can_rollback_ddl
        progress.statements = 0
        progress.ran = []
        progress.failed_sql = None
        result = original_apply(self, state, migration, fake=fake, fake_initial=fake_initial)
        report.applied.append(progress.migration)
        progress.migration = None
        return result

    def schema_editor_exit(self, exc_type, exc_value, traceback):
        if exc_type is None and lock is not None and self.connection is connection and not lock.verify():
            error = LockLost("while applying %s: %s" % (progress.migration, lock.lost))
            # Rolls the migration's transaction back; its deferred SQL does not run.
            original_exit(self, LockLost, error, None)
            raise error
        return original_exit(self, exc_type, exc_value, traceback)

    def record_applied(self, app, name):
        if lock is not None and self.connection is connection and not lock.verify():
            if connection.in_atomic_block:
                raise LockLost("while applying %s.%s: %s" % (app, name, lock.lost))
            # Committed already (its deferred SQL ran after the check): record it, so
            # that the next pod does not apply it again, then stop.
            original_record(self, app, name)
            progress.recorded_after_loss = "%s.%s" % (app, name)
            report.applied.append(progress.recorded_after_loss)
            raise LockLost("after applying %s.%s: %s" % (app, name, lock.lost))
        return original_record(self, app, name)

    MigrationExecutor.apply_migration = apply_migration
    MigrationRecorder.record_applied = record_applied
    editor_class.__exit__ = schema_editor_exit
    scope = pg_scope_sql(LOCK_TIMEOUT)

    def execute(run, sql, params, many, context):
        changes = changes_something(sql)
        if connection.vendor == "postgresql":
            word = first_word(sql)
            if word in TRANSACTION_CONTROL:
                # The migration's own transaction control: run as written; a transaction
                # it opens gets the step's settings.
                result = counted(run, sql, params, many, context, False)
                if word in ("BEGIN", "START") and not pg_transaction_idle(connection.connection):
                    control(scope)
                return result
            concurrent = "CONCURRENTLY" in str(sql).upper()
            if not connection.get_autocommit():
                if pg_transaction_idle(connection.connection):
                    control(scope)  # the transaction's first statement
            elif changes and not concurrent and pg_transaction_idle(connection.connection):
                return in_own_transaction(run, sql, params, many, context)
        return counted(run, sql, params, many, context, changes)

    def counted(run, sql, params, many, context, changes):
        try:
            result = run(sql, params, many, context)
        except Exception:
            progress.failed_sql = str(sql)
            raise
        if changes:
            progress.count(sql)
        return result

    def control(statement):
        """Runs a statement of the step's own on a cursor of its own, so the caller's
        cursor keeps its results; driver errors come as Django's."""
        with connection.wrap_database_errors:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(statement)
            finally:
                cursor.close()

    def in_own_transaction(run, sql, params, many, context):
        control("BEGIN")
        try:
            control(scope)
            result = run(sql, params, many, context)
            control("COMMIT")  # deferred constraints are checked here
        except Exception as e:
            try:
                control("ROLLBACK")
            except Exception:  # noqa: BLE001 - the statement's own error is the one to report
                pass
            if sqlstate(e) != "25001":  # active_sql_transaction: VACUUM and the like
                progress.failed_sql = str(sql)
                raise
            report.log(
                "statement cannot run in a transaction, so it runs without the lock timeout: %s" % str(sql)[:200]
            )
            return counted(run, sql, params, many, context, True)
        progress.count(sql)
        return result

    # Which signal `migrate` is sending, so that a failure in a receiver is told apart
    # from a migration's.
    from django.core.management.commands import migrate as migrate_command

    def sending(name, emit):
        @functools.wraps(emit)
        def wrapper(*args, **kwargs):
            # Left set when a receiver raises: the failure is reported as the signal's.
            progress.signal = name
            result = emit(*args, **kwargs)
            progress.signal = None
            return result

        return wrapper

    emit_pre, emit_post = migrate_command.emit_pre_migrate_signal, migrate_command.emit_post_migrate_signal
    migrate_command.emit_pre_migrate_signal = sending("pre_migrate", emit_pre)
    migrate_command.emit_post_migrate_signal = sending("post_migrate", emit_post)
    try:
        with contextlib.ExitStack() as stack:
            if connection.vendor == "postgresql":
                # Outside the wrapper below, so that the keeper waits for a whole statement
                # with the transaction the wrapper gives it.
                stack.enter_context(IdleKeeper(connection, report).running())
            stack.enter_context(connection.execute_wrapper(execute))
            yield progress
    finally:
        migrate_command.emit_pre_migrate_signal, migrate_command.emit_post_migrate_signal = emit_pre, emit_post


def leave_deferred(report):
    """Takes the deferred migrations out of the plan `migrate` runs: its pre_migrate signal
    carries the plan it then executes, the hook django-safemigrate uses too."""
    from django.db.models.signals import pre_migrate

    deferred = {d["migration"] for d in report.deferred}
    if not deferred:
        return

    def receiver(plan=None, **_kwargs):
        if plan is not None:
            plan[:] = [(m, backwards) for m, backwards in plan if "%s.%s" % (m.app_label, m.name) not in deferred]

    pre_migrate.connect(receiver, weak=False, dispatch_uid="django_migrate_defer")
