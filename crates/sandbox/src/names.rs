//! Three-word VM names (`adverb-adjective-noun`, e.g. `very-silly-penguin`) from curated word
//! lists (30 × 100 × 100 = 300,000 combinations), and validation of names users choose. Pure.

use std::collections::HashSet;

const ADVERBS: [&str; 30] = [
    "very", "quite", "really", "mostly", "fairly", "rather", "truly", "highly", "barely", "simply",
    "gently", "boldly", "calmly", "deeply", "freshly", "gladly", "kindly", "lightly", "neatly",
    "openly", "proudly", "quickly", "rarely", "softly", "swiftly", "tightly", "warmly", "wildly",
    "wisely", "brightly",
];

const ADJECTIVES: [&str; 100] = [
    "able", "agile", "amber", "ample", "azure", "bold", "brave", "brisk", "broad", "calm", "civil",
    "clean", "clear", "clever", "cosmic", "crisp", "curious", "dapper", "daring", "eager", "early",
    "easy", "elated", "exact", "fair", "fancy", "fast", "fierce", "fluffy", "fond", "frank",
    "free", "fresh", "funny", "gentle", "giant", "glad", "golden", "grand", "great", "happy",
    "hardy", "hearty", "honest", "humble", "jolly", "jovial", "keen", "kind", "lively", "loyal",
    "lucky", "lunar", "merry", "mighty", "modest", "neat", "nimble", "noble", "odd", "plucky",
    "polite", "proud", "quick", "quiet", "rapid", "ready", "regal", "robust", "rosy", "royal",
    "rustic", "sharp", "shiny", "silly", "sleek", "smart", "snappy", "solar", "sturdy", "sunny",
    "super", "swift", "tender", "tidy", "tough", "trusty", "upbeat", "valid", "vivid", "warm",
    "wise", "witty", "young", "zany", "zesty", "cheery", "steady", "mellow", "stellar",
];

const NOUNS: [&str; 100] = [
    "otter", "penguin", "falcon", "badger", "beaver", "bison", "camel", "cheetah", "cobra",
    "condor", "coyote", "crane", "dingo", "dolphin", "donkey", "eagle", "ferret", "finch",
    "gazelle", "gecko", "gopher", "heron", "hippo", "horse", "husky", "ibis", "iguana", "jaguar",
    "koala", "lemur", "leopard", "lion", "llama", "lobster", "lynx", "magpie", "marmot", "meerkat",
    "mole", "moose", "narwhal", "newt", "ocelot", "orca", "osprey", "owl", "panda", "panther",
    "parrot", "pelican", "pigeon", "puffin", "puma", "quail", "rabbit", "raccoon", "raven",
    "robin", "salmon", "seal", "shark", "sheep", "sloth", "snail", "sparrow", "spider", "squid",
    "stork", "swan", "tapir", "tiger", "toad", "toucan", "trout", "turtle", "walrus", "weasel",
    "whale", "wolf", "wombat", "yak", "zebra", "acorn", "aspen", "birch", "cedar", "comet",
    "canyon", "delta", "ember", "fjord", "glacier", "harbor", "island", "maple", "meadow",
    "nebula", "pebble", "prairie", "river",
];

/// How many distinct three-word names exist.
pub const COMBINATIONS: usize = ADVERBS.len() * ADJECTIVES.len() * NOUNS.len();

/// A name not in `taken`: random picks from the word lists (`rand` yields random u64s); when
/// every pick collides (all combinations nearly exhausted), a pick with a `-<unix seconds>` suffix.
pub fn generate(taken: &HashSet<String>, mut rand: impl FnMut() -> u64, now_unix: u64) -> String {
    let mut pick = || {
        let r = rand();
        let a = ADVERBS[(r % ADVERBS.len() as u64) as usize];
        let j = ADJECTIVES[((r >> 16) % ADJECTIVES.len() as u64) as usize];
        let n = NOUNS[((r >> 32) % NOUNS.len() as u64) as usize];
        format!("{a}-{j}-{n}")
    };
    for _ in 0..256 {
        let n = pick();
        if !taken.contains(&n) {
            return n;
        }
    }
    let mut suffix = now_unix;
    loop {
        let n = format!("{}-{suffix}", pick());
        if !taken.contains(&n) {
            return n;
        }
        suffix += 1;
    }
}

/// Checks a user-chosen VM name: it becomes a host name and a DNS label (`{name}.{vm_domain}`).
pub fn validate(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 || !ok_chars {
        return Err(format!(
            "name {name:?} is invalid: use 1-63 lowercase letters, digits and hyphens"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "name {name:?} is invalid: it must not start or end with a hyphen"
        ));
    }
    if name.starts_with("vm-") && name.len() == 15 {
        return Err(format!(
            "name {name:?} looks like a VM id (vm- + 12 hex); choose another"
        ));
    }
    Ok(())
}

/// A fresh VM id: `vm-` + 12 lowercase hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    format!("vm-{}", hex::encode(b))
}

/// Whether `s` has the shape of a VM id.
pub fn is_id(s: &str) -> bool {
    s.strip_prefix("vm-").is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_lists_are_unique_and_dns_safe() {
        for list in [&ADVERBS[..], &ADJECTIVES[..], &NOUNS[..]] {
            let set: HashSet<_> = list.iter().collect();
            assert_eq!(set.len(), list.len(), "duplicate word");
            for w in list {
                assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
            }
        }
        assert_eq!(COMBINATIONS, 300_000);
    }

    #[test]
    fn generated_names_avoid_taken_ones_and_fall_back_to_a_suffix() {
        let mut seed = 7u64;
        let mut rng = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed
        };
        let n = generate(&HashSet::new(), &mut rng, 0);
        assert_eq!(n.split('-').count(), 3);
        validate(&n).unwrap();
        // A constant generator: the one combination it yields is taken → suffix.
        let taken: HashSet<String> = [generate(&HashSet::new(), || 0, 0)].into();
        let n2 = generate(&taken, || 0, 1_700_000_000);
        assert_eq!(n2, format!("{}-1700000000", taken.iter().next().unwrap()));
        let mut taken2 = taken.clone();
        taken2.insert(n2.clone());
        assert_eq!(
            generate(&taken2, || 0, 1_700_000_000),
            format!("{}-1700000001", taken.iter().next().unwrap())
        );
    }

    #[test]
    fn ids_and_names() {
        let id = new_id();
        assert!(is_id(&id), "{id}");
        assert!(!is_id("vm-ABCDEF123456"));
        assert!(validate("my-box-1").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "Upper",
            "a_b",
            &"x".repeat(64),
            "vm-0123456789ab",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
