"""The waits of the inner phase once the database is reached: for the migration lock
(migrate mode), and for other pods to apply the pending migrations (wait mode). A waiting
pod holds no connection while it sleeps."""

import time

from .config import (
    EXIT_OK,
    EXIT_TIMEOUT,
    MIGRATE_TIMEOUT,
    PHASE_DONE,
    PHASE_LOCK,
    PHASE_WAITING,
    POLL_SECONDS,
    RESULT_APPLIED_BY_OTHER_POD,
    RESULT_TIMEOUT,
)
from .contract import pending_kept
from .database import close_quietly
from .lock import LockUnavailable, lock_unavailable
from .summary import StepEnded, elapsed, first_line, name_list


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
