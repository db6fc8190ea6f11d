"""The cross-pod migration lock on a connection of its own, and its heartbeat: PostgreSQL's
transaction-level advisory lock (which works the same direct and through a transaction
pooler), MySQL/MariaDB's GET_LOCK; how a connection that cannot hold it is told apart."""

import hashlib
import threading

from .config import ALIAS, EXIT_LOCK, LOCK_TIMEOUT, RESULT_LOCK_UNAVAILABLE
from .database import close_quietly, with_connect_timeout
from .summary import StepEnded, first_line

# How long the lock's connection waits on a network that stopped answering.
DEAD_NETWORK_SECONDS = 30


class LockUnavailable(Exception):
    """The connection cannot hold the lock: a statement pooler, or a pooler that moves a
    transaction between server connections."""


class LockLost(Exception):
    """The lock's connection or transaction ended while this pod held the lock."""


# What poolers answer when a transaction would outlive one statement (PgBouncer in
# statement mode; pgcat and Odyssey say the same in their words).
POOLER_REFUSALS = ("long transactions not allowed", "transaction blocks not allowed", "statement pooling")

# The PostgreSQL limits that would end the lock's transaction, or a migration's, while it
# is idle or long; set to 0 for that transaction only (`transaction_timeout` is 17+).
PG_TRANSACTION_LIMITS = ("idle_in_transaction_session_timeout", "transaction_timeout")


def refused_by_pooler(error):
    text = str(error).lower()
    return any(r in text for r in POOLER_REFUSALS)


def pg_scope_sql(lock_timeout):
    """One statement that scopes the step's settings to the transaction it runs in: the
    lock timeout, and no idle or length limit (the lock must outlive a long migration)."""
    names = ", ".join("'%s'" % n for n in ("lock_timeout",) + PG_TRANSACTION_LIMITS)
    return (
        "SELECT set_config(name, CASE name WHEN 'lock_timeout' THEN '%ds' ELSE '0' END, true) "
        "FROM pg_settings WHERE name IN (%s)" % (int(lock_timeout), names)
    )


# The `wait_timeout` of the step's own MySQL/MariaDB sessions (the lock's, and `migrate`'s
# while it runs): the server must not close them while a migration runs.
MYSQL_WAIT_TIMEOUT = 28800


class Lock:
    """The cross-pod migration lock, on a connection of its own.

    Its key is derived from the name of the database the server reports.

    PostgreSQL: `pg_try_advisory_xact_lock` in a transaction that stays open for the whole
    migration. A transaction pooler (PgBouncer, pgcat, Supavisor, RDS Proxy) keeps one
    server connection for the length of a transaction and nothing beyond it: a
    session-level lock would stay behind on a pooled server connection (and advisory locks
    are re-entrant, so the next client it is handed to "holds" it too), while a
    transaction-level one ends with the transaction, on ROLLBACK or when the pod dies,
    whatever sits in between. The transaction sets no idle limit for itself, so the
    server's idle limits do not end it.

    MySQL/MariaDB: GET_LOCK, which is held by the session (there is no transaction-level
    lock), on a direct connection that the server's `wait_timeout` does not close.

    While held, a heartbeat thread keeps the connection busy (poolers and middleboxes
    close idle connections too) and checks that the lock is still this session's; once it
    is lost, `lost` says why and the migration stops before the next migration."""

    HEARTBEAT_SECONDS = 2.0

    def __init__(self, connections, report):
        self.report = report
        main = connections[ALIAS]
        # Settings of its own: a plain connection (not one of a pool of Django's, which
        # close() would not close) that gives up on a dead network within
        # DEAD_NETWORK_SECONDS instead of TCP's many minutes.
        settings = dict(main.settings_dict)
        options = settings["OPTIONS"] = dict(settings.get("OPTIONS") or {})
        options.pop("pool", None)
        self.wrapper = main.__class__(settings, ALIAS)
        with_connect_timeout(self.wrapper)
        self.vendor = self.wrapper.vendor
        if self.vendor == "postgresql":
            options.setdefault("keepalives", 1)
            options.setdefault("keepalives_idle", 5)
            options.setdefault("keepalives_interval", 5)
            options.setdefault("keepalives_count", 3)
            options.setdefault("tcp_user_timeout", DEAD_NETWORK_SECONDS * 1000)
        elif self.vendor == "mysql":
            options.setdefault("read_timeout", DEAD_NETWORK_SECONDS)
            options.setdefault("write_timeout", DEAD_NETWORK_SECONDS)
        name = str(self.wrapper.settings_dict.get("NAME") or "")
        digest = hashlib.sha256(("django-migrate:" + name).encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        # MySQL lock names are server-wide (so they carry the database name) and at most
        # 64 characters long.
        self.name = "django-migrate:" + name
        if len(self.name) > 64:
            self.name = "django-migrate:" + digest.hex()[:40]
        self.mutex = threading.Lock()  # one statement at a time on the connection
        self.backend = None  # the server session that holds the lock
        self.lost = None
        self.stopped = threading.Event()
        self.heartbeat = None
        self.began = False
        self.closed_in_transaction = 0
        self.identified = False

    @property
    def supported(self):
        return self.vendor in ("postgresql", "mysql")

    def _execute(self, sql, params=None):
        """Runs one statement on the raw connection and returns its first row; driver
        errors come as Django's."""
        self.wrapper.ensure_connection()
        with self.wrapper.wrap_database_errors:
            cursor = self.wrapper.connection.cursor()
            try:
                cursor.execute(sql, params)
                return cursor.fetchone() if cursor.description else None
            finally:
                cursor.close()

    # A pooler in statement mode that drops the connection without saying why (some
    # drivers lose its message) does so every time a transaction is opened on it.
    CLOSED_IN_TRANSACTION_LIMIT = 3

    def try_acquire(self):
        """True once this pod holds the lock; False while another pod does. Raises
        LockUnavailable when the connection cannot hold it."""
        with self.mutex:
            self.began = False
            try:
                held = self._try_acquire()
            except Exception as e:
                if refused_by_pooler(e):
                    raise LockUnavailable(first_line(e)) from e
                raw = self.wrapper.connection
                if self.began and (raw is None or getattr(raw, "closed", False)):
                    self.closed_in_transaction += 1
                    if self.closed_in_transaction >= self.CLOSED_IN_TRANSACTION_LIMIT:
                        raise LockUnavailable(
                            "the connection was closed each time a transaction was opened on it (%d times in a "
                            "row, last: %s), while other connections work: a pooler that allows no transactions "
                            "(statement mode)?" % (self.closed_in_transaction, first_line(e))
                        ) from e
                raise
            self.closed_in_transaction = 0
        if held:
            self.heartbeat = threading.Thread(target=self._beat, name="django-migrate-lock", daemon=True)
            self.heartbeat.start()
        return held

    def _identify(self):
        """Names the lock after the database the server says this connection reached, so
        that pods reaching it under other names (a pooler's alias, say) share one lock.
        The same key as one derived from a NAME equal to the database's name."""
        if self.identified:
            return
        if self.vendor == "postgresql":
            key = self._execute(
                "SELECT ('x' || substr(encode(sha256(convert_to('django-migrate:' || current_database(), "
                "'UTF8')), 'hex'), 1, 16))::bit(64)::bigint"
            )[0]
            self.key = int(key)
        else:
            name = self._execute(
                "SELECT IF(CHAR_LENGTH(CONCAT('django-migrate:', DATABASE())) <= 64, "
                "CONCAT('django-migrate:', DATABASE()), "
                "CONCAT('django-migrate:', LEFT(SHA2(CONCAT('django-migrate:', DATABASE()), 256), 40)))"
            )[0]
            if name:
                self.name = name
        self.identified = True

    def _try_acquire(self):
        self._identify()
        if self.vendor == "postgresql":
            self.wrapper.ensure_connection()
            self.began = True
            self._execute("BEGIN")
            got = self._execute("SELECT pg_try_advisory_xact_lock(%s), pg_backend_pid()", [self.key])
            if not got[0]:
                self._execute("ROLLBACK")
                return False
            self._execute(pg_scope_sql(LOCK_TIMEOUT))
            # The lock is granted; it is only ours if the next statement of the same
            # transaction runs on the same server session and sees it there.
            high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
            seen = self._execute(
                "SELECT pg_backend_pid(), count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
                [high, low],
            )
            if seen[0] != got[1] or seen[1] != 1:
                self._execute("ROLLBACK")
                raise LockUnavailable(
                    "the lock was granted on one server connection and the next statement of its "
                    "transaction ran on another: the pooler does not keep a transaction on one connection"
                )
            self.backend = got[1]
            return True
        # A session of our own: its idle limit must not close it while a migration runs.
        self._execute("SET SESSION wait_timeout = %d" % MYSQL_WAIT_TIMEOUT)
        got = self._execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()", [self.name])
        if not got[0]:
            return False
        if self._execute("SELECT IS_USED_LOCK(%s)", [self.name])[0] != got[1]:
            raise LockUnavailable("the lock was granted to one session and the next statement ran on another")
        self.backend = got[1]
        return True

    def verify(self):
        """True while this session still holds the lock; on any doubt records why not."""
        if self.lost is None:
            try:
                with self.mutex:
                    if self.vendor == "postgresql":
                        # The transaction is open on the session that took the lock: the
                        # lock lasts as long as that transaction.
                        same = self._execute("SELECT pg_backend_pid()")[0] == self.backend
                    else:
                        same = self._execute("SELECT IS_USED_LOCK(%s)", [self.name])[0] == self.backend
                if not same:
                    self.lost = "the lock's server session changed"
            except Exception as e:  # noqa: BLE001 - any failure means the lock is gone
                self.lost = "its connection failed: %s" % first_line(e)
        return self.lost is None

    def _beat(self):
        while not self.stopped.wait(self.HEARTBEAT_SECONDS):
            if not self.verify():
                self.report.log("lost the migration lock: %s" % self.lost)
                return

    def release(self):
        """Ends the lock's transaction (or releases the named lock), so the next pod does
        not wait for this connection to close; a lock already lost needs nothing."""
        self.stopped.set()
        if self.heartbeat is not None:
            self.heartbeat.join(DEAD_NETWORK_SECONDS + 5)
        try:
            if self.backend is not None and self.lost is None:
                with self.mutex:
                    if self.vendor == "postgresql":
                        self._execute("ROLLBACK")
                    else:
                        self._execute("SELECT RELEASE_LOCK(%s)", [self.name])
        except Exception as e:  # noqa: BLE001 - the lock ends with the connection below
            self.report.log("releasing the migration lock: %s; closing its connection ends it" % first_line(e))
        finally:
            self.backend = None
            self.wrapper.close()

    def abandon(self):
        """Closes the connection while the lock is not held: between polls a waiting pod
        keeps none."""
        close_quietly(self.wrapper)


def lock_unavailable(why):
    return StepEnded(
        EXIT_LOCK,
        RESULT_LOCK_UNAVAILABLE,
        "cannot hold the migration lock through database %r: %s; nothing was applied; a pooler in "
        "statement mode cannot keep a transaction open: set django-migrate.io/database to an alias that "
        "connects directly or through a pooler in session or transaction mode" % (ALIAS, why),
    )
