"""The book's tutorial (docs/src/tutorial.md), run as written on the test cluster's real node:
every ```sh block in order, each with bash -euo pipefail, except those marked
`<!-- not run by the test: ... -->` (what scripts/test.sh has done already). A block marked
`<!-- exits N -->` must exit N (else 0). A ```text block right after a command block is
output the reader is told to expect: each of its lines must be a line of the block's
output, compared with runs of spaces collapsed, `…` standing for any text."""

import os
import pathlib
import re
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "src" / "tutorial.md"
BIN_DIR = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug"
NAMESPACES = ("tutorial", "django-migrate-system")


def blocks():
    """(command text, expected output lines, expected exit code) of each block the test runs."""
    text = TUTORIAL.read_text()
    pattern = re.compile(
        r"(?:<!-- (?P<mark>[^>]*) -->\n)?```sh\n(?P<code>.*?)```\n(?:\n```text\n(?P<out>.*?)```\n)?", re.S
    )
    found = []
    for m in pattern.finditer(text):
        mark = m.group("mark") or ""
        if mark.startswith("not run by the test"):
            continue
        code = int(mark.split()[1]) if mark.startswith("exits ") else 0
        expected = [line for line in (m.group("out") or "").splitlines() if line.strip()]
        found.append((m.group("code"), expected, code))
    return found


def collapse(line):
    return " ".join(line.split())


def matches(expected, output):
    regex = re.compile(".*".join(re.escape(part) for part in collapse(expected).split("…")) + "$")
    return any(regex.match(collapse(line)) for line in output.splitlines())


def helm():
    result = subprocess.run(["bash", str(ROOT / "scripts/kube/build-helm.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"scripts/kube/build-helm.sh failed (it builds the Helm CLI into the cache):\n{result.stderr}")
    return pathlib.Path(result.stdout.strip())


def run(code, env, timeout=600):
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_tutorial_runs_as_written():
    for name in ("KUBECONFIG", "DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST"):
        if not os.environ.get(name):
            pytest.fail(
                f"{name} is not set: the tutorial runs on the cluster, node and databases scripts/test.sh starts"
            )
    if not (BIN_DIR / "django-migrate-webhook").exists():
        pytest.fail(f"{BIN_DIR}/django-migrate-webhook is missing: cargo build (scripts/test.sh does)")
    env = {**os.environ, "PATH": f"{BIN_DIR}:{helm().parent}:{os.environ['PATH']}"}
    steps = blocks()
    assert len(steps) >= 10, f"only {len(steps)} blocks found in {TUTORIAL}"
    try:
        for code, expected, exit_code in steps:
            started = time.monotonic()
            result = run(code, env)
            seconds = time.monotonic() - started
            shown = f"$ {code}\n--- exit {result.returncode} after {seconds:.1f}s\n{result.stdout}{result.stderr}"
            print(shown)
            assert result.returncode == exit_code, f"expected exit {exit_code}:\n{shown}"
            for line in expected:
                assert matches(line, result.stdout), f"expected a line {line!r} in the output of:\n{shown}"
    finally:
        cleanup(env)


def cleanup(env):
    """What a failed run left: the release, the namespaces, the database."""
    run("helm uninstall django-migrate-webhook -n django-migrate-system --wait --ignore-not-found || true", env, 180)
    run(f"kubectl delete namespace {' '.join(NAMESPACES)} --ignore-not-found --wait=false", env, 60)
    run(
        'PGPASSWORD=$DJANGO_MIGRATE_TEST_DB_PASSWORD psql -h 127.0.0.1 -p "$DJANGO_MIGRATE_TEST_POSTGRES_PORT" '
        '-U "$DJANGO_MIGRATE_TEST_DB_USER" -d postgres -c "DROP DATABASE IF EXISTS tutorial WITH (FORCE)"',
        env,
        60,
    )
