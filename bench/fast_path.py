#!/usr/bin/env python3
"""The Django step with nothing pending: its fast path against its full run and against
`manage.py migrate --check`, on the test project and on a Wagtail site.

For each project, four contenders, each run N times, interleaved (fast, miss, full,
check, fast, miss, ...) so that load on the machine affects all of them alike:

- fast: the step as the pod runs it (the archive `install-code` writes, from this
  checkout's binary, built if needed), its fast path on (the default).
  Its summary (the termination log) must say result nothing-pending and fast_path.taken
  true: the step records what the fast path needs after a successful full run, so one
  untimed run of each contender comes first; a fast run that did not take the fast path
  stops the benchmark with the summary's fast_path.why.
- miss: the first start of a new image: the fast path on, its record deleted before each
  run (untimed), so the step looks, starts Django, and writes the record again.
- full: the same with DJANGO_MIGRATE_FAST_PATH=false (result nothing-pending, no fast path).
- check: `manage.py migrate --check` (exit 0: nothing pending), the floor of a full
  Django start that asks the database.

Projects: testsite is tests/django (copied to a temporary directory) with the Python of
--test-python (the repository's .venv: Django, psycopg); wagtail is `wagtail start`'s
site, from a venv of its own that this script creates once under --wagtail-venv
(Wagtail and psycopg from PyPI; reused while its stamp matches the requirements), its
settings pointed at PostgreSQL by a DATABASES override appended to the settings module
that its manage.py names (manage.py itself stays Django's template). Each project gets a
database of its own (bench_fast_PROJECT, dropped and created anew), migrated once.

Prints, per project, the migrations applied (`showmigrations --plan`), the median wall
seconds of each contender and the ratio fast/check, then min and max of each.

    python3 bench/fast_path.py --runs 10 --projects testsite,wagtail --json timings.json

Needs: PostgreSQL. With DJANGO_MIGRATE_TEST_POSTGRES_PORT, DJANGO_MIGRATE_TEST_DB_USER and
DJANGO_MIGRATE_TEST_DB_PASSWORD set (the env file of scripts/databases.sh start) it uses
that server on 127.0.0.1; otherwise it starts the servers of scripts/databases.sh under a
temporary directory and stops them at the end (install them with
`bash scripts/databases.sh install`). The wagtail project needs PyPI on its first run.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATABASES_SH = os.path.join(ROOT, "scripts", "databases.sh")
TEST_PROJECT = os.path.join(ROOT, "tests", "django")
WAGTAIL_REQUIREMENTS = ["wagtail==8.0.1", "psycopg[binary]==3.3.9"]
PROJECTS = ("testsite", "wagtail")
CONTENDERS = ("fast", "miss", "full", "check")
DB_ENV = ("DJANGO_MIGRATE_TEST_POSTGRES_PORT", "DJANGO_MIGRATE_TEST_DB_USER", "DJANGO_MIGRATE_TEST_DB_PASSWORD")

# Appended to the Wagtail site's settings: the database from the environment, as the
# test project's settings read it.
WAGTAIL_DATABASES = """

# bench/fast_path.py: PostgreSQL from the environment, as in a pod.
import os as _bench_os

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _bench_os.environ["DB_NAME"],
        "HOST": _bench_os.environ.get("DB_HOST", "127.0.0.1"),
        "PORT": _bench_os.environ.get("DB_PORT", ""),
        "USER": _bench_os.environ.get("DB_USER", ""),
        "PASSWORD": _bench_os.environ.get("DB_PASSWORD", ""),
    }
}
"""


class BenchError(Exception):
    pass


def say(message):
    print("==> " + message, file=sys.stderr, flush=True)


def run(argv, cwd=None, env=None, what=None):
    """Runs a setup command; its output is shown only when it fails."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(
            "%s failed (exit %d):\n%s%s"
            % (what or " ".join(argv), done.returncode, done.stdout[-3000:], done.stderr[-3000:])
        )
    return done.stdout


# ---------------------------------------------------------------- database server


def database_server():
    """(host, port, user, password) of the PostgreSQL to use and the directory of the
    servers this script started (None when it uses one from the environment)."""
    if all(os.environ.get(name) for name in DB_ENV):
        say("using the PostgreSQL of the environment on 127.0.0.1:%s" % os.environ[DB_ENV[0]])
        return ("127.0.0.1",) + tuple(os.environ[name] for name in DB_ENV), None
    installed = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    missing = [name for name in ("pgbouncer", "mariadbd") if shutil.which(name) is None]
    if not installed or missing:
        raise BenchError(
            "PostgreSQL (and the other servers of scripts/databases.sh) is not installed: "
            "run `bash scripts/databases.sh install`, or set %s to use a running server" % ", ".join(DB_ENV)
        )
    # databases.sh makes DIR readable by the servers' users itself; its parent must be
    # traversable, so DIR is a directory of its own directly under the temporary root.
    servers = tempfile.mkdtemp(prefix="bench-fast-path-db-")
    say("starting the servers of scripts/databases.sh under %s" % servers)
    try:
        subprocess.run(["bash", DATABASES_SH, "start", servers], check=True)
    except subprocess.CalledProcessError as e:
        stop_servers(servers)
        raise BenchError("scripts/databases.sh start failed (exit %d)" % e.returncode) from e
    env = {}
    with open(os.path.join(servers, "env"), encoding="utf-8") as f:
        for line in f:
            match = re.match(r"export (\w+)=(.*)$", line.strip())
            if match:
                env[match.group(1)] = match.group(2)
    return ("127.0.0.1",) + tuple(env[name] for name in DB_ENV), servers


def stop_servers(servers):
    if servers:
        say("stopping the servers under %s" % servers)
        subprocess.run(["bash", DATABASES_SH, "stop", servers], check=False)


def create_database(python, server, name):
    """Drops and creates database NAME, with the psycopg of the project's Python."""
    host, port, user, password = server
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(host=sys.argv[1], port=sys.argv[2], user=sys.argv[3], password=sys.argv[4],"
        " dbname='postgres', autocommit=True) as conn:\n"
        "    conn.execute('DROP DATABASE IF EXISTS %s WITH (FORCE)' % sys.argv[5])\n"
        "    conn.execute('CREATE DATABASE %s' % sys.argv[5])\n"
    )
    run([python, "-c", code, host, port, user, password, name], what="creating database %s" % name)


# ---------------------------------------------------------------- projects


def project_env(server, database):
    """The environment of the project's commands: this one without anything of the step
    or the settings module (manage.py's default applies), plus the database's."""
    host, port, user, password = server
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_MIGRATE_") and k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        {
            "DB_ENGINE": "postgresql",
            "DB_NAME": database,
            "DB_HOST": host,
            "DB_PORT": port,
            "DB_USER": user,
            "DB_PASSWORD": password,
        }
    )
    return env


def setup_testsite(args, workdir):
    """The test project, copied: (directory, python)."""
    if not os.access(args.test_python, os.X_OK):
        raise BenchError("%s not found: create the repository's .venv or pass --test-python" % args.test_python)
    directory = os.path.join(workdir, "testsite")
    shutil.copytree(TEST_PROJECT, directory, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    return directory, args.test_python


def wagtail_venv(path):
    """The Wagtail venv under PATH, created unless its stamp says it has the requirements."""
    python = os.path.join(path, "bin", "python")
    stamp = os.path.join(path, "bench-requirements.txt")
    wanted = "\n".join(WAGTAIL_REQUIREMENTS) + "\n"
    try:
        with open(stamp, encoding="utf-8") as f:
            if f.read() == wanted and os.access(python, os.X_OK):
                say("reusing the Wagtail venv %s" % path)
                return python
    except OSError:
        pass
    say("creating the Wagtail venv %s (%s)" % (path, ", ".join(WAGTAIL_REQUIREMENTS)))
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    run([sys.executable, "-m", "venv", path], what="python3 -m venv %s" % path)
    run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"] + WAGTAIL_REQUIREMENTS,
        what="pip install %s" % " ".join(WAGTAIL_REQUIREMENTS),
    )
    with open(stamp, "w", encoding="utf-8") as f:
        f.write(wanted)
    return python


def setup_wagtail(args, workdir):
    """`wagtail start`'s site with its settings pointed at PostgreSQL: (directory, python)."""
    python = wagtail_venv(os.path.expanduser(args.wagtail_venv))
    directory = os.path.join(workdir, "wagtail")
    os.makedirs(directory)
    run([os.path.join(os.path.dirname(python), "wagtail"), "start", "benchsite", directory], what="wagtail start")
    with open(os.path.join(directory, "manage.py"), encoding="utf-8") as f:
        match = re.search(r"""DJANGO_SETTINGS_MODULE["']\s*,\s*["']([\w.]+)["']""", f.read())
    if not match:
        raise BenchError("no DJANGO_SETTINGS_MODULE default in %s/manage.py" % directory)
    settings = os.path.join(directory, *match.group(1).split(".")) + ".py"
    with open(settings, "a", encoding="utf-8") as f:
        f.write(WAGTAIL_DATABASES)
    return directory, python


def setup_project(name, args, workdir, server):
    """Creates the project and its database, migrates it: a dict describing it."""
    directory, python = (setup_testsite if name == "testsite" else setup_wagtail)(args, workdir)
    database = "bench_fast_" + name
    create_database(python, server, database)
    env = project_env(server, database)
    say("%s: migrating database %s" % (name, database))
    run([python, "manage.py", "migrate", "--no-input"], cwd=directory, env=env, what="%s: manage.py migrate" % name)
    plan = run([python, "manage.py", "showmigrations", "--plan"], cwd=directory, env=env, what="showmigrations")
    lines = plan.splitlines()
    applied = sum(1 for line in lines if line.startswith("[X]"))
    if applied == 0 or any(line.startswith("[ ]") for line in lines):
        raise BenchError("%s: showmigrations after migrate:\n%s" % (name, plan))
    django = run([python, "-c", "import django; print(django.get_version())"], what="django version").strip()
    say("%s: %d migrations applied (Django %s)" % (name, applied, django))
    return {"name": name, "dir": directory, "python": python, "env": env, "migrations": applied, "django": django}


# ---------------------------------------------------------------- contenders


def forget_record(project):
    """Deletes the step's record (the table stays), with the psycopg of the project's Python."""
    env = project["env"]
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(host=sys.argv[1], port=sys.argv[2], user=sys.argv[3], password=sys.argv[4],"
        " dbname=sys.argv[5], autocommit=True) as conn:\n"
        "    conn.execute('DELETE FROM django_migrate_record')\n"
    )
    server = [env[name] for name in ("DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME")]
    run([project["python"], "-c", code] + server, what="deleting the step's record")


def install_step(workdir):
    """The step as the pod gets it: `install-code` of this checkout's binary writes its
    archive into workdir/code (as into the pod's emptyDir)."""
    run(["cargo", "run", "--quiet", "--", "install-code", os.path.join(workdir, "code")], cwd=ROOT, what="install-code")


def run_contender(project, contender, workdir, warm_up=False):
    """One run: wall seconds. Raises BenchError when it did not end as it must (a warm-up
    run of the step need not take the fast path: it may be the one that records it)."""
    python, env = project["python"], dict(project["env"])
    log = os.path.join(workdir, "termination-log")
    if contender == "check":
        argv = [python, "manage.py", "migrate", "--check"]
    else:
        argv = [python, os.path.join(workdir, "code", "step.pyz")]
        env["DJANGO_MIGRATE_TERMINATION_LOG"] = log
        env["DJANGO_MIGRATE_MANAGE_COMMAND"] = "%s manage.py" % python
        # Every run is a pod of one release (its pod-template-hash, as the webhook passes it).
        env["DJANGO_MIGRATE_RELEASE"] = "bench"
        if contender == "full":
            env["DJANGO_MIGRATE_FAST_PATH"] = "false"
        if contender == "miss" and not warm_up:
            forget_record(project)
        if os.path.exists(log):
            os.unlink(log)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=project["dir"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    where = "%s, %s" % (project["name"], contender)
    if done.returncode != 0:
        raise BenchError("%s: exit %d\n%s%s" % (where, done.returncode, done.stdout[-3000:], done.stderr[-3000:]))
    if contender == "check":
        return seconds
    try:
        with open(log, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise BenchError("%s: no summary in the termination log: %s\n%s" % (where, e, done.stderr[-3000:])) from e
    if summary.get("result") != "nothing-pending":
        raise BenchError("%s: result %r, not nothing-pending: %s" % (where, summary.get("result"), json.dumps(summary)))
    fast_path = summary.get("fast_path") or {}
    if contender == "fast" and not warm_up and fast_path.get("taken") is not True:
        raise BenchError(
            "%s: the fast path was not taken after the warm-up; fast_path.why: %s\nsummary: %s"
            % (where, fast_path.get("why", "(no fast_path in the summary)"), json.dumps(summary))
        )
    if (
        contender == "miss"
        and not warm_up
        and (fast_path.get("taken") is not False or not str(fast_path.get("recorded", "")).startswith("recorded"))
    ):
        raise BenchError("%s: expected a miss that records the image again: %s" % (where, json.dumps(summary)))
    if contender == "full" and fast_path.get("taken"):
        raise BenchError(
            "%s: the fast path was taken with DJANGO_MIGRATE_FAST_PATH=false: %s" % (where, json.dumps(summary))
        )
    return seconds


def measure(project, runs, workdir):
    """Per contender, the wall seconds of RUNS interleaved runs, after one untimed run of
    each: the step with its fast path on first (it records what the fast path needs),
    and the files are in the page cache for all three."""
    say("%s: warm-up" % project["name"])
    for contender in CONTENDERS:
        run_contender(project, contender, workdir, warm_up=True)
    timings = {contender: [] for contender in CONTENDERS}
    for i in range(runs):
        for contender in CONTENDERS:
            timings[contender].append(run_contender(project, contender, workdir))
        say(
            "%s: run %d/%d: %s"
            % (project["name"], i + 1, runs, ", ".join("%s %.3fs" % (c, timings[c][-1]) for c in CONTENDERS))
        )
    return timings


def print_tables(results, runs):
    print()
    print("Nothing pending: wall seconds, median of %d interleaved runs each" % runs)
    print()
    print("| project | migrations | fast (median s) | miss | full | migrate --check | fast/check |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for result in results:
        median = {c: statistics.median(result["seconds"][c]) for c in CONTENDERS}
        print(
            "| %s | %d | %.3f | %.3f | %.3f | %.3f | %.2f |"
            % (
                result["project"],
                result["migrations"],
                median["fast"],
                median["miss"],
                median["full"],
                median["check"],
                median["fast"] / median["check"],
            )
        )
    print()
    print("| project | contender | median s | min s | max s |")
    print("|---|---|---:|---:|---:|")
    for result in results:
        for contender in CONTENDERS:
            seconds = result["seconds"][contender]
            print(
                "| %s | %s | %.3f | %.3f | %.3f |"
                % (result["project"], contender, statistics.median(seconds), min(seconds), max(seconds))
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each contender per project")
    parser.add_argument("--projects", default=",".join(PROJECTS), help="comma-separated: testsite, wagtail")
    parser.add_argument(
        "--test-python",
        default=os.path.join(ROOT, ".venv", "bin", "python"),
        help="Python with Django and psycopg for the test project",
    )
    parser.add_argument(
        "--wagtail-venv",
        default="~/.cache/django-migrate-webhook/bench-wagtail-venv",
        help="where the Wagtail venv is created (and reused)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the raw timings to FILE")
    args = parser.parse_args()
    projects = [p.strip() for p in args.projects.split(",") if p.strip()]
    unknown = sorted(set(projects) - set(PROJECTS))
    if unknown or not projects:
        parser.error("--projects: unknown %s (known: %s)" % (", ".join(unknown) or "(none)", ", ".join(PROJECTS)))
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    # SIGTERM ends the benchmark through the finally below, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    workdir = tempfile.mkdtemp(prefix="bench-fast-path-")
    servers = None
    try:
        install_step(workdir)
        server, servers = database_server()
        results = []
        for name in projects:
            project = setup_project(name, args, workdir, server)
            seconds = measure(project, args.runs, workdir)
            results.append(
                {
                    "project": name,
                    "migrations": project["migrations"],
                    "django": project["django"],
                    "seconds": seconds,
                }
            )
        print_tables(results, args.runs)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(
                    {"runs": args.runs, "wagtail_requirements": WAGTAIL_REQUIREMENTS, "projects": results}, f, indent=2
                )
                f.write("\n")
    except BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    finally:
        stop_servers(servers)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
