"""The step's phases: the outer one (plain Python: checks the manage command, tries the
fast path, then runs the inner phase under `manage.py shell` from the artifact and passes
its exit code through) and the inner one (inside Django: the settings, the mode's step,
the record); `main`, which runs the phase this process is for and ends it."""

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time

from .config import (
    ALIAS,
    ARTIFACT,
    EXIT_MIGRATE_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    MANAGE_COMMAND,
    MODE,
    MODE_CONTRACT,
    MODE_MIGRATE,
    MODE_PLAN,
    MODE_WAIT,
    PHASE_DONE,
    POST_MIGRATE,
    RESULT_APPLIED_BY_OTHER_POD,
    RESULT_FAILED,
    RESULT_NOTHING_PENDING,
    RESULT_TIMEOUT,
    SPAWNED_AT_ENV,
    STARTED_AT,
    STARTED_AT_ENV,
    STATUS_FD_ENV,
    UNSAFE_MIGRATIONS,
    WAIT_TIMEOUT,
)
from .contract import find_deferred
from .database import pending_now, wait_for_connection, with_connect_timeout
from .fast_path import FAST_PATH_DOUBT_ENV, FAST_PATH_RECORD_ENV, try_fast_path
from .fingerprint import database_identity
from .migrate import step_migrate, step_post_migrate
from .plan import step_plan
from .record import record_for_fast_path
from .release import post_migrate_due
from .summary import Report, StepEnded, elapsed, end, first_line, not_found
from .waits import wait_for_other_pods
from .watchdog import Watchdog


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
    inner = "import runpy; runpy.run_path(%r, run_name='django_migrate')" % ARTIFACT
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
    if MODE not in (MODE_MIGRATE, MODE_WAIT, MODE_CONTRACT, MODE_PLAN):
        raise not_found("unknown DJANGO_MIGRATE_MODE %r: allowed migrate, wait, contract or plan" % MODE)
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
    if MODE == MODE_PLAN:
        # Reads in a read-only transaction of its own; waits for no lock and no pod.
        return step_plan(connection, report)
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
