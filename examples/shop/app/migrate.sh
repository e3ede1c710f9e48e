#!/bin/sh
# The release command: runs once per release before any instance is replaced. Set
# MIGRATE_EXIT in the manifest's [env] to make it fail (the deploy then stops, the previous
# release keeps serving).
echo "migrate: release $SCALEBOX_RELEASE"
if [ -n "$MIGRATE_EXIT" ] && [ "$MIGRATE_EXIT" != 0 ]; then
  echo "migrate: failing on purpose with exit code $MIGRATE_EXIT" >&2
  exit "$MIGRATE_EXIT"
fi
echo "migrate: done"
