"""Expand and contract: in migrate and wait mode a pending migration is deferred to the
contract run when it is marked django-safemigrate's `Safe.after_deploy()`, named in
DJANGO_MIGRATE_DEFER, or breaks the previous release under `unsafe-migrations: defer`;
a migration that must run after a deferred one holds the step back (exit 5). The
summary names the deferred ones for the contract run."""

from .classifier import classify, pending_plan
from .config import ALLOW_UNSAFE, DEFER, EXIT_UNSAFE, KIND_BREAKING, RESULT_DEFERRED_BLOCKED, UNSAFE_MIGRATIONS
from .database import pending_migrations
from .summary import StepEnded


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
