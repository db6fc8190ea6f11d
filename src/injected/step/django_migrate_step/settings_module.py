"""The settings as `manage.py` would load them, without starting Django: the manage.py
whitelist (a manage.py of Django's template shape, and nothing else, tells which settings
module it loads), the interpreter the manage command runs, and the settings module a
wrapper command (nautobot-server, sentry django) names in DJANGO_MIGRATE_SETTINGS_MODULE."""

import os
import shutil
import sys

from .config import ENVIRON, MANAGE_COMMAND, SETTINGS_MODULE
from .fingerprint import Doubt
from .summary import first_line

# What a manage.py of Django's template imports and calls, and nothing else.
MANAGE_PY_IMPORTS = ("os", "sys", "django", "django.core.management")
MANAGE_PY_CALLS = ("execute_from_command_line", "main", "ImportError")


def dotted(node):
    """`a.b.c` of a Name/Attribute chain, or None."""
    import ast

    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def standard_manage_py(path):
    """The DJANGO_SETTINGS_MODULE default of a manage.py of Django's template shape (or
    None when it sets none); a Doubt for any other manage.py: one that loads a .env file
    or changes sys.path may change what the settings read, and only running it tells."""
    import ast

    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError) as e:
        raise Doubt("cannot read %s: %s" % (path, first_line(e)), lasting=True) from e
    allowed = (ast.Import, ast.ImportFrom, ast.Expr, ast.FunctionDef, ast.If, ast.Try, ast.Raise, ast.Pass, ast.Return)
    defaults = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, ast.stmt) and not isinstance(node, allowed):
            what = "a %s statement" % node.__class__.__name__
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(a.asname for a in node.names):
            what = "an import under another name"
        elif isinstance(node, ast.Import) and any(a.name not in MANAGE_PY_IMPORTS for a in node.names):
            what = "import %s" % ", ".join(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module not in MANAGE_PY_IMPORTS:
            what = "from %s import" % node.module
        elif isinstance(node, ast.If) and not (
            isinstance(node.test, ast.Compare)
            and dotted(node.test.left) == "__name__"
            and [type(o) for o in node.test.ops] == [ast.Eq]
            and [getattr(c, "value", None) for c in node.test.comparators] == ["__main__"]
        ):
            what = 'a condition other than __name__ == "__main__"'
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if name == "os.environ.setdefault" and len(args) == 2 and args[0] == "DJANGO_SETTINGS_MODULE":
                if not isinstance(args[1], str) or defaults:
                    what = "a DJANGO_SETTINGS_MODULE that is not one string literal"
                defaults.append(args[1])
            elif name not in MANAGE_PY_CALLS:
                what = "a call of %s" % (name or "an expression")
        if what is not None:
            raise Doubt(
                "%s does more than Django's manage.py template (%s, line %d)"
                % (path, what, getattr(node, "lineno", 0)),
                lasting=True,
            )
    return defaults[0] if defaults else None


def manage_script():
    """The manage.py that the manage command runs with this very interpreter, or a Doubt:
    another interpreter has another sys.path, and another command other settings."""
    if len(MANAGE_COMMAND) != 2 or not MANAGE_COMMAND[1].endswith(".py"):
        raise Doubt(
            "the manage command %r is not `python manage.py`: name the settings module it loads "
            "(django-migrate.io/settings-module) for the fast path" % " ".join(MANAGE_COMMAND),
            lasting=True,
        )
    python = shutil.which(MANAGE_COMMAND[0])
    if python is None or os.path.abspath(python) != os.path.abspath(sys.executable):
        raise Doubt(
            "the manage command runs %s, not this interpreter (%s)" % (python or MANAGE_COMMAND[0], sys.executable),
            lasting=True,
        )
    return os.path.abspath(MANAGE_COMMAND[1])


def wrapper_interpreter():
    """The manage command's program when it runs this very interpreter: Python itself
    (`python -m package`), or a script whose #! line names it (a console script such as
    `nautobot-server`); a Doubt otherwise."""
    program = shutil.which(MANAGE_COMMAND[0])
    if program is None:
        raise Doubt("%s is not on PATH" % MANAGE_COMMAND[0], lasting=True)
    me = os.path.realpath(sys.executable)
    if os.path.realpath(program) == me:
        return None
    try:
        with open(program, "rb") as f:
            first = f.readline(512)
    except OSError as e:
        raise Doubt("cannot read %s: %s" % (program, first_line(e)), lasting=True) from e
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    if len(words) == 2 and os.path.basename(words[0]) == "env":
        words = [shutil.which(words[1]) or words[1]]
    if len(words) != 1 or os.path.realpath(words[0]) != me:
        raise Doubt(
            "the manage command %s does not run this interpreter (%s)" % (program, sys.executable), lasting=True
        )
    return program


def declared_settings():
    """The settings of a wrapper command, from the module DJANGO_MIGRATE_SETTINGS_MODULE
    names (dotted, or a .py file loaded under its own name, as Nautobot loads its
    configuration), on the sys.path the command starts with. The step checks after a
    full run that the command loaded that very module before it writes a record."""
    program = wrapper_interpreter()
    if not getattr(sys.flags, "safe_path", False):
        if program is not None:
            sys.path[0] = os.path.dirname(os.path.realpath(program))
        elif MANAGE_COMMAND[1:2] == ["-m"]:
            sys.path[0] = os.getcwd()
        elif len(MANAGE_COMMAND) > 1 and MANAGE_COMMAND[1].endswith(".py"):
            sys.path[0] = os.path.dirname(os.path.realpath(MANAGE_COMMAND[1]))
    if not SETTINGS_MODULE.endswith(".py"):
        return settings_of(SETTINGS_MODULE, SETTINGS_MODULE)
    path = os.path.realpath(SETTINGS_MODULE)
    name = os.path.splitext(os.path.basename(path))[0]

    def load():
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)

    return settings_of(name, SETTINGS_MODULE, load)


def settings_of(name, shown, load=None):
    """django.conf.Settings of the module `name` (imported first by `load` when given),
    or a Doubt that names `shown`."""
    try:
        if load is not None:
            load()
        from django.conf import Settings

        return Settings(name)
    except Exception as e:  # noqa: BLE001 - whatever the settings module raises
        raise Doubt(
            "cannot load the settings module %s without starting Django: %s: %s"
            % (shown, e.__class__.__name__, first_line(e))
        ) from e


def settings_loaded_as_declared(settings):
    """After a full run under a wrapper command: None when it loaded the settings module
    that DJANGO_MIGRATE_SETTINGS_MODULE names, else what it loaded instead."""
    loaded = getattr(settings, "SETTINGS_MODULE", None) or "none"
    if SETTINGS_MODULE.endswith(".py"):
        path = getattr(sys.modules.get(loaded), "__file__", None)
        if path and os.path.realpath(path) == os.path.realpath(SETTINGS_MODULE):
            return None
        return "%s (%s)" % (loaded, path or "no file")
    return None if loaded == SETTINGS_MODULE else loaded


def plan_settings():
    """The settings as manage.py would load them, without starting Django: the module over
    Django's defaults (django.conf.Settings), on the sys.path of `python manage.py`; for
    a wrapper command, the module DJANGO_MIGRATE_SETTINGS_MODULE names."""
    if SETTINGS_MODULE:
        return declared_settings()
    script = manage_script()
    default = standard_manage_py(script)
    module = ENVIRON["DJANGO_SETTINGS_MODULE"] if "DJANGO_SETTINGS_MODULE" in ENVIRON else default
    if not module:
        raise Doubt("DJANGO_SETTINGS_MODULE is not set and %s sets no default" % script, lasting=True)
    # `python manage.py` puts the script's directory first on sys.path, symbolic links
    # resolved, where this program's directory is now (neither is there under
    # PYTHONSAFEPATH).
    if not getattr(sys.flags, "safe_path", False):
        sys.path[0] = os.path.dirname(os.path.realpath(script))
    return settings_of(module, module)
