//! Property tests of the content hash: the same manifest written with keys, tables and routes in
//! any order, with defaults spelled out or omitted, hashes the same; a changed value changes it.

use std::collections::BTreeMap;

use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Proc {
    ports: Vec<u16>,
    scale: u32,
    cpu: Option<f64>,
    memory_mb: Option<u32>,
    health: bool,
    tcp_route_port: Option<u16>,
}

#[derive(Debug, Clone)]
struct Spec {
    env: BTreeMap<String, String>,
    as_env: bool,
    procs: BTreeMap<String, Proc>,
}

fn proc_strategy() -> impl Strategy<Value = Proc> {
    (
        proptest::sample::subsequence(vec![80u16, 443, 8080, 9000], 0..=3),
        0u32..4,
        proptest::option::of(prop_oneof![Just(0.25), Just(1.0), Just(2.0), Just(8.5)]),
        proptest::option::of(64u32..4096),
        any::<bool>(),
        proptest::option::of(1000u16..1100),
    )
        .prop_map(|(ports, scale, cpu, memory_mb, health, tcp)| Proc {
            health: health && !ports.is_empty(),
            tcp_route_port: tcp.filter(|_| !ports.is_empty()),
            ports,
            scale,
            cpu,
            memory_mb,
        })
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        proptest::collection::btree_map("[A-Z][A-Z0-9_]{0,6}", "[a-z0-9 ]{0,8}", 0..4),
        any::<bool>(),
        proptest::collection::btree_map(
            prop_oneof![Just("web"), Just("worker"), Just("redis"), Just("api-2")]
                .prop_map(String::from),
            proc_strategy(),
            1..4,
        ),
    )
        .prop_map(|(env, as_env, mut procs)| {
            // tcp listener ports must be unique across routes
            let mut used = std::collections::BTreeSet::new();
            for p in procs.values_mut() {
                if let Some(port) = p.tcp_route_port
                    && !used.insert(port)
                {
                    p.tcp_route_port = None;
                }
            }
            Spec { env, as_env, procs }
        })
}

/// Tiny deterministic RNG for shuffling and for choosing whether to spell out defaults.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Renders `spec` as TOML; `seed` = 0 gives a fixed order with defaults omitted, any other seed
/// shuffles tables and keys and spells out a random subset of defaults.
fn render(spec: &Spec, seed: u64) -> String {
    let mut rng = Rng(seed.max(1));
    let vary = seed != 0;
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    let env: Vec<String> = spec
        .env
        .iter()
        .map(|(k, v)| format!("{k} = {v:?}"))
        .collect();
    tables.push(("[env]".into(), env));
    let mut secrets = Vec::new();
    if spec.as_env || (vary && rng.coin()) {
        secrets.push(format!("as_env = {}", spec.as_env));
    }
    if vary && rng.coin() {
        secrets.push("path = \"/run/secrets/scalebox.env\"".into());
    }
    tables.push(("[secrets]".into(), secrets));
    for (name, p) in &spec.procs {
        let mut keys = Vec::new();
        let mut ports = p.ports.clone();
        if vary {
            rng.shuffle(&mut ports);
        }
        if !ports.is_empty() || (vary && rng.coin()) {
            keys.push(format!("ports = {ports:?}"));
        }
        if p.scale != 1 || (vary && rng.coin()) {
            keys.push(format!("scale = {}", p.scale));
        }
        if vary && rng.coin() {
            keys.push("stop_grace_s = 10".into());
        }
        let mut res = Vec::new();
        match p.cpu {
            Some(c) => res.push(format!("cpu = {c:?}")),
            None if vary && rng.coin() => res.push("cpu = 1".into()),
            None => {}
        }
        match p.memory_mb {
            Some(m) => res.push(format!("memory_mb = {m}")),
            None if vary && rng.coin() => res.push("memory_mb = 256".into()),
            None => {}
        }
        if vary {
            rng.shuffle(&mut res);
        }
        if !res.is_empty() {
            keys.push(format!("resources = {{ {} }}", res.join(", ")));
        }
        tables.push((format!("[processes.{name}]"), keys));
        if p.health {
            let mut h = vec![
                "kind = \"http\"".to_owned(),
                format!("port = {}", p.ports[0]),
            ];
            for d in [
                "path = \"/\"",
                "interval_s = 5",
                "timeout_s = 2",
                "grace_s = 10",
                "healthy_threshold = 1",
            ] {
                if vary && rng.coin() {
                    h.push(d.into());
                }
            }
            tables.push((format!("[processes.{name}.health]"), h));
        }
        if let Some(port) = p.tcp_route_port {
            let mut r = vec![
                format!("process = {name:?}"),
                "kind = \"tcp\"".into(),
                format!("port = {port}"),
                format!("backend_port = {}", p.ports[0]),
            ];
            for d in ["ipv4 = false", "proxy_protocol = \"off\""] {
                if vary && rng.coin() {
                    r.push(d.into());
                }
            }
            tables.push(("[[routes]]".into(), r));
        }
    }
    if vary {
        rng.shuffle(&mut tables);
    }
    let mut out = String::from("schema_version = 1\n");
    for (header, mut keys) in tables {
        if vary {
            rng.shuffle(&mut keys);
        }
        out.push_str(&format!("\n{header}\n"));
        for k in keys {
            out.push_str(&k);
            out.push('\n');
        }
    }
    out
}

fn hash(text: &str) -> String {
    scalebox_manifest::parse(text)
        .unwrap_or_else(|e| panic!("{e}\n--- input ---\n{text}"))
        .content_hash()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn shuffled_keys_and_explicit_defaults_keep_the_hash(spec in spec_strategy(), seed in 1u64..u64::MAX) {
        let canonical = hash(&render(&spec, 0));
        let shuffled_text = render(&spec, seed);
        prop_assert_eq!(hash(&shuffled_text), canonical, "{}", shuffled_text);
    }

    #[test]
    fn changing_a_scale_changes_the_hash(spec in spec_strategy(), seed in 1u64..u64::MAX) {
        let before = hash(&render(&spec, seed));
        let mut changed = spec.clone();
        let p = changed.procs.values_mut().next().unwrap();
        p.scale = (p.scale + 1) % 4;
        prop_assert_ne!(hash(&render(&changed, seed)), before);
    }
}
