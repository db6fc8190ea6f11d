#!/bin/sh
# Plays an image ENTRYPOINT wrapper that sets up the environment (as images that load
# secrets do), then runs its arguments.
set -e
export DB_NAME="$WRAPPED_DB_NAME"
exec "$@"
