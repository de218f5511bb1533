//! The one value every ingress produces and the fan-out consumes: a [`Push`] is a
//! target and the exact text frame to send, serialized once and shared by reference
//! count with every connection that receives it.
//!
//! A target's page or uid is a [`Name`], checked once at the door the push came in
//! by (the name rule, README "The name rule"); nothing downstream checks again.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

/// Longest page, uid or session name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 128;

/// 2^53: from here on an `f64` no longer holds every integer, so a number that
/// reached [`Name::from_json`] as an `f64` this large may have been another id
/// before parsing rounded it, and is refused. ([`Name::from_raw_json`] reads the
/// digits as written and has no such limit.)
const MAX_EXACT_FLOAT_ID: f64 = 9_007_199_254_740_992.0;

/// A page, uid or session name: 1..=[`MAX_NAME_BYTES`] bytes of UTF-8 without
/// control characters (Unicode `Cc`), line or paragraph separators (U+2028,
/// U+2029), or the invisible characters that make a name read as another in logs
/// and dashboards: Unicode's default-ignorable code points (soft hyphen U+00AD,
/// zero-width and bidi controls U+200B..=U+200F, U+202A..=U+202E, U+2060..=U+206F,
/// variation selectors, Hangul fillers, U+FEFF, U+FFF0..=U+FFFB, tags U+E0000..).
///
/// Built once at the door ([`Name::try_from`] for query values and config,
/// [`Name::from_json`] / [`Name::from_raw_json`] for JSON fields); clones share
/// one allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

/// Why a value is not a [`Name`]. The text names the rule, for error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("must not contain control or invisible format characters")]
    Control,
    /// A JSON value that is neither a string nor an integral number.
    #[error("must be a string or an integral number, not {0}")]
    NotText(&'static str),
    /// A JSON number with a fraction, or an integral value too large to be exact.
    #[error("must be a string or an integral number, not {0}")]
    NotIntegral(&'static str),
}

/// Characters a name may not hold (see [`Name`]).
fn is_refused_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

impl Name {
    /// The name a JSON value stands for: a string as is; an integer, or a number
    /// with an integral value (`1.0`, `1e0`, `-0.0`), as its decimal text (`"1"`,
    /// `"0"`); `null`, booleans, fractions, arrays and objects are refused.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, NameError> {
        use serde_json::Value;
        match value {
            Value::String(text) => Self::try_from(text.as_str()),
            Value::Number(number) => match number.as_f64() {
                // An `f64` this large may be a rounded integer literal.
                Some(f)
                    if !number.is_u64() && !number.is_i64() && f.abs() >= MAX_EXACT_FLOAT_ID =>
                {
                    Err(NameError::NotIntegral("a number too large to be exact"))
                }
                _ => Self::from_number_text(&number.to_string()),
            },
            Value::Null => Err(NameError::NotText("null")),
            Value::Bool(_) => Err(NameError::NotText("a boolean")),
            Value::Array(_) => Err(NameError::NotText("an array")),
            Value::Object(_) => Err(NameError::NotText("an object")),
        }
    }

    /// Like [`Name::from_json`], from the JSON text of one value as it was written:
    /// an integer literal keeps every digit (`12345678901234567890123` stays that
    /// id, where an `f64` would round it).
    pub fn from_raw_json(raw: &serde_json::value::RawValue) -> Result<Self, NameError> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => {
                let decoded: String =
                    serde_json::from_str(text).map_err(|_| NameError::NotText("a string"))?;
                Self::try_from(decoded.as_str())
            }
            Some(b'-' | b'0'..=b'9') => Self::from_number_text(text),
            Some(b'n') => Err(NameError::NotText("null")),
            Some(b't' | b'f') => Err(NameError::NotText("a boolean")),
            Some(b'[') => Err(NameError::NotText("an array")),
            Some(b'{') => Err(NameError::NotText("an object")),
            _ => Err(NameError::NotText("a JSON value")),
        }
    }

    /// A JSON number's text (RFC 8259 §6 grammar) as a name, computed on the
    /// decimal text itself so that nothing is rounded: `1.0`, `1e0` and `10e-1`
    /// are `"1"`, `-0.0` is `"0"`, `1.5` and `0.1e1x` are refused.
    fn from_number_text(text: &str) -> Result<Self, NameError> {
        let fraction = NameError::NotIntegral("a fractional number");
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((mantissa, exponent)) => (mantissa, Some(exponent)),
            None => (unsigned, None),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((int, frac)) if !frac.is_empty() => (int, frac),
            Some(_) => return Err(NameError::NotIntegral("a number")),
            None => (mantissa, ""),
        };
        let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let exponent_digits = exponent.map(|e| e.strip_prefix(['+', '-']).unwrap_or(e));
        if int.is_empty()
            || !is_digits(int)
            || !is_digits(frac)
            || exponent_digits.is_some_and(|e| e.is_empty() || !is_digits(e))
        {
            return Err(NameError::NotIntegral("a number"));
        }
        let digits = format!("{int}{frac}");
        let significant = digits.trim_start_matches('0');
        if significant.is_empty() {
            return Self::try_from("0");
        }
        let exponent: i64 = match exponent {
            None => 0,
            Some(e) => e
                .strip_prefix('+')
                .unwrap_or(e)
                .parse()
                .map_err(|_| NameError::NotIntegral("a number out of range"))?,
        };
        // Where the decimal point falls in `significant`.
        let leading_zeros = i64::try_from(digits.len() - significant.len()).unwrap_or(i64::MAX);
        let int_len = i64::try_from(int.len()).unwrap_or(i64::MAX);
        let point = int_len
            .saturating_add(exponent)
            .saturating_sub(leading_zeros);
        let Ok(point) = usize::try_from(point) else {
            return Err(fraction);
        };
        if point == 0 {
            return Err(fraction);
        }
        if point.saturating_add(usize::from(negative)) > MAX_NAME_BYTES {
            return Err(NameError::TooLong);
        }
        let (whole, rest) = significant
            .split_at_checked(point.min(significant.len()))
            .unwrap_or((significant, ""));
        if rest.bytes().any(|b| b != b'0') {
            return Err(fraction);
        }
        let mut out = String::with_capacity(point + 1);
        if negative {
            out.push('-');
        }
        out.push_str(whole);
        out.extend(std::iter::repeat_n('0', point - whole.len()));
        Self::try_from(out.as_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;

    fn try_from(text: &str) -> Result<Self, NameError> {
        if text.is_empty() {
            Err(NameError::Empty)
        } else if text.len() > MAX_NAME_BYTES {
            Err(NameError::TooLong)
        } else if text.chars().any(is_refused_char) {
            Err(NameError::Control)
        } else {
            Ok(Name(Arc::from(text)))
        }
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;

    fn try_from(text: String) -> Result<Self, NameError> {
        Self::try_from(text.as_str())
    }
}

impl TryFrom<&serde_json::Value> for Name {
    type Error = NameError;

    fn try_from(value: &serde_json::Value) -> Result<Self, NameError> {
        Self::from_json(value)
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Name::from_json(&value).map_err(serde::de::Error::custom)
    }
}

/// Who a push is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every open connection.
    All,
    /// Every connection opened on this page (scene).
    Page(Name),
    /// Every connection bound to this user id (all of a user's tabs).
    Uid(Name),
    /// One connection, by the id its welcome frame gave (`conn`); only the node
    /// whose number is the id's first part delivers it.
    Conn(ConnKey),
    /// Pusher channel `.1` of the non-bridged Pusher app whose `id` is `.0`
    /// (the bridged app's channels are [`Target::Page`]: one namespace with the
    /// native pages). Every valid channel name is a [`Name`].
    Channel(AppSlot, Name),
}

/// A Pusher app, by its `id` (`[[pusher.apps]] id`, checked at start to be
/// 1..=128 bytes of `[A-Za-z0-9._-]`, hence a [`Name`]).
pub type AppSlot = Name;

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Page(page) => write!(f, "page {page:?}"),
            Target::Uid(uid) => write!(f, "uid {uid:?}"),
            Target::Conn(conn) => write!(f, "conn {conn}"),
            Target::Channel(app, channel) => write!(f, "app {app:?} channel {channel:?}"),
        }
    }
}

/// Which door a push came in through; used for metrics and logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ingress {
    HttpFunc,
    HttpApi,
    Text,
    Udp,
    Publisher,
    /// The Pusher HTTP API (`POST /apps/{id}/events`, `batch_events`): one per channel.
    PusherApi,
}

impl Ingress {
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::HttpFunc => "http_func",
            Ingress::HttpApi => "http_api",
            Ingress::Text => "text",
            Ingress::Udp => "udp",
            Ingress::Publisher => "ws_publisher",
            Ingress::PusherApi => "pusher_api",
        }
    }
}

/// A message on its way to connections.
#[derive(Debug, Clone)]
pub struct Push {
    pub target: Target,
    /// The frame's text exactly as clients receive it. `ByteString` clones share
    /// one buffer, so fanning out to 10k connections copies no payload bytes.
    pub payload: ByteString,
    /// A connection that does not get this push although it matches the target
    /// (`"exclude"`, Laravel's `toOthers()`).
    pub exclude: Option<ConnKey>,
    /// The Pusher event name Pusher subscribers see (`{"event":…}`); `None` is
    /// [`DEFAULT_EVENT`]. Native connections never see it: they get `payload`.
    pub event: Option<EventName>,
    /// The `user_id` a presence client event carries (pusher-js `members`); `None`
    /// for every other push.
    pub user_id: Option<Name>,
}

/// The event name of a push that names none (scenes without `event`, native doors).
pub const DEFAULT_EVENT: &str = "scenecast.push";

/// Longest event name, in bytes (Pusher's documented limit).
pub const MAX_EVENT_BYTES: usize = 200;

/// A Pusher event name: 1..=[`MAX_EVENT_BYTES`] bytes of UTF-8 without control
/// characters. Clones share one allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventName(Arc<str>);

/// Why a text is not an [`EventName`]; the text is the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventNameError {
    #[error("event name must not be empty")]
    Empty,
    #[error("event name must be at most {MAX_EVENT_BYTES} bytes")]
    TooLong,
    #[error("event name must not contain control characters")]
    Control,
}

impl EventName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// [`DEFAULT_EVENT`].
    pub fn default_event() -> Self {
        Self(Arc::from(DEFAULT_EVENT))
    }
}

impl TryFrom<&str> for EventName {
    type Error = EventNameError;

    fn try_from(text: &str) -> Result<Self, EventNameError> {
        if text.is_empty() {
            Err(EventNameError::Empty)
        } else if text.len() > MAX_EVENT_BYTES {
            Err(EventNameError::TooLong)
        } else if text.chars().any(char::is_control) {
            Err(EventNameError::Control)
        } else {
            Ok(Self(Arc::from(text)))
        }
    }
}

impl Deref for EventName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for EventName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        EventName::try_from(&*text).map_err(serde::de::Error::custom)
    }
}

impl Push {
    pub fn new(target: Target, payload: impl Into<ByteString>) -> Self {
        Self {
            target,
            payload: payload.into(),
            exclude: None,
            event: None,
            user_id: None,
        }
    }

    /// The same push, with Pusher event name `event`.
    pub fn with_event(mut self, event: Option<EventName>) -> Self {
        self.event = event;
        self
    }

    /// The event name Pusher subscribers see.
    pub fn event_name(&self) -> &str {
        self.event.as_deref().unwrap_or(DEFAULT_EVENT)
    }

    /// The same push, skipping connection `exclude`.
    pub fn excluding(mut self, exclude: Option<ConnKey>) -> Self {
        self.exclude = exclude;
        self
    }
}

/// Largest node number of a [`ConnKey`]: at most 9 decimal digits.
pub const MAX_CONN_NODE: u64 = 999_999_999;

/// A connection's cluster-wide id, `"{node}.{local}"` on the wire (welcome frame
/// `conn`, push targets `conn`/`exclude`, reconnect `prev`): both parts decimal
/// without sign, so the text matches `^\d+\.\d+$` (the Pusher `socket_id` rule,
/// which the SDKs check). `node` is a random number drawn at each start (1..=
/// [`MAX_CONN_NODE`]), so ids are unique across nodes and restarts; `local` is the
/// hub's connection number on that node, 64 random bits: an id cannot be guessed
/// from another, so naming one (`prev`) proves being that connection or being told
/// by it (README "Recovery").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub node: u64,
    pub local: u64,
}

/// Why a text is not a [`ConnKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be a connection id: two decimal numbers joined by a dot, e.g. \"123.45\"")]
pub struct ConnKeyError;

impl ConnKey {
    /// Parses `"{node}.{local}"`: ASCII digits only on both sides (no sign, no
    /// spaces), each fitting a `u64`.
    pub fn parse(text: &str) -> Result<Self, ConnKeyError> {
        let (node, local) = text.split_once('.').ok_or(ConnKeyError)?;
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConnKeyError);
            }
            part.parse::<u64>().map_err(|_| ConnKeyError)
        };
        Ok(Self {
            node: number(node)?,
            local: number(local)?,
        })
    }

    /// A JSON value as a connection id: a string only.
    pub fn from_raw_json(raw: &serde_json::value::RawValue) -> Result<Self, ConnKeyError> {
        let text: std::borrow::Cow<'_, str> =
            serde_json::from_str(raw.get()).map_err(|_| ConnKeyError)?;
        Self::parse(&text)
    }
}

impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.local)
    }
}

impl std::str::FromStr for ConnKey {
    type Err = ConnKeyError;

    fn from_str(text: &str) -> Result<Self, ConnKeyError> {
        Self::parse(text)
    }
}

impl Serialize for ConnKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConnKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    #[test]
    fn strings_are_taken_as_is_within_the_rule() {
        assert_eq!(&*Name::try_from("home").unwrap(), "home");
        assert_eq!(&*Name::try_from("名前").unwrap(), "名前");
        assert_eq!(Name::try_from(""), Err(NameError::Empty));
        assert!(Name::try_from("x".repeat(128).as_str()).is_ok());
        assert_eq!(
            Name::try_from("x".repeat(129).as_str()),
            Err(NameError::TooLong)
        );
        for bad in [
            "a\nb",
            "\u{0}",
            "a\u{7f}",
            "\u{85}",
            "a\u{202e}b",
            "\u{feff}a",
            "a\u{2028}",
            "\u{ad}",
            "a\u{ad}b",
            "a\u{180e}",
            "\u{fff9}x",
            "x\u{e0001}",
            "a\u{34f}",
            "\u{3164}",
            "a\u{fe0f}",
        ] {
            assert_eq!(Name::try_from(bad), Err(NameError::Control), "{bad:?}");
        }
    }

    #[test]
    fn integral_numbers_become_their_decimal_text() {
        for (value, text) in [
            (json!(1), "1"),
            (json!(-7), "-7"),
            (json!(1.0), "1"),
            (json!(-0.0), "0"),
            (json!(u64::MAX), "18446744073709551615"),
        ] {
            assert_eq!(Name::from_json(&value).unwrap().as_str(), text, "{value}");
        }
        for value in [
            json!(null),
            json!(true),
            json!(1.5),
            json!([1]),
            json!({}),
            json!(""),
            json!(1e300),
            json!(1e20),
        ] {
            assert!(Name::from_json(&value).is_err(), "{value}");
        }
        let raw = |t: &str| Name::from_raw_json(&serde_json::from_str::<Box<RawValue>>(t).unwrap());
        use serde_json::value::RawValue;
        assert_eq!(raw("1e0").unwrap().as_str(), "1");
        assert_eq!(raw("-0").unwrap().as_str(), "0");
        assert_eq!(raw("0.000e5").unwrap().as_str(), "0");
        assert_eq!(
            raw("12345678901234567890123").unwrap().as_str(),
            "12345678901234567890123"
        );
        assert_eq!(raw("1e127").map(|n| n.len()), Ok(128));
        assert_eq!(raw("1e128"), Err(NameError::TooLong));
        assert_eq!(raw("-1e127"), Err(NameError::TooLong));
        assert!(matches!(
            raw("1e-99999999999999999999999"),
            Err(NameError::NotIntegral(_))
        ));
        assert!(matches!(raw("0.5"), Err(NameError::NotIntegral(_))));
        assert!(matches!(raw("null"), Err(NameError::NotText(_))));
        assert_eq!(raw(r#""a\u0000""#), Err(NameError::Control));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (-1000i64..1000).prop_map(|i| Value::from(i as f64)),
            "\\PC{0,140}".prop_map(Value::String),
            "[\\x00-\\x1f\u{202e}\u{feff}a]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{0,2}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn holds_the_rule(name: &Name) -> bool {
        (1..=MAX_NAME_BYTES).contains(&name.len()) && !name.chars().any(is_refused_char)
    }

    #[test]
    fn conn_keys_are_two_decimal_numbers() {
        let key = ConnKey::parse("123456789.42").unwrap();
        assert_eq!((key.node, key.local), (123_456_789, 42));
        assert_eq!(key.to_string(), "123456789.42");
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1",
            "1.2.3",
            "-1.2",
            "+1.2",
            " 1.2",
            "1.2 ",
            "1,2",
            "a.1",
            "1.1e3",
            "١.٢",
            "18446744073709551616.1",
        ] {
            assert_eq!(ConnKey::parse(bad), Err(ConnKeyError), "{bad:?}");
        }
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(r#""7.8""#).unwrap();
        assert_eq!(ConnKey::from_raw_json(&raw).unwrap().to_string(), "7.8");
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str("7.8").unwrap();
        assert!(
            ConnKey::from_raw_json(&raw).is_err(),
            "a number is not an id"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn conn_keys_round_trip_and_match_the_socket_id_rule(node in any::<u64>(), local in any::<u64>()) {
            let key = ConnKey { node, local };
            let text = key.to_string();
            prop_assert!(text.split_once('.').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()
                && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())));
            prop_assert_eq!(ConnKey::parse(&text), Ok(key));
        }

        #[test]
        fn any_text_is_a_conn_key_only_if_it_reads_back_the_same(text in "[0-9.+\\- a]{0,24}|\\PC{0,12}") {
            if let Ok(key) = ConnKey::parse(&text) {
                // Leading zeros aside, the text is the key.
                let (a, b) = text.split_once('.').unwrap();
                prop_assert_eq!(a.parse::<u64>().unwrap(), key.node);
                prop_assert_eq!(b.parse::<u64>().unwrap(), key.local);
            }
        }

        #[test]
        fn any_string_is_a_name_exactly_when_it_holds_the_rule(text in "\\PC{0,140}|[\\x00-\\x20\u{2000}-\u{2070}\u{feff}a]{0,8}") {
            match Name::try_from(text.as_str()) {
                Ok(name) => {
                    prop_assert!(holds_the_rule(&name));
                    prop_assert_eq!(name.as_str(), text.as_str());
                }
                Err(_) => prop_assert!(text.is_empty() || text.len() > MAX_NAME_BYTES || text.chars().any(is_refused_char)),
            }
        }

        #[test]
        fn any_json_value_never_panics_and_only_strings_and_integers_pass(value in json_value()) {
            let from_value = Name::from_json(&value);
            let text = value.to_string();
            let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&text).unwrap();
            let from_raw = Name::from_raw_json(&raw);
            for name in [&from_value, &from_raw].into_iter().flatten() {
                prop_assert!(holds_the_rule(name));
            }
            match &value {
                Value::String(s) => {
                    let direct = Name::try_from(s.as_str()).ok();
                    prop_assert_eq!(from_value.as_ref().ok(), direct.as_ref());
                    prop_assert_eq!(from_raw.as_ref().ok(), direct.as_ref());
                }
                Value::Number(n) => {
                    if let Ok(name) = &from_value {
                        // The name reads back as the same number.
                        let back: f64 = name.parse().unwrap();
                        prop_assert_eq!(back, n.as_f64().unwrap());
                        prop_assert_eq!(from_raw.as_ref().ok(), Some(name));
                    }
                    if let Ok(name) = &from_raw {
                        prop_assert!(name.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
                    }
                }
                _ => {
                    prop_assert!(from_value.is_err());
                    prop_assert!(from_raw.is_err());
                }
            }
        }

        #[test]
        fn number_text_never_panics(text in "-?[0-9]{0,4}(\\.[0-9]{0,4})?([eE][+-]?[0-9]{0,25})?") {
            if let Ok(name) = Name::from_number_text(&text) {
                prop_assert!(holds_the_rule(&name));
                let back: f64 = name.parse().unwrap();
                let given: f64 = text.parse().unwrap();
                prop_assert!(back == given || (back - given).abs() <= given.abs() * 1e-12);
            }
        }
    }
}
