"""Release 2 with the drop unmarked (deferred only under unsafe-migrations: defer) and a
migration that depends on it; no django-safemigrate import, so images without the package
run it."""
