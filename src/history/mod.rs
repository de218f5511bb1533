//! History and recovery (README "Recovery", DESIGN.md "Contract v1: Recovery"):
//! positions ([`Stamp`]: an epoch and an offset), their wire text, the frames a
//! `?recover=1` connection gets, and which recorded pushes a reconnect replays.
//!
//! Where the history lives: in memory in embedded mode ([`ring`]), in a Redis
//! stream in cluster mode ([`redis`]). Either way every push gets the next offset of
//! one total order, and a replay is all of `(since, head]` or nothing.

pub mod redis;
pub mod ring;

use std::fmt::Write as _;

use bytes::Bytes;
use bytestring::ByteString;

use crate::hub::{ConnMeta, frame};
use crate::push::{ConnKey, Target};

/// Digits of an offset on the wire: a `u64` zero-padded to 20 decimal digits, so
/// that offsets sort as text exactly as they do as integers.
pub const OFFSET_DIGITS: usize = 20;
/// Characters of an epoch on the wire: a `u64` as 16 lowercase hex digits.
pub const EPOCH_DIGITS: usize = 16;

/// The close code (RFC 6455 §7.4.2 "Service Restart") sent to `?recover=1`
/// connections when their node finds that it missed pushes from Redis (offsets
/// arrived with a hole: its subscription dropped, or its hand-off overflowed) or
/// that Redis lost the history (a new epoch): the client reconnects at once with
/// its position and gets the missed pushes replayed, or `recovered:false` — never
/// a silent gap.
pub const RESUME_CODE: u16 = 1012;

/// A position in the cluster's history: which history (`epoch`, random at each
/// start in embedded mode, and whenever Redis lost its history) and where in it
/// (`offset`, 1 for the first push of an epoch; 0 is the epoch's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub epoch: u64,
    pub offset: u64,
}

/// An offset as the wire shows it (`"00000000000000000042"`).
pub fn offset_text(offset: u64) -> String {
    format!("{offset:020}")
}

/// An epoch as the wire shows it (`"00c0ffee00c0ffee"`).
pub fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// Parses an offset's wire text: exactly [`OFFSET_DIGITS`] ASCII digits.
pub fn parse_offset(text: &str) -> Option<u64> {
    (text.len() == OFFSET_DIGITS && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Parses an epoch's wire text: exactly [`EPOCH_DIGITS`] lowercase hex digits.
pub fn parse_epoch(text: &str) -> Option<u64> {
    (text.len() == EPOCH_DIGITS && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// A new random epoch (never 0, so that a zeroed value is never taken for one).
pub fn new_epoch() -> u64 {
    crate::redis::instance_token().max(1)
}

/// One recorded push, as a replay reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub target: Target,
    pub exclude: Option<ConnKey>,
    /// The Pusher event name ([`crate::push::Push::event`]).
    pub event: Option<crate::push::EventName>,
    /// A presence client event's `user_id` ([`crate::push::Push::user_id`]).
    pub user_id: Option<crate::push::Name>,
    pub payload: ByteString,
}

/// Who a reconnecting connection is, for deciding what of the history is its own:
/// its page and uid as given at connect, and its previous connection id (`prev`).
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub meta: &'a ConnMeta,
    pub prev: Option<ConnKey>,
}

impl Recipient<'_> {
    /// Whether `entry` would have reached this connection, targets as they were:
    /// its page, its uid, all; a `conn` push only when it named `prev`; never a
    /// push that excluded `prev` (without `prev`, `exclude` does not apply).
    pub fn wants(&self, entry: &Entry) -> bool {
        if self.prev.is_some() && entry.exclude == self.prev {
            return false;
        }
        match &entry.target {
            Target::All => true,
            Target::Page(page) => self.meta.page.as_ref() == Some(page),
            Target::Uid(uid) => self.meta.uid.as_ref() == Some(uid),
            Target::Conn(conn) => self.prev == Some(*conn),
            // Pusher channels of other apps are never a native connection's.
            Target::Channel(..) => false,
        }
    }
}

/// What reading the history at connect found: the newest position, and, when a
/// replay was asked for, whether the history holds every push after `since`
/// (`Some`, the entries in order) or not (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub head: Stamp,
    pub replay: Option<Vec<Entry>>,
}

/// The text frame of a push to a `?recover=1` connection:
/// `{"type":"push","offset":"<o>","data":<payload>}`, `offset` left out for a push
/// without one (published while Redis was down: not recoverable). `data` is the
/// payload itself when it is JSON (every JSON door's payload), else the payload as a
/// JSON string (a scene's template may render any text): never invalid JSON.
pub fn push_frame(offset: Option<u64>, payload: &str) -> Bytes {
    let mut text = String::with_capacity(payload.len() + 64);
    text.push_str(r#"{"type":"push","#);
    if let Some(offset) = offset {
        let _ = write!(text, r#""offset":"{offset:020}","#);
    }
    text.push_str(r#""data":"#);
    if serde_json::from_str::<serde::de::IgnoredAny>(payload).is_ok() {
        text.push_str(payload);
    } else {
        // A `str` always serializes.
        text.push_str(&serde_json::to_string(payload).unwrap_or_default());
    }
    text.push('}');
    frame::text(&text)
}

/// `{"type":"welcome","conn":"<id>","epoch":"<e>","offset":"<o>"}`.
pub fn welcome_frame(conn: ConnKey, head: Stamp) -> Bytes {
    frame::text(&format!(
        r#"{{"type":"welcome","conn":"{conn}","epoch":"{}","offset":"{}"}}"#,
        epoch_text(head.epoch),
        offset_text(head.offset)
    ))
}

/// `{"type":"recovered","recovered":<bool>,"replayed":<n>}`.
pub fn recovered_frame(recovered: bool, replayed: usize) -> Bytes {
    frame::text(&format!(
        r#"{{"type":"recovered","recovered":{recovered},"replayed":{replayed}}}"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Name;
    use proptest::prelude::*;

    fn json(frame: &Bytes) -> serde_json::Value {
        serde_json::from_slice(frame::parse(frame).unwrap().1).unwrap()
    }

    #[test]
    fn offsets_and_epochs_have_one_text_each() {
        assert_eq!(offset_text(0), "00000000000000000000");
        assert_eq!(offset_text(u64::MAX), "18446744073709551615");
        assert_eq!(parse_offset("00000000000000000042"), Some(42));
        for bad in [
            "42",
            "",
            "0000000000000000004x",
            "+0000000000000000042",
            "99999999999999999999",
        ] {
            assert_eq!(parse_offset(bad), None, "{bad:?}");
        }
        assert_eq!(epoch_text(0xc0ffee), "0000000000c0ffee");
        assert_eq!(parse_epoch("0000000000c0ffee"), Some(0xc0ffee));
        for bad in [
            "c0ffee",
            "0000000000C0FFEE",
            "000000000000000g",
            "+000000000c0ffee",
        ] {
            assert_eq!(parse_epoch(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn push_frames_embed_json_and_quote_the_rest() {
        let framed = json(&push_frame(Some(7), r#"{"a":1}"#));
        assert_eq!(
            framed,
            serde_json::json!({"type":"push","offset":"00000000000000000007","data":{"a":1}})
        );
        let framed = json(&push_frame(None, "plain \"text\"\n"));
        assert_eq!(
            framed,
            serde_json::json!({"type":"push","data":"plain \"text\"\n"})
        );
        let framed = json(&push_frame(Some(1), "{\"cut\":"));
        assert_eq!(framed["data"], "{\"cut\":");
    }

    #[test]
    fn replay_follows_targets_as_they_were() {
        let name = |t: &str| Name::try_from(t).unwrap();
        let meta = ConnMeta {
            page: Some(name("home")),
            uid: Some(name("7")),
            session: None,
            connected_at: 0,
        };
        let me = ConnKey { node: 1, local: 2 };
        let other = ConnKey { node: 1, local: 3 };
        let entry = |target, exclude| Entry {
            offset: 1,
            target,
            exclude,
            event: None,
            user_id: None,
            payload: "{}".into(),
        };
        let with_prev = Recipient {
            meta: &meta,
            prev: Some(me),
        };
        let without = Recipient {
            meta: &meta,
            prev: None,
        };
        let cases = [
            (entry(Target::All, None), true, true),
            (entry(Target::Page(name("home")), None), true, true),
            (entry(Target::Page(name("list")), None), false, false),
            (entry(Target::Uid(name("7")), None), true, true),
            (entry(Target::Uid(name("8")), None), false, false),
            (entry(Target::Conn(me), None), true, false),
            (entry(Target::Conn(other), None), false, false),
            (entry(Target::All, Some(me)), false, true),
            (entry(Target::Page(name("home")), Some(other)), true, true),
        ];
        for (entry, with, without_prev) in cases {
            assert_eq!(with_prev.wants(&entry), with, "{entry:?} with prev");
            assert_eq!(
                without.wants(&entry),
                without_prev,
                "{entry:?} without prev"
            );
        }
    }

    proptest! {
        #[test]
        fn offsets_round_trip_and_sort_as_text(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(parse_offset(&offset_text(a)), Some(a));
            prop_assert_eq!(offset_text(a).cmp(&offset_text(b)), a.cmp(&b));
            prop_assert_eq!(parse_epoch(&epoch_text(a)), Some(a));
        }

        #[test]
        fn offset_and_epoch_parsers_never_panic(text in "\\PC{0,24}|[0-9a-fA-F]{14,22}") {
            if let Some(offset) = parse_offset(&text) {
                prop_assert_eq!(offset_text(offset), text.clone());
            }
            if let Some(epoch) = parse_epoch(&text) {
                prop_assert_eq!(epoch_text(epoch), text);
            }
        }

        #[test]
        fn push_frames_are_always_json(payload in "\\PC{0,40}|[{}\\[\\]\":,0-9a ]{0,20}", offset in proptest::option::of(any::<u64>())) {
            let framed = json(&push_frame(offset, &payload));
            prop_assert_eq!(&framed["type"], "push");
            prop_assert_eq!(framed.get("offset").and_then(|o| o.as_str()).map(String::from), offset.map(offset_text));
        }
    }
}
