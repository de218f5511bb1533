//! Token checks. Client tokens (browsers) and API tokens (back offices) are separate
//! lists so that a token shipped to a browser can never trigger a push. Every
//! comparison runs in constant time over the configured tokens, and compares
//! SHA-256 digests: `ct_eq` on byte strings of different lengths returns at once,
//! which would tell an attacker a token's length; digests all have 32 bytes.
//!
//! Signed identities (README "Signed identities"): with `auth.jwt_secret` (HS256)
//! and/or `auth.jwt_public_key_file` (RS256 or ES256, chosen by the key's type) a
//! connect's `token` may be a JWT (RFC 7519) whose `sub` binds the connection's uid
//! and whose `pages` limit the pages it may watch. A JWT only ever makes a
//! [`Role::Client`]: publishers use API tokens.

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;
use crate::push::Name;

/// Clock skew tolerated on a JWT's `exp` and `nbf`, in seconds: small, so a token
/// is dead within half a minute of its `exp` whatever the clocks.
pub const JWT_LEEWAY_SECS: u64 = 30;

/// Shortest `auth.jwt_secret`, in bytes: RFC 7518 §3.2 wants an HS256 key of at
/// least the hash's size (256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// What a token presented on WebSocket connect allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A browser: receives pushes.
    Client,
    /// An application holding an API token: receives pushes and may publish.
    Publisher,
}

/// Why a WebSocket connect was refused. [`Refusal::status`] is the HTTP status of
/// the JSON refusal (401 for the token itself, 403 for what it does not allow),
/// [`Refusal::reason`] the `scenecast_rejected_total` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingToken,
    UnknownToken,
    /// A JWT past its `exp` (plus [`JWT_LEEWAY_SECS`]).
    Expired,
    /// A JWT that does not verify: malformed, signed with another key, or with an
    /// `alg` other than the configured key's (`none` included).
    BadSignature,
    /// A JWT that verifies but whose claims are unusable: no `exp`, a `nbf` in the
    /// future, or a `sub` / `pages` entry that breaks the Names rule. Names the claim.
    BadClaims(&'static str),
    /// `?uid=` other than the JWT's `sub`.
    UidMismatch,
    /// `?page=` missing or not in the JWT's `pages`.
    PageScope,
    /// `?uid=` without a signed `sub` under `auth.require_signed_uid`.
    UnsignedUid,
}

impl Refusal {
    /// The HTTP status of the refusal: 401 or 403.
    pub fn status(self) -> u16 {
        match self {
            Refusal::MissingToken
            | Refusal::UnknownToken
            | Refusal::Expired
            | Refusal::BadSignature
            | Refusal::BadClaims(_) => 401,
            Refusal::UidMismatch | Refusal::PageScope | Refusal::UnsignedUid => 403,
        }
    }

    /// The fixed, low-cardinality metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MissingToken | Refusal::UnknownToken => "token",
            Refusal::Expired => "expired",
            Refusal::BadSignature => "bad_signature",
            Refusal::BadClaims(_) => "bad_claims",
            Refusal::UidMismatch => "uid_mismatch",
            Refusal::PageScope => "page_scope",
            Refusal::UnsignedUid => "unsigned_uid",
        }
    }

    /// The `message` of the JSON refusal: what a developer must fix.
    pub fn message(self) -> String {
        match self {
            Refusal::MissingToken => "missing token".into(),
            Refusal::UnknownToken => "invalid token".into(),
            Refusal::Expired => "token expired".into(),
            Refusal::BadSignature => {
                "invalid token: the JWT does not verify with the configured key".into()
            }
            Refusal::BadClaims(claim) => format!("invalid token: unusable claim {claim:?}"),
            Refusal::UidMismatch => "?uid= is not the token's sub".into(),
            Refusal::PageScope => "?page= is missing or not one of the token's pages".into(),
            Refusal::UnsignedUid => {
                "?uid= needs a signed token (auth.require_signed_uid): bind the uid with a JWT sub"
                    .into()
            }
        }
    }
}

/// What a connect's token grants: its role, and for a JWT the signed claims that
/// [`Grant::bind`] checks the query against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    signed: Option<Signed>,
}

/// The claims of a verified JWT, checked against the Names rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Signed {
    sub: Option<Name>,
    pages: Option<Vec<Name>>,
}

impl Grant {
    /// The uid the connection is bound to, given its `?page=` and `?uid=`:
    /// - a JWT's `pages`, when present, must hold `page` ([`Refusal::PageScope`],
    ///   also when there is no page);
    /// - a JWT's `sub` is the uid; a different `uid` is [`Refusal::UidMismatch`];
    /// - otherwise `uid` as given, unless `require_signed_uid`
    ///   ([`Refusal::UnsignedUid`]).
    pub fn bind(
        &self,
        page: Option<&Name>,
        uid: Option<Name>,
        require_signed_uid: bool,
    ) -> Result<Option<Name>, Refusal> {
        if let Some(pages) = self.signed.as_ref().and_then(|s| s.pages.as_ref())
            && !page.is_some_and(|page| pages.contains(page))
        {
            return Err(Refusal::PageScope);
        }
        match (self.signed.as_ref().and_then(|s| s.sub.clone()), uid) {
            (Some(sub), Some(uid)) if uid != sub => Err(Refusal::UidMismatch),
            (Some(sub), _) => Ok(Some(sub)),
            (None, Some(_)) if require_signed_uid => Err(Refusal::UnsignedUid),
            (None, uid) => Ok(uid),
        }
    }
}

/// A verification key and the one algorithm it is used with.
struct JwtKey {
    key: DecodingKey,
    validation: Validation,
}

impl JwtKey {
    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        // The algorithm list holds the key's own algorithm only: a token's header
        // never chooses how it is checked (no `none`, no HS256 keyed with a public key).
        let mut validation = Validation::new(algorithm);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.validate_nbf = true;
        // No audience is configured; a token that names one is still ours.
        validation.validate_aud = false;
        Self { key, validation }
    }

    fn algorithm(&self) -> Option<Algorithm> {
        self.validation.algorithms.first().copied()
    }
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKey({:?})", self.algorithm())
    }
}

/// A public key read from `auth.jwt_public_key_file`.
pub struct PublicKey {
    key: DecodingKey,
    /// RS256 for an RSA key, ES256 for a P-256 key, ES384 for a P-384 key.
    pub algorithm: Algorithm,
}

/// Reads a PEM public key (`-----BEGIN PUBLIC KEY-----`, or PKCS#1
/// `BEGIN RSA PUBLIC KEY`); its type decides the algorithm. A private key is
/// refused: the server only verifies, and should not hold the signing key.
pub fn load_public_key(path: &Path) -> Result<PublicKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(format!(
            "{} is a private key: give the public key (openssl pkey -in KEY -pubout)",
            path.display()
        ));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(PublicKey {
            key,
            algorithm: Algorithm::RS256,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        // The uncompressed point's length names the curve (SEC 1 §2.3.3).
        let algorithm = match key.kind() {
            DecodingKeyKind::SecretOrDer(point) if point.len() == 65 => Algorithm::ES256,
            DecodingKeyKind::SecretOrDer(point) if point.len() == 97 => Algorithm::ES384,
            _ => {
                return Err(format!(
                    "{}: an EC key that is not on P-256 or P-384",
                    path.display()
                ));
            }
        };
        return Ok(PublicKey { key, algorithm });
    }
    Err(format!(
        "{} is not a PEM RSA or EC (P-256/P-384) public key",
        path.display()
    ))
}

/// The configured tokens and JWT keys.
#[derive(Debug)]
pub struct Tokens {
    client: Vec<Digest>,
    api: Vec<Digest>,
    allow_anonymous: bool,
    /// `auth.jwt_secret` (HS256), then `auth.jwt_public_key_file`.
    jwt: Vec<JwtKey>,
}

impl Tokens {
    /// The tokens and keys of `settings`. A public key file that no longer reads
    /// (it was checked when the settings were loaded) is logged and left out:
    /// tokens signed for it are then refused, never accepted unchecked.
    pub fn new(settings: &AuthSettings) -> Self {
        let digests = |list: &[String]| list.iter().map(|t| digest(t.as_bytes())).collect();
        let mut jwt = Vec::new();
        if let Ok(key) = DecodingKey::from_secret(settings.jwt_secret.as_bytes()) {
            jwt.push(JwtKey::new(key, Algorithm::HS256));
        }
        if !settings.jwt_public_key_file.is_empty() {
            match load_public_key(Path::new(&settings.jwt_public_key_file)) {
                Ok(public) => jwt.push(JwtKey::new(public.key, public.algorithm)),
                Err(e) => log::error!("auth.jwt_public_key_file: {e}; its tokens are refused"),
            }
        }
        Self {
            client: digests(&settings.client_tokens),
            api: digests(&settings.api_tokens),
            allow_anonymous: settings.allow_anonymous,
            jwt,
        }
    }

    /// Whether `token` may trigger pushes and read the APIs.
    pub fn is_api(&self, token: &str) -> bool {
        contains(&self.api, token.as_bytes())
    }

    /// The role of a WebSocket connect that presented `token` (or none).
    pub fn connect_role(&self, token: Option<&str>) -> Result<Role, Refusal> {
        self.connect(token).map(|grant| grant.role)
    }

    /// What a WebSocket connect that presented `token` (or none) is granted
    /// (`exp` and `nbf` against the system clock). A configured static token wins over the JWT reading
    /// of the same text; a text shaped as a JWT is verified only when a JWT key is
    /// configured, else it is an unknown token like any other.
    pub fn connect(&self, token: Option<&str>) -> Result<Grant, Refusal> {
        let role = match token {
            None | Some("") if self.allow_anonymous => Role::Client,
            None | Some("") => return Err(Refusal::MissingToken),
            Some(token) if self.is_api(token) => Role::Publisher,
            Some(token) if contains(&self.client, token.as_bytes()) => Role::Client,
            Some(token) if !self.jwt.is_empty() && looks_like_jwt(token) => {
                return self.verify(token);
            }
            Some(_) => return Err(Refusal::UnknownToken),
        };
        Ok(Grant { role, signed: None })
    }

    /// Verifies a JWT with the configured key of its header's `alg`; the header
    /// only picks among the configured (key, algorithm) pairs.
    fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        let alg = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::BadSignature)?
            .alg;
        let key = self
            .jwt
            .iter()
            .find(|key| key.algorithm() == Some(alg))
            .ok_or(Refusal::BadSignature)?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refusal::Expired,
                // The claim the library names: a `nbf` that is not a number is
                // not an `exp` problem.
                ErrorKind::InvalidClaimFormat(claim) if claim == "nbf" => Refusal::BadClaims("nbf"),
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    Refusal::BadClaims("exp")
                }
                ErrorKind::ImmatureSignature => Refusal::BadClaims("nbf"),
                _ => Refusal::BadSignature,
            })?
            .claims;
        let sub = claims
            .get("sub")
            .map(Name::from_json)
            .transpose()
            .map_err(|_| Refusal::BadClaims("sub"))?;
        let pages = match claims.get("pages") {
            None => None,
            Some(Value::Array(pages)) => Some(
                pages
                    .iter()
                    .map(Name::from_json)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| Refusal::BadClaims("pages"))?,
            ),
            Some(_) => return Err(Refusal::BadClaims("pages")),
        };
        Ok(Grant {
            role: Role::Client,
            signed: Some(Signed { sub, pages }),
        })
    }
}

/// Whether `token` has a JWS compact form's shape: three base64url parts
/// (RFC 7515 §7.1), the signature possibly empty (`alg: none`, which is then
/// refused as unsigned rather than as unknown). `=` padding is let through so a
/// hand-made token with padding gets "does not verify", which points at the mistake.
fn looks_like_jwt(token: &str) -> bool {
    let base64url = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
    };
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty()
                && !payload.is_empty()
                && base64url(header)
                && base64url(payload)
                && base64url(signature)
        }
        _ => false,
    }
}

/// An HS256 JWT for `uid` (its `sub`), valid for `ttl_secs` from `now` (Unix
/// seconds), limited to `pages` when any are given: what `scenecast token` prints.
/// Claims: `sub`, `iat`, `exp`, and `pages` when not empty.
pub fn mint(
    secret: &str,
    uid: &Name,
    pages: &[Name],
    ttl_secs: u64,
    now: u64,
) -> Result<String, String> {
    let key =
        EncodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("auth.jwt_secret: {e}"))?;
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(uid.as_ref()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now.saturating_add(ttl_secs)));
    if !pages.is_empty() {
        let pages = pages.iter().map(|p| Value::from(p.as_ref())).collect();
        claims.insert("pages".into(), Value::Array(pages));
    }
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| format!("cannot sign: {e}"))
}

/// Unix seconds now (the clock `exp` is checked against).
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
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
            ..AuthSettings::default()
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

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn jwt_tokens() -> Tokens {
        Tokens::new(&AuthSettings {
            client_tokens: vec!["client-1".into()],
            api_tokens: vec!["api-1".into()],
            jwt_secret: SECRET.into(),
            ..AuthSettings::default()
        })
    }

    fn name(text: &str) -> Name {
        Name::try_from(text).unwrap()
    }

    /// A token over `claims` signed with `secret` (HS256), built by hand as the
    /// README's snippets do.
    fn signed(claims: &serde_json::Value, secret: &str) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_minted_token_binds_its_sub_and_pages() {
        let t = jwt_tokens();
        let token = mint(SECRET, &name("42"), &[name("home")], 60, now()).unwrap();
        let grant = t.connect(Some(&token)).unwrap();
        assert_eq!(grant.role, Role::Client);
        let home = name("home");
        assert_eq!(grant.bind(Some(&home), None, true), Ok(Some(name("42"))));
        assert_eq!(
            grant.bind(Some(&home), Some(name("42")), true),
            Ok(Some(name("42")))
        );
        assert_eq!(
            grant.bind(Some(&home), Some(name("43")), false),
            Err(Refusal::UidMismatch)
        );
        assert_eq!(
            grant.bind(Some(&name("list")), None, false),
            Err(Refusal::PageScope)
        );
        assert_eq!(grant.bind(None, None, false), Err(Refusal::PageScope));
    }

    #[test]
    fn a_numeric_sub_is_its_decimal_text_and_a_bad_sub_is_refused() {
        let t = jwt_tokens();
        let exp = now() + 60;
        let token = signed(&serde_json::json!({"sub": 42, "exp": exp}), SECRET);
        let grant = t.connect(Some(&token)).unwrap();
        assert_eq!(
            grant.bind(None, Some(name("42")), true),
            Ok(Some(name("42")))
        );
        for sub in [
            serde_json::json!(null),
            serde_json::json!(1.5),
            serde_json::json!(""),
        ] {
            let token = signed(&serde_json::json!({"sub": sub, "exp": exp}), SECRET);
            assert_eq!(t.connect(Some(&token)), Err(Refusal::BadClaims("sub")));
        }
        let token = signed(&serde_json::json!({"pages": "home", "exp": exp}), SECRET);
        assert_eq!(t.connect(Some(&token)), Err(Refusal::BadClaims("pages")));
    }

    #[test]
    fn without_sub_the_query_uid_binds_unless_signed_uids_are_required() {
        let t = jwt_tokens();
        let token = signed(&serde_json::json!({"exp": now() + 60}), SECRET);
        let grant = t.connect(Some(&token)).unwrap();
        assert_eq!(
            grant.bind(None, Some(name("7")), false),
            Ok(Some(name("7")))
        );
        assert_eq!(
            grant.bind(None, Some(name("7")), true),
            Err(Refusal::UnsignedUid)
        );
        assert_eq!(grant.bind(None, None, true), Ok(None));
        let static_grant = t.connect(Some("client-1")).unwrap();
        assert_eq!(
            static_grant.bind(None, Some(name("7")), true),
            Err(Refusal::UnsignedUid)
        );
        assert_eq!(
            static_grant.bind(None, Some(name("7")), false),
            Ok(Some(name("7")))
        );
    }

    #[test]
    fn expired_wrong_key_missing_exp_and_alg_none_are_refused() {
        let t = jwt_tokens();
        let old = now() - JWT_LEEWAY_SECS - 5;
        let expired = signed(&serde_json::json!({"sub": "1", "exp": old}), SECRET);
        assert_eq!(t.connect(Some(&expired)), Err(Refusal::Expired));
        // Within the leeway it still passes.
        let fresh = signed(&serde_json::json!({"sub": "1", "exp": now() - 5}), SECRET);
        assert!(t.connect(Some(&fresh)).is_ok());
        let other = signed(
            &serde_json::json!({"sub": "1", "exp": now() + 60}),
            "another-secret-another-secret-0123",
        );
        assert_eq!(t.connect(Some(&other)), Err(Refusal::BadSignature));
        let no_exp = signed(&serde_json::json!({"sub": "1"}), SECRET);
        assert_eq!(t.connect(Some(&no_exp)), Err(Refusal::BadClaims("exp")));
        for (claims, claim) in [
            (serde_json::json!({"sub": "1", "exp": "soon"}), "exp"),
            (
                serde_json::json!({"sub": "1", "exp": now() + 60, "nbf": "now"}),
                "nbf",
            ),
        ] {
            let token = signed(&claims, SECRET);
            assert_eq!(t.connect(Some(&token)), Err(Refusal::BadClaims(claim)));
        }
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(format!(r#"{{"sub":"1","exp":{}}}"#, now() + 60).as_bytes())
        );
        assert_eq!(t.connect(Some(&none)), Err(Refusal::BadSignature));
        // HS512 with the right secret: still not the configured algorithm.
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"sub": "1", "exp": now() + 60}),
            &key,
        )
        .unwrap();
        assert_eq!(t.connect(Some(&hs512)), Err(Refusal::BadSignature));
    }

    #[test]
    fn a_static_token_shaped_like_a_jwt_stays_a_static_token() {
        let t = Tokens::new(&AuthSettings {
            client_tokens: vec!["a.b.c".into()],
            api_tokens: vec!["api.key.x".into()],
            jwt_secret: SECRET.into(),
            ..AuthSettings::default()
        });
        assert_eq!(t.connect_role(Some("a.b.c")), Ok(Role::Client));
        assert_eq!(t.connect_role(Some("api.key.x")), Ok(Role::Publisher));
        assert_eq!(t.connect_role(Some("a.b.d")), Err(Refusal::BadSignature));
        assert_eq!(t.connect_role(Some("a.b")), Err(Refusal::UnknownToken));
        // Without a JWT key a JWT-shaped text is just an unknown token.
        assert_eq!(
            tokens(false).connect_role(Some("a.b.d")),
            Err(Refusal::UnknownToken)
        );
    }

    #[test]
    fn jwt_shapes() {
        assert!(looks_like_jwt("eyJ.eyJ.sig"));
        assert!(looks_like_jwt("eyJ.eyJ."));
        assert!(!looks_like_jwt(".eyJ.sig"));
        assert!(!looks_like_jwt("eyJ..sig"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c d"));
        assert!(!looks_like_jwt("a+/.b.c"));
    }

    proptest::proptest! {
        /// Any token text is answered (a grant or a refusal), never a panic; a
        /// random text never gets a grant.
        #[test]
        fn any_token_text_is_answered(text in "\\PC{0,200}") {
            let t = jwt_tokens();
            let answer = t.connect(Some(&text));
            proptest::prop_assert!(answer.is_err() || text == "client-1" || text == "api-1");
        }

        /// Texts shaped like JWTs, with base64url parts that decode to anything,
        /// JSON or not, reach the verifier and are refused with a 401.
        #[test]
        fn any_jwt_shaped_text_is_refused(
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
            sig in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            alg in proptest::sample::select(vec!["HS256", "none", "RS256", "ES256", "HS512", ""]),
            json_header in proptest::bool::ANY,
        ) {
            let t = jwt_tokens();
            let header = if json_header {
                format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).into_bytes()
            } else {
                header
            };
            let text = format!("{}.{}.{}", b64(&header), b64(&payload), b64(&sig));
            let answer = t.connect(Some(&text));
            proptest::prop_assert!(matches!(answer, Err(r) if r.status() == 401));
        }
    }
}
