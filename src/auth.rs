//! Token checks. Client tokens (browsers) and API tokens (back offices) are separate
//! lists so that a token shipped to a browser can never trigger a push. Every
//! comparison runs in constant time over the configured tokens, and compares
//! SHA-256 digests: `ct_eq` on byte strings of different lengths returns at once,
//! which would tell an attacker a token's length; digests all have 32 bytes.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;

/// What a token presented on WebSocket connect allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A browser: receives pushes.
    Client,
    /// An application holding an API token: receives pushes and may publish.
    Publisher,
}

/// Why a WebSocket connect was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingToken,
    UnknownToken,
}

/// The configured tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    client: Vec<Digest>,
    api: Vec<Digest>,
    allow_anonymous: bool,
}

impl Tokens {
    pub fn new(settings: &AuthSettings) -> Self {
        let digests = |list: &[String]| list.iter().map(|t| digest(t.as_bytes())).collect();
        Self {
            client: digests(&settings.client_tokens),
            api: digests(&settings.api_tokens),
            allow_anonymous: settings.allow_anonymous,
        }
    }

    /// Whether `token` may trigger pushes and read the APIs.
    pub fn is_api(&self, token: &str) -> bool {
        contains(&self.api, token.as_bytes())
    }

    /// The role of a WebSocket connect that presented `token` (or none).
    pub fn connect_role(&self, token: Option<&str>) -> Result<Role, Refusal> {
        match token {
            None | Some("") if self.allow_anonymous => Ok(Role::Client),
            None | Some("") => Err(Refusal::MissingToken),
            Some(token) if self.is_api(token) => Ok(Role::Publisher),
            Some(token) if contains(&self.client, token.as_bytes()) => Ok(Role::Client),
            Some(_) => Err(Refusal::UnknownToken),
        }
    }
}

/// A token's SHA-256 digest: the fixed-length form every comparison uses.
type Digest = [u8; 32];

fn digest(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// Compares against every token without stopping at the first match, so timing
/// tells nothing about which token (or how much of one, or how long) matched.
fn contains(tokens: &[Digest], candidate: &[u8]) -> bool {
    let candidate = digest(candidate);
    let mut found = subtle::Choice::from(0);
    for token in tokens {
        found |= token.ct_eq(&candidate);
    }
    found.into()
}

/// Constant-time equality for a single secret (the text port's token, the metrics
/// token), on digests so that the time does not depend on either length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    digest(a).ct_eq(&digest(b)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(anonymous: bool) -> Tokens {
        Tokens::new(&AuthSettings {
            client_tokens: vec!["client-1".into()],
            api_tokens: vec!["api-1".into(), "api-2".into()],
            allow_anonymous: anonymous,
        })
    }

    #[test]
    fn client_and_api_tokens_are_separate() {
        let t = tokens(false);
        assert_eq!(t.connect_role(Some("client-1")), Ok(Role::Client));
        assert_eq!(t.connect_role(Some("api-2")), Ok(Role::Publisher));
        assert!(!t.is_api("client-1"));
        assert!(t.is_api("api-1"));
        assert!(!t.is_api("api-"));
        assert!(!t.is_api("api-10"));
    }

    #[test]
    fn single_secrets_compare_by_value_whatever_the_lengths() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn anonymous_allows_no_token_but_never_a_wrong_one() {
        assert_eq!(tokens(false).connect_role(None), Err(Refusal::MissingToken));
        assert_eq!(tokens(true).connect_role(None), Ok(Role::Client));
        assert_eq!(tokens(true).connect_role(Some("")), Ok(Role::Client));
        assert_eq!(
            tokens(true).connect_role(Some("guess")),
            Err(Refusal::UnknownToken)
        );
    }
}
