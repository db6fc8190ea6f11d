"""django-migrate: the Django step that django-migrate-webhook injects into opted-in pods.

The webhook's own image writes the step, one zip archive (this package and the
__main__.py that starts it), into an emptyDir (`install-code`); the step runs it with the
app container's image and settings as `python3 step.pyz`. It works in two phases, with one
Django start per pod:

1. Outer (plain Python, no Django): checks that the management command exists (exit 4
   if not), then runs `<manage command> shell -v 0 -c <run the archive>` as a child,
   forwards SIGTERM, and exits with the child's code. A child that dies before Django
   started means the settings could not be loaded: exit 4.
2. Inner (inside `manage.py shell`, Django set up):
   - waits until Django can open a connection for the alias (retries with backoff, one
     log line per attempt, gives up after DJANGO_MIGRATE_WAIT_TIMEOUT; rejected
     credentials fail at once);
   - migrate mode: nothing pending -> exit 0 at once, once this release has had its
     pre_migrate/post_migrate run (the first pod of a release runs `migrate` with nothing
     to apply, under the lock, and records the release); otherwise take the migration lock
     on a connection of its own (PostgreSQL: pg_try_advisory_xact_lock in a transaction
     kept open for the whole migration, so it works the same direct and through a
     transaction pooler; MySQL/MariaDB: GET_LOCK; polled, never a blocking wait), re-check,
     classify the pending operations (unsafe ones are named, and held back under `deny`),
     run `migrate` with a lock timeout on every statement, scoped to the transaction it
     belongs to (retried with backoff while nothing of the migration was applied), end
     the lock's transaction. A heartbeat keeps the lock's connection alive under idle
     limits; a lost lock stops `migrate` before the next migration is applied or
     recorded; `migrate`'s own PostgreSQL session is kept from idling past the server's
     idle_session_timeout between the transactions of a non-atomic migration;
   - wait mode: wait until nothing is pending, never migrate;
   - contract mode (the contract run's Job, once no pod of the previous release is
     left): like migrate mode, and it applies the deferred migrations too;
   - plan mode (the plan Job, before a rollout): reports what migrate mode would do with
     the pending plan, reading in one read-only transaction; writes nothing, takes no
     lock, waits for no pod (exit 5 when the rollout would be held back or blocked).

Expand and contract: in migrate and wait mode a pending migration is deferred when it
is marked django-safemigrate's `Safe.after_deploy()`, named in DJANGO_MIGRATE_DEFER, or
breaks the previous release under `unsafe-migrations: defer`. Migrate mode applies the
rest (exit 5 when one of the rest must run after a deferred one); both modes wait only
for the rest; the summary names the deferred ones for the contract run.

The timeouts bound waiting (for the database, the lock, other pods, lock-timeout
retries); a running migration is never cut by this program.

Exit codes: 0 ok, 1 timed out, 2 migrate failed, 3 credentials rejected,
4 settings or manage command not found, 5 unsafe migration held back, 6 the lock cannot
be held through this connection (a statement pooler) or was lost. A JSON summary
(at most 4 KiB: prose and lists are cut to fit, never the counts) goes to the
termination log, which Kubernetes shows in the pod status and the controller reads.

The modules, by what they own:

- config: the env the webhook sets, the constants, and the names of src/names.rs (env
  vars, phases, results, exit codes); where the step runs from;
- summary: how the step ends (StepEnded, `end`), the log lines, the report and its JSON
  summary with the cut rules;
- runner: the outer and the inner phase, and `main`;
- fast_path, fingerprint, settings_module, record: the fast path (the check without
  Django, its fingerprint and the settings it reads, the record a full run writes);
- database, watchdog, lock, waits: reaching the database, bounding waits, the
  cross-pod lock and its heartbeat, waiting for the lock or for other pods;
- columns, classifier: the classifier (breaking and locking operations, type rules);
- contract: expand and contract (deferred migrations);
- progress, migrate: `migrate` followed statement by statement, and the steps that run
  it; release: the release's pre_migrate/post_migrate run and its record;
- plan, plan_report: plan mode, its report and the report as a table.

The package's name is its own so that it never shadows a module of the app, whose Django
process runs the inner phase.
"""
