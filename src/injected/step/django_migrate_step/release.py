"""The release's pre_migrate/post_migrate run and its record.

`migrate` sends pre_migrate and post_migrate on every run, also with nothing to apply,
and apps keep their rows up to date from them (permissions and content types, Nautobot's
Jobs, a default site). The step gives every release that run once, under the migration
lock (Django's create_permissions is not safe to run twice at once). A release is the
pod template a pod was made from: the label in which the pod's controller names it
(pod-template-hash for a Deployment, controller-revision-hash for a StatefulSet,
rollouts-pod-template-hash for an Argo Rollout, the Job's UID for a Job's pods), which
the webhook passes to the step through the downward API (DJANGO_MIGRATE_RELEASE). A new
image, new settings or a `rollout restart` make a new release; more pods and restarts of
the same one do not. Which releases had their run is recorded in RELEASE_TABLE, which the
fast path reads; a pod without the label runs it on every start."""

import hashlib
import time

from .config import MODE, MODE_MIGRATE, POST_MIGRATE, RELEASE
from .summary import first_line

RELEASE_TABLE = "django_migrate_release"
# Releases kept beside the newest (a rollback to one of them needs no new run).
RELEASES_KEPT = 50


def release_key():
    """What RELEASE_TABLE stores for this release (a label value fits; anything longer is
    hashed)."""
    return RELEASE if len(RELEASE) <= 64 else hashlib.sha256(RELEASE.encode()).hexdigest()


def post_migrate_wanted():
    """Whether this mode and the settings give a release its pre_migrate/post_migrate run
    when nothing is pending (wait mode never migrates; the contract run always migrates)."""
    return MODE == MODE_MIGRATE and POST_MIGRATE == "true"


def release_done(connection):
    """Whether this release already had its pre_migrate/post_migrate run."""
    with connection.cursor() as cursor:
        if RELEASE_TABLE not in connection.introspection.table_names(cursor):
            return False
        cursor.execute("SELECT release_hash FROM %s WHERE release_hash = %%s" % RELEASE_TABLE, [release_key()])
        return cursor.fetchone() is not None


def record_release(connection, report):
    """Records, under the lock, that this release had its run (`migrate` sent the signals
    and they succeeded), and keeps the RELEASES_KEPT newest. A record that cannot be
    written only makes the next pod run them again."""
    from django.db.utils import Error as DatabaseError

    report.post_migrate = {"ran": True, "release": RELEASE or None}
    if not RELEASE:
        return
    try:
        with connection.cursor() as cursor:
            if RELEASE_TABLE not in connection.introspection.table_names(cursor):
                cursor.execute(
                    "CREATE TABLE IF NOT EXISTS %s (release_hash varchar(64) NOT NULL PRIMARY KEY, "
                    "recorded_at varchar(32) NOT NULL)" % RELEASE_TABLE
                )
            cursor.execute("DELETE FROM %s WHERE release_hash = %%s" % RELEASE_TABLE, [release_key()])
            cursor.execute(
                "INSERT INTO %s (release_hash, recorded_at) VALUES (%%s, %%s)" % RELEASE_TABLE,
                [release_key(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())],
            )
            cursor.execute("SELECT release_hash FROM %s ORDER BY recorded_at DESC" % RELEASE_TABLE)
            old = [r[0] for r in cursor.fetchall()[RELEASES_KEPT:]]
            if old:
                cursor.execute(
                    "DELETE FROM %s WHERE release_hash IN (%s)" % (RELEASE_TABLE, ", ".join(["%s"] * len(old))), old
                )
    except DatabaseError as e:
        report.log("post_migrate: release %s not recorded (%s); the next pod runs it again" % (RELEASE, first_line(e)))


def post_migrate_due(connection, report):
    """Migrate mode with nothing pending: whether this release still needs its run."""
    if MODE != MODE_MIGRATE:
        return False
    if POST_MIGRATE != "true":
        report.post_migrate = {"ran": False, "release": RELEASE or None, "why": "off (post-migrate: false)"}
        return False
    if RELEASE and release_done(connection):
        report.post_migrate = {"ran": False, "release": RELEASE, "why": "ran for this release already"}
        return False
    return True
