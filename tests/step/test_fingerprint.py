"""The fast path's fingerprint: what changes it (anything but the database that decides
Django's migration plan) and what does not (credentials, connection-only options,
settings the plan does not read, files that are not migrations, timestamps), and the
parts a start names when no record matches."""

import json
import os
import sys
import types

import django
import pytest
from django.conf import Settings
from django_migrate_step import fingerprint as fp
from django_migrate_step.fingerprint import (
    Doubt,
    ModuleSettings,
    database_identity,
    differences,
    fingerprint,
    fingerprint_parts,
    fingerprint_payload,
)

DATABASE = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": "shop",
    "USER": "shop",
    "PASSWORD": "secret",
    "HOST": "db.shop.svc",
    "PORT": "5432",
    "OPTIONS": {"sslmode": "require", "connect_timeout": 5},
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An app `fpshop` with a migrations package, importable, and the fingerprint's caches
    emptied (each start of the step computes them once)."""
    app = tmp_path / "fpshop"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "apps.py").write_text("from django.apps import AppConfig\n\n\nclass ShopConfig(AppConfig):\n")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "migrations" / "0001_initial.py").write_text("# the first migration\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clear()
    yield app
    clear()
    for name in [n for n in sys.modules if n == "fpshop" or n.startswith("fpshop.")]:
        del sys.modules[name]


def clear():
    fp.module_state.cache_clear()
    fp.file_digest.cache_clear()


_counter = [0]


def settings(**values):
    """django.conf.Settings of a settings module that exists only in memory."""
    _counter[0] += 1
    name = "fp_settings_%d" % _counter[0]
    module = types.ModuleType(name)
    module.INSTALLED_APPS = ["fpshop"]
    module.SECRET_KEY = "one"
    for key, value in values.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return ModuleSettings(Settings(name))


def sources(app, swappable=()):
    return {
        "settings": sorted(swappable),
        "modules": ["fpshop.migrations"],
        "files": [str(app / "apps.py"), str(app / "__init__.py")],
    }


def digest(app, database=DATABASE, swappable=(), **values):
    clear()
    return fingerprint(settings(**values), database_identity(database), sources(app, swappable))


def test_the_same_inputs_give_the_same_fingerprint(project):
    assert digest(project) == digest(project)
    assert len(digest(project)) == 64


@pytest.mark.parametrize(
    "change",
    [
        lambda app: (app / "migrations" / "0001_initial.py").write_text("# edited\n"),
        lambda app: (app / "migrations" / "0002_more.py").write_text("# a new migration\n"),
        lambda app: (app / "migrations" / "0001_initial.py").rename(app / "migrations" / "0001_first.py"),
        lambda app: (app / "apps.py").write_text("# another label\n"),
        lambda app: (app / "__init__.py").write_text("# edited\n"),
    ],
    ids=["migration edited", "migration added", "migration renamed", "apps.py edited", "app package edited"],
)
def test_the_app_files_change_it(project, change):
    before = digest(project)
    change(project)
    assert digest(project) != before


def test_a_migrations_module_that_is_no_longer_a_package_matches_no_record(project):
    before = digest(project)
    (project / "migrations" / "__init__.py").unlink()
    try:
        after = digest(project)
    except Doubt:
        return  # a namespace package whose parent this process never imported
    assert after != before


def test_files_that_are_not_migrations_and_timestamps_do_not_change_it(project):
    before = digest(project)
    cache = project / "migrations" / "__pycache__"
    cache.mkdir()
    (cache / "0001_initial.cpython-311.pyc").write_bytes(b"\0compiled")
    os.utime(project / "migrations" / "0001_initial.py", (1, 1))
    assert digest(project) == before


def test_the_settings_the_plan_reads_change_it_and_others_do_not(project):
    before = digest(project)
    assert digest(project, INSTALLED_APPS=["fpshop", "django.contrib.auth"]) != before
    assert digest(project, MIGRATION_MODULES={"fpshop": "fpshop.other_migrations"}) != before
    assert digest(project, SECRET_KEY="two", DEBUG=True, TIME_ZONE="Europe/Paris") == before
    # A swappable setting counts once a migration's dependency names it.
    assert digest(project, AUTH_USER_MODEL="fpshop.Customer") == before
    swapped = digest(project, swappable=["AUTH_USER_MODEL"], AUTH_USER_MODEL="fpshop.Customer")
    assert swapped != digest(project, swappable=["AUTH_USER_MODEL"])


def test_the_databases_address_changes_it_and_credentials_do_not(project):
    before = digest(project)
    for key, value in [("NAME", "other"), ("HOST", "replica"), ("PORT", "6432"), ("ENGINE", "x.postgis")]:
        assert digest(project, database=dict(DATABASE, **{key: value})) != before, key
    assert digest(project, database=dict(DATABASE, OPTIONS={"sslmode": "disable"})) != before
    for key, value in [("USER", "admin"), ("PASSWORD", "other")]:
        assert digest(project, database=dict(DATABASE, **{key: value})) == before, key
    pod_only = dict(DATABASE["OPTIONS"], connect_timeout=30, application_name="pod-7", passfile="/x")
    assert digest(project, database=dict(DATABASE, OPTIONS=pod_only)) == before


def test_the_identity_keeps_no_credentials():
    identity = database_identity(dict(DATABASE, OPTIONS={"password": "x", "sslpassword": "y", "sslmode": "z"}))
    assert identity == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "HOST": "db.shop.svc",
        "PORT": "5432",
        "OPTIONS": {"sslmode": "z"},
    }
    assert "secret" not in json.dumps(database_identity(DATABASE))


def test_the_alias_djangos_version_and_the_format_change_it(project, monkeypatch):
    before = digest(project)
    monkeypatch.setattr(fp, "ALIAS", "replica")
    assert digest(project) != before
    monkeypatch.undo()
    monkeypatch.setattr(django, "__version__", "9.9")
    assert digest(project) != before
    monkeypatch.undo()
    monkeypatch.setattr(fp, "FINGERPRINT_FORMAT", fp.FINGERPRINT_FORMAT + 1)
    assert digest(project) != before


def test_a_start_without_a_matching_record_names_the_parts_that_differ(project):
    identity = database_identity(DATABASE)
    recorded = fingerprint_parts(fingerprint_payload(settings(), identity, sources(project)))
    assert set(recorded) >= {"database", "setting INSTALLED_APPS", "module fpshop.migrations"}
    clear()
    (project / "migrations" / "0002_more.py").write_text("# new\n")
    now = settings(INSTALLED_APPS=["fpshop", "django.contrib.auth"])
    assert differences(recorded, sources(project), now, identity) == [
        "module fpshop.migrations",
        "setting INSTALLED_APPS",
    ]
    assert differences(None, sources(project), now, identity) is None


def test_where_a_migrations_module_resolves(project):
    state = fp.module_state("fpshop.migrations")
    assert state[:2] == ["package", os.path.realpath(str(project / "migrations"))]
    # Then the parent packages' __init__ files, by digest.
    assert state[3] == [str(project / "__init__.py"), fp.file_digest(str(project / "__init__.py"))]
    assert fp.module_state("fpshop.nowhere")[:2] == ["missing", "fpshop.nowhere"]
    (project / "single.py").write_text("")
    assert fp.module_state("fpshop.single")[0] == "module"
