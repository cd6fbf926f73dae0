//! The JSON a guest may hand the host to store: what every reader (the SDK, serde_json,
//! ArangoDB) can read back.
//!
//! Refused: text that is not JSON, nesting deeper than [`MAX_DEPTH`] arrays and objects
//! (serde_json, and so the Rust SDK, stops reading at 128), numbers outside the range of
//! an `f64` (`1e999999`), and strings with a lone UTF-16 surrogate escape (`"\ud800"`),
//! which no UTF-8 reader can decode. The check reads the text once and allocates nothing.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects in a stored JSON value (`1` is `[]`).
pub const MAX_DEPTH: usize = 64;

/// Why a value was refused, for the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(String);

/// Check that `text` is one JSON value every reader accepts.
pub fn check(text: &str) -> Result<(), JsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    // Our own depth bound is below serde_json's, so it always speaks first.
    Depth(0).deserialize(&mut de).map_err(|e| JsonError(describe(&e)))?;
    de.end().map_err(|e| JsonError(describe(&e)))
}

fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.contains("surrogate") || text.contains("hex escape") {
        format!("a string holds a lone UTF-16 surrogate or a broken \\u escape, which cannot be read back ({text})")
    } else if text.contains("number out of range") {
        format!("a number is outside the range of a 64-bit float ({text})")
    } else {
        format!("the value is not JSON: {text}")
    }
}

/// One value at nesting depth `.0`.
struct Depth(usize);

impl<'de> DeserializeSeed<'de> for Depth {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Depth {
    fn deeper<E: de::Error>(&self) -> Result<Depth, E> {
        if self.0 >= MAX_DEPTH {
            return Err(E::custom(format_args!("nested deeper than {MAX_DEPTH} arrays and objects")));
        }
        Ok(Depth(self.0 + 1))
    }
}

impl<'de> Visitor<'de> for Depth {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() { Ok(()) } else { Err(E::custom("number out of range")) }
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(Depth(inner.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while map.next_key_seed(Depth(inner.0))?.is_some() {
            map.next_value_seed(Depth(inner.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn ordinary_values_pass() {
        for ok in [
            "1",
            "-0.5e10",
            "\"a\\u00e9\\ud83d\\ude00\"",
            "{\"a\":[1,{\"b\":null}]}",
            "true",
            " [] ",
            "1.7976931348623157e308",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        let deep_objects = format!("{}1{}", "{\"k\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(check(&deep_objects), Ok(()));
    }

    #[test]
    fn nesting_past_the_limit_is_refused_without_recursing_further() {
        let e = check(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(e.0.contains("deeper than 64"), "{e}");
        // 100k deep: refused at the limit (no stack overflow).
        assert!(check(&nested(100_000)).is_err());
        let objects = format!("{}1{}", "{\"k\":".repeat(MAX_DEPTH + 1), "}".repeat(MAX_DEPTH + 1));
        assert!(check(&objects).is_err());
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        for bad in ["1e999999", "-1e400", "[1e309]"] {
            let e = check(bad).unwrap_err();
            assert!(e.0.contains("64-bit float"), "{bad}: {e}");
        }
        // A big integer is a float within range: readable.
        assert_eq!(check("123456789012345678901234567890"), Ok(()));
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for bad in ["\"\\ud800\"", "\"\\udc00x\"", "{\"\\ud800\":1}", "[\"a\\ud83d\"]"] {
            let e = check(bad).unwrap_err();
            assert!(e.0.contains("surrogate"), "{bad}: {e}");
        }
    }

    #[test]
    fn not_json_and_trailing_text_are_refused() {
        for bad in ["", "{", "[1,]", "1 2", "nul", "{not json"] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
