#!/bin/sh
# A background worker: logs a line every few seconds until stopped.
trap 'echo "worker: stopping"; exit 0' TERM
n=0
while true; do
  n=$((n + 1))
  echo "worker: tick $n (release $SCALEBOX_RELEASE)"
  sleep 3 &
  wait $!
done
