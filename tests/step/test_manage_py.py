"""The fast path's manage.py whitelist: a manage.py of Django's template shape tells the
settings module it loads (its DJANGO_SETTINGS_MODULE default); any other manage.py may
change what the settings read, so only running it tells (a lasting doubt). And the manage
command must run the step's own interpreter."""

import pathlib
import sys

import django
import pytest
from django_migrate_step import settings_module
from django_migrate_step.fingerprint import Doubt
from django_migrate_step.settings_module import standard_manage_py


def django_template(project="mysite"):
    """The manage.py `django-admin startproject` writes, from this Django's own template."""
    template = pathlib.Path(django.__file__).parent / "conf" / "project_template" / "manage.py-tpl"
    return template.read_text().replace("{{ project_name }}", project)


def write(tmp_path, text):
    path = tmp_path / "manage.py"
    path.write_text(text)
    return str(path)


def doubt_of(path):
    with pytest.raises(Doubt) as raised:
        standard_manage_py(path)
    return raised.value


def test_djangos_template_gives_its_settings_module(tmp_path):
    assert standard_manage_py(write(tmp_path, django_template("shop"))) == "shop.settings"


def test_a_template_without_a_default_gives_none(tmp_path):
    text = django_template().replace("    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n", "")
    assert "setdefault" not in text
    assert standard_manage_py(write(tmp_path, text)) is None


def test_the_older_template_shape_with_if_main_only(tmp_path):
    text = (
        "#!/usr/bin/env python\n"
        "import os\n"
        "import sys\n\n"
        'if __name__ == "__main__":\n'
        '    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "legacy.settings")\n'
        "    from django.core.management import execute_from_command_line\n\n"
        "    execute_from_command_line(sys.argv)\n"
    )
    assert standard_manage_py(write(tmp_path, text)) == "legacy.settings"


@pytest.mark.parametrize(
    "change, said",
    [
        (("import sys\n", "import sys\nimport dotenv\n"), "import dotenv"),
        (("import sys\n", "import sys\nfrom dotenv import load_dotenv\n"), "from dotenv import"),
        (("import os\n", "import os as system\n"), "an import under another name"),
        (("def main():\n", "sys.path.insert(0, 'src')\n\n\ndef main():\n"), "a call of sys.path.insert"),
        (("def main():\n", "os.environ['DEBUG'] = '1'\n\n\ndef main():\n"), "a Assign statement"),
        (("if __name__ == '__main__':", "if sys.argv:"), 'a condition other than __name__ == "__main__"'),
        (("'mysite.settings'", "'mysite.' + 'settings'"), "not one string literal"),
        (
            ("    try:\n", "    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'other.settings')\n    try:\n"),
            "not one string literal",
        ),
    ],
)
def test_anything_more_than_the_template_is_a_lasting_doubt(tmp_path, change, said):
    text = django_template()
    assert change[0] in text
    path = write(tmp_path, text.replace(change[0], change[1], 1))
    doubt = doubt_of(path)
    assert doubt.lasting
    assert "does more than Django's manage.py template" in doubt.why
    assert said in doubt.why


def test_a_manage_py_that_cannot_be_read_is_a_lasting_doubt(tmp_path):
    doubt = doubt_of(str(tmp_path / "missing.py"))
    assert doubt.lasting and "cannot read" in doubt.why
    doubt = doubt_of(write(tmp_path, "def main(:\n"))
    assert doubt.lasting and "cannot read" in doubt.why


def test_the_manage_command_must_be_python_manage_py_on_this_interpreter(monkeypatch, tmp_path):
    script = write(tmp_path, django_template())
    monkeypatch.setattr(settings_module, "MANAGE_COMMAND", [sys.executable, script])
    assert settings_module.manage_script() == script
    for command in (["django-admin"], [sys.executable, script, "lms"], [sys.executable, "-m", "shop"]):
        monkeypatch.setattr(settings_module, "MANAGE_COMMAND", command)
        doubt = pytest.raises(Doubt, settings_module.manage_script).value
        assert doubt.lasting and "is not `python manage.py`" in doubt.why
    other = tmp_path / "python3"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setattr(settings_module, "MANAGE_COMMAND", [str(other), script])
    doubt = pytest.raises(Doubt, settings_module.manage_script).value
    assert doubt.lasting and "not this interpreter" in doubt.why
