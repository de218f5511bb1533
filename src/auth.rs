//! Token checks. Client tokens (browsers) and API tokens (back offices) are separate
//! lists so that a token shipped to a browser can never trigger a push. Every
//! comparison runs in constant time over the configured tokens.

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
    client: Vec<Box<[u8]>>,
    api: Vec<Box<[u8]>>,
    allow_anonymous: bool,
}

impl Tokens {
    pub fn new(settings: &AuthSettings) -> Self {
        let bytes = |list: &[String]| list.iter().map(|t| t.as_bytes().into()).collect();
        Self {
            client: bytes(&settings.client_tokens),
            api: bytes(&settings.api_tokens),
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

/// Compares against every token without stopping at the first match, so timing
/// tells nothing about which token (or how much of one) matched.
fn contains(tokens: &[Box<[u8]>], candidate: &[u8]) -> bool {
    let mut found = subtle::Choice::from(0);
    for token in tokens {
        found |= token.as_ref().ct_eq(candidate);
    }
    found.into()
}

/// Constant-time equality for a single secret (the text port's token).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
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
