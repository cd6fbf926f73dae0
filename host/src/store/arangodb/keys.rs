//! Mapping our names onto ArangoDB `_key`s.
//!
//! arangors joins `_key` onto a URL unescaped (a `:` makes it a URL scheme and panics, a
//! `/` changes the path), so every `_key` we send is in `[A-Za-z0-9_-]` only. Each part is
//! escaped reversibly (`_` -> `__`, `-` -> `_h`, `.` -> `_d`, `:` -> `_c`, `/` -> `_s`, any
//! other byte -> `_x` + two hex digits) and parts are joined with `-`, which no escaped part
//! contains: the mapping is injective, so two tenants can never share a `_key`. ArangoDB
//! caps `_key` at 254 bytes; a longer result is replaced by `_y` + SHA-256 of the
//! length-prefixed parts (no escaped form starts with `_y`). The original names are
//! always stored in the document too, and reads check them.

use sha2::{Digest, Sha256};

/// Longest `_key` ArangoDB accepts.
const MAX_KEY: usize = 254;

/// Escape one part into `[A-Za-z0-9_]`.
pub fn escape(part: &str, out: &mut String) {
    for b in part.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => out.push(char::from(b)),
            b'_' => out.push_str("__"),
            b'-' => out.push_str("_h"),
            b'.' => out.push_str("_d"),
            b':' => out.push_str("_c"),
            b'/' => out.push_str("_s"),
            other => {
                out.push_str("_x");
                out.push_str(&hex(&[other]));
            }
        }
    }
}

/// Undo [`escape`]; `None` when `s` is not an escaped part.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'_' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next()? {
            b'_' => b'_',
            b'h' => b'-',
            b'd' => b'.',
            b'c' => b':',
            b's' => b'/',
            b'x' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                u8::try_from(hi * 16 + lo).ok()?
            }
            _ => return None,
        });
    }
    String::from_utf8(out).ok()
}

/// The `_key` for a tuple of names.
pub fn arango_key(parts: &[&str]) -> String {
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        escape(p, &mut out);
    }
    if out.len() <= MAX_KEY {
        return out;
    }
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    format!("_y{}", hex(&h.finalize()))
}

/// Lower-case hex. Its order (digits, then `a`-`f`) is byte order both bytewise and under
/// ArangoDB's ICU string collation, so sorting on it sorts keys by their bytes.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Undo [`hex`] (either case).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    ::hex::decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(k: &str) -> bool {
        k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    #[test]
    fn escaping_round_trips_and_stays_in_the_safe_set() {
        for s in ["", "a", "a:b/c.d_e-f", "__", "_h", "é ü\0", "orders/2024:01"] {
            let mut e = String::new();
            escape(s, &mut e);
            assert!(allowed(&e) && !e.contains('-'), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
    }

    #[test]
    fn keys_are_injective_and_bounded() {
        assert_ne!(arango_key(&["a-b", "c"]), arango_key(&["a", "b-c"]));
        assert_ne!(arango_key(&["a", "c", "k"]), arango_key(&["ab", "c", "k"]));
        assert_ne!(arango_key(&["t", "c", "a:b"]), arango_key(&["t", "c", "a/b"]));
        let long = "k:".repeat(200);
        let k = arango_key(&["t", "c", &long]);
        assert!(k.len() <= MAX_KEY && allowed(&k) && k.starts_with("_y"));
        assert_ne!(k, arango_key(&["u", "c", &long]));
    }

    #[test]
    fn hex_round_trips_in_byte_order() {
        assert_eq!(unhex(&hex(b"a:/\xff")), Some(b"a:/\xff".to_vec()));
        let mut keys = ["p/2", "P", "p", "p/10", "_", "-", "p.1"];
        let mut hexed: Vec<String> = keys.iter().map(|k| hex(k.as_bytes())).collect();
        keys.sort();
        hexed.sort();
        assert_eq!(hexed, keys.iter().map(|k| hex(k.as_bytes())).collect::<Vec<_>>());
    }
}
