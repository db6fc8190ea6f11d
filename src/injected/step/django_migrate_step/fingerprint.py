"""The fast path's fingerprint: everything apart from the database that decides Django's
migration plan (the files of every app's migrations module and where that module
resolves, the files that define the apps, the settings the plan reads, Django's version,
the alias and the database's address), its digest and a short digest per part; and
Doubt, why the fast path cannot prove that nothing is pending."""

import functools
import hashlib
import json
import os
import sys

from .config import ALIAS
from .summary import first_line

FINGERPRINT_FORMAT = 1


# Connection options that do not choose the database (and may differ from pod to pod):
# left out of the database's identity.
CONNECTION_ONLY_OPTIONS = (
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "pool",
    "isolation_level",
    "server_side_binding",
    "cursor_factory",
    "prepare_threshold",
    "client_encoding",
    "charset",
    "conv",
)
# Settings the plan always reads; the swappable settings its dependencies name are added.
PLAN_SETTINGS = ("INSTALLED_APPS", "MIGRATION_MODULES")


class Doubt(Exception):
    """Why the fast path cannot prove that nothing is pending. A `lasting` one holds for
    every start of this image and settings (a driver it does not know, say): no record is
    written for it."""

    def __init__(self, why, lasting=False):
        super().__init__(why)
        self.why = why
        self.lasting = lasting


def database_identity(db):
    """The database's address as the settings give it (no credentials)."""
    options = {
        k: v
        for k, v in (db.get("OPTIONS") or {}).items()
        if "pass" not in k.lower() and k not in CONNECTION_ONLY_OPTIONS
    }
    return {
        "ENGINE": db.get("ENGINE") or "",
        "NAME": str(db.get("NAME") or ""),
        "HOST": str(db.get("HOST") or ""),
        "PORT": str(db.get("PORT") or ""),
        "OPTIONS": options,
    }


@functools.lru_cache(maxsize=None)
def file_digest(path):
    """The SHA-256 of a regular file's content, read in chunks; "missing" when there is
    none (a record names paths, and a device or a directory is never one of its files)."""
    import stat

    h = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "missing"
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise Doubt("cannot read %s: %s" % (path, first_line(e))) from e
    return h.hexdigest()


def directory_digest(path):
    """Every file of a migrations package by name and content (what Django's loader lists
    from it, and more); subdirectories, __pycache__ included, are not migrations."""
    h = hashlib.sha256()
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as e:
        raise Doubt("cannot list %s: %s" % (path, first_line(e))) from e
    for entry in entries:
        if entry.is_file():
            h.update(("%s\0%s\n" % (entry.name, file_digest(entry.path))).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def module_state(name):
    """Where the module `name` resolves, found the way the import system finds it but
    without running any module: ["package", directory, its digest] (Django's loader reads
    migrations from it), ["namespace"] or ["module"] (Django treats the app as unmigrated)
    or ["missing"]; then the digests of the parent packages' __init__ files on the way."""
    import importlib.machinery
    import importlib.util

    parts = name.split(".")
    parents = []
    spec = None
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        try:
            if i == 0:
                # A top-level name: the finders are asked (editable installs included);
                # nothing is executed.
                spec = importlib.util.find_spec(full)
            elif spec.submodule_search_locations is None:
                spec = None
            else:
                # A namespace package's path as found, not recomputed from its imported
                # parent (which this process may not have).
                locations = spec.submodule_search_locations
                locations = list(getattr(locations, "_path", locations))
                spec = importlib.machinery.PathFinder.find_spec(full, locations)
        except (ImportError, ValueError, KeyError) as e:
            raise Doubt("cannot resolve %s: %s" % (full, first_line(e))) from e
        if spec is None:
            return ["missing", full] + parents
        if i < len(parts) - 1 and spec.origin:
            parents.append([spec.origin, file_digest(spec.origin)])
    if spec.submodule_search_locations is None:
        return ["module", spec.origin] + parents
    if not spec.origin or not spec.has_location:
        return ["namespace"] + parents
    directory = os.path.realpath(os.path.dirname(spec.origin))
    return ["package", directory, directory_digest(directory)] + parents


def loaded_state(name):
    """What Django's loader saw of the imported module `name`, in module_state's terms."""
    module = sys.modules.get(name)
    if module is None:
        return "missing", None
    if not hasattr(module, "__path__"):
        return "module", None
    if getattr(module, "__file__", None) is None and not isinstance(module.__path__, list):
        return "namespace", None
    directory = os.path.realpath(os.path.dirname(module.__file__))
    if [os.path.realpath(p) for p in module.__path__] != [directory]:
        # Django lists migrations from every entry; the fingerprint covers one directory.
        return "package with more than one directory", None
    return "package", directory


class ModuleSettings:
    """The settings as the settings module and Django's defaults give them, without what
    apps set at start-up (swapper gives a swappable setting such as WAGTAIL_PAGE_MODEL its
    default when the app loads): what the fast path's check, which never starts Django,
    reads. An app's default is covered by the app's own files in the fingerprint."""

    def __init__(self, settings):
        self._settings = settings

    def __getattr__(self, name):
        from django.conf import global_settings

        if self._settings.is_overridden(name):
            return getattr(self._settings, name)
        return getattr(global_settings, name)


def fingerprint_payload(settings, identity, sources):
    """Everything but the database that decides the migration plan, for the settings, the
    database's identity and the sources a record names."""
    import django

    return {
        "format": FINGERPRINT_FORMAT,
        "django": django.__version__,
        "alias": ALIAS,
        "database": identity,
        "settings": {n: getattr(settings, n, None) for n in sorted(set(PLAN_SETTINGS) | set(sources["settings"]))},
        "modules": [[name] + module_state(name) for name in sources["modules"]],
        "files": [[path, file_digest(path)] for path in sources["files"]],
    }


def digest_of(value):
    text = json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(settings, identity, sources):
    """The digest of fingerprint_payload."""
    return digest_of(fingerprint_payload(settings, identity, sources))


def fingerprint_parts(payload):
    """A short digest per part of the payload (each setting, module and file on its own),
    which a record keeps so that a start that finds no record can say what differs."""
    parts = {
        "django %s" % payload["django"]: "",
        "database": digest_of([payload["alias"], payload["database"]])[:12],
    }
    for name, value in payload["settings"].items():
        parts["setting %s" % name] = digest_of(value)[:12]
    for entry in payload["modules"]:
        parts["module %s" % entry[0]] = digest_of(entry)[:12]
    for path, digest in payload["files"]:
        parts["file %s" % path] = digest[:12]
    return parts


def differences(recorded, sources, settings, identity):
    """What differs between a record's parts and this start's, by name ("setting X",
    "file P", "django 5.2", ...); None when the record kept no parts."""
    if not isinstance(recorded, dict):
        return None
    now = fingerprint_parts(fingerprint_payload(settings, identity, sources))
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
