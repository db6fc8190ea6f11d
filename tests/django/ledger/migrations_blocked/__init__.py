"""Release 2 with a migration that depends on a deferred one (LEDGER_MIGRATIONS=blocked):
0003 cannot run before the contract run."""
