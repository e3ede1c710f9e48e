//! cargo-fuzz target: arbitrary bytes through the ClientHello/SNI parser and its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    scalebox_edge::hello::check_invariants(data);
});
