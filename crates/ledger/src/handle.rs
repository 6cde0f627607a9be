//! Handles against confusable characters: every handle is stored and looked up under its
//! *skeleton*, so a look-alike of a taken handle (`a1ice` for `alice`) is refused as taken,
//! while the account keeps the display form it chose.
//!
//! The mapping works on normalized handles (`[a-z0-9_]`, ≤ 32 bytes; see
//! [`crate::tx::normalize_handle`]) and is deterministic, bounded (one pass, output no longer
//! than the input) and idempotent:
//!
//! 1. each character is mapped: `1 i l` → `l`, `0 o` → `o`, `5 s` → `s`, `2 z` → `z`,
//!    `8 b` → `b`, `3 e` → `e`, `4 a` → `a`, `7 t` → `t`; `_` is dropped; the rest is kept;
//! 2. then, in one left-to-right pass over the result, `rn` → `m`, `vv` → `w`, `cl` → `d`.
//!
//! No replacement emits `r`, `v` or `c` before a character that would complete a pair, so a
//! second application changes nothing.

/// One character's class (step 1); `None`: dropped.
fn fold(c: char) -> Option<char> {
    Some(match c {
        '1' | 'i' | 'l' => 'l',
        '0' | 'o' => 'o',
        '5' | 's' => 's',
        '2' | 'z' => 'z',
        '8' | 'b' => 'b',
        '3' | 'e' => 'e',
        '4' | 'a' => 'a',
        '7' | 't' => 't',
        '_' => return None,
        other => other,
    })
}

/// The skeleton of a handle (ASCII-lowercased first, so it also accepts display input):
/// the key the ledger stores it under.
pub fn skeleton(handle: &str) -> String {
    let folded: Vec<char> = handle.chars().map(|c| c.to_ascii_lowercase()).filter_map(fold).collect();
    let mut out = String::with_capacity(folded.len());
    let mut i = 0;
    while i < folded.len() {
        let pair = folded.get(i + 1).map(|n| (folded[i], *n));
        let joined = match pair {
            Some(('r', 'n')) => Some('m'),
            Some(('v', 'v')) => Some('w'),
            Some(('c', 'l')) => Some('d'),
            _ => None,
        };
        match joined {
            Some(j) => {
                out.push(j);
                i += 2;
            }
            None => {
                out.push(folded[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether two handles look alike (same skeleton).
pub fn look_alike(a: &str, b: &str) -> bool {
    skeleton(a) == skeleton(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn look_alikes_collide() {
        for (a, b) in [
            ("alice", "a1ice"),
            ("alice", "aIice"),
            ("alice", "al1ce"),
            ("bob", "b0b"),
            ("modern", "rnodern"),
            ("wallet", "vvallet"),
            ("dave", "clave"),
            ("sam_smith", "5amsmith"),
            ("zoe", "2o3"),
            ("oslo", "0510"),
        ] {
            assert!(look_alike(a, b), "{a} / {b}: {} vs {}", skeleton(a), skeleton(b));
        }
    }

    #[test]
    fn distinct_handles_stay_distinct() {
        for (a, b) in [("alice", "alex"), ("bob", "rob"), ("carol", "karol"), ("dan", "dam"), ("eve", "eva")]
        {
            assert!(!look_alike(a, b), "{a} / {b}");
        }
    }

    #[test]
    fn examples() {
        assert_eq!(skeleton("alice"), "allce");
        assert_eq!(skeleton("rnrn"), "mm");
        assert_eq!(skeleton("rrnn"), "rmn");
        assert_eq!(skeleton("vvv"), "wv");
        assert_eq!(skeleton("___"), "");
    }

    proptest! {
        #[test]
        fn idempotent_and_bounded(h in "[a-z0-9_]{3,32}") {
            let s = skeleton(&h);
            prop_assert!(s.len() <= h.len());
            prop_assert_eq!(skeleton(&s), s.clone());
            prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        }
    }
}
