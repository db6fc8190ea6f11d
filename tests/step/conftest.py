"""The step's unit tests (`python -m pytest tests/step`): its pure parts, fast, without a
database. The package is imported from src/injected/step, as the artifact holds it, with
none of the pod's DJANGO_MIGRATE_* env set (the step reads its env once, on import).
Django is set up from a settings module that exists only in memory; connections of the
PostgreSQL and MySQL backends are made for their vendor and column types and never
opened."""

import os
import pathlib
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEP = ROOT / "src" / "injected" / "step"

for _name in [n for n in os.environ if n.startswith("DJANGO_MIGRATE_")]:
    del os.environ[_name]
sys.path.insert(0, str(STEP))

SETTINGS_MODULE = "step_tests_settings"
_settings = types.ModuleType(SETTINGS_MODULE)
_settings.SECRET_KEY = "step-tests"
_settings.INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
_settings.DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
_settings.USE_TZ = True
sys.modules[SETTINGS_MODULE] = _settings
os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE

import django  # noqa: E402

django.setup()


def _backend(module, settings_dict):
    """A DatabaseWrapper of the backend `module`, never connected; a failure saying how to
    get its driver when it is not installed."""
    import importlib

    from django.core.exceptions import ImproperlyConfigured

    try:
        base = importlib.import_module("django.db.backends.%s.base" % module)
    except (ImportError, ImproperlyConfigured) as e:
        pytest.fail(
            "the %s backend's driver is not installed (%s): install tests/requirements*.txt into this "
            "Python, as scripts/test.sh and scripts/rootfs.sh do" % (module, e)
        )
    return base.DatabaseWrapper(dict(settings_dict), module)


def _settings_dict(engine):
    return {
        "ENGINE": engine,
        "NAME": "shop",
        "USER": "shop",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": "9",
        "OPTIONS": {},
        "TIME_ZONE": None,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "AUTOCOMMIT": True,
        "ATOMIC_REQUESTS": False,
        "TEST": {},
    }


@pytest.fixture
def postgresql():
    return _backend("postgresql", _settings_dict("django.db.backends.postgresql"))


@pytest.fixture
def mysql():
    return _mariadb("10.11.6-MariaDB")


@pytest.fixture
def mariadb_11():
    return _mariadb("11.8.3-MariaDB")


def _mariadb(version):
    wrapper = _backend("mysql", _settings_dict("django.db.backends.mysql"))
    # What the server would say when asked: the backend's column types depend on it, and
    # the tests never connect.
    wrapper.__dict__["mysql_server_data"] = {
        "version": version,
        "sql_mode": "STRICT_TRANS_TABLES",
        "default_storage_engine": "InnoDB",
        "sql_auto_is_null": False,
        "lower_case_table_names": False,
        "has_zoneinfo_database": True,
    }
    return wrapper
