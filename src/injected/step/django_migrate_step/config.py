"""The step's settings and names: what the pod's env sets (mode, alias, timeouts, the
classifier's and the fast path's settings), the constants the step runs by, and the
vocabulary it shares with the webhook: exit codes, phases, results and the log prefix
(the names of src/names.rs and src/summary.rs). Also where the step runs from (the
artifact) and when the container started. Read once, when the step starts."""

import os
import time

MODE_MIGRATE = "migrate"
MODE_WAIT = "wait"
MODE_CONTRACT = "contract"
# What the plan Job runs: the pending plan reported, read-only (see `plan`).
MODE_PLAN = "plan"
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
# Plan mode: the plan was made and the rollout would pass.
RESULT_PLANNED = "planned"

# Every log line starts with it; the controller reads the phase of the last one.
LOG_PREFIX = "django-migrate"

# Whether a release gets its pre_migrate/post_migrate run, and the release: the pod's
# pod-template-hash label (see `release`).
POST_MIGRATE = os.environ.get("DJANGO_MIGRATE_POST_MIGRATE", "true")
RELEASE = os.environ.get("DJANGO_MIGRATE_RELEASE", "").strip()
# Whether the fast path is tried (see `fast_path`).
FAST_PATH = os.environ.get("DJANGO_MIGRATE_FAST_PATH", "true")
# The settings module a wrapper management command loads (nautobot-server, sentry django).
SETTINGS_MODULE = os.environ.get("DJANGO_MIGRATE_SETTINGS_MODULE", "").strip()

# The artifact the step runs from: the zip archive (or the directory) that holds this
# package beside the __main__.py that starts it. The inner phase and the fast path's check
# are started from it, never from a module of the package.
ARTIFACT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
