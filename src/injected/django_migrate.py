# django-migrate: the code run by the init containers that django-migrate-webhook injects.
#
# The container runs `python3 -c CODE`, where CODE is this file, passed in the env var
# DJANGO_MIGRATE_CODE through Kubernetes variable expansion.
# It works in two phases:
#
# 1. Outer (plain Python, no Django): checks that the management command exists (exit 4
#    if not), then runs `<manage command> shell -v 0 -c <this code>` as a child process,
#    forwards SIGTERM, and exits with the child's code. A child that dies before Django
#    started means the settings could not be loaded: exit 4.
# 2. Inner (inside `manage.py shell`, Django set up): does the step named by
#    DJANGO_MIGRATE_STEP:
#    - wait-for-db: open Django's own connection for the alias, with retries and backoff;
#    - migrate: nothing pending -> exit 0 at once; otherwise take a session-level lock on a
#      separate connection (PostgreSQL pg_try_advisory_lock, MySQL/MariaDB GET_LOCK,
#      polled, never a blocking wait), re-check, run `migrate`, release;
#    - wait-for-migrations: wait until nothing is pending, never migrate.
#
# Exit codes: 0 ok, 1 timed out, 2 migrate failed, 3 credentials rejected,
# 4 settings or manage command not found. A summary (at most 4 KiB) goes to the
# termination log, which Kubernetes shows in the pod status.
#
# Kubernetes expands dollar-parenthesis references inside env values, so this file never
# contains a dollar sign followed by an opening parenthesis.

import os
import sys
import time

STEP = os.environ.get("DJANGO_MIGRATE_STEP", "migrate")
ALIAS = os.environ.get("DJANGO_MIGRATE_DATABASE", "default")
TIMEOUT = float(os.environ.get("DJANGO_MIGRATE_TIMEOUT", "300"))
MANAGE_COMMAND = os.environ.get("DJANGO_MIGRATE_MANAGE_COMMAND", "python3 manage.py").split()
TERMINATION_LOG = os.environ.get("DJANGO_MIGRATE_TERMINATION_LOG", "/dev/termination-log")
STATUS_FD_ENV = "DJANGO_MIGRATE_STATUS_FD"
POLL_SECONDS = float(os.environ.get("DJANGO_MIGRATE_POLL_SECONDS", "2"))
CONNECT_TIMEOUT = 10
# Longest pause between two connection attempts: a database that comes back is found soon.
MAX_BACKOFF_SECONDS = 5.0
MAX_SUMMARY_BYTES = 4096

EXIT_OK = 0
EXIT_TIMEOUT = 1
EXIT_MIGRATE_FAILED = 2
EXIT_CREDENTIALS = 3
EXIT_NOT_FOUND = 4

STARTED = time.monotonic()


def log(message):
    print("django-migrate %s: %s" % (STEP, message), file=sys.stderr, flush=True)


def elapsed():
    return time.monotonic() - STARTED


def write_summary(text):
    """Writes the termination message; a missing or read-only path is not an error."""
    data = text.encode("utf-8", "replace")
    if len(data) > MAX_SUMMARY_BYTES:
        data = data[: MAX_SUMMARY_BYTES - 3] + b"..."
    try:
        with open(TERMINATION_LOG, "wb") as f:
            f.write(data)
    except OSError:
        pass


def finish(code, text):
    log(text)
    write_summary("%s: %s" % (STEP, text))
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: Django's shell must not turn SystemExit into anything else, and no
    # cleanup may block (a hung connection would otherwise hold the pod).
    os._exit(code)


def first_line(error):
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0][:500]


# ---------------------------------------------------------------- outer phase


def run_outer():
    import shutil
    import signal
    import subprocess

    if not MANAGE_COMMAND:
        finish(EXIT_NOT_FOUND, "DJANGO_MIGRATE_MANAGE_COMMAND is empty")
    program = MANAGE_COMMAND[0]
    if "/" in program:
        if not os.path.exists(program):
            finish(EXIT_NOT_FOUND, "%s not found (working directory %s)" % (program, os.getcwd()))
    elif shutil.which(program) is None:
        finish(EXIT_NOT_FOUND, "%s not found on PATH" % program)
    for word in MANAGE_COMMAND[1:]:
        if word.endswith(".py") and not os.path.exists(word):
            finish(
                EXIT_NOT_FOUND,
                "%s not found in working directory %s: set the container's workingDir or the "
                "django-migrate.io/manage-py annotation" % (word, os.getcwd()),
            )

    code = os.environ.get("DJANGO_MIGRATE_CODE")
    if not code:
        finish(EXIT_NOT_FOUND, "DJANGO_MIGRATE_CODE is not set")
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env[STATUS_FD_ENV] = str(write_fd)
    argv = MANAGE_COMMAND + ["shell", "-v", "0", "-c", code]
    try:
        child = subprocess.Popen(argv, env=env, pass_fds=(write_fd,))
    except OSError as e:
        finish(EXIT_NOT_FOUND, "cannot run %s: %s" % (" ".join(MANAGE_COMMAND), e))
    os.close(write_fd)

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    # The inner phase has its own deadline and watchdog; this bounds a child stuck
    # before it got there (settings that block on import, for example).
    try:
        rc = child.wait(timeout=TIMEOUT + 120)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        finish(EXIT_TIMEOUT, "gave up after %.0fs: the management command did not finish" % elapsed())
    # The child has exited, so every write end is closed and this cannot block.
    with os.fdopen(read_fd, "rb") as status:
        started = status.read()
    if rc < 0:
        sys.exit(128 - rc)
    if rc != 0 and not started:
        finish(
            EXIT_NOT_FOUND,
            "Django did not start (exit code %d): the settings or the management command "
            "could not be loaded; see the error above" % rc,
        )
    sys.exit(rc)


# ---------------------------------------------------------------- inner phase


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


def start_watchdog(deadline, what):
    """Ends the process shortly after the deadline even if a driver call never returns."""
    import threading

    def fire():
        finish(EXIT_TIMEOUT, "gave up after %.0fs: %s (watchdog)" % (elapsed(), what))

    timer = threading.Timer(max(deadline - time.monotonic(), 0) + 15, fire)
    timer.daemon = True
    timer.start()


def wait_for_connection(connection, deadline):
    from django.db.utils import Error as DatabaseError

    attempt = 0
    delay = 1.0
    while True:
        attempt += 1
        with_connect_timeout(connection, deadline - time.monotonic())
        try:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            log("attempt %d: database %r is reachable (%s)" % (attempt, ALIAS, connection.vendor))
            return
        except DatabaseError as e:
            try:
                connection.close()
            except DatabaseError:
                pass
            if is_credentials_error(e):
                finish(EXIT_CREDENTIALS, "database %r rejected the credentials: %s" % (ALIAS, first_line(e)))
            left = deadline - time.monotonic()
            if left <= 0:
                finish(
                    EXIT_TIMEOUT,
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
    """The plan `migrate` would run now, as (app_label, name) pairs."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    targets = executor.loader.graph.leaf_nodes()
    return [(m.app_label, m.name) for m, backwards in executor.migration_plan(targets) if not backwards]


class Lock:
    """A session-level database lock on its own connection; it dies with the session."""

    def __init__(self, connections):
        self.connection = connections.create_connection(ALIAS)
        with_connect_timeout(self.connection)
        self.vendor = self.connection.vendor
        name = str(self.connection.settings_dict.get("NAME") or "")
        import hashlib

        digest = hashlib.sha256(("django-migrate:" + name).encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        # MySQL lock names are server-wide (so they carry the database name) and at most
        # 64 characters long.
        self.name = "django-migrate:" + name
        if len(self.name) > 64:
            self.name = "django-migrate:" + digest.hex()[:40]

    @property
    def supported(self):
        return self.vendor in ("postgresql", "mysql")

    def try_acquire(self):
        with self.connection.cursor() as cursor:
            if self.vendor == "postgresql":
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [self.key])
            else:
                cursor.execute("SELECT GET_LOCK(%s, 0)", [self.name])
            row = cursor.fetchone()
        return bool(row and row[0])

    def release(self):
        try:
            with self.connection.cursor() as cursor:
                if self.vendor == "postgresql":
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])
                else:
                    cursor.execute("SELECT RELEASE_LOCK(%s)", [self.name])
        finally:
            self.connection.close()


def describe(migrations):
    return ", ".join("%s.%s" % m for m in migrations)


def run_migrate(connection, pending):
    from django.core.management import call_command

    log("applying %d migrations: %s" % (len(pending), describe(pending)))
    try:
        call_command("migrate", database=ALIAS, interactive=False, verbosity=1)
    except Exception as e:  # noqa: BLE001 - any failure of a migration is reported
        connection.close()
        try:
            still = pending_migrations(connection)
        except Exception:  # noqa: BLE001
            still = pending
        failed = still[0] if still else None
        name = "%s.%s" % failed if failed else "unknown migration"
        finish(EXIT_MIGRATE_FAILED, "migration %s failed: %s: %s" % (name, e.__class__.__name__, first_line(e)))
    return pending


def step_migrate(connections, connection, deadline, apply):
    from django.db.utils import Error as DatabaseError

    wait_for_connection(connection, deadline)
    pending = pending_migrations(connection)
    if not pending:
        finish(EXIT_OK, "nothing to apply (%.1fs)" % elapsed())
    if not apply:
        log("%d migrations pending: %s; waiting for them to be applied" % (len(pending), describe(pending)))
    lock = Lock(connections) if apply else None
    if lock is not None and not lock.supported:
        log("no cross-pod lock for the %s backend: running migrate directly" % lock.vendor)
        run_migrate(connection, pending)
        finish(EXIT_OK, "applied %d migrations in %.1fs: %s" % (len(pending), elapsed(), describe(pending)))
    wait_started = time.monotonic()
    while True:
        if lock is not None:
            try:
                held = lock.try_acquire()
            except DatabaseError as e:
                lock.connection.close()
                held = False
                log("cannot ask for the migration lock: %s" % first_line(e))
            if held:
                waited = time.monotonic() - wait_started
                try:
                    pending = pending_migrations(connection)
                    if not pending:
                        finish(EXIT_OK, "applied by another pod (waited %.1fs for the lock)" % waited)
                    run_migrate(connection, pending)
                finally:
                    lock.release()
                finish(
                    EXIT_OK,
                    "applied %d migrations in %.1fs (waited %.1fs for the lock): %s"
                    % (len(pending), elapsed(), waited, describe(pending)),
                )
        left = deadline - time.monotonic()
        if left <= 0:
            what = "the migration lock" if apply else "pending migrations"
            finish(
                EXIT_TIMEOUT,
                "gave up after %.0fs waiting for %s; still pending: %s" % (elapsed(), what, describe(pending)),
            )
        if lock is not None:
            log("another pod holds the migration lock; %d pending; checking again in %.0fs" % (len(pending), POLL_SECONDS))
        else:
            log("%d migrations pending; checking again in %.0fs" % (len(pending), POLL_SECONDS))
        time.sleep(min(POLL_SECONDS, max(left, 0.1)))
        try:
            pending = pending_migrations(connection)
        except DatabaseError as e:
            connection.close()
            log("cannot read the migration state: %s" % first_line(e))
            continue
        if not pending:
            finish(EXIT_OK, "applied by another pod (waited %.1fs)" % (time.monotonic() - wait_started))


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

        settings.DATABASES
    except Exception as e:  # noqa: BLE001 - any import error in the settings module
        finish(
            EXIT_NOT_FOUND,
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
            "database alias %r is not in settings.DATABASES (have: %s)"
            % (ALIAS, ", ".join(connections.settings) or "none"),
        )
    with_connect_timeout(connection)
    deadline = time.monotonic() + TIMEOUT
    start_watchdog(deadline, "step %s did not finish" % STEP)
    if STEP == "wait-for-db":
        wait_for_connection(connection, deadline)
        finish(EXIT_OK, "database %r reachable after %.1fs" % (ALIAS, elapsed()))
    elif STEP == "migrate":
        step_migrate(connections, connection, deadline, apply=True)
    elif STEP == "wait-for-migrations":
        step_migrate(connections, connection, deadline, apply=False)
    else:
        finish(EXIT_NOT_FOUND, "unknown DJANGO_MIGRATE_STEP %r" % STEP)


if STATUS_FD_ENV in os.environ:
    run_inner()
else:
    run_outer()
