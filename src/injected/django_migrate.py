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
#    - migrate mode: nothing pending -> exit 0 at once, once this release has had its
#      pre_migrate/post_migrate run (the first pod of a release runs `migrate` with nothing
#      to apply, under the lock, and records the release); otherwise take the migration lock
#      on a connection of its own (PostgreSQL: pg_try_advisory_xact_lock in a transaction
#      kept open for the whole migration, so it works the same direct and through a
#      transaction pooler; MySQL/MariaDB: GET_LOCK; polled, never a blocking wait), re-check,
#      classify the pending operations (unsafe ones are named, and held back under `deny`),
#      run `migrate` with a lock timeout on every statement, scoped to the transaction it
#      belongs to (retried with backoff while nothing of the migration was applied), end
#      the lock's transaction. A heartbeat keeps the lock's connection alive under idle
#      limits; a lost lock stops `migrate` before the next migration is applied or
#      recorded; `migrate`'s own PostgreSQL session is kept from idling past the server's
#      idle_session_timeout between the transactions of a non-atomic migration;
#    - wait mode: wait until nothing is pending, never migrate;
#    - contract mode (the contract run's Job, once no pod of the previous release is
#      left): like migrate mode, and it applies the deferred migrations too.
#
# Expand and contract: in migrate and wait mode a pending migration is deferred when it
# is marked django-safemigrate's `Safe.after_deploy()`, named in DJANGO_MIGRATE_DEFER, or
# breaks the previous release under `unsafe-migrations: defer`. Migrate mode applies the
# rest (exit 5 when one of the rest must run after a deferred one); both modes wait only
# for the rest; the summary names the deferred ones for the contract run.
#
# The timeouts bound waiting (for the database, the lock, other pods, lock-timeout
# retries); a running migration is never cut by this program.
#
# Exit codes: 0 ok, 1 timed out, 2 migrate failed, 3 credentials rejected,
# 4 settings or manage command not found, 5 unsafe migration held back, 6 the lock cannot
# be held through this connection (a statement pooler) or was lost. A JSON summary
# (at most 4 KiB: prose and lists are cut to fit, never the counts) goes to the
# termination log, which Kubernetes shows in the pod status and the controller reads.
#
# The names below (env vars, phases, exit codes) are the ones of src/names.rs.

import contextlib
import functools
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

MODE_MIGRATE = "migrate"
MODE_WAIT = "wait"
MODE_CONTRACT = "contract"
MODE = os.environ.get("DJANGO_MIGRATE_MODE", MODE_MIGRATE)
ALIAS = os.environ.get("DJANGO_MIGRATE_DATABASE", "default")
MANAGE_COMMAND = os.environ.get("DJANGO_MIGRATE_MANAGE_COMMAND", "python3 manage.py").split()
WAIT_TIMEOUT = float(os.environ.get("DJANGO_MIGRATE_WAIT_TIMEOUT", "300"))
MIGRATE_TIMEOUT = float(os.environ.get("DJANGO_MIGRATE_MIGRATE_TIMEOUT", "1800"))
LOCK_TIMEOUT = int(os.environ.get("DJANGO_MIGRATE_LOCK_TIMEOUT", "3"))
UNSAFE_MIGRATIONS = os.environ.get("DJANGO_MIGRATE_UNSAFE_MIGRATIONS", "warn")
ALLOW_UNSAFE = {m.strip() for m in os.environ.get("DJANGO_MIGRATE_ALLOW_UNSAFE", "").split(",") if m.strip()}
# Migrations applied only in the contract run, once no pod of the previous release is left.
DEFER = {m.strip() for m in os.environ.get("DJANGO_MIGRATE_DEFER", "").split(",") if m.strip()}
# The two kinds of harm a pending operation is classified by.
KIND_BREAKING = "breaking"
KIND_LOCKING = "locking"
# The kinds `deny` holds back, and the table size below which a locking operation is only
# reported.
HOLD_BACK = {k.strip() for k in os.environ.get("DJANGO_MIGRATE_HOLD_BACK", KIND_BREAKING).split(",") if k.strip()}
LOCKING_MIN_ROWS = int(os.environ.get("DJANGO_MIGRATE_LOCKING_MIN_ROWS", "100000"))
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


def process_started_at():
    """The wall-clock time this process started, from /proc (the outer phase is the
    container's first process, so this is the container's start); now when unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        # Field 22, starttime, in clock ticks since boot (field 3 is after_name[0]).
        ago = uptime - int(after_name[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - min(max(ago, 0.0), 3600.0)
    except (OSError, ValueError, IndexError):
        return time.time()


# The outer phase tells the inner one when the container started and when it started
# Django, so that the summary's times count from the container's start.
STARTED_AT_ENV = "DJANGO_MIGRATE_STARTED_AT"
SPAWNED_AT_ENV = "DJANGO_MIGRATE_SPAWNED_AT"
try:
    STARTED_AT = float(os.environ[STARTED_AT_ENV])
except (KeyError, ValueError):
    STARTED_AT = process_started_at()
# The environment as the pod gave it: the settings module the fast path imports may change
# os.environ (TZ, a .env file), and the inner phase must not start with those changes.
ENVIRON = dict(os.environ)

# The `result` of the summary.
RESULT_NOTHING_PENDING = "nothing-pending"
RESULT_APPLIED = "applied"
RESULT_APPLIED_BY_OTHER_POD = "applied-by-other-pod"
RESULT_TIMEOUT = "timeout"
RESULT_FAILED = "failed"
RESULT_CREDENTIALS_REJECTED = "credentials-rejected"
RESULT_NOT_FOUND = "not-found"
RESULT_UNSAFE_BLOCKED = "unsafe-blocked"
RESULT_LOCKING_BLOCKED = "locking-blocked"
RESULT_LOCK_UNAVAILABLE = "lock-unavailable"
RESULT_LOCK_LOST = "lock-lost"
RESULT_DEFERRED_BLOCKED = "deferred-blocked"
RESULT_POST_MIGRATE_FAILED = "post-migrate-failed"
RESULT_HALF_APPLIED = "half-applied"

# Every log line starts with it; the controller reads the phase of the last one.
LOG_PREFIX = "django-migrate"
# A message names this many migrations (or operations) at most, in at most this many
# characters, then says how many more: it stays within the cut below.
MESSAGE_MAX_NAMES = 10
MESSAGE_NAMES_MAX_CHARS = 300
# What an oversized summary cuts its prose to before it cuts any list.
MESSAGE_MAX_CHARS = 500
WHY_MAX_CHARS = 100


class StepEnded(BaseException):
    """How the step ends: raised where that becomes known, caught once by `main`. Not an
    Exception, so that the `except Exception` around driver calls lets it through, while
    `finally` blocks (the lock's release) still run."""

    def __init__(self, code, result, message):
        super().__init__(message)
        self.code = code
        self.result = result
        self.message = message


def log(phase, message):
    print("%s %s [%s]: %s" % (LOG_PREFIX, MODE, phase, message), file=sys.stderr, flush=True)


def elapsed():
    """Seconds since the container started."""
    return max(time.time() - STARTED_AT, 0.0)


def shorten(text, limit):
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def name_list(names):
    """Names joined for a message: the first few (at least one), then how many more, so the
    message stays one short line whatever the plan's size."""
    names = list(names)
    shown = names[:1]
    for name in names[1:MESSAGE_MAX_NAMES]:
        if len(", ".join(shown + [name])) > MESSAGE_NAMES_MAX_CHARS:
            break
        shown.append(name)
    text = ", ".join(shown)
    if len(names) > len(shown):
        text += " and %d more" % (len(names) - len(shown))
    return text


class Report:
    """What the summary says; filled in as the step goes by the functions it is passed to."""

    def __init__(self):
        self.phase = PHASE_SETUP
        self.applied = []  # appended to while `migrate` runs
        self.pending = []
        self.failed_migration = None
        self.database_seconds = 0.0
        self.lock_wait_seconds = 0.0
        self.migrate_seconds = 0.0
        # From the outer phase starting Django's shell to the inner phase running in it.
        self.django_setup_seconds = 0.0
        self.post_migrate_seconds = 0.0
        # Whether this pod gave the release its pre_migrate/post_migrate run, and why (not).
        self.post_migrate = None
        self.retries = 0
        self.unsafe_operations = []
        # Pending migrations left for the contract run, with why (and a delay, if any).
        self.deferred = []
        # Whether the fast path was taken, and why (not), and whether a record was written.
        self.fast_path = None
        # Held by the first thread that ends the process (the main one or the watchdog).
        self.ending = threading.Lock()

    def log(self, message):
        log(self.phase, message)

    def counts(self):
        return {
            "applied": len(self.applied),
            "pending": len(self.pending),
            "unsafe": len(self.unsafe_operations),
            "held_back": sum(1 for u in self.unsafe_operations if u.get("held_back")),
            "deferred": len(self.deferred),
        }

    def contract_delay_seconds(self):
        """The longest `delay` of the deferred migrations (django-safemigrate's), or None:
        the contract run waits at least this long after the rollout completed."""
        delays = [d["delay"] for d in self.deferred if d.get("delay") is not None]
        return max(delays) if delays else None

    def deferred_note(self):
        """What a message of a successful step adds when migrations were deferred."""
        if not self.deferred:
            return ""
        return "; %d deferred to the contract run: %s" % (
            len(self.deferred),
            name_list(d["migration"] for d in self.deferred),
        )

    def summary(self, code, result, message):
        """The JSON summary, within MAX_SUMMARY_BYTES. The counts always stay; prose is cut
        before lists, and lists keep their first entries."""
        data = {
            "mode": MODE,
            "phase": self.phase,
            "result": result,
            "exit_code": code,
            "message": message,
            "applied": list(self.applied),
            "pending": list(self.pending),
            "failed_migration": self.failed_migration,
            "seconds": {
                "total": round(elapsed(), 3),
                "django_setup": round(self.django_setup_seconds, 3),
                "database": round(self.database_seconds, 3),
                "lock_wait": round(self.lock_wait_seconds, 3),
                "migrate": round(self.migrate_seconds, 3),
                "post_migrate": round(self.post_migrate_seconds, 3),
            },
            "retries": self.retries,
            "counts": self.counts(),
            "unsafe_operations": [dict(u) for u in self.unsafe_operations],
            "deferred": [dict(d) for d in self.deferred],
            "contract_delay_seconds": self.contract_delay_seconds(),
            "fast_path": self.fast_path,
            "post_migrate": self.post_migrate,
        }

        def oversized():
            return len(json.dumps(data, separators=(",", ":")).encode()) > MAX_SUMMARY_BYTES

        if oversized():
            data["message"] = shorten(message, MESSAGE_MAX_CHARS)
        if oversized():
            for u in data["unsafe_operations"]:
                u["why"] = shorten(u["why"], WHY_MAX_CHARS)
        # The deferred ones go last: the contract run is planned from them.
        for key in ("pending", "applied", "unsafe_operations", "deferred"):
            if oversized():
                # The longest prefix that fits, found by halving the range.
                whole, fits, over = data[key], 0, len(data[key])
                while over - fits > 1:
                    middle = (fits + over) // 2
                    data[key] = whole[:middle]
                    if oversized():
                        over = middle
                    else:
                        fits = middle
                data[key] = whole[:fits]
        # Still over only with strings longer than any file name: those give way last.
        for key in ("message", "failed_migration", "mode"):
            while oversized() and data[key]:
                data[key] = data[key][: len(data[key]) // 2]
        return json.dumps(data, separators=(",", ":"))


def end(report, code, result=None, message=None):
    """The one exit of the process. With a result, logs the message and writes the summary
    first; without one (the outer phase passing the inner phase's exit code through) the
    inner phase wrote it. The watchdog thread calls it too, and the first caller wins."""
    with report.ending:
        if result is not None:
            report.log(message)
            try:
                with open(TERMINATION_LOG, "w", encoding="utf-8") as f:
                    f.write(report.summary(code, result, message))
            except OSError:
                pass  # a missing or read-only path is not an error outside Kubernetes
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit: Django's shell must not turn SystemExit into anything else, and
        # no cleanup may block (a hung connection would otherwise hold the pod).
        os._exit(code)


def first_line(error):
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0][:500]


# ---------------------------------------------------------------- outer phase


def not_found(message):
    return StepEnded(EXIT_NOT_FOUND, RESULT_NOT_FOUND, message)


def run_outer(report):
    """Ends the step on the fast path when it can; otherwise runs the inner phase under
    Django's shell and returns its exit code to pass through."""
    if not MANAGE_COMMAND:
        raise not_found("DJANGO_MIGRATE_MANAGE_COMMAND is empty")
    program = MANAGE_COMMAND[0]
    if "/" in program:
        if not os.path.exists(program):
            raise not_found("%s not found (working directory %s)" % (program, os.getcwd()))
    elif shutil.which(program) is None:
        raise not_found("%s not found on PATH" % program)
    for word in MANAGE_COMMAND[1:]:
        if word.endswith(".py") and not os.path.exists(word):
            raise not_found(
                "%s not found in working directory %s: set the container's workingDir or the "
                "django-migrate.io/manage-py annotation" % (word, os.getcwd())
            )

    env = try_fast_path(report)
    read_fd, write_fd = os.pipe()
    env[STATUS_FD_ENV] = str(write_fd)
    env[STARTED_AT_ENV] = repr(STARTED_AT)
    env[SPAWNED_AT_ENV] = repr(time.time())
    inner = "import runpy; runpy.run_path(%r, run_name='django_migrate')" % os.path.abspath(__file__)
    argv = MANAGE_COMMAND + ["shell", "-v", "0", "-c", inner]
    try:
        child = subprocess.Popen(argv, env=env, pass_fds=(write_fd,))
    except OSError as e:
        raise not_found("cannot run %s: %s" % (" ".join(MANAGE_COMMAND), e)) from e
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
                raise StepEnded(EXIT_TIMEOUT, RESULT_TIMEOUT, "gave up after %.0fs: Django did not start" % elapsed())
    rc = child.wait()
    if rc < 0:
        return 128 - rc
    if rc != 0 and started in (b"", b"closed"):
        raise not_found(
            "Django did not start (exit code %d): the settings or the management command "
            "could not be loaded; see the error above" % rc
        )
    return rc


# ---------------------------------------------------------------- post_migrate
#
# `migrate` sends pre_migrate and post_migrate on every run, also with nothing to apply,
# and apps keep their rows up to date from them (permissions and content types, Nautobot's
# Jobs, a default site). The step gives every release that run once, under the migration
# lock (Django's create_permissions is not safe to run twice at once). A release is the
# pod template a pod was made from: the pod's pod-template-hash label, which the webhook
# passes to the step through the downward API (DJANGO_MIGRATE_RELEASE). A new image, new
# settings or a `rollout restart` make a new release; more pods and restarts of the same
# one do not. Which releases had their run is recorded in RELEASE_TABLE, which the fast
# path reads; a pod without the label (not made by a Deployment) runs it on every start.

POST_MIGRATE = os.environ.get("DJANGO_MIGRATE_POST_MIGRATE", "true")
RELEASE = os.environ.get("DJANGO_MIGRATE_RELEASE", "").strip()
RELEASE_TABLE = "django_migrate_release"
# Releases kept beside the newest (a rollback to one of them needs no new run).
RELEASES_KEPT = 50


def release_key():
    """What RELEASE_TABLE stores for this release (a label value fits; anything longer is
    hashed)."""
    return RELEASE if len(RELEASE) <= 64 else hashlib.sha256(RELEASE.encode()).hexdigest()


def post_migrate_wanted():
    """Whether this mode and the settings give a release its pre_migrate/post_migrate run
    when nothing is pending (wait mode never migrates; the contract run always migrates)."""
    return MODE == MODE_MIGRATE and POST_MIGRATE == "true"


# ---------------------------------------------------------------- fast path
#
# Most pod starts have nothing to migrate. After a full run that leaves nothing pending,
# the step records in the database (RECORD_TABLE) a fingerprint of everything apart from
# the database that decides Django's migration plan: the files of every app's migrations
# module and where that module resolves, the files that define the apps, the settings the
# plan reads, Django's version, the alias and the database's address; and the rows of
# django_migrations the empty plan rested on. A later start computes the fingerprint
# again without starting Django (it imports the settings module, never django.setup())
# and ends with nothing pending only when a record has that fingerprint, those rows are
# still as they were and (in migrate mode) this release has had its post_migrate run.
# Any doubt takes the full path, and the summary says which.

FAST_PATH = os.environ.get("DJANGO_MIGRATE_FAST_PATH", "true")
# The settings module a wrapper management command loads (nautobot-server, sentry django).
SETTINGS_MODULE = os.environ.get("DJANGO_MIGRATE_SETTINGS_MODULE", "").strip()
RECORD_TABLE = "django_migrate_record"
# Records of other fingerprints (earlier releases, other Deployments) kept beside the newest.
RECORDS_KEPT = 50
# The fast path gives up after this long and the full path runs.
FAST_PATH_SECONDS = 20.0
# The record write gives up after this long; the step has succeeded either way.
RECORD_SECONDS = 15.0
FAST_PATH_CONNECT_TIMEOUT = 5
FINGERPRINT_FORMAT = 1
# The outer phase tells the inner one why the fast path was not taken, and whether a
# record may let the next start take it.
FAST_PATH_DOUBT_ENV = "DJANGO_MIGRATE_FAST_PATH_DOUBT"
FAST_PATH_RECORD_ENV = "DJANGO_MIGRATE_FAST_PATH_RECORD"
# Set on the process that runs the check: the file descriptor its answer goes to.
FAST_PATH_CHECK_FD_ENV = "DJANGO_MIGRATE_FAST_PATH_CHECK_FD"
# Connection options that do not choose the database (and may differ from pod to pod):
# left out of the database's identity.
CONNECTION_ONLY_OPTIONS = (
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "pool",
    "isolation_level",
    "server_side_binding",
    "cursor_factory",
    "prepare_threshold",
    "client_encoding",
    "charset",
    "conv",
)
# Settings the plan always reads; the swappable settings its dependencies name are added.
PLAN_SETTINGS = ("INSTALLED_APPS", "MIGRATION_MODULES")
FAST_PATH_WHY_MAX_CHARS = 300
# What a manage.py of Django's template imports and calls, and nothing else.
MANAGE_PY_IMPORTS = ("os", "sys", "django", "django.core.management")
MANAGE_PY_CALLS = ("execute_from_command_line", "main", "ImportError")
ENGINES_POSTGRESQL = ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis")
ENGINES_MYSQL = ("django.db.backends.mysql", "django.contrib.gis.db.backends.mysql")
ENGINES_SQLITE = ("django.db.backends.sqlite3", "django.contrib.gis.db.backends.spatialite")


class Doubt(Exception):
    """Why the fast path cannot prove that nothing is pending. A `lasting` one holds for
    every start of this image and settings (a driver it does not know, say): no record is
    written for it."""

    def __init__(self, why, lasting=False):
        super().__init__(why)
        self.why = why
        self.lasting = lasting


def dotted(node):
    """`a.b.c` of a Name/Attribute chain, or None."""
    import ast

    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def standard_manage_py(path):
    """The DJANGO_SETTINGS_MODULE default of a manage.py of Django's template shape (or
    None when it sets none); a Doubt for any other manage.py: one that loads a .env file
    or changes sys.path may change what the settings read, and only running it tells."""
    import ast

    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError) as e:
        raise Doubt("cannot read %s: %s" % (path, first_line(e)), lasting=True) from e
    allowed = (ast.Import, ast.ImportFrom, ast.Expr, ast.FunctionDef, ast.If, ast.Try, ast.Raise, ast.Pass, ast.Return)
    defaults = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, ast.stmt) and not isinstance(node, allowed):
            what = "a %s statement" % node.__class__.__name__
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(a.asname for a in node.names):
            what = "an import under another name"
        elif isinstance(node, ast.Import) and any(a.name not in MANAGE_PY_IMPORTS for a in node.names):
            what = "import %s" % ", ".join(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module not in MANAGE_PY_IMPORTS:
            what = "from %s import" % node.module
        elif isinstance(node, ast.If) and not (
            isinstance(node.test, ast.Compare)
            and dotted(node.test.left) == "__name__"
            and [type(o) for o in node.test.ops] == [ast.Eq]
            and [getattr(c, "value", None) for c in node.test.comparators] == ["__main__"]
        ):
            what = 'a condition other than __name__ == "__main__"'
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if name == "os.environ.setdefault" and len(args) == 2 and args[0] == "DJANGO_SETTINGS_MODULE":
                if not isinstance(args[1], str) or defaults:
                    what = "a DJANGO_SETTINGS_MODULE that is not one string literal"
                defaults.append(args[1])
            elif name not in MANAGE_PY_CALLS:
                what = "a call of %s" % (name or "an expression")
        if what is not None:
            raise Doubt(
                "%s does more than Django's manage.py template (%s, line %d)"
                % (path, what, getattr(node, "lineno", 0)),
                lasting=True,
            )
    return defaults[0] if defaults else None


def manage_script():
    """The manage.py that the manage command runs with this very interpreter, or a Doubt:
    another interpreter has another sys.path, and another command other settings."""
    if len(MANAGE_COMMAND) != 2 or not MANAGE_COMMAND[1].endswith(".py"):
        raise Doubt(
            "the manage command %r is not `python manage.py`: name the settings module it loads "
            "(django-migrate.io/settings-module) for the fast path" % " ".join(MANAGE_COMMAND),
            lasting=True,
        )
    python = shutil.which(MANAGE_COMMAND[0])
    if python is None or os.path.abspath(python) != os.path.abspath(sys.executable):
        raise Doubt(
            "the manage command runs %s, not this interpreter (%s)" % (python or MANAGE_COMMAND[0], sys.executable),
            lasting=True,
        )
    return os.path.abspath(MANAGE_COMMAND[1])


def wrapper_interpreter():
    """The manage command's program when it runs this very interpreter: Python itself
    (`python -m package`), or a script whose #! line names it (a console script such as
    `nautobot-server`); a Doubt otherwise."""
    program = shutil.which(MANAGE_COMMAND[0])
    if program is None:
        raise Doubt("%s is not on PATH" % MANAGE_COMMAND[0], lasting=True)
    me = os.path.realpath(sys.executable)
    if os.path.realpath(program) == me:
        return None
    try:
        with open(program, "rb") as f:
            first = f.readline(512)
    except OSError as e:
        raise Doubt("cannot read %s: %s" % (program, first_line(e)), lasting=True) from e
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    if len(words) == 2 and os.path.basename(words[0]) == "env":
        words = [shutil.which(words[1]) or words[1]]
    if len(words) != 1 or os.path.realpath(words[0]) != me:
        raise Doubt(
            "the manage command %s does not run this interpreter (%s)" % (program, sys.executable), lasting=True
        )
    return program


def declared_settings():
    """The settings of a wrapper command, from the module DJANGO_MIGRATE_SETTINGS_MODULE
    names (dotted, or a .py file loaded under its own name, as Nautobot loads its
    configuration), on the sys.path the command starts with. The step checks after a
    full run that the command loaded that very module before it writes a record."""
    program = wrapper_interpreter()
    if not getattr(sys.flags, "safe_path", False):
        if program is not None:
            sys.path[0] = os.path.dirname(os.path.realpath(program))
        elif MANAGE_COMMAND[1:2] == ["-m"]:
            sys.path[0] = os.getcwd()
        elif len(MANAGE_COMMAND) > 1 and MANAGE_COMMAND[1].endswith(".py"):
            sys.path[0] = os.path.dirname(os.path.realpath(MANAGE_COMMAND[1]))
    if not SETTINGS_MODULE.endswith(".py"):
        return settings_of(SETTINGS_MODULE, SETTINGS_MODULE)
    path = os.path.realpath(SETTINGS_MODULE)
    name = os.path.splitext(os.path.basename(path))[0]

    def load():
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)

    return settings_of(name, SETTINGS_MODULE, load)


def settings_of(name, shown, load=None):
    """django.conf.Settings of the module `name` (imported first by `load` when given),
    or a Doubt that names `shown`."""
    try:
        if load is not None:
            load()
        from django.conf import Settings

        return Settings(name)
    except Exception as e:  # noqa: BLE001 - whatever the settings module raises
        raise Doubt(
            "cannot load the settings module %s without starting Django: %s: %s"
            % (shown, e.__class__.__name__, first_line(e))
        ) from e


def settings_loaded_as_declared(settings):
    """After a full run under a wrapper command: None when it loaded the settings module
    that DJANGO_MIGRATE_SETTINGS_MODULE names, else what it loaded instead."""
    loaded = getattr(settings, "SETTINGS_MODULE", None) or "none"
    if SETTINGS_MODULE.endswith(".py"):
        path = getattr(sys.modules.get(loaded), "__file__", None)
        if path and os.path.realpath(path) == os.path.realpath(SETTINGS_MODULE):
            return None
        return "%s (%s)" % (loaded, path or "no file")
    return None if loaded == SETTINGS_MODULE else loaded


def plan_settings():
    """The settings as manage.py would load them, without starting Django: the module over
    Django's defaults (django.conf.Settings), on the sys.path of `python manage.py`; for
    a wrapper command, the module DJANGO_MIGRATE_SETTINGS_MODULE names."""
    if SETTINGS_MODULE:
        return declared_settings()
    script = manage_script()
    default = standard_manage_py(script)
    module = ENVIRON["DJANGO_SETTINGS_MODULE"] if "DJANGO_SETTINGS_MODULE" in ENVIRON else default
    if not module:
        raise Doubt("DJANGO_SETTINGS_MODULE is not set and %s sets no default" % script, lasting=True)
    # `python manage.py` puts the script's directory first on sys.path, symbolic links
    # resolved, where this program's directory is now (neither is there under
    # PYTHONSAFEPATH).
    if not getattr(sys.flags, "safe_path", False):
        sys.path[0] = os.path.dirname(os.path.realpath(script))
    return settings_of(module, module)


def database_identity(db):
    """The database's address as the settings give it (no credentials)."""
    options = {
        k: v
        for k, v in (db.get("OPTIONS") or {}).items()
        if "pass" not in k.lower() and k not in CONNECTION_ONLY_OPTIONS
    }
    return {
        "ENGINE": db.get("ENGINE") or "",
        "NAME": str(db.get("NAME") or ""),
        "HOST": str(db.get("HOST") or ""),
        "PORT": str(db.get("PORT") or ""),
        "OPTIONS": options,
    }


@functools.lru_cache(maxsize=None)
def file_digest(path):
    """The SHA-256 of a regular file's content, read in chunks; "missing" when there is
    none (a record names paths, and a device or a directory is never one of its files)."""
    import stat

    h = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "missing"
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise Doubt("cannot read %s: %s" % (path, first_line(e))) from e
    return h.hexdigest()


def directory_digest(path):
    """Every file of a migrations package by name and content (what Django's loader lists
    from it, and more); subdirectories, __pycache__ included, are not migrations."""
    h = hashlib.sha256()
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as e:
        raise Doubt("cannot list %s: %s" % (path, first_line(e))) from e
    for entry in entries:
        if entry.is_file():
            h.update(("%s\0%s\n" % (entry.name, file_digest(entry.path))).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def module_state(name):
    """Where the module `name` resolves, found the way the import system finds it but
    without running any module: ["package", directory, its digest] (Django's loader reads
    migrations from it), ["namespace"] or ["module"] (Django treats the app as unmigrated)
    or ["missing"]; then the digests of the parent packages' __init__ files on the way."""
    import importlib.machinery
    import importlib.util

    parts = name.split(".")
    parents = []
    spec = None
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        try:
            if i == 0:
                # A top-level name: the finders are asked (editable installs included);
                # nothing is executed.
                spec = importlib.util.find_spec(full)
            elif spec.submodule_search_locations is None:
                spec = None
            else:
                # A namespace package's path as found, not recomputed from its imported
                # parent (which this process may not have).
                locations = spec.submodule_search_locations
                locations = list(getattr(locations, "_path", locations))
                spec = importlib.machinery.PathFinder.find_spec(full, locations)
        except (ImportError, ValueError, KeyError) as e:
            raise Doubt("cannot resolve %s: %s" % (full, first_line(e))) from e
        if spec is None:
            return ["missing", full] + parents
        if i < len(parts) - 1 and spec.origin:
            parents.append([spec.origin, file_digest(spec.origin)])
    if spec.submodule_search_locations is None:
        return ["module", spec.origin] + parents
    if not spec.origin or not spec.has_location:
        return ["namespace"] + parents
    directory = os.path.realpath(os.path.dirname(spec.origin))
    return ["package", directory, directory_digest(directory)] + parents


def loaded_state(name):
    """What Django's loader saw of the imported module `name`, in module_state's terms."""
    module = sys.modules.get(name)
    if module is None:
        return "missing", None
    if not hasattr(module, "__path__"):
        return "module", None
    if getattr(module, "__file__", None) is None and not isinstance(module.__path__, list):
        return "namespace", None
    directory = os.path.realpath(os.path.dirname(module.__file__))
    if [os.path.realpath(p) for p in module.__path__] != [directory]:
        # Django lists migrations from every entry; the fingerprint covers one directory.
        return "package with more than one directory", None
    return "package", directory


class ModuleSettings:
    """The settings as the settings module and Django's defaults give them, without what
    apps set at start-up (swapper gives a swappable setting such as WAGTAIL_PAGE_MODEL its
    default when the app loads): what the fast path's check, which never starts Django,
    reads. An app's default is covered by the app's own files in the fingerprint."""

    def __init__(self, settings):
        self._settings = settings

    def __getattr__(self, name):
        from django.conf import global_settings

        if self._settings.is_overridden(name):
            return getattr(self._settings, name)
        return getattr(global_settings, name)


def fingerprint_payload(settings, identity, sources):
    """Everything but the database that decides the migration plan, for the settings, the
    database's identity and the sources a record names."""
    import django

    return {
        "format": FINGERPRINT_FORMAT,
        "django": django.__version__,
        "alias": ALIAS,
        "database": identity,
        "settings": {n: getattr(settings, n, None) for n in sorted(set(PLAN_SETTINGS) | set(sources["settings"]))},
        "modules": [[name] + module_state(name) for name in sources["modules"]],
        "files": [[path, file_digest(path)] for path in sources["files"]],
    }


def digest_of(value):
    text = json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(settings, identity, sources):
    """The digest of fingerprint_payload."""
    return digest_of(fingerprint_payload(settings, identity, sources))


def fingerprint_parts(payload):
    """A short digest per part of the payload (each setting, module and file on its own),
    which a record keeps so that a start that finds no record can say what differs."""
    parts = {
        "django %s" % payload["django"]: "",
        "database": digest_of([payload["alias"], payload["database"]])[:12],
    }
    for name, value in payload["settings"].items():
        parts["setting %s" % name] = digest_of(value)[:12]
    for entry in payload["modules"]:
        parts["module %s" % entry[0]] = digest_of(entry)[:12]
    for path, digest in payload["files"]:
        parts["file %s" % path] = digest[:12]
    return parts


def differences(recorded, sources, settings, identity):
    """What differs between a record's parts and this start's, by name ("setting X",
    "file P", "django 5.2", ...); None when the record kept no parts."""
    if not isinstance(recorded, dict):
        return None
    now = fingerprint_parts(fingerprint_payload(settings, identity, sources))
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))


def connect_outside_django(db):
    """A DB-API connection with the parameters Django's backend would use, or a Doubt."""
    engine = db.get("ENGINE") or ""
    options = dict(db.get("OPTIONS") or {})
    name = db.get("NAME")
    try:
        if engine in ENGINES_POSTGRESQL:
            if options.get("assume_role"):
                raise Doubt("OPTIONS assume_role changes what the connection sees", lasting=True)
            for key in ("assume_role", "isolation_level", "server_side_binding", "pool", "cursor_factory"):
                options.pop(key, None)
            # Django's order: an OPTIONS dbname wins over NAME.
            if name:
                params = dict({"dbname": name}, **options)
            elif name is None:
                options.pop("service", None)
                params = dict({"dbname": "postgres"}, **options)
            else:
                params = dict(options)
            params["client_encoding"] = "UTF8"
            for key, param in (("USER", "user"), ("PASSWORD", "password"), ("HOST", "host"), ("PORT", "port")):
                if db.get(key):
                    params[param] = db[key]
            params.setdefault("connect_timeout", FAST_PATH_CONNECT_TIMEOUT)
            try:
                import psycopg

                params.setdefault("prepare_threshold", None)
                conn = psycopg.connect(autocommit=True, **params)
            except ImportError:
                import psycopg2

                conn = psycopg2.connect(**params)
                conn.autocommit = True
            return conn
        if engine in ENGINES_MYSQL:
            import MySQLdb

            options.pop("isolation_level", None)
            params = {"charset": "utf8mb4", "connect_timeout": FAST_PATH_CONNECT_TIMEOUT}
            for key, param in (("USER", "user"), ("NAME", "db"), ("PASSWORD", "passwd")):
                if db.get(key):
                    params[param] = db[key]
            host = db.get("HOST") or ""
            if host.startswith("/"):
                params["unix_socket"] = host
            elif host:
                params["host"] = host
            if db.get("PORT"):
                params["port"] = int(db["PORT"])
            params.update(options)
            conn = MySQLdb.connect(**params)
            conn.autocommit(True)
            return conn
        if engine in ENGINES_SQLITE:
            import pathlib
            import sqlite3

            text = str(name or "")
            if not text or text == ":memory:" or text.startswith("file:"):
                raise Doubt("the SQLite database %r is not a plain file" % text, lasting=True)
            return sqlite3.connect("%s?mode=ro" % pathlib.Path(text).resolve().as_uri(), uri=True)
    except Doubt:
        raise
    except Exception as e:  # noqa: BLE001 - any driver's error: the full path reports it
        raise Doubt("cannot connect: %s: %s" % (e.__class__.__name__, first_line(e))) from e
    raise Doubt(
        "no fast path for ENGINE %r (it knows PostgreSQL, MySQL/MariaDB and SQLite)" % engine,
        lasting=True,
    )


def fetch_all(conn, sql):
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        cursor.close()


def fast_path_check():
    """Returns what a step that found nothing pending says, or raises a Doubt."""
    if post_migrate_wanted() and not RELEASE:
        raise Doubt(
            "no release (the pod has no pod-template-hash label): post_migrate runs on every start", lasting=True
        )
    settings = plan_settings()
    db = settings.DATABASES.get(ALIAS)
    if db is None:
        raise Doubt("database alias %r is not in settings.DATABASES" % ALIAS)
    identity = database_identity(db)
    conn = connect_outside_django(db)
    try:
        try:
            records = fetch_all(
                conn,
                "SELECT fingerprint, recorded_at, sources, applied FROM %s ORDER BY recorded_at DESC" % RECORD_TABLE,
            )
        except Exception as e:  # noqa: BLE001 - a missing table is the usual one
            raise Doubt("no record table %s: %s" % (RECORD_TABLE, first_line(e))) from e
        match = None
        newest = None
        for digest, recorded_at, sources, applied in records[:RECORDS_KEPT]:
            try:
                sources, applied = json.loads(sources), json.loads(applied)
            except ValueError:
                continue
            newest = newest or (recorded_at, sources)
            if fingerprint(settings, identity, sources) == digest:
                match = digest, recorded_at, applied
                break
        if match is None:
            why = "no record of this image's migrations for this database (%d other records)" % len(records)
            if newest is not None:
                differ = differences(newest[1].get("parts"), newest[1], settings, identity)
                if differ:
                    why += "; the newest (%s) differs in: %s" % (newest[0], name_list(differ))
            raise Doubt(why)
        digest, recorded_at, applied = match
        try:
            rows = {"%s.%s" % (app, name) for app, name in fetch_all(conn, "SELECT app, name FROM django_migrations")}
        except Exception as e:  # noqa: BLE001
            raise Doubt("cannot read django_migrations: %s" % first_line(e)) from e
        if post_migrate_wanted():
            try:
                releases = {r[0] for r in fetch_all(conn, "SELECT release_hash FROM %s" % RELEASE_TABLE)}
            except Exception:  # noqa: BLE001 - no release has had its run yet
                releases = set()
            if release_key() not in releases:
                raise Doubt("post_migrate has not run for release %s yet" % RELEASE)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    gone = [m for m in applied if m not in rows]
    if gone:
        raise Doubt("%d recorded migrations are no longer in django_migrations: %s" % (len(gone), name_list(gone)))
    return "fingerprint %s recorded %s; its %d applied migrations are all in django_migrations" % (
        digest[:12],
        recorded_at,
        len(applied),
    )


def fast_path_child():
    """The process that runs the check: importing the settings module may change the
    working directory, patch the standard library (gevent) or hold memory, none of which
    may reach the process that then starts Django. Writes its answer to the descriptor it
    was given, as JSON, and ends."""
    fd = int(os.environ.pop(FAST_PATH_CHECK_FD_ENV))
    try:
        answer = {"why": fast_path_check()}
    except Doubt as d:
        answer = {"doubt": d.why, "lasting": d.lasting}
    except BaseException as e:  # noqa: BLE001 - the settings module may even exit
        answer = {"doubt": "%s: %s" % (e.__class__.__name__, first_line(e)), "lasting": False}
    with contextlib.suppress(OSError):
        os.write(fd, json.dumps(answer).encode())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_fast_path_check():
    """The check's answer, from a process of its own killed at FAST_PATH_SECONDS: (why it
    is certain, None) or (None, Doubt)."""
    read_fd, write_fd = os.pipe()
    env = dict(ENVIRON, **{FAST_PATH_CHECK_FD_ENV: str(write_fd)})
    try:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__)], env=env, pass_fds=(write_fd,))
    except OSError as e:
        os.close(read_fd)
        os.close(write_fd)
        return None, Doubt("cannot run the check: %s" % e)
    os.close(write_fd)
    answer = b""
    deadline = time.monotonic() + FAST_PATH_SECONDS
    with os.fdopen(read_fd, "rb") as pipe:
        while True:
            left = deadline - time.monotonic()
            ready = select.select([pipe], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                child.kill()
                child.wait()
                return None, Doubt("no answer within %.0fs" % FAST_PATH_SECONDS)
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                break
            answer += chunk
    child.wait()
    try:
        answer = json.loads(answer)
    except ValueError:
        return None, Doubt("the check ended without an answer (exit code %d)" % child.returncode)
    if "why" in answer:
        return answer["why"], None
    return None, Doubt(answer["doubt"], lasting=answer.get("lasting", False))


def try_fast_path(report):
    """The outer phase: ends the step with nothing pending when the fast path proves it;
    otherwise notes why not and returns the env the inner phase gets."""
    env = dict(ENVIRON)
    if FAST_PATH == "false" or MODE not in (MODE_MIGRATE, MODE_WAIT, MODE_CONTRACT):
        return env
    if FAST_PATH != "true":
        raise not_found("unknown DJANGO_MIGRATE_FAST_PATH %r: allowed true or false" % FAST_PATH)
    if POST_MIGRATE not in ("true", "false"):
        raise not_found("unknown DJANGO_MIGRATE_POST_MIGRATE %r: allowed true or false" % POST_MIGRATE)
    outcome = {}
    if MODE == MODE_CONTRACT:
        outcome["doubt"] = Doubt("the contract run applies what the pods deferred: always the full path")
    else:
        why, doubt = run_fast_path_check()
        outcome["why" if why is not None else "doubt"] = why if why is not None else doubt
    if "why" in outcome:
        report.fast_path = {"taken": True, "why": shorten(outcome["why"], FAST_PATH_WHY_MAX_CHARS)}
        report.phase = PHASE_DONE
        raise StepEnded(
            EXIT_OK,
            RESULT_NOTHING_PENDING,
            "nothing to apply (%.2fs, fast path: %s)" % (elapsed(), outcome["why"]),
        )
    doubt = outcome["doubt"]
    report.log("full path: %s" % doubt.why)
    env[FAST_PATH_DOUBT_ENV] = shorten(doubt.why, FAST_PATH_WHY_MAX_CHARS)
    if not doubt.lasting and MODE in (MODE_MIGRATE, MODE_CONTRACT):
        env[FAST_PATH_RECORD_ENV] = "1"
    return env


# The inner phase's side: the record.


def plan_rows(loader, rows):
    """The django_migrations rows an empty plan rests on: every migration of the graph
    and, for a squashed one, all it replaces (Django counts it applied only when they all
    are recorded; its own row does not matter). None when the plan is not empty, or when
    a squashed migration replaces another squashed one."""
    required = set()
    for key, migration in loader.graph.nodes.items():
        replaces = [tuple(r) for r in getattr(migration, "replaces", None) or []]
        if any(r in loader.replacements for r in replaces):
            return None
        required.update(replaces or [key])
    if not required <= rows:
        return None
    return sorted("%s.%s" % k for k in required)


def plan_sources(loader, settings):
    """What the fingerprint covers besides the settings it always reads: the swappable
    settings the migrations' dependencies name, every app's migrations module, and the
    files that define the apps (apps.py decides an app's label)."""
    from django.apps import apps

    modules, files = set(), set()
    for app_config in apps.get_app_configs():
        module, _explicit = loader.migrations_module(app_config.label)
        if module is not None:
            modules.add(module)
        # The label may come from a base class in another module.
        defined_in = [getattr(sys.modules.get(c.__module__), "__file__", None) for c in type(app_config).__mro__]
        for path in defined_in + [os.path.join(app_config.path, f) for f in ("apps.py", "__init__.py")]:
            if path:
                files.add(os.path.realpath(path))
    # A swappable dependency carries the setting's value (`auth.User`), not its name.
    values = {
        dependency.setting
        for migration in loader.disk_migrations.values()
        for dependency in migration.dependencies
        if getattr(dependency, "setting", None)
    }
    swappable = set()
    for name in filter(str.isupper, dir(settings)):
        with contextlib.suppress(Exception):  # a setting that refuses to be read is not one
            if getattr(settings, name) in values:
                swappable.add(name)
    return {"settings": sorted(swappable), "modules": sorted(modules), "files": sorted(files)}


def write_record(identity):
    """Records this image's fingerprint as fully applied to this database; returns what
    the summary says about it."""
    from django.conf import settings
    from django.db import connections
    from django.db.migrations.loader import MigrationLoader

    connection = connections[ALIAS]
    vendor = connection.vendor
    if vendor not in ("postgresql", "mysql", "sqlite"):
        return "not recorded: no fast path for the %s backend" % vendor
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT app, name FROM django_migrations")
            rows = {tuple(r) for r in cursor.fetchall()}
        # The graph from the files alone; the rows decide what it means, as in Django.
        loader = MigrationLoader(None)
        required = plan_rows(loader, rows)
        if required is None:
            return "not recorded: migrations are still pending (deferred ones, or another pod's)"
        if SETTINGS_MODULE:
            loaded = settings_loaded_as_declared(settings)
            if loaded is not None:
                return (
                    "not recorded: the manage command loaded the settings module %s, not %s "
                    "(django-migrate.io/settings-module)" % (loaded, SETTINGS_MODULE)
                )
        sources = plan_sources(loader, settings)
        for module in sources["modules"]:
            state = module_state(module)
            kind, directory = loaded_state(module)
            if state[0] != kind or (kind == "package" and state[1] != directory):
                return "not recorded: %s resolves to %s without importing, but Django loaded %s" % (
                    module,
                    state[1] if len(state) > 1 else state[0],
                    directory or kind,
                )
        # Read as the check reads them: without what apps set at start-up.
        payload = fingerprint_payload(ModuleSettings(settings), identity, sources)
        digest = digest_of(payload)
        sources["parts"] = fingerprint_parts(payload)
        values = [
            digest,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            json.dumps(sources, separators=(",", ":")),
            json.dumps(required, separators=(",", ":")),
        ]
        insert = "INSERT INTO %s (fingerprint, recorded_at, sources, applied) VALUES (%%s, %%s, %%s, %%s)" % (
            RECORD_TABLE
        )
        if vendor == "postgresql":
            insert += (
                " ON CONFLICT (fingerprint) DO UPDATE SET recorded_at = EXCLUDED.recorded_at,"
                " sources = EXCLUDED.sources, applied = EXCLUDED.applied"
            )
        elif vendor == "mysql":
            insert += (
                " ON DUPLICATE KEY UPDATE recorded_at = VALUES(recorded_at), sources = VALUES(sources),"
                " applied = VALUES(applied)"
            )
        else:
            insert = insert.replace("INSERT INTO", "INSERT OR REPLACE INTO", 1)
        with connection.cursor() as cursor:
            with contextlib.suppress(Exception):
                # Pods racing to create it: one wins, the others' inserts go into its table.
                # MySQL's `text` holds 64 KiB: a long history's rows need more.
                text = "longtext" if vendor == "mysql" else "text"
                cursor.execute(
                    "CREATE TABLE IF NOT EXISTS %s (fingerprint varchar(64) NOT NULL PRIMARY KEY, "
                    "recorded_at varchar(32) NOT NULL, sources %s NOT NULL, applied %s NOT NULL)"
                    % (RECORD_TABLE, text, text)
                )
            cursor.execute(insert, values)
            cursor.execute("SELECT fingerprint FROM %s ORDER BY recorded_at DESC" % RECORD_TABLE)
            old = [r[0] for r in cursor.fetchall()[RECORDS_KEPT:]]
            if old:
                cursor.execute(
                    "DELETE FROM %s WHERE fingerprint IN (%s)" % (RECORD_TABLE, ", ".join(["%s"] * len(old))), old
                )
        return "recorded fingerprint %s (%d applied migrations)" % (digest[:12], len(required))
    except Exception as e:  # noqa: BLE001 - the step succeeded; only the next start is slower
        return "not recorded: %s: %s" % (e.__class__.__name__, first_line(e))
    finally:
        close_quietly(connection)


def record_for_fast_path(report, identity):
    """After a successful full run with nothing left pending: the record, written on a
    connection of its own in a thread bounded by RECORD_SECONDS. `identity` is the
    database's as the settings gave it, before the step added its connect timeout."""
    outcome = {}

    def run():
        outcome["said"] = write_record(identity)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(RECORD_SECONDS)
    said = outcome.get("said", "not recorded: no answer within %.0fs" % RECORD_SECONDS)
    report.log("fast path: %s" % said)
    if report.fast_path is not None:
        report.fast_path["recorded"] = shorten(said, FAST_PATH_WHY_MAX_CHARS)


# ---------------------------------------------------------------- inner phase


class Watchdog:
    """Ends the process shortly after a wait's deadline even if a driver call never
    returns. Disarmed while a migration runs: a running migration is never cut."""

    def __init__(self, report):
        self.report = report
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
                # The main thread may be stuck in a driver call: end the process from here.
                end(self.report, EXIT_TIMEOUT, RESULT_TIMEOUT, "gave up after %.0fs: %s (watchdog)" % (elapsed(), what))


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


# How long the lock's connection waits on a network that stopped answering.
DEAD_NETWORK_SECONDS = 30


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

    Its key is derived from the name of the database the server reports.

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

    def __init__(self, connections, report):
        self.report = report
        main = connections[ALIAS]
        # Settings of its own: a plain connection (not one of a pool of Django's, which
        # close() would not close) that gives up on a dead network within
        # DEAD_NETWORK_SECONDS instead of TCP's many minutes.
        settings = dict(main.settings_dict)
        options = settings["OPTIONS"] = dict(settings.get("OPTIONS") or {})
        options.pop("pool", None)
        self.wrapper = main.__class__(settings, ALIAS)
        with_connect_timeout(self.wrapper)
        self.vendor = self.wrapper.vendor
        if self.vendor == "postgresql":
            options.setdefault("keepalives", 1)
            options.setdefault("keepalives_idle", 5)
            options.setdefault("keepalives_interval", 5)
            options.setdefault("keepalives_count", 3)
            options.setdefault("tcp_user_timeout", DEAD_NETWORK_SECONDS * 1000)
        elif self.vendor == "mysql":
            options.setdefault("read_timeout", DEAD_NETWORK_SECONDS)
            options.setdefault("write_timeout", DEAD_NETWORK_SECONDS)
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
        self.began = False
        self.closed_in_transaction = 0
        self.identified = False

    @property
    def supported(self):
        return self.vendor in ("postgresql", "mysql")

    def _execute(self, sql, params=None):
        """Runs one statement on the raw connection and returns its first row; driver
        errors come as Django's."""
        self.wrapper.ensure_connection()
        with self.wrapper.wrap_database_errors:
            cursor = self.wrapper.connection.cursor()
            try:
                cursor.execute(sql, params)
                return cursor.fetchone() if cursor.description else None
            finally:
                cursor.close()

    # A pooler in statement mode that drops the connection without saying why (some
    # drivers lose its message) does so every time a transaction is opened on it.
    CLOSED_IN_TRANSACTION_LIMIT = 3

    def try_acquire(self):
        """True once this pod holds the lock; False while another pod does. Raises
        LockUnavailable when the connection cannot hold it."""
        with self.mutex:
            self.began = False
            try:
                held = self._try_acquire()
            except Exception as e:
                if refused_by_pooler(e):
                    raise LockUnavailable(first_line(e)) from e
                raw = self.wrapper.connection
                if self.began and (raw is None or getattr(raw, "closed", False)):
                    self.closed_in_transaction += 1
                    if self.closed_in_transaction >= self.CLOSED_IN_TRANSACTION_LIMIT:
                        raise LockUnavailable(
                            "the connection was closed each time a transaction was opened on it (%d times in a "
                            "row, last: %s), while other connections work: a pooler that allows no transactions "
                            "(statement mode)?" % (self.closed_in_transaction, first_line(e))
                        ) from e
                raise
            self.closed_in_transaction = 0
        if held:
            self.heartbeat = threading.Thread(target=self._beat, name="django-migrate-lock", daemon=True)
            self.heartbeat.start()
        return held

    def _identify(self):
        """Names the lock after the database the server says this connection reached, so
        that pods reaching it under other names (a pooler's alias, say) share one lock.
        The same key as one derived from a NAME equal to the database's name."""
        if self.identified:
            return
        if self.vendor == "postgresql":
            key = self._execute(
                "SELECT ('x' || substr(encode(sha256(convert_to('django-migrate:' || current_database(), "
                "'UTF8')), 'hex'), 1, 16))::bit(64)::bigint"
            )[0]
            self.key = int(key)
        else:
            name = self._execute(
                "SELECT IF(CHAR_LENGTH(CONCAT('django-migrate:', DATABASE())) <= 64, "
                "CONCAT('django-migrate:', DATABASE()), "
                "CONCAT('django-migrate:', LEFT(SHA2(CONCAT('django-migrate:', DATABASE()), 256), 40)))"
            )[0]
            if name:
                self.name = name
        self.identified = True

    def _try_acquire(self):
        self._identify()
        if self.vendor == "postgresql":
            self.wrapper.ensure_connection()
            self.began = True
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
                self.report.log("lost the migration lock: %s" % self.lost)
                return

    def release(self):
        """Ends the lock's transaction (or releases the named lock), so the next pod does
        not wait for this connection to close; a lock already lost needs nothing."""
        self.stopped.set()
        if self.heartbeat is not None:
            self.heartbeat.join(DEAD_NETWORK_SECONDS + 5)
        try:
            if self.backend is not None and self.lost is None:
                with self.mutex:
                    if self.vendor == "postgresql":
                        self._execute("ROLLBACK")
                    else:
                        self._execute("SELECT RELEASE_LOCK(%s)", [self.name])
        except Exception as e:  # noqa: BLE001 - the lock ends with the connection below
            self.report.log("releasing the migration lock: %s; closing its connection ends it" % first_line(e))
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


def field_type(field, connection, state):
    """The column type of a field of the migration state. A foreign key's is its target's
    primary key type, looked up in the state (its target is not resolved there)."""
    if field.is_relation and not field.many_to_many:
        target = related_model(field)
        app_label, _, model = target.rpartition(".")
        try:
            target_state = state.models[app_label, model]
        except KeyError:
            return "relation to %s" % target
        for pk in target_state.fields.values():
            if getattr(pk, "primary_key", False):
                return field_type(pk, connection, state)
        return "relation to %s" % target
    try:
        return field.db_type(connection)
    except Exception:  # noqa: BLE001 - fields that need their model to answer
        return field.deconstruct()[1]


def related_model(field):
    """`app_label.model` of a relation's target, lower case, else None."""
    if not field.is_relation:
        return None
    model = field.remote_field.model
    if not isinstance(model, str):
        model = model._meta.label
    return model.lower()


INTEGER_RANKS = {"smallint": 1, "integer": 2, "int": 2, "bigint": 3, "serial": 2, "bigserial": 3}


def parse_type(db_type):
    """(base, size, signed) of a column type as Django writes it, e.g. `varchar(200)` ->
    ('varchar', 200, True), `integer UNSIGNED AUTO_INCREMENT` -> ('integer', None, False)."""
    text = str(db_type or "").strip().lower()
    words = text.replace("(", " (").split()
    base = words[0] if words else ""
    size = None
    if "(" in text and ")" in text:
        inside = text[text.index("(") + 1 : text.index(")")].split(",")
        try:
            size = tuple(int(x) for x in inside)
        except ValueError:
            size = None
    return base, size, "unsigned" not in text


def widens(old_type, new_type):
    """True when every value of the old column type fits the new one unchanged: a longer
    varchar, varchar to text, a larger integer, more digits before the decimal point."""
    (ob, osize, osigned), (nb, nsize, nsigned) = parse_type(old_type), parse_type(new_type)
    if ob == "varchar" and nb == "varchar" and osize and nsize:
        return nsize[0] >= osize[0]
    if ob == "varchar" and nb in ("text", "longtext", "mediumtext"):
        return True
    if ob in INTEGER_RANKS and nb in INTEGER_RANKS:
        return INTEGER_RANKS[nb] >= INTEGER_RANKS[ob] and (nsigned or not osigned)
    if ob in ("numeric", "decimal") and nb in ("numeric", "decimal") and osize and nsize and len(osize) == 2:
        return len(nsize) == 2 and nsize[1] == osize[1] and nsize[0] >= osize[0]
    return False


def rewrites_in_place(old_type, new_type, vendor):
    """True when the type change needs no table rewrite: PostgreSQL's binary-coercible
    changes (a longer varchar, varchar to text, more digits of a numeric with the same
    scale); MySQL/MariaDB's in-place varchar extension within the same length-byte size
    (up to 255 bytes, or above, at 4 bytes a character)."""
    (ob, osize, _), (nb, nsize, _) = parse_type(old_type), parse_type(new_type)
    if ob == "varchar" and nb == "varchar" and osize and nsize and nsize[0] >= osize[0]:
        return vendor == "postgresql" or (osize[0] * 4 > 255) == (nsize[0] * 4 > 255)
    if vendor == "postgresql" and ob == nb == "numeric" and osize and nsize and len(osize) == len(nsize) == 2:
        return nsize[1] == osize[1] and nsize[0] >= osize[0]
    return vendor == "postgresql" and ob == "varchar" and nb == "text"


def no_default(field):
    """True when the column has no database default: no `db_default`, or `db_default=None`
    (DEFAULT NULL)."""
    from django.db import models

    db_default = getattr(field, "db_default", models.NOT_PROVIDED)
    if db_default is models.NOT_PROVIDED or db_default is None:
        return True
    return getattr(db_default, "value", object()) is None


def no_default_given(field):
    """True when the field sets no `db_default` at all (as opposed to `db_default=None`)."""
    from django.db import models

    return getattr(field, "db_default", models.NOT_PROVIDED) is models.NOT_PROVIDED


def mentions_default(op, model_name, field_name, table, column):
    """True when `op`, later in the same migration, gives the column a database default:
    RunSQL with SET DEFAULT for it, django-add-default-value's AddDefaultValue, or an
    AlterField that adds a `db_default`."""
    from django.db.migrations import operations as ops

    if op.__class__.__name__ == "AddDefaultValue":
        return getattr(op, "model_name", "").lower() == model_name and getattr(op, "name", None) == field_name
    if isinstance(op, ops.AlterField):
        return op.model_name_lower == model_name and op.name == field_name and not no_default(op.field)
    if isinstance(op, ops.RunSQL):
        sql = op.sql if isinstance(op.sql, (list, tuple)) else [op.sql]
        text = " ".join(str(s[0] if isinstance(s, (list, tuple)) else s) for s in sql).lower()
        return "set default" in text and column.lower() in text and table.lower() in text
    return False


def db_table(state, app_label, model_name):
    try:
        model = state.models[app_label, model_name]
    except KeyError:
        return "%s_%s" % (app_label, model_name)
    return model.options.get("db_table") or "%s_%s" % (app_label, model_name)


def old_field(state, app_label, model_name, name):
    try:
        return state.models[app_label, model_name].fields[name]
    except KeyError:
        return None


def unique_sets(state, app_label, model_name):
    try:
        together = state.models[app_label, model_name].options.get("unique_together") or ()
    except KeyError:
        return set()
    return {tuple(sorted(t)) for t in together}


def existing_unique_sets(state, app_label, model_name):
    """The field sets the model is unique on before the operation: unique_together, unique
    fields, and unique constraints without a condition or expressions."""
    try:
        model = state.models[app_label, model_name]
    except KeyError:
        return set()
    from django.db.models import UniqueConstraint

    sets = unique_sets(state, app_label, model_name)
    sets.update((name,) for name, field in model.fields.items() if field.unique and not field.primary_key)
    for constraint in model.options.get("constraints") or ():
        if (
            isinstance(constraint, UniqueConstraint)
            and constraint.fields
            and constraint.condition is None
            and not constraint.expressions
        ):
            sets.add(tuple(sorted(constraint.fields)))
    return sets


def unique_rule_harmless(fields, app_label, model_name, state, added, nulls_distinct=None):
    """True when a uniqueness rule on `fields` cannot fail a write of the previous release:
    it includes a nullable column added by the pending plan (the previous release leaves
    it NULL, and NULLs never repeat under a rule whose NULLs are distinct), or it is
    weaker than a rule the model already has (a set of columns that contains one it is
    unique on: a repeat of the wider set repeats the narrower one, which already failed)."""
    fields = set(fields)
    if not fields:
        return False
    if nulls_distinct is not False:
        for name in fields:
            field = old_field(state, app_label, model_name, name)
            if (app_label, model_name, name.lower()) in added and field is not None and field.null:
                return True
    return any(set(existing) <= fields for existing in existing_unique_sets(state, app_label, model_name))


def breaks_previous_release(op, app_label, state, connection, later, added=frozenset()):
    """Why `op` breaks the release still serving (its model code against the migrated
    database), or None. `state` is the project state just before it; `later` the
    operations after it in the same migration; `added` the (app, model, field) of the
    columns the pending plan added before it, which the previous release never writes."""
    from django.db.migrations import operations as ops

    if isinstance(op, ops.RemoveField):
        return "drops column %s.%s, which the previous release still reads" % (op.model_name, op.name)
    if isinstance(op, ops.DeleteModel):
        return "drops the table of model %s, which the previous release still reads" % op.name
    if isinstance(op, ops.RenameField):
        old = old_field(state, app_label, op.model_name_lower, op.old_name)
        if old is not None and old.db_column:
            return None  # the column keeps its name: a rename in the code only
        return "renames column %s.%s to %s; the previous release still uses the old name" % (
            op.model_name,
            op.old_name,
            op.new_name,
        )
    if isinstance(op, ops.RenameModel):
        try:
            if state.models[app_label, op.old_name_lower].options.get("db_table"):
                return None  # the table keeps its name
        except KeyError:
            pass
        return "renames model %s to %s (and its table); the previous release still uses the old one" % (
            op.old_name,
            op.new_name,
        )
    if isinstance(op, ops.AlterModelTable):
        if (op.table or "%s_%s" % (app_label, op.name_lower)) == db_table(state, app_label, op.name_lower):
            return None  # the table keeps its name
        return "renames the table of model %s; the previous release still uses the old name" % op.name
    if isinstance(op, ops.AlterOrderWithRespectTo):
        if op.order_with_respect_to:
            return (
                "adds the non-nullable column %s._order without a database default; inserts of the previous "
                "release fail" % op.name
            )
        return "drops column %s._order, which the previous release still reads" % op.name
    if isinstance(op, ops.AddField):
        field = op.field
        if field.many_to_many or getattr(field, "generated", False):
            return None  # a new table, or a column the database computes
        if not field.null and no_default(field):
            table = db_table(state, app_label, op.model_name_lower)
            column = field.db_column or (op.name + "_id" if field.is_relation else op.name)
            if any(mentions_default(o, op.model_name_lower, op.name, table, column) for o in later):
                return None
            return "adds non-nullable column %s.%s without a database default; inserts of the previous release fail" % (
                op.model_name,
                op.name,
            )
        if field.unique and not field.null:
            return (
                "adds column %s.%s with a uniqueness rule and one database default: the previous release's "
                "second insert repeats that default and fails" % (op.model_name, op.name)
            )
        return None
    if isinstance(op, ops.AlterUniqueTogether):
        new = {tuple(sorted(t)) for t in (op.unique_together or ())}
        rules = [
            t
            for t in new - unique_sets(state, app_label, op.name_lower)
            if not unique_rule_harmless(t, app_label, op.name_lower, state, added)
        ]
        if rules:
            return (
                "adds the uniqueness rule %s on %s: inserts and updates of the previous release that repeat "
                "a value now fail" % (", ".join("(%s)" % ", ".join(t) for t in sorted(rules)), op.name)
            )
        return None
    if isinstance(op, ops.AddConstraint):
        from django.db.models import UniqueConstraint

        constraint = op.constraint
        if isinstance(constraint, UniqueConstraint):
            if not constraint.expressions and unique_rule_harmless(
                constraint.fields,
                app_label,
                op.model_name_lower,
                state,
                added,
                getattr(constraint, "nulls_distinct", None),
            ):
                return None
            return (
                "adds the uniqueness rule %s on %s: inserts and updates of the previous release that repeat "
                "a value now fail" % (constraint.name, op.model_name)
            )
        return "adds the constraint %s on %s: the previous release may write rows that break it" % (
            constraint.name,
            op.model_name,
        )
    if isinstance(op, ops.AlterField):
        old = old_field(state, app_label, op.model_name_lower, op.name)
        if old is None:
            return None
        new = op.field
        where = "%s.%s" % (op.model_name, op.name)
        if old.many_to_many or new.many_to_many:
            return None
        old_column = old.db_column or (op.name + "_id" if old.is_relation else op.name)
        new_column = new.db_column or (op.name + "_id" if new.is_relation else op.name)
        if old_column != new_column:
            return "renames column %s to %s; the previous release still uses %s" % (old_column, new_column, old_column)
        if old.null and not new.null:
            return "makes column %s non-nullable; the previous release may still write NULL" % where
        if not no_default(old) and no_default(new) and not new.null:
            return (
                "drops the database default of non-nullable column %s; inserts of the previous release "
                "rely on it" % where
            )
        if (
            new.unique
            and not old.unique
            and not new.primary_key
            and not unique_rule_harmless((op.name,), app_label, op.model_name_lower, state, added)
        ):
            return (
                "adds a uniqueness rule to column %s: inserts and updates of the previous release that repeat "
                "a value now fail" % where
            )
        if old.is_relation and new.is_relation and related_model(old) != related_model(new):
            return "points foreign key %s at another table; the previous release writes keys of the old one" % where
        old_type, new_type = field_type(old, connection, state), field_type(new, connection, state)
        if old_type != new_type and not widens(old_type, new_type):
            return "changes the type of column %s from %s to %s: values the previous release writes may not fit" % (
                where,
                old_type,
                new_type,
            )
    return None


# PostgreSQL's table locks, as its documentation names them, with what they block.
PG_SHARE = "SHARE (blocks writes)"
PG_SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE (blocks writes)"
PG_ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE (blocks reads and writes)"
MYSQL_COPY = "ALGORITHM=COPY table copy (blocks writes)"
MYSQL_ROW_LOCKS = "row locks of every changed row (blocks writes to them)"


def blocks_traffic(op, app_label, state, connection):
    """[(lock, table, why)] for the locks `op` holds for as long as it takes on an
    existing table (an index build, a table rewrite, a validating constraint); brief
    metadata locks are not listed: the lock timeout bounds those."""
    from django.db.migrations import operations as ops

    vendor = connection.vendor
    if vendor not in ("postgresql", "mysql"):
        return []
    postgres = vendor == "postgresql"
    model = getattr(op, "model_name_lower", None) or getattr(op, "name_lower", None)
    table = db_table(state, app_label, model) if model else None
    found = []

    def lock(mode, why, on=None):
        found.append((mode, on or table, why))

    def copy(why):
        # MariaDB 11.2 and later copy a table online (LOCK=NONE: reads and writes go on
        # during the copy and are replayed at its end); only MySQL and older MariaDB block
        # writes for as long as the copy takes.
        if not (getattr(connection, "mysql_is_mariadb", False) and tuple(connection.mysql_version) >= (11, 2)):
            lock(MYSQL_COPY, why)

    if isinstance(op, ops.AddIndex):
        if postgres and op.__class__.__name__ != "AddIndexConcurrently":
            lock(PG_SHARE, "builds index %s without CONCURRENTLY" % op.index.name)
    elif isinstance(op, ops.AlterIndexTogether):
        if postgres and op.option_value:
            lock(PG_SHARE, "builds the index_together indexes without CONCURRENTLY")
    elif isinstance(op, ops.AlterUniqueTogether):
        added = {tuple(sorted(t)) for t in (op.unique_together or ())} - unique_sets(state, app_label, model)
        if postgres and added:
            lock(PG_ACCESS_EXCLUSIVE, "builds the unique index of a new unique_together and checks every row")
    elif isinstance(op, ops.AddConstraint):
        from django.db.models import CheckConstraint

        if not postgres and isinstance(op.constraint, CheckConstraint):
            copy("adds check constraint %s, which copies the table" % op.constraint.name)
        if postgres and op.__class__.__name__ != "AddConstraintNotValid":
            from django.db.models import UniqueConstraint

            c = op.constraint
            if isinstance(c, UniqueConstraint) and (c.condition is not None or c.expressions):
                lock(PG_SHARE, "builds the unique index %s without CONCURRENTLY" % c.name)
            elif isinstance(c, UniqueConstraint):
                lock(PG_ACCESS_EXCLUSIVE, "builds the unique index of constraint %s and checks every row" % c.name)
            else:
                lock(PG_ACCESS_EXCLUSIVE, "checks every row against constraint %s" % c.name)
    elif isinstance(op, ops.AddField):
        field = op.field
        if field.many_to_many:
            return found
        if field.is_relation and getattr(field, "db_constraint", True):
            target_app, _, target_model = related_model(field).rpartition(".")
            target_table = db_table(state, target_app or app_label, target_model)
            if postgres:
                # ADD COLUMN ... REFERENCES holds ACCESS EXCLUSIVE until the migration commits.
                lock(PG_ACCESS_EXCLUSIVE, "adds the foreign key %s, validates it and builds its index" % op.name)
                lock(PG_SHARE_ROW_EXCLUSIVE, "is referenced by the new foreign key %s" % op.name, target_table)
            else:
                copy("adds the foreign key %s, which copies the table" % op.name)
        if postgres and not field.null and no_default(field) and not no_default_given(field):
            lock(PG_ACCESS_EXCLUSIVE, "checks every row of the new NOT NULL column %s with DEFAULT NULL" % op.name)
        elif postgres and (field.unique or field.db_index) and not field.is_relation:
            # After ADD COLUMN, whose ACCESS EXCLUSIVE lasts until the migration commits.
            lock(PG_ACCESS_EXCLUSIVE, "builds an index on the new column %s" % op.name)
        if postgres and getattr(field, "generated", False) and getattr(field, "db_persist", False):
            lock(PG_ACCESS_EXCLUSIVE, "rewrites the table to compute the stored generated column %s" % op.name)
    elif isinstance(op, ops.AlterField):
        old = old_field(state, app_label, model, op.name)
        new = op.field
        if old is None or old.many_to_many or new.many_to_many:
            return found
        old_type, new_type = field_type(old, connection, state), field_type(new, connection, state)
        if old_type != new_type and not rewrites_in_place(old_type, new_type, vendor):
            if postgres:
                lock(
                    PG_ACCESS_EXCLUSIVE, "rewrites the table to change %s from %s to %s" % (op.name, old_type, new_type)
                )
            else:
                copy("copies the table to change %s from %s to %s" % (op.name, old_type, new_type))
        if postgres and old.null and not new.null:
            lock(PG_ACCESS_EXCLUSIVE, "checks every row for NULL to make %s non-nullable" % op.name)
        elif old.null and not new.null and new.has_default():
            # Django first sets the default on every NULL row, in one UPDATE.
            lock(MYSQL_ROW_LOCKS, "sets %s on every NULL row in one UPDATE to make it non-nullable" % op.name)
        if postgres and new.unique and not old.unique and not new.primary_key:
            lock(PG_ACCESS_EXCLUSIVE, "builds the unique index of %s and checks every row" % op.name)
        elif postgres and (new.db_index and not old.db_index) and not new.unique:
            lock(PG_SHARE, "builds an index on %s without CONCURRENTLY" % op.name)
        if new.is_relation and getattr(new, "db_constraint", True) and related_model(old) != related_model(new):
            if postgres:
                lock(PG_SHARE_ROW_EXCLUSIVE, "validates the foreign key %s on every row" % op.name)
            else:
                copy("adds the foreign key %s, which copies the table" % op.name)
    return found


def table_size(connection, table, report):
    """(rows, bytes) of `table` from the database's statistics (never by counting); None
    for what the statistics do not know."""
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # The larger of the live rows the statistics system counts (reset to 0 by
                # pg_stat_reset, a crash or a failover) and the last ANALYZE's estimate.
                cursor.execute(
                    "SELECT NULLIF(GREATEST(COALESCE(s.n_live_tup, -1), c.reltuples::bigint), -1), "
                    "pg_total_relation_size(c.oid) "
                    "FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid "
                    "WHERE c.oid = to_regclass(%s)",
                    [connection.ops.quote_name(table)],
                )
                row = cursor.fetchone()
                if not row:
                    return None, None
                return (None if row[0] is None else int(row[0])), int(row[1])
            cursor.execute(
                "SELECT TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                [table],
            )
            row = cursor.fetchone()
            return (int(row[0]), int(row[1])) if row and row[0] is not None else (None, None)
    except Exception as e:  # noqa: BLE001 - a size is information, not a condition
        report.log("cannot read the size of table %s: %s" % (table, first_line(e)))
        return None, None


def human_bytes(n):
    if n is None:
        return "unknown size"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return "%d" % n


def classify(plan, first_install, connection, report):
    """Operations of the pending plan that hurt the running service, of two kinds:
    `breaking` (the previous release's code fails against the migrated database) and
    `locking` (it holds a lock that blocks reads or writes for as long as it takes), and
    the operations that cannot be checked. Operations on models created earlier in the
    same plan are neither: the previous release never used them and their tables are
    empty; nor is anything on a first install. An operation later in the same migration
    that gives a new column its database default clears the AddField before it."""
    from django.db.migrations import operations as ops

    unsafe, unchecked = [], []
    if first_install:
        return unsafe, unchecked
    created = set()
    # Columns the plan adds: the previous release never writes them.
    added = set()
    sizes = {}
    for migration, state in plan:
        name = "%s.%s" % (migration.app_label, migration.name)
        operations = list(database_operations(migration.operations))
        for i, op in enumerate(operations):
            if isinstance(op, ops.CreateModel):
                created.add((migration.app_label, op.name_lower))
            if isinstance(op, (ops.RunSQL, ops.RunPython)):
                unchecked.append({"migration": name, "operation": op.__class__.__name__})
                continue
            model = getattr(op, "model_name_lower", None) or getattr(op, "name_lower", None)
            if (migration.app_label, model) in created and not isinstance(op, ops.CreateModel):
                continue
            described = "%s(%s)" % (op.__class__.__name__, op.describe())
            why = breaks_previous_release(op, migration.app_label, state, connection, operations[i + 1 :], added)
            if why:
                unsafe.append(
                    {"migration": name, "operation": described, "kind": KIND_BREAKING, "why": why, "applied": False}
                )
            for mode, table, because in blocks_traffic(op, migration.app_label, state, connection):
                if table not in sizes:
                    sizes[table] = table_size(connection, table, report)
                rows, size = sizes[table]
                unsafe.append(
                    {
                        "migration": name,
                        "operation": described,
                        "kind": KIND_LOCKING,
                        "why": "holds %s on %s (%s rows, %s) while it %s"
                        % (mode, table, "unknown" if rows is None else "~%d" % rows, human_bytes(size), because),
                        "lock": mode.split(" (")[0],
                        "table": table,
                        "rows": rows,
                        "bytes": size,
                        "applied": False,
                    }
                )
            if isinstance(op, ops.AddField):
                added.add((migration.app_label, op.model_name_lower, op.name_lower))
            try:
                op.state_forwards(migration.app_label, state)
            except Exception:  # noqa: BLE001 - the state is only needed for the checks
                pass
    return unsafe, unchecked


def held_back(u):
    """True when `deny` holds this finding back: its kind is chosen by hold-back, it is
    not allowed by name, and a locking one is on a table of at least the size set. The
    contract run holds no breaking one back: no pod of the previous release is left."""
    if UNSAFE_MIGRATIONS != "deny" or u["migration"] in ALLOW_UNSAFE or u["kind"] not in HOLD_BACK:
        return False
    if MODE == MODE_CONTRACT and u["kind"] == KIND_BREAKING:
        return False
    return u["kind"] != KIND_LOCKING or u["rows"] is None or u["rows"] >= LOCKING_MIN_ROWS


# ---------------------------------------------------------------- expand and contract


def safemigrate_marker(migration):
    """django-safemigrate's `safe` attribute as (when, delay seconds), read without the
    package: `Safe.after_deploy(delay=...)` is an object with `when` (an Enum whose value
    is the name) and `delay` (a timedelta or None); the classmethod itself (not called)
    means the same without a delay. None when the migration carries no marker."""
    safe = getattr(migration, "safe", None)
    if safe is None:
        return None
    if callable(safe) and getattr(safe, "__name__", "") in ("always", "before_deploy", "after_deploy"):
        return safe.__name__, None
    when = getattr(safe, "when", None)
    when = getattr(when, "value", when)
    if when not in ("always", "before_deploy", "after_deploy"):
        return None
    delay = getattr(safe, "delay", None)
    seconds = delay.total_seconds() if hasattr(delay, "total_seconds") else None
    return when, seconds


def deferred_migrations(plan, unsafe):
    """The pending migrations that wait for the contract run, each with why: named in
    DJANGO_MIGRATE_DEFER, marked `Safe.after_deploy()`, or unsafe for the previous release
    under `unsafe-migrations: defer`."""
    out = {}
    for migration, _state in plan:
        name = "%s.%s" % (migration.app_label, migration.name)
        marker = safemigrate_marker(migration)
        if name in DEFER:
            out[name] = {"migration": name, "why": "named in django-migrate.io/defer", "delay": None}
        elif marker is not None and marker[0] == "after_deploy":
            out[name] = {"migration": name, "why": "marked Safe.after_deploy()", "delay": marker[1]}
    if UNSAFE_MIGRATIONS == "defer":
        for u in unsafe:
            if u["kind"] == KIND_BREAKING and u["migration"] not in ALLOW_UNSAFE:
                out.setdefault(
                    u["migration"],
                    {"migration": u["migration"], "why": "unsafe for the release still serving", "delay": None},
                )
    return out


def blocked_by_deferred(plan, deferred):
    """Pending migrations that are not deferred but must run after a deferred one: they
    depend on it (directly or through other pending migrations, `__latest__` of its app
    included) or it names them in `run_before`. Returns (migration, the deferred one it
    waits for) pairs in plan order."""
    names = ["%s.%s" % (m.app_label, m.name) for m, _state in plan]
    apps_waiting = {}
    waits_for = {n: n for n in names if n in deferred}

    def parent_waits(dep):
        label, name = dep
        if name == "__latest__":
            return apps_waiting.get(label)
        return waits_for.get("%s.%s" % (label, name))

    changed = True
    while changed:
        changed = False
        for n, (migration, _state) in zip(names, plan):
            if n in waits_for:
                apps_waiting.setdefault(migration.app_label, waits_for[n])
                for label, other in getattr(migration, "run_before", []):
                    after = "%s.%s" % (label, other)
                    if after in names and after not in waits_for:
                        waits_for[after] = waits_for[n]
                        changed = True
                continue
            for dep in migration.dependencies:
                found = parent_waits(tuple(dep))
                if found is not None:
                    waits_for[n] = found
                    changed = True
                    break
    return [(n, waits_for[n]) for n in names if n in waits_for and n not in deferred]


def note_deferred(plan, deferred, report):
    """Records the deferred migrations in plan order; logs the ones not logged before."""
    known = {d["migration"] for d in report.deferred}
    names = ["%s.%s" % (m.app_label, m.name) for m, _state in plan]
    report.deferred = [deferred[n] for n in names if n in deferred]
    for d in report.deferred:
        if d["migration"] not in known:
            report.log("deferred to the contract run (%s): %s" % (d["why"], d["migration"]))


def find_deferred(connection, report):
    """Migrate and wait mode, before the lock: records the deferred migrations of the
    pending plan (classified only under `defer`, where breaking ones are deferred) and
    takes them out of `report.pending`, which is then what this pod waits for."""
    plan, first_install = pending_plan(connection)
    unsafe = classify(plan, first_install, connection, report)[0] if UNSAFE_MIGRATIONS == "defer" else []
    note_deferred(plan, deferred_migrations(plan, unsafe), report)
    report.pending = not_deferred(report.pending, report)


def not_deferred(pending, report):
    """`pending` without the migrations left for the contract run. Deferred ones that are
    no longer pending are forgotten: a pod that decided while another one held the lock
    may have deferred what the holder, deciding on the whole plan, applied."""
    report.deferred = [d for d in report.deferred if d["migration"] in pending]
    deferred = {d["migration"] for d in report.deferred}
    return [p for p in pending if p not in deferred]


def pending_kept(connection, report):
    """The pending migrations this step applies or waits for: all of them in contract
    mode, else all but the deferred ones."""
    return not_deferred(pending_migrations(connection), report)


def defer_contract(plan, unsafe, report):
    """Leaves the deferred migrations for the contract run; ends the step (exit 5, nothing
    applied) when a migration that is not deferred must run after one that is."""
    deferred = deferred_migrations(plan, unsafe)
    blocked = blocked_by_deferred(plan, deferred)
    note_deferred(plan, deferred, report)
    if blocked:
        migration, waits_for = blocked[0]
        raise StepEnded(
            EXIT_UNSAFE,
            RESULT_DEFERRED_BLOCKED,
            "%d migration(s) must run after a deferred one; first: %s depends on %s, which is deferred to the "
            "contract run; nothing was applied: defer %s too (add it to django-migrate.io/defer), or ship it in "
            "the next release" % (len(blocked), migration, waits_for, migration),
        )
    # The plan, not `report.pending`: the latter may already be without the deferred ones.
    names = ("%s.%s" % (m.app_label, m.name) for m, _state in plan)
    report.pending = [n for n in names if n not in deferred]


def hold_back_unsafe(connection, report):
    """Names the operations that hurt the running service; under `deny` ends the step
    (exit 5) unless each of the kinds it holds back is allowed by name."""
    plan, first_install = pending_plan(connection)
    unsafe, unchecked = classify(plan, first_install, connection, report)
    if MODE != MODE_CONTRACT:
        defer_contract(plan, unsafe, report)
        unsafe = [u for u in unsafe if u["migration"] not in {d["migration"] for d in report.deferred}]
    for item in unchecked:
        report.log("%s: %s cannot be checked for safety; review it by hand" % (item["migration"], item["operation"]))
    if not unsafe:
        return
    blocked = [u for u in unsafe if held_back(u)]
    for u in unsafe:
        u["held_back"] = u in blocked
    for u in unsafe:
        if u["migration"] in ALLOW_UNSAFE:
            verdict = "allowed by django-migrate.io/allow-unsafe"
        elif u in blocked:
            verdict = "held back"
        elif MODE == MODE_CONTRACT and u["kind"] == KIND_BREAKING:
            verdict = "applied, no pod of the previous release is left"
        elif UNSAFE_MIGRATIONS == "deny" and u["kind"] in HOLD_BACK:
            verdict = "reported only: fewer than %d rows" % LOCKING_MIN_ROWS
        else:
            verdict = "applied, %s" % UNSAFE_MIGRATIONS if u["kind"] in HOLD_BACK else "reported"
        label = "breaks the release still serving" if u["kind"] == KIND_BREAKING else "blocks traffic"
        report.log("%s (%s): %s %s: %s" % (label, verdict, u["migration"], u["operation"], u["why"]))
    report.unsafe_operations = unsafe
    if blocked:
        first = blocked[0]
        locking_only = all(u["kind"] == KIND_LOCKING for u in blocked)
        raise StepEnded(
            EXIT_UNSAFE,
            RESULT_LOCKING_BLOCKED if locking_only else RESULT_UNSAFE_BLOCKED,
            "held back %d operation(s) under django-migrate.io/unsafe-migrations: deny; first: %s %s (%s): %s; "
            "nothing was applied; %s, or allow it with django-migrate.io/allow-unsafe: %s"
            % (
                len(blocked),
                first["migration"],
                first["operation"],
                first["kind"],
                first["why"],
                "ship it in a later release" if first["kind"] == KIND_BREAKING else "use a non-blocking form",
                first["migration"],
            ),
        )


# ---------------------------------------------------------------- migrate


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


def run_migrate(connection, lock, report, watchdog, deadline):
    """Runs `migrate` under the lock; never cut by the watchdog. A migration that hit the
    lock timeout and left nothing applied is retried with backoff and jitter until the
    deadline. Returns once every migration is applied; a failed migration (exit 2), the
    deadline (exit 1) or a lost lock (exit 6) end the step."""
    from django.core.management import call_command

    report.phase = PHASE_MIGRATING
    watchdog.disarm()
    report.log(
        "applying %d migrations (lock timeout %ds per statement): %s"
        % (len(report.pending), LOCK_TIMEOUT, ", ".join(report.pending))
    )
    started = time.monotonic()
    attempt = 0
    # A fresh connection: the one that read the plan may have sat idle past the server's
    # idle limit while the plan was classified.
    connection.close()
    session = MysqlSession(connection, report)
    leave_deferred(report)
    with track_progress(connection, lock, report) as progress:
        while True:
            attempt += 1
            try:
                session.apply()
                call_command("migrate", database=ALIAS, interactive=False, verbosity=1)
                session.restore()
                break
            except Exception as e:  # noqa: BLE001 - any failure of a migration is reported
                report.migrate_seconds = time.monotonic() - started
                failed = progress.migration
                nothing_applied = progress.atomic or progress.statements == 0
                statement = (progress.failed_sql or "").strip().splitlines()[0][:200] if progress.failed_sql else ""
                progress.migration = None
                session.restore()
                session.saved = {}
                connection.close()
                if isinstance(e, LockLost) or (lock is not None and lock.lost is not None):
                    why = lock.lost if lock.lost else first_line(e)
                    raise lock_lost(connection, report, progress, failed, nothing_applied, why) from e
                try:
                    report.pending = pending_kept(connection, report)
                except Exception:  # noqa: BLE001
                    pass
                if progress.signal is not None:
                    raise signal_failed(progress.signal, e, report) from e
                if failed is not None and not nothing_applied:
                    report.failed_migration = failed
                    if is_lock_timeout(e):
                        then = "then a statement timed out on its table lock after %ds and was not applied: %s" % (
                            LOCK_TIMEOUT,
                            statement,
                        )
                    else:
                        then = "then it failed: %s: %s" % (e.__class__.__name__, first_line(e))
                    raise half_applied(connection, failed, progress, then) from e
                if not is_lock_timeout(e) or failed is None:
                    report.failed_migration = failed or (report.pending[0] if report.pending else None)
                    name = report.failed_migration or "unknown migration"
                    raise StepEnded(
                        EXIT_MIGRATE_FAILED,
                        RESULT_FAILED,
                        "migration %s failed: %s: %s" % (name, e.__class__.__name__, first_line(e)),
                    ) from e
                left = deadline - time.monotonic()
                pause = min(MAX_RETRY_BACKOFF_SECONDS, 2.0 ** min(attempt, 5)) * random.uniform(0.5, 1.0)
                if left <= pause:
                    report.failed_migration = failed
                    raise StepEnded(
                        EXIT_TIMEOUT,
                        RESULT_TIMEOUT,
                        "gave up after %.0fs and %d attempts: migration %s kept timing out on a table lock "
                        "(a long transaction holds it); nothing of it was applied; statement: %s"
                        % (elapsed(), attempt, failed, statement),
                    ) from e
                report.retries += 1
                report.log(
                    "migration %s hit the lock timeout (%ds) and was rolled back, nothing applied; "
                    "retry %d in %.1fs (%.0fs left); statement: %s"
                    % (failed, LOCK_TIMEOUT, report.retries, pause, left, statement)
                )
                time.sleep(pause)
    report.migrate_seconds = time.monotonic() - started
    report.pending = []
    for u in report.unsafe_operations:
        u["applied"] = u["migration"] in report.applied


def receiver_of(error):
    """`module.function` of the signal receiver that raised `error`: the frame that
    Django's Signal.send called, from the traceback; None when there is none."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "send" and code.co_filename.replace(os.sep, "/").endswith("django/dispatch/dispatcher.py"):
            frame = tb.tb_next.tb_frame
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            return "%s.%s" % (frame.f_globals.get("__name__", "?"), name)
        tb = tb.tb_next
    return None


def signal_failed(signal, error, report):
    """The end of a step whose `migrate` failed in a pre_migrate or post_migrate receiver.
    After post_migrate failed, every migration is applied and recorded and the release is
    not: the next pod of the release runs post_migrate again."""
    receiver = receiver_of(error)
    where = "in receiver %s" % receiver if receiver else "in one of its receivers"
    what = "%s: %s" % (error.__class__.__name__, first_line(error))
    report.failed_migration = None
    report.post_migrate = {"ran": False, "release": RELEASE or None, "failed": signal, "receiver": receiver}
    if signal == "pre_migrate":
        return StepEnded(
            EXIT_MIGRATE_FAILED,
            RESULT_FAILED,
            "pre_migrate failed %s before any migration was applied: %s" % (where, what),
        )
    return StepEnded(
        EXIT_MIGRATE_FAILED,
        RESULT_POST_MIGRATE_FAILED,
        "every migration was applied and recorded (%d by this pod); then post_migrate failed %s: %s; "
        "the next pod of this release runs post_migrate again" % (len(report.applied), where, what),
    )


def half_applied(connection, failed, progress, then):
    """The end of a step whose migration failed after some of its statements ran and
    stayed: the next pod would fail on what they left (a table that already exists), so
    the message says what ran and what to do."""
    if connection.features.can_rollback_ddl:
        why = "the migration is not atomic"
    else:
        why = "%s cannot roll DDL back" % connection.display_name
    app, _, name = failed.partition(".")
    return StepEnded(
        EXIT_MIGRATE_FAILED,
        RESULT_HALF_APPLIED,
        "migration %s is half-applied: %d statement(s) of it ran and stay (%s), %s; ran: %s; every next pod "
        "fails on what they left until the database is fixed by hand: reverse what ran, or complete the rest "
        "and mark it applied (manage.py migrate %s %s --fake)"
        % (failed, progress.statements, why, then, "; ".join(progress.ran) or "none", app, name),
    )


def lock_lost(connection, report, progress, failed, nothing_applied, why):
    """The end of a step that lost the lock while migrating: nothing more is applied; the
    next pod continues from what is recorded."""
    from django.db.utils import Error as DatabaseError

    report.failed_migration = failed
    try:
        report.pending = pending_kept(connection, report)
    except DatabaseError:
        pass
    if progress.recorded_after_loss:
        report.failed_migration = None
        state = "%s had committed and is recorded" % progress.recorded_after_loss
    elif failed is None:
        state = "no migration was running"
    elif nothing_applied:
        state = "%s was rolled back" % failed
    else:
        state = "%s may be half-applied: check it before the next pod applies it" % failed
    return StepEnded(
        EXIT_LOCK,
        RESULT_LOCK_LOST,
        "lost the migration lock (%s); stopped before applying anything more: %s; applied %d migrations "
        "before that; the next pod continues from what is recorded" % (why, state, len(report.applied)),
    )


def lock_unavailable(why):
    return StepEnded(
        EXIT_LOCK,
        RESULT_LOCK_UNAVAILABLE,
        "cannot hold the migration lock through database %r: %s; nothing was applied; a pooler in "
        "statement mode cannot keep a transaction open: set django-migrate.io/database to an alias that "
        "connects directly or through a pooler in session or transaction mode" % (ALIAS, why),
    )


def poll_until_applied(connection, report, watchdog, phase, what, check, decide_under_lock=False, finished=None):
    """The loop both waits share. Calls `check()` once per poll: it returns True when the
    wait is over (then this returns None), else the line to log before the next poll (or
    None). Returns the step's end once nothing is pending (another pod applied it, exit 0)
    or the migrate timeout passed (exit 1). Deferred migrations are not waited for: they
    stay pending until the contract run. With `decide_under_lock`, a pod that deferred
    some keeps waiting for the lock instead: what is deferred was decided while another pod
    applied the plan, and is decided again under the lock, on what that pod left. With
    `finished`, the wait is over when it returns the step's end (another pod did the work)
    instead of when nothing is pending.

    A waiting pod holds no connection while it sleeps and at most one while it asks: with
    a session pooler smaller than the number of pods, a pod that kept one connection while
    it asked for another could wait forever on the pool, and no idle limit can close a
    connection that is not there."""
    from django.db.utils import Error as DatabaseError

    report.phase = phase
    started = time.monotonic()
    deadline = started + MIGRATE_TIMEOUT
    watchdog.arm(deadline, "waiting for %s" % what)
    while True:
        close_quietly(connection)
        waiting = check()
        report.lock_wait_seconds = time.monotonic() - started
        if waiting is True:
            watchdog.disarm()
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            return StepEnded(
                EXIT_TIMEOUT,
                RESULT_TIMEOUT,
                "gave up after %.0fs waiting for %s; still pending: %s" % (elapsed(), what, name_list(report.pending)),
            )
        if waiting:
            report.log(waiting)
        time.sleep(min(POLL_SECONDS, max(left, 0.1)))
        try:
            report.pending = pending_kept(connection, report)
            ended = finished() if finished is not None else None
        except DatabaseError as e:
            report.log("cannot read the migration state: %s" % first_line(e))
            continue
        if finished is not None:
            if ended is not None:
                watchdog.disarm()
                return ended
            continue
        if not report.pending and not (decide_under_lock and report.deferred):
            report.phase = PHASE_DONE
            return StepEnded(
                EXIT_OK,
                RESULT_APPLIED_BY_OTHER_POD,
                "applied by another pod (waited %.1fs)%s" % (time.monotonic() - started, report.deferred_note()),
            )


def wait_for_lock(connection, lock, report, watchdog, finished=None):
    """Migrate mode: returns None once this pod holds the migration lock, else the step's
    end (applied by another pod meanwhile, or what `finished` returns, or the timeout); a
    connection that cannot hold the lock ends the step (exit 6)."""
    from django.db.utils import Error as DatabaseError

    def check():
        try:
            held = lock.try_acquire()
        except LockUnavailable as e:
            lock.abandon()
            raise lock_unavailable(str(e)) from e
        except DatabaseError as e:
            lock.abandon()
            report.log("cannot ask for the migration lock: %s" % first_line(e))
            return None
        if held:
            return True
        lock.abandon()
        return "another pod holds the migration lock; %d pending; checking again in %.0fs" % (
            len(report.pending),
            POLL_SECONDS,
        )

    return poll_until_applied(
        connection, report, watchdog, PHASE_LOCK, "the migration lock", check, decide_under_lock=True, finished=finished
    )


def wait_for_other_pods(connection, report, watchdog):
    """Wait mode: the step's end once nothing is pending, or at the timeout."""

    def check():
        return "%d migrations pending; checking again in %.0fs" % (len(report.pending), POLL_SECONDS)

    return poll_until_applied(connection, report, watchdog, PHASE_WAITING, "pending migrations", check)


def step_migrate(connections, connection, report, watchdog):
    """Migrate mode with migrations pending: the lock, the plan again under it, the safety
    check and `migrate`; returns the step's end."""
    lock = Lock(connections, report)
    deadline = time.monotonic() + MIGRATE_TIMEOUT
    if not lock.supported:
        report.log("no cross-pod lock for the %s backend: running migrate directly" % lock.vendor)
    else:
        ended = wait_for_lock(connection, lock, report, watchdog)
        if ended is not None:
            return ended
    try:
        if lock.supported:
            # Another pod may have finished between our check and the lock.
            pending = pending_now(connection, report)
            if not not_deferred(pending, report):
                report.pending = []
                report.phase = PHASE_DONE
                return StepEnded(
                    EXIT_OK,
                    RESULT_APPLIED_BY_OTHER_POD,
                    "applied by another pod (waited %.1fs for the lock)%s"
                    % (report.lock_wait_seconds, report.deferred_note()),
                )
            # What is deferred is decided again below, on the plan as it is under the lock.
            report.pending = pending
        hold_back_unsafe(connection, report)
        if not report.pending:
            # Another pod applied all but what the plan under the lock defers.
            report.phase = PHASE_DONE
            return StepEnded(
                EXIT_OK, RESULT_NOTHING_PENDING, "nothing to apply (%.1fs)%s" % (elapsed(), report.deferred_note())
            )
        run_migrate(connection, lock if lock.supported else None, report, watchdog, deadline)
        if post_migrate_wanted():
            record_release(connection, report)
    finally:
        # Whichever way the step ends here, the next pod does not wait for this
        # connection to close.
        if lock.supported:
            lock.release()
    report.phase = PHASE_DONE
    note = ""
    breaking = "unsafe for the previous release"
    if MODE == MODE_CONTRACT:
        breaking = "breaking the previous release, which is gone"
    for kind, said in ((KIND_BREAKING, breaking), (KIND_LOCKING, "blocking traffic")):
        found = [u for u in report.unsafe_operations if u["applied"] and u["kind"] == kind]
        if found:
            note += "; %d %s: %s" % (
                len(found),
                said,
                name_list("%s %s" % (u["migration"], u["operation"]) for u in found),
            )
    retries = " after %d lock-timeout retries" % report.retries if report.retries else ""
    return StepEnded(
        EXIT_OK,
        RESULT_APPLIED,
        "applied %d migrations in %.1fs%s (waited %.1fs for the lock): %s%s"
        % (
            len(report.applied),
            report.migrate_seconds,
            retries,
            report.lock_wait_seconds,
            name_list(report.applied),
            note + report.deferred_note(),
        ),
    )


def release_done(connection):
    """Whether this release already had its pre_migrate/post_migrate run."""
    with connection.cursor() as cursor:
        if RELEASE_TABLE not in connection.introspection.table_names(cursor):
            return False
        cursor.execute("SELECT release_hash FROM %s WHERE release_hash = %%s" % RELEASE_TABLE, [release_key()])
        return cursor.fetchone() is not None


def record_release(connection, report):
    """Records, under the lock, that this release had its run (`migrate` sent the signals
    and they succeeded), and keeps the RELEASES_KEPT newest. A record that cannot be
    written only makes the next pod run them again."""
    from django.db.utils import Error as DatabaseError

    report.post_migrate = {"ran": True, "release": RELEASE or None}
    if not RELEASE:
        return
    try:
        with connection.cursor() as cursor:
            if RELEASE_TABLE not in connection.introspection.table_names(cursor):
                cursor.execute(
                    "CREATE TABLE IF NOT EXISTS %s (release_hash varchar(64) NOT NULL PRIMARY KEY, "
                    "recorded_at varchar(32) NOT NULL)" % RELEASE_TABLE
                )
            cursor.execute("DELETE FROM %s WHERE release_hash = %%s" % RELEASE_TABLE, [release_key()])
            cursor.execute(
                "INSERT INTO %s (release_hash, recorded_at) VALUES (%%s, %%s)" % RELEASE_TABLE,
                [release_key(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())],
            )
            cursor.execute("SELECT release_hash FROM %s ORDER BY recorded_at DESC" % RELEASE_TABLE)
            old = [r[0] for r in cursor.fetchall()[RELEASES_KEPT:]]
            if old:
                cursor.execute(
                    "DELETE FROM %s WHERE release_hash IN (%s)" % (RELEASE_TABLE, ", ".join(["%s"] * len(old))), old
                )
    except DatabaseError as e:
        report.log("post_migrate: release %s not recorded (%s); the next pod runs it again" % (RELEASE, first_line(e)))


def post_migrate_due(connection, report):
    """Migrate mode with nothing pending: whether this release still needs its run."""
    if MODE != MODE_MIGRATE:
        return False
    if POST_MIGRATE != "true":
        report.post_migrate = {"ran": False, "release": RELEASE or None, "why": "off (post-migrate: false)"}
        return False
    if RELEASE and release_done(connection):
        report.post_migrate = {"ran": False, "release": RELEASE, "why": "ran for this release already"}
        return False
    return True


def step_post_migrate(connections, connection, report, watchdog):
    """Migrate mode, nothing pending, and this release has not had its pre_migrate and
    post_migrate run: `migrate` with nothing to apply, under the lock, once; pods of the
    release that wait meanwhile end when it is recorded. Returns the step's end."""
    lock = Lock(connections, report)

    def ran_elsewhere():
        if not release_done(connection):
            return None
        report.phase = PHASE_DONE
        report.post_migrate = {"ran": False, "release": RELEASE, "why": "ran in another pod"}
        return StepEnded(
            EXIT_OK,
            RESULT_NOTHING_PENDING,
            "nothing to apply; post_migrate ran for release %s in another pod (waited %.1fs)"
            % (RELEASE, report.lock_wait_seconds),
        )

    if lock.supported:
        ended = wait_for_lock(connection, lock, report, watchdog, finished=ran_elsewhere if RELEASE else None)
        if ended is not None:
            return ended
    try:
        if lock.supported and RELEASE:
            # Another pod may have finished between our check and the lock.
            ended = ran_elsewhere()
            if ended is not None:
                return ended
        run_post_migrate(connection, lock if lock.supported else None, report)
        record_release(connection, report)
    finally:
        if lock.supported:
            lock.release()
    report.phase = PHASE_DONE
    return StepEnded(
        EXIT_OK,
        RESULT_NOTHING_PENDING,
        "nothing to apply; pre_migrate and post_migrate ran for %s in %.1fs (waited %.1fs for the lock)%s"
        % (
            "release %s" % RELEASE if RELEASE else "this start (no release to record)",
            report.post_migrate_seconds,
            report.lock_wait_seconds,
            report.deferred_note(),
        ),
    )


def run_post_migrate(connection, lock, report):
    """`migrate` with nothing to apply: its pre_migrate and post_migrate signals, as a plain
    `manage.py migrate` sends them; a receiver that raises ends the step."""
    from django.core.management import call_command

    report.phase = PHASE_MIGRATING
    report.log(
        "nothing to apply; running pre_migrate and post_migrate for %s"
        % ("release %s" % RELEASE if RELEASE else "this start")
    )
    started = time.monotonic()
    connection.close()
    leave_deferred(report)
    with track_progress(connection, lock, report) as progress:
        try:
            call_command("migrate", database=ALIAS, interactive=False, verbosity=1)
        except Exception as e:  # noqa: BLE001 - any failure of a receiver is reported
            report.post_migrate_seconds = time.monotonic() - started
            connection.close()
            if isinstance(e, LockLost) or (lock is not None and lock.lost is not None):
                why = lock.lost if lock.lost else first_line(e)
                raise lock_lost(connection, report, progress, None, True, why) from e
            if progress.signal is not None:
                raise signal_failed(progress.signal, e, report) from e
            raise StepEnded(
                EXIT_MIGRATE_FAILED,
                RESULT_FAILED,
                "migrate with nothing to apply failed: %s: %s" % (e.__class__.__name__, first_line(e)),
            ) from e
    report.post_migrate_seconds = time.monotonic() - started


def run_inner(report):
    """The inner phase, inside Django's shell: returns (or raises) the step's end."""
    # From here on this code writes the summary; tell the outer phase it ran.
    fd = os.environ.pop(STATUS_FD_ENV, None)
    with contextlib.suppress(KeyError, ValueError):
        report.django_setup_seconds = max(time.time() - float(os.environ.pop(SPAWNED_AT_ENV)), 0.0)
    os.environ.pop(STARTED_AT_ENV, None)
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
        raise not_found(
            "cannot load the Django settings (DJANGO_SETTINGS_MODULE=%s): %s: %s"
            % (os.environ.get("DJANGO_SETTINGS_MODULE", "unset"), e.__class__.__name__, first_line(e))
        ) from e
    from django.db import connections
    from django.utils.connection import ConnectionDoesNotExist

    try:
        connection = connections[ALIAS]
    except ConnectionDoesNotExist as e:
        raise not_found(
            "database alias %r is not in settings.DATABASES (have: %s)"
            % (ALIAS, ", ".join(connections.settings) or "none")
        ) from e
    if MODE not in (MODE_MIGRATE, MODE_WAIT, MODE_CONTRACT):
        raise not_found("unknown DJANGO_MIGRATE_MODE %r: allowed migrate, wait or contract" % MODE)
    if POST_MIGRATE not in ("true", "false"):
        raise not_found("unknown DJANGO_MIGRATE_POST_MIGRATE %r: allowed true or false" % POST_MIGRATE)
    if UNSAFE_MIGRATIONS not in ("warn", "deny", "defer"):
        raise not_found("unknown DJANGO_MIGRATE_UNSAFE_MIGRATIONS %r: allowed warn, deny or defer" % UNSAFE_MIGRATIONS)
    doubt = os.environ.pop(FAST_PATH_DOUBT_ENV, None)
    if doubt is not None:
        report.fast_path = {"taken": False, "why": doubt}
    record = os.environ.pop(FAST_PATH_RECORD_ENV, None) == "1"
    identity = database_identity(connection.settings_dict)
    ended = run_mode(connections, connection, report)
    if record and ended.code == EXIT_OK and not report.pending and not report.deferred:
        record_for_fast_path(report, identity)
    return ended


def run_mode(connections, connection, report):
    """The step of this mode, once the settings are loaded: returns (or raises) its end."""
    watchdog = Watchdog(report)
    with_connect_timeout(connection)
    wait_for_connection(connection, report, watchdog)
    report.pending = pending_now(connection, report)
    if report.pending and MODE != MODE_CONTRACT:
        find_deferred(connection, report)
    if not report.pending:
        if post_migrate_due(connection, report):
            return step_post_migrate(connections, connection, report, watchdog)
        report.phase = PHASE_DONE
        return StepEnded(
            EXIT_OK, RESULT_NOTHING_PENDING, "nothing to apply (%.1fs)%s" % (elapsed(), report.deferred_note())
        )
    if MODE in (MODE_MIGRATE, MODE_CONTRACT):
        ended = step_migrate(connections, connection, report, watchdog)
        # Another release's pod may have applied the plan: this release still gets its run.
        if ended.result in (RESULT_APPLIED_BY_OTHER_POD, RESULT_NOTHING_PENDING) and post_migrate_due(
            connection, report
        ):
            return step_post_migrate(connections, connection, report, watchdog)
        return ended
    report.log(
        "%d migrations pending: %s; waiting for them to be applied" % (len(report.pending), ", ".join(report.pending))
    )
    return wait_for_other_pods(connection, report, watchdog)


def main():
    """Runs the phase this process is for, then ends the process, once (the watchdog may
    end it first)."""
    report = Report()
    try:
        if STATUS_FD_ENV in os.environ:
            ended = run_inner(report)
        else:
            # The inner phase wrote the summary: its exit code is passed through.
            ended = StepEnded(run_outer(report), None, None)
    except StepEnded as e:
        ended = e
    except Exception as e:  # noqa: BLE001 - reported, not swallowed: the step fails
        ended = StepEnded(
            EXIT_MIGRATE_FAILED,
            RESULT_FAILED,
            "unexpected error in phase %s: %s: %s" % (report.phase, e.__class__.__name__, first_line(e)),
        )
    end(report, ended.code, ended.result, ended.message)


# The outer phase runs this file as a script, and so does the fast path's check; the inner
# phase runs it through runpy, under another name.
if FAST_PATH_CHECK_FD_ENV in os.environ and __name__ == "__main__":
    fast_path_child()
elif STATUS_FD_ENV in os.environ or __name__ == "__main__":
    main()
