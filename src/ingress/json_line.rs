//! The seed routers' JSON line, shared by the text port, the UDP port and publisher
//! WebSockets: one JSON object, routed to `uid` (or `user_id`) when present, else to
//! `page`, else to everyone, and pushed as it was written.
//!
//! A routing field that is present must hold a [`Name`]: `{"uid":null}` is refused,
//! never broadcast (absent and `null` are told apart), and so is any other value that
//! is not a string or an integral number, in any of `uid`, `user_id` and `page`.
//! A routing field given twice is refused too: which one counts would be a guess.

use std::borrow::Cow;
use std::fmt;

use bytestring::ByteString;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::edge::strip_bom;
use crate::push::{Ingress, Name, NameError, Push, Target};

/// Why a JSON line (text port, UDP datagram, publisher frame) was not routed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("missing or wrong \"token\"")]
    BadToken,
    #[error("\"{0}\" {1}")]
    BadTarget(&'static str, NameError),
    #[error("\"{0}\" is given more than once")]
    Repeated(&'static str),
}

impl RouteError {
    /// The `scenecast_rejected_total` reason for this refusal at `ingress`.
    pub fn reason(&self, ingress: Ingress) -> &'static str {
        let token = matches!(self, RouteError::BadToken);
        let json = matches!(self, RouteError::NotJson(_));
        match ingress {
            Ingress::Udp if token => "udp_token",
            Ingress::Udp if json => "udp_json",
            Ingress::Udp => "udp_target",
            Ingress::Publisher => "publisher_frame",
            _ if token => "text_token",
            _ if json => "text_json",
            _ => "text_target",
        }
    }
}

/// The fields the router reads; every other field is carried along untouched.
const ROUTING_FIELDS: [&str; 4] = ["uid", "user_id", "page", "token"];

/// The members of one JSON object in the order written: decoded keys, values as
/// their exact text in the line.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// An object key, borrowed from the line unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Routes one JSON object the way the seeds' text port and publishers do: to `uid`
/// (or `user_id`) when present, else to `page`, else to everyone. One leading UTF-8
/// BOM and surrounding whitespace are skipped. The frame sent is the object exactly
/// as written, except that when `required_token` is set its `"token"` member (key,
/// value and one separating comma) is cut out, so the secret never reaches a
/// browser; every other byte stays as it was.
pub fn route_json_line(line: &str, required_token: Option<&str>) -> Result<Push, RouteError> {
    let line = strip_bom(line).trim_matches([' ', '\t', '\r', '\n']);
    if !line.starts_with('{') {
        return Err(RouteError::NotJson("expected an object".into()));
    }
    let Members(members) =
        serde_json::from_str(line).map_err(|e| RouteError::NotJson(e.to_string()))?;

    // Index of each routing field's member, refusing repeats.
    let mut found: [Option<usize>; 4] = [None; 4];
    for (index, (key, _)) in members.iter().enumerate() {
        if let Some(field) = ROUTING_FIELDS.iter().position(|f| *f == key.as_ref())
            && let Some(slot) = found.get_mut(field)
        {
            if slot.is_some() {
                return Err(RouteError::Repeated(
                    ROUTING_FIELDS.get(field).copied().unwrap_or("?"),
                ));
            }
            *slot = Some(index);
        }
    }
    let [uid, user_id, page, token] = found;
    let name = |index: Option<usize>, field: &'static str| -> Result<Option<Name>, RouteError> {
        let Some((_, raw)) = index.and_then(|i| members.get(i)) else {
            return Ok(None);
        };
        Name::from_raw_json(raw)
            .map(Some)
            .map_err(|e| RouteError::BadTarget(field, e))
    };
    // Every present routing field must be a name, used or not.
    let uid = name(uid, "uid")?;
    let user_id = name(user_id, "user_id")?;
    let page = name(page, "page")?;
    let target = match (uid.or(user_id), page) {
        (Some(uid), _) => Target::Uid(uid),
        (None, Some(page)) => Target::Page(page),
        (None, None) => Target::All,
    };

    let payload = match required_token {
        None => ByteString::from(line.to_owned()),
        Some(expected) => {
            let given = token
                .and_then(|i| members.get(i))
                .and_then(|(_, raw)| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok());
            let given = given.as_deref().unwrap_or("");
            if !crate::auth::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Err(RouteError::BadToken);
            }
            let index = token.ok_or(RouteError::BadToken)?;
            ByteString::from(
                without_member(line, &members, index)
                    .ok_or_else(|| RouteError::NotJson("could not cut the token out".into()))?,
            )
        }
    };
    Ok(Push::new(target, payload))
}

/// `object` (the text `members` were parsed from) without member `index`: from the
/// end of the previous value to the end of this one, or, for the first member, from
/// after `{` to past the comma that follows it. Every other byte is kept.
fn without_member(
    object: &str,
    members: &[(Cow<'_, str>, &RawValue)],
    index: usize,
) -> Option<String> {
    let end_of = |i: usize| -> Option<usize> {
        let (_, raw) = members.get(i)?;
        let start = (raw.get().as_ptr() as usize).checked_sub(object.as_ptr() as usize)?;
        let end = start.checked_add(raw.get().len())?;
        (end <= object.len()).then_some(end)
    };
    let end = end_of(index)?;
    let (cut_from, cut_to) = match index.checked_sub(1) {
        Some(previous) => (end_of(previous)?, end),
        None if members.len() > 1 => {
            let rest = object.get(end..)?;
            let comma = rest.find(|c: char| !c.is_ascii_whitespace())?;
            if rest.get(comma..)?.starts_with(',') {
                (1, end.checked_add(comma)?.checked_add(1)?)
            } else {
                return None;
            }
        }
        None => (1, end),
    };
    let mut out = String::with_capacity(object.len());
    out.push_str(object.get(..cut_from)?);
    out.push_str(object.get(cut_to..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(text: &str) -> Name {
        Name::try_from(text).unwrap()
    }

    #[test]
    fn routes_uid_before_page_before_all() {
        let p = route_json_line(r#"{"uid":"uid1","page":"home","percent":"88%"}"#, None).unwrap();
        assert_eq!(p.target, Target::Uid(name("uid1")));
        assert_eq!(
            &*p.payload,
            r#"{"uid":"uid1","page":"home","percent":"88%"}"#
        );
        let p = route_json_line(r#"{"user_id":1,"cnt":5}"#, None).unwrap();
        assert_eq!(p.target, Target::Uid(name("1")));
        let p = route_json_line("{\"page\":\"list\"}\r\n", None).unwrap();
        assert_eq!(p.target, Target::Page(name("list")));
        let p = route_json_line(r#"{"order_num":1234}"#, None).unwrap();
        assert_eq!(p.target, Target::All);
    }

    #[test]
    fn integral_numbers_are_their_decimal_text() {
        for (line, uid) in [
            (r#"{"uid":1.0}"#, "1"),
            (r#"{"uid":1e0}"#, "1"),
            (r#"{"uid":-0.0}"#, "0"),
            (r#"{"uid":-0}"#, "0"),
            (
                r#"{"uid":12345678901234567890123}"#,
                "12345678901234567890123",
            ),
            (r#"{"uid":"\u0031"}"#, "1"),
            (r#"{"uid":9007199254740993.0}"#, "9007199254740993"),
            (r#"{"uid":10e-1}"#, "1"),
            (r#"{"uid":1.5E+1}"#, "15"),
        ] {
            assert_eq!(
                route_json_line(line, None).unwrap().target,
                Target::Uid(name(uid)),
                "{line}"
            );
        }
    }

    #[test]
    fn a_present_target_that_is_not_a_name_is_refused() {
        for (line, field) in [
            (r#"{"uid":null,"secret":"x"}"#, "uid"),
            (r#"{"user_id":null}"#, "user_id"),
            (r#"{"page":null}"#, "page"),
            (r#"{"uid":true}"#, "uid"),
            (r#"{"uid":1.5}"#, "uid"),
            (r#"{"uid":[1]}"#, "uid"),
            (r#"{"uid":""}"#, "uid"),
            (r#"{"page":{"a":1}}"#, "page"),
            (r#"{"uid":"a\nb"}"#, "uid"),
            (r#"{"uid":"1","page":null}"#, "page"),
            (r#"{"uid":1e300}"#, "uid"),
            (r#"{"uid":4503599627370496.4}"#, "uid"),
        ] {
            assert!(
                matches!(route_json_line(line, None), Err(RouteError::BadTarget(f, _)) if f == field),
                "{line}"
            );
        }
        let long = format!(r#"{{"uid":"{}"}}"#, "x".repeat(129));
        assert_eq!(
            route_json_line(&long, None).unwrap_err(),
            RouteError::BadTarget("uid", NameError::TooLong)
        );
        assert_eq!(
            route_json_line(r#"{"uid":"1","uid":"2"}"#, None).unwrap_err(),
            RouteError::Repeated("uid")
        );
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        for line in ["hello", "[1,2]", r#"{"uid":"#, "", "{} x", "\u{FEFF}"] {
            assert!(
                matches!(route_json_line(line, None), Err(RouteError::NotJson(_))),
                "{line:?}"
            );
        }
    }

    #[test]
    fn a_bom_is_skipped_and_not_forwarded() {
        let p = route_json_line("\u{FEFF}{\"page\":\"home\"}", None).unwrap();
        assert_eq!(p.target, Target::Page(name("home")));
        assert_eq!(&*p.payload, r#"{"page":"home"}"#);
    }

    #[test]
    fn a_required_token_is_checked_and_cut_out_byte_exact() {
        let secret = Some("s3cret");
        assert_eq!(
            route_json_line(r#"{"uid":"1"}"#, secret).unwrap_err(),
            RouteError::BadToken
        );
        assert_eq!(
            route_json_line(r#"{"uid":"1","token":"nope"}"#, secret).unwrap_err(),
            RouteError::BadToken
        );
        assert_eq!(
            route_json_line(r#"{"uid":"1","token":7}"#, secret).unwrap_err(),
            RouteError::BadToken
        );
        for (line, forwarded) in [
            (
                r#"{"z":1, "token":"s3cret","big":12345678901234567890123,"e":1e2}"#,
                r#"{"z":1,"big":12345678901234567890123,"e":1e2}"#,
            ),
            (r#"{ "token" : "s3cret" , "b":2 }"#, r#"{ "b":2 }"#),
            (r#"{"token":"s3cret"}"#, r#"{}"#),
            (r#"{"a":[1, 2],"token":"s3\u0063ret"}"#, r#"{"a":[1, 2]}"#),
            (
                r#"{"uid":"1","\u0074oken":"s3cret","n":2}"#,
                r#"{"uid":"1","n":2}"#,
            ),
        ] {
            let p = route_json_line(line, secret).unwrap();
            assert_eq!(&*p.payload, forwarded, "{line}");
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[\\x00-\\x1f\u{202e}\u{feff}a]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{0,3}|uid|page|user_id|token", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Members of an object line, in order, as (key, value).
    fn members_of(text: &str) -> Vec<(String, serde_json::Value)> {
        let Members(members) = serde_json::from_str(text).unwrap();
        members
            .into_iter()
            .map(|(k, v)| (k.into_owned(), serde_json::from_str(v.get()).unwrap()))
            .collect()
    }

    /// Members of an object line, in order, as (key, value text as written).
    fn raw_members_of(text: &str) -> Vec<(String, String)> {
        let Members(members) = serde_json::from_str(text).unwrap();
        members
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.get().to_owned()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Cutting the token out of any object, wherever it stands and however the
        /// object is spaced: the rest parses, and holds every other member in order
        /// with its value text unchanged.
        #[test]
        fn the_token_is_cut_out_and_nothing_else_changes(
            members in proptest::collection::vec(("[a-z]{1,3}|uid|page", json_value()), 0..5),
            at in any::<proptest::sample::Index>(),
            spaces in proptest::collection::vec("[ \t\r\n]{0,2}", 24),
            escaped_key in any::<bool>(),
        ) {
            let at = at.index(members.len() + 1);
            let key = if escaped_key { r#""\u0074oken""# } else { r#""token""# };
            let mut parts: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), v))
                .collect();
            parts.insert(at, format!("{key}{}:{}\"s3cr3t-token\"", spaces[0], spaces[1]));
            let mut line = String::from("{");
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    line.push_str(&spaces[2 * i + 2]);
                    line.push(',');
                }
                line.push_str(&spaces[2 * i + 3]);
                line.push_str(part);
            }
            line.push_str(&spaces[23]);
            line.push('}');

            let Members(parsed) = serde_json::from_str(&line).unwrap();
            let cut = without_member(&line, &parsed, at).expect("a member can be cut");
            let mut want = raw_members_of(&line);
            want.remove(at);
            prop_assert_eq!(raw_members_of(&cut), want);
            prop_assert!(cut.len() < line.len());
            prop_assert!(!cut.contains("s3cr3t-token"));
        }

        /// Arbitrary bytes: never a panic.
        #[test]
        fn arbitrary_text_never_panics(line in "\\PC{0,64}", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = route_json_line(&line, None);
            let _ = route_json_line(&line, Some("t"));
            let _ = route_json_line(&String::from_utf8_lossy(&bytes), Some("t"));
        }

        /// Any object: refused, or routed to the first present of uid, user_id, page
        /// (each of them a name), else to everyone; a token is never forwarded.
        #[test]
        fn routing_follows_the_present_fields(
            fields in proptest::collection::vec(("uid|user_id|page|token|[a-z]{1,3}", json_value()), 0..6),
            spaced in any::<bool>(),
            with_token in any::<bool>(),
        ) {
            let sep = if spaced { " , " } else { "," };
            let body = fields
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), v))
                .collect::<Vec<_>>()
                .join(sep);
            let line = format!("{{{body}}}");
            let get = |key: &str| fields.iter().filter(|(k, _)| k == key).map(|(_, v)| v).collect::<Vec<_>>();
            let token = with_token.then_some("t");
            match route_json_line(&line, token) {
                Err(_) => {}
                Ok(push) => {
                    let mut names = Vec::new();
                    for key in ["uid", "user_id", "page"] {
                        let values = get(key);
                        prop_assert!(values.len() <= 1);
                        if let Some(v) = values.first() {
                            let raw: Box<RawValue> = serde_json::from_str(&v.to_string()).unwrap();
                            names.push((key, Name::from_raw_json(&raw).expect("an accepted field is a name")));
                        }
                    }
                    let expected = match names.first() {
                        Some(("page", n)) => Target::Page(n.clone()),
                        Some((_, n)) => Target::Uid(n.clone()),
                        None => Target::All,
                    };
                    prop_assert_eq!(&push.target, &expected);
                    let mut want = members_of(&line);
                    if with_token {
                        let t = serde_json::Value::from("t");
                        prop_assert_eq!(get("token"), vec![&t]);
                        want.retain(|(k, _)| k != "token");
                    } else {
                        prop_assert_eq!(&*push.payload, line.as_str());
                    }
                    prop_assert_eq!(members_of(&push.payload), want);
                }
            }
        }
    }
}
