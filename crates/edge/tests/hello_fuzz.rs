//! libFuzzer-free fuzz harness for the ClientHello parser: mutates valid ClientHellos (bit
//! flips, byte sets, truncation, insertion, deletion, length-field edits, record re-splitting)
//! with a seeded PRNG and checks the parser's invariants on each. Bounded by EDGE_FUZZ_ITERS
//! (default 30000) and EDGE_FUZZ_SECS (default 20). `crates/edge/fuzz/run.sh` runs it longer.

use std::time::{Duration, Instant};

use scalebox_edge::hello::{build_client_hello, check_invariants};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        build_client_hello(Some("example.com"), 0, 16384),
        build_client_hello(Some("a.b.c.d.example.org"), 1200, 500),
        build_client_hello(None, 40, 16384),
        build_client_hello(Some("pq.example"), 9000, 1400),
        build_client_hello(Some("x"), 0, 7),
    ]
}

fn mutate(rng: &mut Rng, mut d: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        let len = d.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => d.truncate(rng.below(len + 1)),
            3 => {
                let i = rng.below(len + 1);
                let n = rng.below(32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let j = (i + rng.below(32)).min(len);
                d.drain(i..j);
            }
            5 if len > 2 => {
                // Rewrite a 16-bit big-endian field somewhere (lengths live everywhere).
                let i = rng.below(len - 1);
                let v = [0u16, 1, 0xffff, 0x4000, 0x4001, rng.next() as u16][rng.below(6)];
                d[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            6 => d.extend((0..rng.below(20000)).map(|_| rng.next() as u8)),
            _ => {}
        }
    }
    d
}

#[test]
fn fuzz_client_hello_parser_bounded() {
    let iters = env("EDGE_FUZZ_ITERS", 30_000);
    let limit = Duration::from_secs(env("EDGE_FUZZ_SECS", 20));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ env("EDGE_FUZZ_SEED", 1));
    let seeds = seeds();
    let start = Instant::now();
    let mut n = 0u64;
    while n < iters && start.elapsed() < limit {
        let base = seeds[rng.below(seeds.len())].clone();
        check_invariants(&mutate(&mut rng, base));
        // Pure random bytes too, biased to start like a handshake record.
        let mut r: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
        if !r.is_empty() && rng.below(2) == 0 {
            r[0] = 0x16;
        }
        check_invariants(&r);
        n += 1;
    }
    println!("fuzzed {} inputs in {:?}", n * 2, start.elapsed());
    assert!(n > 0);
}
