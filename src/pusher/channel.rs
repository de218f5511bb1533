//! Pusher channel names and their kinds (PUSHER-NOTES §3.5).
//!
//! A name is 1..=[`MAX_CHANNEL_BYTES`] bytes of `[-a-zA-Z0-9_=@,.;]`, optionally led by
//! `#` (reserved for `#server-to-user-{uid}`). The limit is the Names rule's 128 bytes
//! (DESIGN.md "Names"): stricter than the SDKs' 200, looser than soketi's 100, and it
//! makes every valid channel a valid page [`Name`] — a public channel `X` *is* page `X`.

use std::fmt;
use std::sync::Arc;

use crate::push::Name;

/// Longest channel name, in bytes (the Names rule's limit).
pub const MAX_CHANNEL_BYTES: usize = 128;

/// The prefix of the one `#` channel: `#server-to-user-{uid}` (pusher-js `src/core/user.ts`).
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// A validated channel name; clones share one allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel {
    name: Arc<str>,
    kind: ChannelKind,
}

/// What a channel's prefix makes it. The order of the checks matters:
/// `private-encrypted-cache-` before `private-encrypted-` before `private-cache-`
/// before `private-`, `presence-cache-` before `presence-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    /// No prefix: anyone may subscribe; the same namespace as native pages.
    Public,
    /// `private-`: subscribe with `auth` = `key:HMAC(socket_id:channel)`.
    Private,
    /// `private-encrypted-`: private; payloads are NaCl secretboxes the server only relays.
    PrivateEncrypted,
    /// `presence-`: private plus `channel_data` (`{user_id, user_info}`), members listed.
    Presence,
    /// `cache-`: public; the last event is kept and replayed to new subscribers.
    Cache,
    /// `private-cache-`.
    PrivateCache,
    /// `private-encrypted-cache-`.
    PrivateEncryptedCache,
    /// `presence-cache-`.
    PresenceCache,
    /// `#server-to-user-{uid}`: only the signed-in connections of user `uid`.
    ServerToUser(Arc<str>),
}

/// Why a text is not a channel name; the text is the `pusher:subscription_error` /
/// HTTP 400 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name must not be empty")]
    Empty,
    #[error("channel name must be at most {MAX_CHANNEL_BYTES} bytes")]
    TooLong,
    #[error("channel name may only contain a-z, A-Z, 0-9 and -_=@,.;")]
    BadChar,
    /// A `#` name other than `#server-to-user-{uid}` with a non-empty uid.
    #[error("channel names starting with # are reserved (#server-to-user-{{uid}} only)")]
    Reserved,
}

impl Channel {
    /// Validates `text` and classifies it by prefix.
    pub fn parse(text: &str) -> Result<Self, ChannelError> {
        if text.is_empty() {
            return Err(ChannelError::Empty);
        }
        if text.len() > MAX_CHANNEL_BYTES {
            return Err(ChannelError::TooLong);
        }
        let body = text.strip_prefix('#').unwrap_or(text);
        if body.is_empty() || !body.bytes().all(is_channel_byte) {
            return Err(ChannelError::BadChar);
        }
        let kind = if text.starts_with('#') {
            match text.strip_prefix(SERVER_TO_USER_PREFIX) {
                Some(uid) if !uid.is_empty() => ChannelKind::ServerToUser(uid.into()),
                _ => return Err(ChannelError::Reserved),
            }
        } else {
            ChannelKind::of(text)
        };
        Ok(Self {
            name: text.into(),
            kind,
        })
    }

    /// `#server-to-user-{uid}` for a uid that fits the charset.
    pub fn server_to_user(uid: &str) -> Result<Self, ChannelError> {
        Self::parse(&format!("{SERVER_TO_USER_PREFIX}{uid}"))
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &ChannelKind {
        &self.kind
    }

    /// The native page this channel is (public and `cache-` channels only: every
    /// other kind needs an auth that a native connection does not give).
    pub fn page(&self) -> Option<Name> {
        match self.kind {
            ChannelKind::Public | ChannelKind::Cache => Name::try_from(self.as_str()).ok(),
            _ => None,
        }
    }
}

impl ChannelKind {
    /// The kind of a name without `#` (see the order note on [`ChannelKind`]).
    fn of(name: &str) -> Self {
        const PREFIXES: [(&str, ChannelKind); 7] = [
            (
                "private-encrypted-cache-",
                ChannelKind::PrivateEncryptedCache,
            ),
            ("private-encrypted-", ChannelKind::PrivateEncrypted),
            ("private-cache-", ChannelKind::PrivateCache),
            ("private-", ChannelKind::Private),
            ("presence-cache-", ChannelKind::PresenceCache),
            ("presence-", ChannelKind::Presence),
            ("cache-", ChannelKind::Cache),
        ];
        PREFIXES
            .into_iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map_or(ChannelKind::Public, |(_, kind)| kind)
    }

    /// A subscription needs `auth` (private, encrypted and presence kinds). A
    /// `#server-to-user-` channel needs a signed-in user instead.
    pub fn needs_auth(&self) -> bool {
        !matches!(self, Self::Public | Self::Cache | Self::ServerToUser(_))
    }

    /// Members are tracked and `channel_data` is signed.
    pub fn is_presence(&self) -> bool {
        matches!(self, Self::Presence | Self::PresenceCache)
    }

    /// The last event is kept; a subscriber gets it, or `pusher:cache_miss`.
    pub fn is_cache(&self) -> bool {
        matches!(
            self,
            Self::Cache | Self::PrivateCache | Self::PrivateEncryptedCache | Self::PresenceCache
        )
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, Self::PrivateEncrypted | Self::PrivateEncryptedCache)
    }

    /// `client-*` events may be sent here (when the app allows them): private and
    /// presence kinds. Not encrypted ones (pusher-js refuses to trigger there, and the
    /// server could not check them) nor public or server-to-user ones.
    pub fn allows_client_events(&self) -> bool {
        matches!(
            self,
            Self::Private | Self::PrivateCache | Self::Presence | Self::PresenceCache
        )
    }
}

/// Pusher's channel charset `[-a-zA-Z0-9_=@,.;]`.
fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'@' | b',' | b'.' | b';')
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({:?}, {:?})", &*self.name, self.kind)
    }
}

impl std::str::FromStr for Channel {
    type Err = ChannelError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind(text: &str) -> ChannelKind {
        Channel::parse(text).unwrap().kind().clone()
    }

    #[test]
    fn kinds_by_prefix() {
        assert_eq!(kind("orders"), ChannelKind::Public);
        assert_eq!(kind("private-orders"), ChannelKind::Private);
        assert_eq!(kind("private-encrypted-x"), ChannelKind::PrivateEncrypted);
        assert_eq!(
            kind("private-encrypted-cache-x"),
            ChannelKind::PrivateEncryptedCache
        );
        assert_eq!(kind("private-cache-x"), ChannelKind::PrivateCache);
        assert_eq!(kind("presence-room"), ChannelKind::Presence);
        assert_eq!(kind("presence-cache-room"), ChannelKind::PresenceCache);
        assert_eq!(kind("cache-x"), ChannelKind::Cache);
        assert_eq!(
            kind("#server-to-user-42"),
            ChannelKind::ServerToUser("42".into())
        );
        // A prefix without its dash is a public name.
        assert_eq!(kind("private"), ChannelKind::Public);
        assert_eq!(kind("presencex"), ChannelKind::Public);
        assert_eq!(kind("a-private-x"), ChannelKind::Public);
    }

    #[test]
    fn refusals() {
        assert_eq!(Channel::parse(""), Err(ChannelError::Empty));
        assert_eq!(Channel::parse("a b"), Err(ChannelError::BadChar));
        assert_eq!(Channel::parse("é"), Err(ChannelError::BadChar));
        assert_eq!(Channel::parse("#"), Err(ChannelError::BadChar));
        assert_eq!(Channel::parse("#x"), Err(ChannelError::Reserved));
        assert_eq!(
            Channel::parse("#server-to-user-"),
            Err(ChannelError::Reserved)
        );
        assert_eq!(Channel::parse("a#b"), Err(ChannelError::BadChar));
        assert!(Channel::parse(&"a".repeat(128)).is_ok());
        assert_eq!(Channel::parse(&"a".repeat(129)), Err(ChannelError::TooLong));
        assert!(Channel::parse("-_=@,.;AZaz09").is_ok());
    }

    #[test]
    fn pages_are_public_channels_only() {
        let page = Channel::parse("home").unwrap().page().unwrap();
        assert_eq!(page.to_string(), "home");
        assert!(Channel::parse("cache-home").unwrap().page().is_some());
        assert!(Channel::parse("private-home").unwrap().page().is_none());
        assert!(Channel::parse("presence-home").unwrap().page().is_none());
        assert!(
            Channel::parse("#server-to-user-1")
                .unwrap()
                .page()
                .is_none()
        );
    }

    #[test]
    fn auth_and_client_event_rules() {
        assert!(!ChannelKind::Public.needs_auth());
        assert!(ChannelKind::PrivateEncrypted.needs_auth());
        assert!(ChannelKind::PresenceCache.is_presence() && ChannelKind::PresenceCache.is_cache());
        assert!(!ChannelKind::PrivateEncrypted.allows_client_events());
        assert!(ChannelKind::Presence.allows_client_events());
        assert!(!ChannelKind::Cache.allows_client_events());
    }

    proptest! {
        /// Any text parses or is refused, never panics; what parses keeps its text,
        /// fits the charset and the limit, and is a page when public.
        #[test]
        fn any_text(text in "\\PC{0,140}|[#a-z\\-]{0,20}|#server-to-user-[a-z0-9]{0,5}") {
            if let Ok(channel) = Channel::parse(&text) {
                prop_assert_eq!(channel.as_str(), text.as_str());
                prop_assert!(text.len() <= MAX_CHANNEL_BYTES);
                if *channel.kind() == ChannelKind::Public {
                    prop_assert!(channel.page().is_some());
                }
            }
        }
    }
}
