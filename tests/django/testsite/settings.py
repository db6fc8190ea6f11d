"""Settings of the test project: the database comes from the environment, as in a pod.

DB_ENGINE is sqlite (default), postgresql or mysql; DB_NAME, DB_HOST, DB_PORT, DB_USER
and DB_PASSWORD describe the server. For SQLite, DB_NAME is the file path. For MySQL,
DB_INIT_COMMAND runs on every new connection.
"""

import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["catalog", "orders"]
ROOT_URLCONF = "testsite.urls"
# The release of the ledger app's code: "1" or "2".
LEDGER_RELEASE = os.environ.get("LEDGER_RELEASE", "2")
if os.environ.get("BROKEN_MIGRATION") == "1":
    # An app whose only migration raises.
    INSTALLED_APPS.append("broken")
if os.environ.get("UNSAFE_APP") == "1":
    # Migrations that drop a column, forget one in the state only, and add a nullable one.
    INSTALLED_APPS.append("inventory")
if os.environ.get("TWO_STEP_APP") == "1":
    # A migration of two statements on two tables.
    INSTALLED_APPS.append("twostep")
if os.environ.get("LEDGER_APP") == "1":
    # Expand and contract: release 1 (LEDGER_RELEASE=1) reads a column that release 2
    # drops; LEDGER_MIGRATIONS picks a variant of release 2's migrations (marked: the drop
    # marked Safe.after_deploy() with a delay; blocked: a migration after that one; safe:
    # migrations marked before_deploy and always; dependent: the drop unmarked and a
    # migration after it).
    INSTALLED_APPS.append("ledger")
    if LEDGER_RELEASE == "1":
        MIGRATION_MODULES = {"ledger": "ledger.migrations_release1"}
    elif os.environ.get("LEDGER_MIGRATIONS"):
        MIGRATION_MODULES = {"ledger": "ledger.migrations_" + os.environ["LEDGER_MIGRATIONS"]}
if os.environ.get("UPKEEP_APP") == "1":
    # An app that writes a row from its post_migrate receiver.
    INSTALLED_APPS.append("upkeep")
if os.environ.get("GADGETS_APP") == "1":
    # A swappable model whose setting swapper defaults when the app loads.
    INSTALLED_APPS.append("gadgets")
if os.environ.get("HALFWAY_APP") == "1":
    # A migration that creates a table, then fails.
    INSTALLED_APPS.append("halfway")
if os.environ.get("THROTTLED_APP") == "1":
    # A non-atomic backfill that pauses between batches.
    INSTALLED_APPS.append("throttled")
if os.environ.get("SHIPPING_APP") == "1":
    # A big table one release behind: an index build, a data migration, a column made
    # non-nullable and one dropped (the plan's tests fill it with 200,000 rows).
    INSTALLED_APPS.append("shipping")
if os.environ.get("CORPUS_CASE"):
    # One case of the classifier's corpus: a previous release and the migration it ships.
    INSTALLED_APPS.append("corpus")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_engine = os.environ.get("DB_ENGINE", "sqlite")
if _engine == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DB_NAME", "db.sqlite3"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends." + _engine,
            "NAME": os.environ["DB_NAME"],
            "HOST": os.environ.get("DB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DB_PORT", ""),
            "USER": os.environ.get("DB_USER", ""),
            "PASSWORD": os.environ.get("DB_PASSWORD", ""),
        }
    }
    if _engine == "mysql" and os.environ.get("DB_INIT_COMMAND"):
        # Session settings the server or a proxy gives this app's connections (a short
        # wait_timeout, say).
        DATABASES["default"]["OPTIONS"] = {"init_command": os.environ["DB_INIT_COMMAND"]}
