"""The fast path's check, in the outer phase.

Most pod starts have nothing to migrate. After a full run that leaves nothing pending,
the step records in the database (RECORD_TABLE) a fingerprint of everything apart from
the database that decides Django's migration plan (see `fingerprint`), and the rows of
django_migrations the empty plan rested on (see `record`). A later start computes the
fingerprint again without starting Django (it imports the settings module, never
django.setup()) and ends with nothing pending only when a record has that fingerprint,
those rows are still as they were and (in migrate mode) this release has had its
post_migrate run. Any doubt takes the full path, and the summary says which. The check
runs in a process of its own, started from the artifact."""

import contextlib
import json
import os
import select
import subprocess
import sys
import time

from .config import (
    ALIAS,
    ARTIFACT,
    ENVIRON,
    EXIT_OK,
    FAST_PATH,
    MODE,
    MODE_CONTRACT,
    MODE_MIGRATE,
    MODE_WAIT,
    PHASE_DONE,
    POST_MIGRATE,
    RELEASE,
    RESULT_NOTHING_PENDING,
)
from .fingerprint import Doubt, database_identity, differences, fingerprint
from .release import RELEASE_TABLE, post_migrate_wanted, release_key
from .settings_module import plan_settings
from .summary import StepEnded, elapsed, first_line, name_list, not_found, shorten

RECORD_TABLE = "django_migrate_record"
# Records of other fingerprints (earlier releases, other Deployments) kept beside the newest.
RECORDS_KEPT = 50
# The fast path gives up after this long and the full path runs.
FAST_PATH_SECONDS = 20.0


FAST_PATH_CONNECT_TIMEOUT = 5


# The outer phase tells the inner one why the fast path was not taken, and whether a
# record may let the next start take it.
FAST_PATH_DOUBT_ENV = "DJANGO_MIGRATE_FAST_PATH_DOUBT"
FAST_PATH_RECORD_ENV = "DJANGO_MIGRATE_FAST_PATH_RECORD"
# Set on the process that runs the check: the file descriptor its answer goes to.
FAST_PATH_CHECK_FD_ENV = "DJANGO_MIGRATE_FAST_PATH_CHECK_FD"


FAST_PATH_WHY_MAX_CHARS = 300


ENGINES_POSTGRESQL = ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis")
ENGINES_MYSQL = ("django.db.backends.mysql", "django.contrib.gis.db.backends.mysql")
ENGINES_SQLITE = ("django.db.backends.sqlite3", "django.contrib.gis.db.backends.spatialite")


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
            "no release (the pod has no label naming its pod template): post_migrate runs on every start", lasting=True
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
        child = subprocess.Popen([sys.executable, ARTIFACT], env=env, pass_fds=(write_fd,))
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
