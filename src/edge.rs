//! What every door shares when it reads outside bytes, so that each door reads them
//! the same way (README "Edge rules"):
//! - a UTF-8 byte order mark in front of JSON is skipped (.NET and PowerShell write one);
//! - a repeated query key: the last value wins, as PHP's `$_GET` has it;
//! - `Authorization: Bearer`: the scheme is case-insensitive (RFC 9110 §11.1).

use std::collections::HashMap;

use percent_encoding::percent_decode_str;

/// The UTF-8 encoding of U+FEFF.
const BOM: &str = "\u{FEFF}";

/// `text` without one leading byte order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix(BOM).unwrap_or(text)
}

/// `bytes` without one leading UTF-8 byte order mark.
pub fn strip_bom_bytes(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM.as_bytes()).unwrap_or(bytes)
}

/// The token of an `Authorization` header value in the `Bearer` scheme, whatever
/// the scheme's case (RFC 9110 §11.1, RFC 6750 §2.1); `None` for other schemes or
/// an empty token.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A query key or value whose percent-encoding decodes to bytes that are not UTF-8
/// (`?uid=M%E4ller`, Latin-1 from a PHP page). Refused, never replaced by U+FFFD:
/// two different ids must not become the same name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter {key:?} is not UTF-8 once percent-decoded")]
pub struct QueryError {
    /// The key, decoded lossily, for the error message.
    pub key: String,
}

/// A decoded query string (`application/x-www-form-urlencoded`, `+` as space), in
/// which a repeated key means its last value. Unknown keys are kept and simply
/// never asked for.
#[derive(Debug, Default, Clone)]
pub struct Query {
    values: HashMap<String, String>,
}

impl Query {
    /// Decodes `raw`, the part of the URL after `?`.
    ///
    /// Errors: [`QueryError`] when a key or value is not UTF-8 once decoded.
    pub fn parse(raw: &str) -> Result<Self, QueryError> {
        // serde_urlencoded decodes lossily (U+FFFD), so UTF-8 is checked first.
        for pair in raw.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let utf8 = |text: &str| percent_decode_str(text).decode_utf8().is_ok();
            if !utf8(key) || !utf8(value) {
                let key = percent_decode_str(key).decode_utf8_lossy().into_owned();
                return Err(QueryError { key });
            }
        }
        // Pairs of text decode from any query, so the error arm is never taken;
        // a map built from the pairs in order keeps each key's last value.
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).unwrap_or_default();
        Ok(Self {
            values: pairs.into_iter().collect(),
        })
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The last value given for `key`, `None` when absent or empty.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// Every key with its last value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_last_value_of_a_repeated_key_wins() {
        let q = Query::parse("page=list&page=home&_=123&uid=a%20b+c&empty=&flag").unwrap();
        assert_eq!(q.get("page"), Some("home"));
        assert_eq!(q.get("uid"), Some("a b c"));
        assert_eq!(q.get("empty"), Some(""));
        assert_eq!(q.non_empty("empty"), None);
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
        assert_eq!(Query::parse("x=%C3%A9").unwrap().get("x"), Some("é"));
        for bad in [
            "uid=M%E4ller",
            "x=%FF",
            "x=%C0%AF",
            "%FF=1",
            "a=1&b=%ED%A0%80",
        ] {
            assert!(Query::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn one_bom_is_skipped() {
        assert_eq!(strip_bom("\u{FEFF}{}"), "{}");
        assert_eq!(strip_bom("{}"), "{}");
        assert_eq!(strip_bom_bytes(b"\xEF\xBB\xBF{}"), b"{}");
        assert_eq!(strip_bom_bytes(b"\xEF\xBB{}"), b"\xEF\xBB{}");
    }

    proptest! {
        /// Any query: no panic, and every key's value is the last one given.
        #[test]
        fn query_parsing_keeps_the_last_value(
            pairs in proptest::collection::vec(("[a-c_%+=&]{0,3}", "\\PC{0,6}"), 0..8),
            raw in "\\PC{0,40}",
        ) {
            let _ = Query::parse(&raw);
            let encoded: String = pairs
                .iter()
                .map(|(k, v)| serde_urlencoded::to_string([(k, v)]).unwrap())
                .collect::<Vec<_>>()
                .join("&");
            let q = Query::parse(&encoded).unwrap();
            for (k, _) in &pairs {
                let last = pairs.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
                prop_assert_eq!(q.get(k), last);
            }
        }

        #[test]
        fn bearer_never_panics(header in "\\PC{0,20}") {
            if let Some(token) = bearer_token(&header) {
                prop_assert!(!token.is_empty());
                prop_assert!(header.to_ascii_lowercase().contains("bearer"));
            }
        }
    }
}
