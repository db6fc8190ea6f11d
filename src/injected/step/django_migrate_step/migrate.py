"""The steps that run `migrate` under the lock: the pending plan checked (deferred and held
back), `migrate` with retries on lock timeouts, and how a failed run ends (a failed,
half-applied or signal-failed migration, a lost lock); the release's pre_migrate and
post_migrate run with nothing pending."""

import os
import random
import time

from .classifier import classify, held_back, pending_plan
from .config import (
    ALIAS,
    ALLOW_UNSAFE,
    EXIT_LOCK,
    EXIT_MIGRATE_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNSAFE,
    HOLD_BACK,
    KIND_BREAKING,
    KIND_LOCKING,
    LOCK_TIMEOUT,
    LOCKING_MIN_ROWS,
    MAX_RETRY_BACKOFF_SECONDS,
    MIGRATE_TIMEOUT,
    MODE,
    MODE_CONTRACT,
    PHASE_DONE,
    PHASE_MIGRATING,
    RELEASE,
    RESULT_APPLIED,
    RESULT_APPLIED_BY_OTHER_POD,
    RESULT_FAILED,
    RESULT_HALF_APPLIED,
    RESULT_LOCK_LOST,
    RESULT_LOCKING_BLOCKED,
    RESULT_NOTHING_PENDING,
    RESULT_POST_MIGRATE_FAILED,
    RESULT_TIMEOUT,
    RESULT_UNSAFE_BLOCKED,
    UNSAFE_MIGRATIONS,
)
from .contract import defer_contract, not_deferred, pending_kept
from .database import is_lock_timeout, pending_now
from .lock import Lock, LockLost
from .progress import MysqlSession, leave_deferred, track_progress
from .release import post_migrate_wanted, record_release, release_done
from .summary import StepEnded, elapsed, first_line, name_list
from .waits import wait_for_lock


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
