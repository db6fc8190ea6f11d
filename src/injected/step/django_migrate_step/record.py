"""The fast path's record, in the inner phase: after a successful full run with nothing
left pending, the fingerprint of this image's migrations and the django_migrations rows
the empty plan rests on, written to RECORD_TABLE on a connection of its own."""

import contextlib
import json
import os
import sys
import threading
import time

from .config import ALIAS, SETTINGS_MODULE
from .database import close_quietly
from .fast_path import FAST_PATH_WHY_MAX_CHARS, RECORD_TABLE, RECORDS_KEPT
from .fingerprint import ModuleSettings, digest_of, fingerprint_parts, fingerprint_payload, loaded_state, module_state
from .settings_module import settings_loaded_as_declared
from .summary import first_line, shorten

# The record write gives up after this long; the step has succeeded either way.
RECORD_SECONDS = 15.0


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
