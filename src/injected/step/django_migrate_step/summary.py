"""How the step ends and what it says: StepEnded (raised where the end becomes known), the
log lines, the Report the phases fill in, and its JSON summary for the termination log
with the cut rules that keep it within MAX_SUMMARY_BYTES (prose is cut before lists,
lists keep their first entries, the counts always stay); `end`, the one exit of the
process."""

import json
import os
import sys
import threading
import time

from .config import (
    EXIT_NOT_FOUND,
    LOG_PREFIX,
    MAX_SUMMARY_BYTES,
    MODE,
    PHASE_SETUP,
    RESULT_NOT_FOUND,
    STARTED_AT,
    TERMINATION_LOG,
)

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
        # Plan mode: the rollout's verdict and the plan's counts (see `plan`).
        self.plan = None
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
        if self.plan is not None:
            data["plan"] = self.plan

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


def not_found(message):
    return StepEnded(EXIT_NOT_FOUND, RESULT_NOT_FOUND, message)
