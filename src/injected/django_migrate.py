# django-migrate: the Django step that django-migrate-webhook injects into opted-in pods.
#
# The webhook's own image copies this file into an emptyDir (`install-code`); the step
# runs it with the app container's image and settings as `python3 django_migrate.py`.
# It works in two phases, with one Django start per pod:
#
# 1. Outer (plain Python, no Django): checks that the management command exists (exit 4
#    if not), then runs `<manage command> shell -v 0 -c <run this file>` as a child,
#    forwards SIGTERM, and exits with the child's code. A child that dies before Django
#    started means the settings could not be loaded: exit 4.
# 2. Inner (inside `manage.py shell`, Django set up):
#    - waits until Django can open a connection for the alias (retries with backoff, one
#      log line per attempt, gives up after DJANGO_MIGRATE_WAIT_TIMEOUT; rejected
#      credentials fail at once);
#    - migrate mode: nothing pending -> exit 0 at once; otherwise take the migration lock
#      on a connection of its own (PostgreSQL: pg_try_advisory_xact_lock in a transaction
#      kept open for the whole migration, so it works the same direct and through a
#      transaction pooler; MySQL/MariaDB: GET_LOCK; polled, never a blocking wait), re-check,
#      classify the pending operations (unsafe ones are named, and held back under `deny`),
#      run `migrate` with a lock timeout on every statement, scoped to the transaction it
#      belongs to (retried with backoff while nothing of the migration was applied), end
#      the lock's transaction. A heartbeat keeps the lock's connection alive under idle
#      limits; a lost lock stops `migrate` before the next migration is applied or
#      recorded;
#    - wait mode: wait until nothing is pending, never migrate.
#
# The timeouts bound waiting (for the database, the lock, other pods, lock-timeout
# retries); a running migration is never cut by this program.
#
# Exit codes: 0 ok, 1 timed out, 2 migrate failed, 3 credentials rejected,
# 4 settings or manage command not found, 5 unsafe migration held back, 6 the lock cannot
# be held through this connection (a statement pooler) or was lost. A JSON summary
# (at most 4 KiB) goes to the termination log, which Kubernetes shows in the pod status
# and the controller reads.
#
# The names below (env vars, phases, exit codes) are the ones of src/names.rs.

import hashlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

MODE = os.environ.get("DJANGO_MIGRATE_MODE", "migrate")
ALIAS = os.environ.get("DJANGO_MIGRATE_DATABASE", "default")
MANAGE_COMMAND = os.environ.get("DJANGO_MIGRATE_MANAGE_COMMAND", "python3 manage.py").split()
WAIT_TIMEOUT = float(os.environ.get("DJANGO_MIGRATE_WAIT_TIMEOUT", "300"))
MIGRATE_TIMEOUT = float(os.environ.get("DJANGO_MIGRATE_MIGRATE_TIMEOUT", "1800"))
LOCK_TIMEOUT = int(os.environ.get("DJANGO_MIGRATE_LOCK_TIMEOUT", "3"))
UNSAFE_MIGRATIONS = os.environ.get("DJANGO_MIGRATE_UNSAFE_MIGRATIONS", "warn")
ALLOW_UNSAFE = {m.strip() for m in os.environ.get("DJANGO_MIGRATE_ALLOW_UNSAFE", "").split(",") if m.strip()}
TERMINATION_LOG = os.environ.get("DJANGO_MIGRATE_TERMINATION_LOG", "/dev/termination-log")
STATUS_FD_ENV = "DJANGO_MIGRATE_STATUS_FD"
POLL_SECONDS = float(os.environ.get("DJANGO_MIGRATE_POLL_SECONDS", "2"))
CONNECT_TIMEOUT = 10
# Longest pause between two connection attempts: a database that comes back is found soon.
MAX_BACKOFF_SECONDS = 5.0
MAX_SUMMARY_BYTES = 4096
# How long past a wait's deadline the watchdog lets a stuck driver call run.
WATCHDOG_GRACE_SECONDS = 15
# Longest pause between two attempts of a migration that hit the lock timeout.
MAX_RETRY_BACKOFF_SECONDS = 30.0

EXIT_OK = 0
EXIT_TIMEOUT = 1
EXIT_MIGRATE_FAILED = 2
EXIT_CREDENTIALS = 3
EXIT_NOT_FOUND = 4
EXIT_UNSAFE = 5
EXIT_LOCK = 6

PHASE_SETUP = "setup"
PHASE_DATABASE = "database"
PHASE_LOCK = "lock"
PHASE_WAITING = "waiting"
PHASE_MIGRATING = "migrating"
PHASE_DONE = "done"

STARTED = time.monotonic()


class Report:
    """What the summary says; filled in as the step goes."""

    phase = PHASE_SETUP
    applied = []  # appended to while `migrate` runs
    pending = []
    failed_migration = None
    database_seconds = 0.0
    lock_wait_seconds = 0.0
    migrate_seconds = 0.0
    retries = 0
    unsafe_operations = []


def log(message):
    print("django-migrate %s [%s]: %s" % (MODE, Report.phase, message), file=sys.stderr, flush=True)


def elapsed():
    return time.monotonic() - STARTED


def summary(code, result, message):
    """The JSON summary, cut to MAX_SUMMARY_BYTES by shortening lists, then the message."""
    data = {
        "mode": MODE,
        "phase": Report.phase,
        "result": result,
        "exit_code": code,
        "message": message,
        "applied": list(Report.applied),
        "pending": list(Report.pending),
        "failed_migration": Report.failed_migration,
        "seconds": {
            "total": round(elapsed(), 3),
            "database": round(Report.database_seconds, 3),
            "lock_wait": round(Report.lock_wait_seconds, 3),
            "migrate": round(Report.migrate_seconds, 3),
        },
        "retries": Report.retries,
        "unsafe_operations": list(Report.unsafe_operations),
    }
    text = json.dumps(data, separators=(",", ":"))
    for key in ("pending", "applied", "unsafe_operations"):
        while len(text.encode()) > MAX_SUMMARY_BYTES and data[key]:
            data[key] = data[key][: len(data[key]) // 2]
            text = json.dumps(data, separators=(",", ":"))
    if len(text.encode()) > MAX_SUMMARY_BYTES:
        data["message"] = message[:1000] + "..."
        text = json.dumps(data, separators=(",", ":"))
    return text


def finish(code, result, message):
    log(message)
    try:
        with open(TERMINATION_LOG, "w", encoding="utf-8") as f:
            f.write(summary(code, result, message))
    except OSError:
        pass  # a missing or read-only path is not an error outside Kubernetes
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: Django's shell must not turn SystemExit into anything else, and no
    # cleanup may block (a hung connection would otherwise hold the pod).
    os._exit(code)


def first_line(error):
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0][:500]


def describe(migrations):
    return ", ".join(migrations)


# ---------------------------------------------------------------- outer phase


def run_outer():
    if not MANAGE_COMMAND:
        finish(EXIT_NOT_FOUND, "not-found", "DJANGO_MIGRATE_MANAGE_COMMAND is empty")
    program = MANAGE_COMMAND[0]
    if "/" in program:
        if not os.path.exists(program):
            finish(EXIT_NOT_FOUND, "not-found", "%s not found (working directory %s)" % (program, os.getcwd()))
    elif shutil.which(program) is None:
        finish(EXIT_NOT_FOUND, "not-found", "%s not found on PATH" % program)
    for word in MANAGE_COMMAND[1:]:
        if word.endswith(".py") and not os.path.exists(word):
            finish(
                EXIT_NOT_FOUND,
                "not-found",
                "%s not found in working directory %s: set the container's workingDir or the "
                "django-migrate.io/manage-py annotation" % (word, os.getcwd()),
            )

    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env[STATUS_FD_ENV] = str(write_fd)
    inner = "import runpy; runpy.run_path(%r, run_name='django_migrate')" % os.path.abspath(__file__)
    argv = MANAGE_COMMAND + ["shell", "-v", "0", "-c", inner]
    try:
        child = subprocess.Popen(argv, env=env, pass_fds=(write_fd,))
    except OSError as e:
        finish(EXIT_NOT_FOUND, "not-found", "cannot run %s: %s" % (" ".join(MANAGE_COMMAND), e))
    os.close(write_fd)

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    # The inner phase bounds its waits and never cuts a running migration, so the child
    # is waited for without a limit; a child stuck before it started is bounded below.
    started = b""
    with os.fdopen(read_fd, "rb") as status:
        deadline = time.monotonic() + WAIT_TIMEOUT + 120
        while child.poll() is None and not started:
            ready, _, _ = select.select([status], [], [], 0.5)
            if ready:
                started = status.read(8) or b"closed"
            if time.monotonic() > deadline and not started:
                child.kill()
                child.wait()
                finish(EXIT_TIMEOUT, "timeout", "gave up after %.0fs: Django did not start" % elapsed())
    rc = child.wait()
    if rc < 0:
        sys.exit(128 - rc)
    if rc != 0 and started in (b"", b"closed"):
        finish(
            EXIT_NOT_FOUND,
            "not-found",
            "Django did not start (exit code %d): the settings or the management command "
            "could not be loaded; see the error above" % rc,
        )
    sys.exit(rc)


# ---------------------------------------------------------------- inner phase


class Watchdog:
    """Ends the process shortly after a wait's deadline even if a driver call never
    returns. Disarmed while a migration runs: a running migration is never cut."""

    def __init__(self):
        self.deadline = None
        self.what = ""
        self.lock = threading.Lock()
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()

    def arm(self, deadline, what):
        with self.lock:
            self.deadline, self.what = deadline, what

    def disarm(self):
        with self.lock:
            self.deadline = None

    def run(self):
        while True:
            time.sleep(1)
            with self.lock:
                fire = self.deadline is not None and time.monotonic() > self.deadline + WATCHDOG_GRACE_SECONDS
                what = self.what
            if fire:
                finish(EXIT_TIMEOUT, "timeout", "gave up after %.0fs: %s (watchdog)" % (elapsed(), what))


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


def wait_for_connection(connection, watchdog):
    from django.db.utils import Error as DatabaseError

    Report.phase = PHASE_DATABASE
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
            Report.database_seconds = time.monotonic() - started
            log("attempt %d: database %r is reachable (%s)" % (attempt, ALIAS, connection.vendor))
            watchdog.disarm()
            return
        except DatabaseError as e:
            try:
                connection.close()
            except DatabaseError:
                pass
            Report.database_seconds = time.monotonic() - started
            if is_credentials_error(e):
                finish(
                    EXIT_CREDENTIALS,
                    "credentials-rejected",
                    "database %r rejected the credentials: %s" % (ALIAS, first_line(e)),
                )
            left = deadline - time.monotonic()
            if left <= 0:
                finish(
                    EXIT_TIMEOUT,
                    "timeout",
                    "gave up after %.0fs and %d attempts: database %r not reachable: %s"
                    % (elapsed(), attempt, ALIAS, first_line(e)),
                )
            pause = min(delay, left)
            log(
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


def pending_now(connection):
    """pending_migrations on a connection that may have been closed by the server's idle
    limit since its last use (loading a large migration graph takes seconds): one retry
    on a new connection."""
    from django.db.utils import Error as DatabaseError

    try:
        return pending_migrations(connection)
    except DatabaseError as e:
        log("reading the migration state again on a new connection: %s" % first_line(e))
        connection.close()
        return pending_migrations(connection)


class LockUnavailable(Exception):
    """The connection cannot hold the lock: a statement pooler, or a pooler that moves a
    transaction between server connections."""


class LockLost(Exception):
    """The lock's connection or transaction ended while this pod held the lock."""


# What poolers answer when a transaction would outlive one statement (PgBouncer in
# statement mode; pgcat and Odyssey say the same in their words).
POOLER_REFUSALS = ("long transactions not allowed", "transaction blocks not allowed", "statement pooling")

# The PostgreSQL limits that would end the lock's transaction, or a migration's, while it
# is idle or long; set to 0 for that transaction only (`transaction_timeout` is 17+).
PG_TRANSACTION_LIMITS = ("idle_in_transaction_session_timeout", "transaction_timeout")


def refused_by_pooler(error):
    text = str(error).lower()
    return any(r in text for r in POOLER_REFUSALS)


def pg_scope_sql(lock_timeout):
    """One statement that scopes the step's settings to the transaction it runs in: the
    lock timeout, and no idle or length limit (the lock must outlive a long migration)."""
    names = ", ".join("'%s'" % n for n in ("lock_timeout",) + PG_TRANSACTION_LIMITS)
    return (
        "SELECT set_config(name, CASE name WHEN 'lock_timeout' THEN '%ds' ELSE '0' END, true) "
        "FROM pg_settings WHERE name IN (%s)" % (int(lock_timeout), names)
    )


class Lock:
    """The cross-pod migration lock, on a connection of its own.

    PostgreSQL: `pg_try_advisory_xact_lock` in a transaction that stays open for the whole
    migration. A transaction pooler (PgBouncer, pgcat, Supavisor, RDS Proxy) keeps one
    server connection for the length of a transaction and nothing beyond it: a
    session-level lock would stay behind on a pooled server connection (and advisory locks
    are re-entrant, so the next client it is handed to "holds" it too), while a
    transaction-level one ends with the transaction, on ROLLBACK or when the pod dies,
    whatever sits in between. The transaction sets no idle limit for itself, so the
    server's idle limits do not end it.

    MySQL/MariaDB: GET_LOCK, which is held by the session (there is no transaction-level
    lock), on a direct connection that the server's `wait_timeout` does not close.

    While held, a heartbeat thread keeps the connection busy (poolers and middleboxes
    close idle connections too) and checks that the lock is still this session's; once it
    is lost, `lost` says why and the migration stops before the next migration."""

    HEARTBEAT_SECONDS = 2.0

    def __init__(self, connections):
        self.wrapper = connections.create_connection(ALIAS)
        with_connect_timeout(self.wrapper)
        self.vendor = self.wrapper.vendor
        name = str(self.wrapper.settings_dict.get("NAME") or "")
        digest = hashlib.sha256(("django-migrate:" + name).encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        # MySQL lock names are server-wide (so they carry the database name) and at most
        # 64 characters long.
        self.name = "django-migrate:" + name
        if len(self.name) > 64:
            self.name = "django-migrate:" + digest.hex()[:40]
        self.mutex = threading.Lock()  # one statement at a time on the connection
        self.backend = None  # the server session that holds the lock
        self.lost = None
        self.stopped = threading.Event()
        self.heartbeat = None

    @property
    def supported(self):
        return self.vendor in ("postgresql", "mysql")

    def _execute(self, sql, params=None):
        """Runs one statement on the raw connection and returns its first row."""
        self.wrapper.ensure_connection()
        cursor = self.wrapper.connection.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description else None
        finally:
            cursor.close()

    def try_acquire(self):
        """True once this pod holds the lock; False while another pod does. Raises
        LockUnavailable when the connection cannot hold it."""
        with self.mutex:
            try:
                held = self._try_acquire()
            except Exception as e:
                if refused_by_pooler(e):
                    raise LockUnavailable(first_line(e)) from e
                raise
        if held:
            self.heartbeat = threading.Thread(target=self._beat, name="django-migrate-lock", daemon=True)
            self.heartbeat.start()
        return held

    def _try_acquire(self):
        if self.vendor == "postgresql":
            self._execute("BEGIN")
            got = self._execute("SELECT pg_try_advisory_xact_lock(%s), pg_backend_pid()", [self.key])
            if not got[0]:
                self._execute("ROLLBACK")
                return False
            self._execute(pg_scope_sql(LOCK_TIMEOUT))
            # The lock is granted; it is only ours if the next statement of the same
            # transaction runs on the same server session and sees it there.
            high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
            seen = self._execute(
                "SELECT pg_backend_pid(), count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
                [high, low],
            )
            if seen[0] != got[1] or seen[1] != 1:
                self._execute("ROLLBACK")
                raise LockUnavailable(
                    "the lock was granted on one server connection and the next statement of its "
                    "transaction ran on another: the pooler does not keep a transaction on one connection"
                )
            self.backend = got[1]
            return True
        # A session of our own: its idle limit must not close it while a migration runs.
        self._execute("SET SESSION wait_timeout = %d" % MYSQL_WAIT_TIMEOUT)
        got = self._execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()", [self.name])
        if not got[0]:
            return False
        if self._execute("SELECT IS_USED_LOCK(%s)", [self.name])[0] != got[1]:
            raise LockUnavailable("the lock was granted to one session and the next statement ran on another")
        self.backend = got[1]
        return True

    def verify(self):
        """True while this session still holds the lock; on any doubt records why not."""
        if self.lost is None:
            try:
                with self.mutex:
                    if self.vendor == "postgresql":
                        # The transaction is open on the session that took the lock: the
                        # lock lasts as long as that transaction.
                        same = self._execute("SELECT pg_backend_pid()")[0] == self.backend
                    else:
                        same = self._execute("SELECT IS_USED_LOCK(%s)", [self.name])[0] == self.backend
                if not same:
                    self.lost = "the lock's server session changed"
            except Exception as e:  # noqa: BLE001 - any failure means the lock is gone
                self.lost = "its connection failed: %s" % first_line(e)
        return self.lost is None

    def _beat(self):
        while not self.stopped.wait(self.HEARTBEAT_SECONDS):
            if not self.verify():
                log("lost the migration lock: %s" % self.lost)
                return

    def release(self):
        """Ends the lock's transaction (or releases the named lock), so the next pod does
        not wait for this connection to close; a lock already lost needs nothing."""
        self.stopped.set()
        if self.heartbeat is not None:
            self.heartbeat.join()
        try:
            if self.backend is not None and self.lost is None:
                with self.mutex:
                    if self.vendor == "postgresql":
                        self._execute("ROLLBACK")
                    else:
                        self._execute("SELECT RELEASE_LOCK(%s)", [self.name])
        except Exception as e:  # noqa: BLE001 - the lock ends with the connection below
            log("releasing the migration lock: %s; closing its connection ends it" % first_line(e))
        finally:
            self.backend = None
            self.wrapper.close()

    def abandon(self):
        """Closes the connection while the lock is not held: between polls a waiting pod
        keeps none."""
        close_quietly(self.wrapper)


def close_quietly(connection):
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - a broken connection is closed all the same
        pass


# ---------------------------------------------------------------- unsafe operations


def pending_plan(connection):
    """The pending plan as (migration, project state before it) pairs."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    first_install = not executor.loader.applied_migrations
    out = []
    for migration, backwards in plan:
        if backwards:
            continue
        state = executor.loader.project_state((migration.app_label, migration.name), at_end=False)
        out.append((migration, state))
    return out, first_install


def database_operations(operations):
    """The operations that touch the database: SeparateDatabaseAndState counts only its
    database side."""
    from django.db.migrations.operations import SeparateDatabaseAndState

    for op in operations:
        if isinstance(op, SeparateDatabaseAndState):
            yield from database_operations(op.database_operations)
        else:
            yield op


def field_type(field, connection):
    try:
        return field.db_type(connection)
    except Exception:  # noqa: BLE001 - fields that need their model to answer
        return field.deconstruct()[1]


def why_unsafe(op, app_label, state, connection):
    """Why `op` breaks the release still serving, or None. `state` is the project state
    just before it."""
    from django.db import models
    from django.db.migrations import operations as ops

    if isinstance(op, ops.RemoveField):
        return "drops column %s.%s, which the previous release still reads" % (op.model_name, op.name)
    if isinstance(op, ops.DeleteModel):
        return "drops the table of model %s, which the previous release still reads" % op.name
    if isinstance(op, ops.RenameField):
        return "renames column %s.%s to %s; the previous release still uses the old name" % (
            op.model_name,
            op.old_name,
            op.new_name,
        )
    if isinstance(op, ops.RenameModel):
        return "renames model %s to %s (and its table); the previous release still uses the old one" % (
            op.old_name,
            op.new_name,
        )
    if isinstance(op, ops.AlterModelTable):
        return "renames the table of model %s; the previous release still uses the old name" % op.name
    if isinstance(op, ops.AddField):
        field = op.field
        if field.many_to_many or field.null:
            return None
        if getattr(field, "db_default", models.NOT_PROVIDED) is not models.NOT_PROVIDED:
            return None
        return "adds non-nullable column %s.%s without a database default; inserts of the previous release fail" % (
            op.model_name,
            op.name,
        )
    if isinstance(op, ops.AlterField):
        try:
            old = state.models[app_label, op.model_name_lower].fields[op.name]
        except KeyError:
            return None
        new = op.field
        if old.null and not new.null:
            return "makes column %s.%s non-nullable; the previous release may still write NULL" % (
                op.model_name,
                op.name,
            )
        old_type, new_type = field_type(old, connection), field_type(new, connection)
        if old_type != new_type:
            widened = (
                type(old) is type(new)
                and getattr(old, "max_length", None)
                and getattr(new, "max_length", None)
                and new.max_length > old.max_length
            )
            if not widened:
                return "changes the type of column %s.%s from %s to %s" % (op.model_name, op.name, old_type, new_type)
    return None


def classify(plan, first_install, connection):
    """Unsafe and unverifiable operations of the pending plan. Operations on models
    created earlier in the same plan are not unsafe: the previous release never used
    them; nor is anything on a first install."""
    from django.db.migrations import operations as ops

    unsafe, unchecked = [], []
    if first_install:
        return unsafe, unchecked
    created = set()
    for migration, state in plan:
        name = "%s.%s" % (migration.app_label, migration.name)
        for op in database_operations(migration.operations):
            if isinstance(op, ops.CreateModel):
                created.add((migration.app_label, op.name_lower))
            if isinstance(op, (ops.RunSQL, ops.RunPython)):
                unchecked.append({"migration": name, "operation": op.__class__.__name__})
                continue
            model = getattr(op, "model_name_lower", None) or getattr(op, "name_lower", None)
            if (migration.app_label, model) in created and not isinstance(op, ops.CreateModel):
                continue
            why = why_unsafe(op, migration.app_label, state, connection)
            if why:
                unsafe.append(
                    {
                        "migration": name,
                        "operation": "%s(%s)" % (op.__class__.__name__, op.describe()),
                        "why": why,
                        "applied": False,
                    }
                )
            try:
                op.state_forwards(migration.app_label, state)
            except Exception:  # noqa: BLE001 - the state is only needed for the checks
                pass
    return unsafe, unchecked


def hold_back_unsafe(connection):
    """Names unsafe operations; under `deny` exits 5 unless each is allowed by name."""
    plan, first_install = pending_plan(connection)
    unsafe, unchecked = classify(plan, first_install, connection)
    for item in unchecked:
        log("%s: %s cannot be checked for safety; review it by hand" % (item["migration"], item["operation"]))
    if not unsafe:
        return
    blocked = [u for u in unsafe if UNSAFE_MIGRATIONS == "deny" and u["migration"] not in ALLOW_UNSAFE]
    for u in unsafe:
        allowed = "allowed by django-migrate.io/allow-unsafe" if u["migration"] in ALLOW_UNSAFE else UNSAFE_MIGRATIONS
        log(
            "unsafe for the release still serving (%s): %s %s: %s" % (allowed, u["migration"], u["operation"], u["why"])
        )
    Report.unsafe_operations = unsafe
    if blocked:
        first = blocked[0]
        finish(
            EXIT_UNSAFE,
            "unsafe-blocked",
            "held back %d unsafe operation(s) under django-migrate.io/unsafe-migrations: deny; first: %s %s: %s; "
            "nothing was applied; ship it in a later release, or allow it with django-migrate.io/allow-unsafe: %s"
            % (len(blocked), first["migration"], first["operation"], first["why"], first["migration"]),
        )


# ---------------------------------------------------------------- migrate


def is_lock_timeout(error):
    """PostgreSQL lock_not_available (lock_timeout); MySQL/MariaDB 1205 (lock wait timeout,
    for metadata and row locks)."""
    cause = error.__cause__ or error
    code = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
    if code == "55P03":
        return True
    args = getattr(cause, "args", ())
    return bool(args) and args[0] == 1205


def sqlstate(error):
    cause = error.__cause__ or error
    return getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)


# MySQL/MariaDB session settings of `migrate`'s connection, restored when it ends: there
# is no transactional DDL to scope them to. `wait_timeout` is raised so that the server
# does not close the connection while a migration's Python code runs.
MYSQL_WAIT_TIMEOUT = 28800


def mysql_session_settings(lock_timeout):
    return {
        "lock_wait_timeout": lock_timeout,
        "innodb_lock_wait_timeout": lock_timeout,
        "wait_timeout": MYSQL_WAIT_TIMEOUT,
    }


class MysqlSession:
    """Sets the MySQL/MariaDB session settings of `migrate` and puts the previous values
    back when it ends."""

    def __init__(self, connection):
        self.connection = connection
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
            log("restoring the session settings: %s" % first_line(e))


class Progress:
    """Which migration `migrate` is applying and how many of its statements ran."""

    migration = None
    atomic = True
    statements = 0
    failed_sql = None


READ_ONLY_STATEMENTS = ("SELECT", "SHOW", "SET", "EXPLAIN", "DESCRIBE", "SAVEPOINT", "RELEASE", "ROLLBACK")


def changes_something(sql):
    """False for statements that leave the schema and data as they were (introspection,
    session settings, savepoints)."""
    words = str(sql).lstrip().split(None, 1)
    return bool(words) and words[0].upper() not in READ_ONLY_STATEMENTS


def pg_transaction_idle(raw):
    """True when the libpq connection is between transactions (psycopg 2 and 3)."""
    return raw.info.transaction_status == 0


def track_progress(connection, lock):
    """Wraps MigrationExecutor and the connection's execute to follow `migrate` statement
    by statement and keep the rules of the lock:

    - PostgreSQL: the lock timeout is set for each transaction `migrate` opens, with
      SET LOCAL semantics, as its first statement; a statement outside a transaction (a
      non-atomic migration) gets a transaction of its own for it. Nothing outlives the
      transaction, so a pooled server connection goes back to the pool as it came.
      CREATE/DROP INDEX CONCURRENTLY runs without the lock timeout (and cannot run in a
      transaction): it waits for older transactions by design, blocks no reads or
      writes, and a timeout would leave an invalid index behind.
    - Before each migration starts, and again before it is recorded (inside its
      transaction where it has one), the lock must still be held; a lost lock raises
      LockLost, which rolls back an atomic migration."""
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.recorder import MigrationRecorder

    original_apply = MigrationExecutor.apply_migration
    original_record = MigrationRecorder.record_applied

    def apply_migration(self, state, migration, fake=False, fake_initial=False):
        name = "%s.%s" % (migration.app_label, migration.name)
        if lock is not None and lock.lost is not None:
            raise LockLost("before %s: %s" % (name, lock.lost))
        Progress.migration = name
        Progress.atomic = migration.atomic and connection.features.can_rollback_ddl
        Progress.statements = 0
        Progress.failed_sql = None
        result = original_apply(self, state, migration, fake=fake, fake_initial=fake_initial)
        Report.applied.append(Progress.migration)
        Progress.migration = None
        return result

    def record_applied(self, app, name):
        if lock is not None and self.connection is connection and not lock.verify():
            raise LockLost("while applying %s.%s: %s" % (app, name, lock.lost))
        return original_record(self, app, name)

    MigrationExecutor.apply_migration = apply_migration
    MigrationRecorder.record_applied = record_applied
    scope = pg_scope_sql(LOCK_TIMEOUT)

    def execute(run, sql, params, many, context):
        changes = changes_something(sql)
        if connection.vendor == "postgresql":
            concurrent = "CONCURRENTLY" in str(sql).upper()
            if not connection.get_autocommit():
                if pg_transaction_idle(connection.connection):
                    control(scope)  # the transaction's first statement
            elif changes and not concurrent:
                return in_own_transaction(run, sql, params, many, context)
        try:
            result = run(sql, params, many, context)
        except Exception:
            Progress.failed_sql = str(sql)
            raise
        if Progress.migration is not None and changes:
            Progress.statements += 1
        return result

    def control(statement):
        """Runs a statement of the step's own on a cursor of its own, so the caller's
        cursor keeps its results."""
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
        except Exception as e:
            try:
                control("ROLLBACK")
            except Exception:  # noqa: BLE001 - the statement's own error is the one to report
                pass
            if sqlstate(e) != "25001":  # active_sql_transaction: VACUUM and the like
                Progress.failed_sql = str(sql)
                raise
            log("statement cannot run in a transaction, so it runs without the lock timeout: %s" % str(sql)[:200])
            try:
                result = run(sql, params, many, context)
            except Exception:
                Progress.failed_sql = str(sql)
                raise
        else:
            control("COMMIT")
        if Progress.migration is not None:
            Progress.statements += 1
        return result

    return connection.execute_wrapper(execute)


def run_migrate(connection, lock, watchdog, deadline):
    """Runs `migrate` under the lock; never cut by the watchdog. A migration that hit the
    lock timeout and left nothing applied is retried with backoff and jitter until the
    deadline. Returns None, or the error message for exit 2; a lost lock ends the step
    (exit 6)."""
    from django.core.management import call_command

    Report.phase = PHASE_MIGRATING
    watchdog.disarm()
    log(
        "applying %d migrations (lock timeout %ds per statement): %s"
        % (len(Report.pending), LOCK_TIMEOUT, describe(Report.pending))
    )
    started = time.monotonic()
    attempt = 0
    # A fresh connection: the one that read the plan may have sat idle past the server's
    # idle limit while the plan was classified.
    connection.close()
    session = MysqlSession(connection)
    with track_progress(connection, lock):
        while True:
            attempt += 1
            try:
                session.apply()
                call_command("migrate", database=ALIAS, interactive=False, verbosity=1)
                session.restore()
                break
            except Exception as e:  # noqa: BLE001 - any failure of a migration is reported
                Report.migrate_seconds = time.monotonic() - started
                failed = Progress.migration
                nothing_applied = Progress.atomic or Progress.statements == 0
                statement = (Progress.failed_sql or "").strip().splitlines()[0][:200] if Progress.failed_sql else ""
                Progress.migration = None
                session.restore()
                session.saved = {}
                connection.close()
                if isinstance(e, LockLost) or (lock is not None and lock.lost is not None):
                    lock_lost(connection, failed, nothing_applied, lock.lost if lock.lost else first_line(e))
                try:
                    Report.pending = pending_migrations(connection)
                except Exception:  # noqa: BLE001
                    pass
                if not is_lock_timeout(e) or failed is None:
                    Report.failed_migration = failed or (Report.pending[0] if Report.pending else None)
                    name = Report.failed_migration or "unknown migration"
                    return "migration %s failed: %s: %s" % (name, e.__class__.__name__, first_line(e))
                if not nothing_applied:
                    Report.failed_migration = failed
                    return (
                        "migration %s is half-applied: %d statement(s) ran, then a statement timed out on its "
                        "table lock after %ds and was not applied: %s; it is not retried blindly: check the "
                        "database, then apply the rest or mark it applied (migrate --fake)"
                        % (failed, Progress.statements, LOCK_TIMEOUT, statement)
                    )
                left = deadline - time.monotonic()
                pause = min(MAX_RETRY_BACKOFF_SECONDS, 2.0 ** min(attempt, 5)) * random.uniform(0.5, 1.0)
                if left <= pause:
                    Report.failed_migration = failed
                    finish(
                        EXIT_TIMEOUT,
                        "timeout",
                        "gave up after %.0fs and %d attempts: migration %s kept timing out on a table lock "
                        "(a long transaction holds it); nothing of it was applied; statement: %s"
                        % (elapsed(), attempt, failed, statement),
                    )
                Report.retries += 1
                log(
                    "migration %s hit the lock timeout (%ds) and was rolled back, nothing applied; "
                    "retry %d in %.1fs (%.0fs left); statement: %s"
                    % (failed, LOCK_TIMEOUT, Report.retries, pause, left, statement)
                )
                time.sleep(pause)
    Report.migrate_seconds = time.monotonic() - started
    Report.pending = []
    for u in Report.unsafe_operations:
        u["applied"] = u["migration"] in Report.applied
    return None


def lock_lost(connection, failed, nothing_applied, why):
    """Ends the step when the lock was lost while migrating: nothing more is applied; the
    next pod continues from what is recorded."""
    from django.db.utils import Error as DatabaseError

    Report.failed_migration = failed
    try:
        Report.pending = pending_migrations(connection)
    except DatabaseError:
        pass
    if failed is None:
        state = "no migration was running"
    elif nothing_applied:
        state = "%s was rolled back" % failed
    else:
        state = "%s may be half-applied: check it before the next pod applies it" % failed
    finish(
        EXIT_LOCK,
        "lock-lost",
        "lost the migration lock (%s); stopped before applying anything more: %s; applied %d migrations "
        "before that; the next pod continues from what is recorded" % (why, state, len(Report.applied)),
    )


def lock_unavailable(why):
    finish(
        EXIT_LOCK,
        "lock-unavailable",
        "cannot hold the migration lock through database %r: %s; nothing was applied; a pooler in "
        "statement mode cannot keep a transaction open: set django-migrate.io/database to an alias that "
        "connects directly or through a pooler in session or transaction mode" % (ALIAS, why),
    )


def poll_until_applied(connection, lock, watchdog):
    """The loop both modes share: until nothing is pending (exit 0), the lock is won
    (migrate mode: returns True), or the migrate timeout passes (exit 1).

    A waiting pod holds no connection while it sleeps and at most one while it asks: with
    a session pooler smaller than the number of pods, a pod that kept one connection while
    it asked for another could wait forever on the pool, and no idle limit can close a
    connection that is not there."""
    from django.db.utils import Error as DatabaseError

    Report.phase = PHASE_LOCK if lock is not None else PHASE_WAITING
    started = time.monotonic()
    deadline = started + MIGRATE_TIMEOUT
    what = "the migration lock" if lock is not None else "pending migrations"
    watchdog.arm(deadline, "waiting for %s" % what)
    while True:
        close_quietly(connection)
        if lock is not None:
            try:
                held = lock.try_acquire()
            except LockUnavailable as e:
                lock.abandon()
                lock_unavailable(str(e))
            except DatabaseError as e:
                lock.abandon()
                held = False
                log("cannot ask for the migration lock: %s" % first_line(e))
            if held:
                Report.lock_wait_seconds = time.monotonic() - started
                watchdog.disarm()
                return True
            lock.abandon()
        Report.lock_wait_seconds = time.monotonic() - started
        left = deadline - time.monotonic()
        if left <= 0:
            finish(
                EXIT_TIMEOUT,
                "timeout",
                "gave up after %.0fs waiting for %s; still pending: %s" % (elapsed(), what, describe(Report.pending)),
            )
        if lock is not None:
            log(
                "another pod holds the migration lock; %d pending; checking again in %.0fs"
                % (len(Report.pending), POLL_SECONDS)
            )
        else:
            log("%d migrations pending; checking again in %.0fs" % (len(Report.pending), POLL_SECONDS))
        time.sleep(min(POLL_SECONDS, max(left, 0.1)))
        try:
            Report.pending = pending_migrations(connection)
        except DatabaseError as e:
            log("cannot read the migration state: %s" % first_line(e))
            continue
        if not Report.pending:
            Report.phase = PHASE_DONE
            finish(
                EXIT_OK,
                "applied-by-other-pod",
                "applied by another pod (waited %.1fs)" % (time.monotonic() - started),
            )


def step_migrate(connections, connection, watchdog):
    lock = Lock(connections)
    deadline = time.monotonic() + MIGRATE_TIMEOUT
    if not lock.supported:
        log("no cross-pod lock for the %s backend: running migrate directly" % lock.vendor)
    else:
        poll_until_applied(connection, lock, watchdog)
    try:
        if lock.supported:
            # Another pod may have finished between our check and the lock.
            Report.pending = pending_now(connection)
            if not Report.pending:
                Report.phase = PHASE_DONE
                lock.release()
                finish(
                    EXIT_OK,
                    "applied-by-other-pod",
                    "applied by another pod (waited %.1fs for the lock)" % Report.lock_wait_seconds,
                )
        hold_back_unsafe(connection)
        error = run_migrate(connection, lock if lock.supported else None, watchdog, deadline)
    finally:
        if lock.supported:
            lock.release()
    if error:
        finish(EXIT_MIGRATE_FAILED, "failed", error)
    Report.phase = PHASE_DONE
    unsafe = [u for u in Report.unsafe_operations if u["applied"]]
    note = ""
    if unsafe:
        note = "; %d unsafe for the previous release: %s" % (
            len(unsafe),
            ", ".join("%s %s" % (u["migration"], u["operation"]) for u in unsafe),
        )
    retries = " after %d lock-timeout retries" % Report.retries if Report.retries else ""
    finish(
        EXIT_OK,
        "applied",
        "applied %d migrations in %.1fs%s (waited %.1fs for the lock): %s%s"
        % (
            len(Report.applied),
            Report.migrate_seconds,
            retries,
            Report.lock_wait_seconds,
            describe(Report.applied),
            note,
        ),
    )


def run_inner():
    # From here on this code writes the summary; tell the outer phase it ran.
    fd = os.environ.pop(STATUS_FD_ENV, None)
    if fd is not None:
        try:
            os.write(int(fd), b"started\n")
            os.close(int(fd))
        except (OSError, ValueError):
            pass
    # Django loads settings lazily, so `shell` can start with settings that do not import.
    try:
        from django.conf import settings

        settings.DATABASES  # noqa: B018 - loads the settings module
    except Exception as e:  # noqa: BLE001 - any import error in the settings module
        finish(
            EXIT_NOT_FOUND,
            "not-found",
            "cannot load the Django settings (DJANGO_SETTINGS_MODULE=%s): %s: %s"
            % (os.environ.get("DJANGO_SETTINGS_MODULE", "unset"), e.__class__.__name__, first_line(e)),
        )
    from django.db import connections
    from django.utils.connection import ConnectionDoesNotExist

    try:
        connection = connections[ALIAS]
    except ConnectionDoesNotExist:
        finish(
            EXIT_NOT_FOUND,
            "not-found",
            "database alias %r is not in settings.DATABASES (have: %s)"
            % (ALIAS, ", ".join(connections.settings) or "none"),
        )
    if MODE not in ("migrate", "wait"):
        finish(EXIT_NOT_FOUND, "not-found", "unknown DJANGO_MIGRATE_MODE %r: allowed migrate or wait" % MODE)
    if UNSAFE_MIGRATIONS not in ("warn", "deny"):
        finish(
            EXIT_NOT_FOUND,
            "not-found",
            "unknown DJANGO_MIGRATE_UNSAFE_MIGRATIONS %r: allowed warn or deny" % UNSAFE_MIGRATIONS,
        )
    watchdog = Watchdog()
    with_connect_timeout(connection)
    wait_for_connection(connection, watchdog)
    Report.pending = pending_now(connection)
    if not Report.pending:
        Report.phase = PHASE_DONE
        finish(EXIT_OK, "nothing-pending", "nothing to apply (%.1fs)" % elapsed())
    if MODE == "wait":
        log(
            "%d migrations pending: %s; waiting for them to be applied"
            % (len(Report.pending), describe(Report.pending))
        )
        poll_until_applied(connection, None, watchdog)
    else:
        step_migrate(connections, connection, watchdog)


def run_inner_reporting():
    """run_inner, with any error it did not expect ending the step in one line and a
    summary, never in a bare traceback."""
    try:
        run_inner()
    except Exception as e:  # noqa: BLE001 - reported, not swallowed: the step fails
        finish(
            EXIT_MIGRATE_FAILED,
            "failed",
            "unexpected error in phase %s: %s: %s" % (Report.phase, e.__class__.__name__, first_line(e)),
        )


if STATUS_FD_ENV in os.environ:
    run_inner_reporting()
elif __name__ == "__main__":
    run_outer()
