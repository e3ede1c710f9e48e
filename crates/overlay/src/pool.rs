//! The allocation policy shared by every IPAM space: next-fit over sorted inclusive ranges.
//!
//! Allocation takes the first value not held at or after the cursor, wrapping round to the start
//! of the space once; the cursor then moves just past the value handed out. Consequences:
//!
//! - a held value is never handed out (the holder map is the only source of truth);
//! - a released value is not handed out again while any value of the space has never been handed
//!   out, and after that only once the cursor has come round to it again, i.e. every value that
//!   was free ahead of it has been handed out in between (no quick reuse);
//! - the cursor depends only on the last value handed out, so replaying allocations rebuilds it.

use std::collections::BTreeMap;

/// The first value in `lo..=hi` not held, if any.
fn first_free(held: &BTreeMap<u64, String>, lo: u64, hi: u64) -> Option<u64> {
    if lo > hi {
        return None;
    }
    let mut candidate = lo;
    for &taken in held.range(lo..=hi).map(|(k, _)| k) {
        if taken != candidate {
            break;
        }
        if candidate == hi {
            return None;
        }
        candidate += 1;
    }
    Some(candidate)
}

/// Next-fit over `ranges` (sorted, disjoint, inclusive) from `cursor`, wrapping once.
pub(crate) fn next_fit(
    ranges: &[(u64, u64)],
    held: &BTreeMap<u64, String>,
    cursor: u64,
) -> Option<u64> {
    for &(lo, hi) in ranges {
        if hi >= cursor
            && let Some(v) = first_free(held, lo.max(cursor), hi)
        {
            return Some(v);
        }
    }
    for &(lo, hi) in ranges {
        if lo < cursor
            && let Some(v) = first_free(held, lo, hi.min(cursor - 1))
        {
            return Some(v);
        }
    }
    None
}

/// The cursor after handing out `value`.
pub(crate) fn cursor_after(value: u64) -> u64 {
    value.wrapping_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(vals: &[u64]) -> BTreeMap<u64, String> {
        vals.iter().map(|v| (*v, v.to_string())).collect()
    }

    #[test]
    fn scans_forward_then_wraps() {
        let r = [(1, 5)];
        assert_eq!(next_fit(&r, &held(&[]), 0), Some(1));
        assert_eq!(next_fit(&r, &held(&[1, 2]), 1), Some(3));
        assert_eq!(next_fit(&r, &held(&[4, 5]), 4), Some(1));
        assert_eq!(next_fit(&r, &held(&[1, 2, 3, 4, 5]), 3), None);
        assert_eq!(next_fit(&r, &held(&[1, 3, 4, 5]), 3), Some(2));
    }

    #[test]
    fn several_ranges_and_the_top_of_u64() {
        let r = [(10, 11), (20, 20), (u64::MAX - 1, u64::MAX)];
        assert_eq!(next_fit(&r, &held(&[10, 11]), 0), Some(20));
        assert_eq!(next_fit(&r, &held(&[]), 12), Some(20));
        assert_eq!(next_fit(&r, &held(&[u64::MAX - 1]), 21), Some(u64::MAX));
        assert_eq!(cursor_after(u64::MAX), 0);
        assert_eq!(next_fit(&r, &held(&[10]), 0), Some(11));
        assert_eq!(next_fit(&[], &held(&[]), 0), None);
    }
}
