#!/usr/bin/env bash
# Fuzzes the ClientHello/SNI parser for a bounded time (default 60 s: FUZZ_SECS=N to change).
# Uses cargo fuzz (libFuzzer, needs a nightly toolchain and `cargo install cargo-fuzz`) when
# available; otherwise runs the libFuzzer-free harness (tests/hello_fuzz.rs), which mutates
# valid ClientHellos with a seeded PRNG for the same time budget.
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECS:-60}"
if rustup run nightly rustc --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
    mkdir -p corpus/client_hello
    exec cargo +nightly fuzz run client_hello corpus/client_hello -- \
        -max_total_time="$secs" -max_len=20000 -rss_limit_mb=1024
fi
echo "cargo fuzz or nightly unavailable: running the libFuzzer-free harness for ${secs}s" >&2
cd ..
EDGE_FUZZ_SECS="$secs" EDGE_FUZZ_ITERS="${FUZZ_ITERS:-100000000}" \
    exec cargo test -p scalebox-edge --release --test hello_fuzz -- --nocapture
