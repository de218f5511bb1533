//! Pusher signatures: HMAC-SHA256 in lowercase hex, checked in constant time
//! (PUSHER-NOTES §3.5–§3.7; `pusher-http-node: lib/auth.js, lib/requests.js, lib/webhook.js`).
//!
//! - channel auth: `auth = "{key}:" + HMAC(secret, "{socket_id}:{channel}")`, presence
//!   channels append `":{channel_data}"` (the exact string the client forwards);
//! - user sign-in: `HMAC(secret, "{socket_id}::user::{user_data}")`;
//! - HTTP API requests: `HMAC(secret, "{METHOD}\n{PATH}\n{sorted query}")`, see
//!   [`check_api_request`];
//! - webhooks: `X-Pusher-Signature = HMAC(secret, raw body)`.

use hmac::{Hmac, KeyInit as _, Mac as _};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// Seconds an HTTP API request's `auth_timestamp` may differ from our clock, either way
/// (Pusher's HTTP API reference; soketi and Reverb check none: PUSHER-NOTES §3.9).
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// `hex(HMAC-SHA256(secret, message))`, lowercase.
pub fn hmac_hex(secret: &str, message: &[u8]) -> String {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(message);
    hex(&mac.finalize().into_bytes())
}

/// `hex(md5(body))`, lowercase: the `body_md5` query parameter.
pub fn body_md5(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Whether two signatures are equal, in time that depends only on their lengths.
pub fn same(expected: &str, given: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The string signed for a channel subscription.
pub fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The `auth` value an app's auth endpoint returns for a subscription:
/// `"{key}:{hex signature}"`.
pub fn sign_channel(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let signature = hmac_hex(
        secret,
        channel_string(socket_id, channel, channel_data).as_bytes(),
    );
    format!("{key}:{signature}")
}

/// The `auth` value for `pusher:signin`: `"{key}:{hex signature}"`.
pub fn sign_user(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    let signature = hmac_hex(secret, format!("{socket_id}::user::{user_data}").as_bytes());
    format!("{key}:{signature}")
}

/// Why a subscription's or sign-in's `auth` is refused (pusher-js shows the text;
/// the gateway answers `pusher:subscription_error` / close 4009).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth is missing")]
    Missing,
    #[error("auth is not KEY:SIGNATURE")]
    Malformed,
    #[error("auth was signed for another app key")]
    WrongKey,
    #[error("invalid signature")]
    BadSignature,
}

/// Checks a subscription's `auth` against `socket_id:channel[:channel_data]`.
/// `channel_data` is `Some` for presence channels (and must then be the exact
/// string the client sent).
pub fn check_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: Option<&str>,
) -> Result<(), AuthError> {
    check_auth(
        key,
        secret,
        channel_string(socket_id, channel, channel_data).as_bytes(),
        auth,
    )
}

/// Checks `pusher:signin`'s `auth` against `socket_id::user::user_data`.
pub fn check_user_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: Option<&str>,
) -> Result<(), AuthError> {
    let signed = format!("{socket_id}::user::{user_data}");
    check_auth(key, secret, signed.as_bytes(), auth)
}

fn check_auth(key: &str, secret: &str, signed: &[u8], auth: Option<&str>) -> Result<(), AuthError> {
    let auth = auth.filter(|a| !a.is_empty()).ok_or(AuthError::Missing)?;
    // The key is public; the signature after the first ':' is the secret part.
    let (given_key, signature) = auth.split_once(':').ok_or(AuthError::Malformed)?;
    if given_key != key {
        return Err(AuthError::WrongKey);
    }
    if same(&hmac_hex(secret, signed), signature) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

/// The `X-Pusher-Signature` of a webhook body.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    hmac_hex(secret, body)
}

/// An HTTP API request as it arrived: `path` is the full path the SDK signed
/// (`/apps/{id}/events`, without any proxy prefix), as on the wire: not
/// percent-decoded, since the SDKs sign the path they send (`/channels/{name}` with
/// the name as given); `query` the raw query string (percent-encoded or not: the
/// Node SDK sends values raw, the Python SDK encodes them; both sign decoded values).
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
}

/// Why an HTTP API request is refused. [`ApiAuthError::status`] and
/// [`ApiAuthError::body`] give the reply (soketi's `{"error","code"}` body shape).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiAuthError {
    /// 400: a required parameter is absent (`auth_key`, `auth_timestamp`,
    /// `auth_version`, `auth_signature`, or `body_md5` with a body).
    #[error("missing parameter: {0}")]
    Missing(&'static str),
    /// 400: the query does not decode, repeats a key, or a value is malformed.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// 400: `auth_version` other than `1.0`.
    #[error("unsupported auth_version (only 1.0)")]
    Version,
    /// 401: `auth_key` is not the app's key.
    #[error("unknown auth_key")]
    WrongKey,
    /// 401: `auth_timestamp` more than [`MAX_CLOCK_SKEW_SECS`] from our clock.
    #[error("timestamp expired: auth_timestamp is more than 600 s from the server's clock")]
    Stale,
    /// 401: `body_md5` does not match the body.
    #[error("body_md5 does not match the body")]
    BodyMd5,
    /// 401: the signature does not match.
    #[error("invalid signature")]
    BadSignature,
}

impl ApiAuthError {
    /// 400 for a malformed request, 401 for a wrong or stale signature.
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing(_) | Self::BadQuery(_) | Self::Version => 400,
            Self::WrongKey | Self::Stale | Self::BodyMd5 | Self::BadSignature => 401,
        }
    }

    /// The JSON reply body: `{"error": "<text>", "code": <status>}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string(), "code": self.status() })
    }
}

/// The query of a request that passed [`check_api_request`], decoded, without the
/// `auth_*` and `body_md5` parameters (e.g. `info`, `filter_by_prefix`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiParams(pub Vec<(String, String)>);

impl ApiParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Verifies an HTTP API request as the SDKs sign it (PUSHER-NOTES §3.6):
/// 1. `auth_key`, `auth_timestamp`, `auth_version`, `auth_signature` present
///    (400), `auth_version = 1.0` (400), `auth_key` = `key` (401);
/// 2. `auth_timestamp` within [`MAX_CLOCK_SKEW_SECS`] of `now_secs` (401);
/// 3. a non-empty body needs `body_md5` (400) equal to md5(body) (401); a
///    `body_md5` on a bodyless request (the Python SDK's GETs) is checked too;
/// 4. `auth_signature` = HMAC(secret, `METHOD\nPATH\nk=v&…`) over every parameter
///    but `auth_signature`, sorted by key, values decoded (401), compared in
///    constant time.
pub fn check_api_request(
    key: &str,
    secret: &str,
    request: ApiRequest<'_>,
    now_secs: u64,
) -> Result<ApiParams, ApiAuthError> {
    let mut params: Vec<(String, String)> = serde_urlencoded::from_str(request.query)
        .map_err(|e| ApiAuthError::BadQuery(e.to_string()))?;
    params.sort();
    if let Some(pair) = params
        .windows(2)
        .find(|w| w.first().map(|p| &p.0) == w.get(1).map(|p| &p.0))
    {
        let repeated = pair.first().map(|p| p.0.clone()).unwrap_or_default();
        return Err(ApiAuthError::BadQuery(format!("{repeated} is repeated")));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let auth_key = get("auth_key").ok_or(ApiAuthError::Missing("auth_key"))?;
    let timestamp = get("auth_timestamp").ok_or(ApiAuthError::Missing("auth_timestamp"))?;
    let version = get("auth_version").ok_or(ApiAuthError::Missing("auth_version"))?;
    let signature = get("auth_signature").ok_or(ApiAuthError::Missing("auth_signature"))?;
    if version != "1.0" {
        return Err(ApiAuthError::Version);
    }
    if auth_key != key {
        return Err(ApiAuthError::WrongKey);
    }
    let timestamp: u64 = timestamp
        .parse()
        .map_err(|_| ApiAuthError::BadQuery("auth_timestamp is not Unix seconds".into()))?;
    if timestamp.abs_diff(now_secs) > MAX_CLOCK_SKEW_SECS {
        return Err(ApiAuthError::Stale);
    }
    match get("body_md5") {
        None if !request.body.is_empty() => return Err(ApiAuthError::Missing("body_md5")),
        Some(given) if !same(&body_md5(request.body), &given.to_ascii_lowercase()) => {
            return Err(ApiAuthError::BodyMd5);
        }
        _ => {}
    }
    let query = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signed = format!(
        "{}\n{}\n{query}",
        request.method.to_ascii_uppercase(),
        request.path
    );
    if !same(&hmac_hex(secret, signed.as_bytes()), signature) {
        return Err(ApiAuthError::BadSignature);
    }
    let rest = params
        .into_iter()
        .filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5")
        .collect();
    Ok(ApiParams(rest))
}

/// Signs a request as the SDKs do (for our own tests and tools): returns the query
/// string with `auth_*` (and `body_md5` when `body` is non-empty) added, values raw.
pub fn sign_api_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let timestamp = timestamp.to_string();
    let md5 = body_md5(body);
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.extend([
        ("auth_key", key),
        ("auth_timestamp", &timestamp),
        ("auth_version", "1.0"),
    ]);
    if !body.is_empty() {
        all.push(("body_md5", &md5));
    }
    all.sort();
    let query = all
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signature = hmac_hex(
        secret,
        format!("{}\n{path}\n{query}", method.to_ascii_uppercase()).as_bytes(),
    );
    format!("{query}&auth_signature={signature}")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    /// Pusher's own worked example (channels "Authorizing connections" docs):
    /// socket 1234.1234, channel private-foobar.
    #[test]
    fn pusher_docs_example() {
        assert_eq!(
            sign_channel(KEY, SECRET, "1234.1234", "private-foobar", None),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn channel_and_user_auth() {
        let auth = sign_channel(KEY, SECRET, "1.2", "private-a", None);
        assert_eq!(
            check_channel_auth(KEY, SECRET, "1.2", "private-a", None, Some(&auth)),
            Ok(())
        );
        assert_eq!(
            check_channel_auth(KEY, SECRET, "1.3", "private-a", None, Some(&auth)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check_channel_auth("other", SECRET, "1.2", "private-a", None, Some(&auth)),
            Err(AuthError::WrongKey)
        );
        assert_eq!(
            check_channel_auth(KEY, SECRET, "1.2", "private-a", None, None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check_channel_auth(KEY, SECRET, "1.2", "private-a", None, Some("nocolon")),
            Err(AuthError::Malformed)
        );
        let data = r#"{"user_id":"7"}"#;
        let auth = sign_channel(KEY, SECRET, "1.2", "presence-r", Some(data));
        assert_eq!(
            check_channel_auth(KEY, SECRET, "1.2", "presence-r", Some(data), Some(&auth)),
            Ok(())
        );
        assert!(
            check_channel_auth(
                KEY,
                SECRET,
                "1.2",
                "presence-r",
                Some(r#"{"user_id":"8"}"#),
                Some(&auth)
            )
            .is_err()
        );
        let auth = sign_user(KEY, SECRET, "1.2", r#"{"id":"7"}"#);
        assert_eq!(
            check_user_auth(KEY, SECRET, "1.2", r#"{"id":"7"}"#, Some(&auth)),
            Ok(())
        );
        assert!(check_user_auth(KEY, SECRET, "1.2", r#"{"id":"8"}"#, Some(&auth)).is_err());
    }

    #[test]
    fn api_request_round_trip_and_refusals() {
        let body = br#"{"name":"e","channels":["a"],"data":"{}"}"#;
        let now = 1_700_000_000;
        let query = sign_api_request(KEY, SECRET, "POST", "/apps/1/events", &[], body, now);
        let request = ApiRequest {
            method: "POST",
            path: "/apps/1/events",
            query: &query,
            body,
        };
        assert_eq!(
            check_api_request(KEY, SECRET, request, now + 600),
            Ok(ApiParams::default())
        );
        assert_eq!(
            check_api_request(KEY, SECRET, request, now + 601),
            Err(ApiAuthError::Stale)
        );
        assert_eq!(
            check_api_request(KEY, SECRET, request, now - 601),
            Err(ApiAuthError::Stale)
        );
        let other = ApiRequest {
            body: b"{}",
            ..request
        };
        assert_eq!(
            check_api_request(KEY, SECRET, other, now),
            Err(ApiAuthError::BodyMd5)
        );
        let other = ApiRequest {
            path: "/apps/2/events",
            ..request
        };
        assert_eq!(
            check_api_request(KEY, SECRET, other, now),
            Err(ApiAuthError::BadSignature)
        );
        let unsigned = query.replace("body_md5=", "x=");
        let other = ApiRequest {
            query: &unsigned,
            ..request
        };
        assert_eq!(
            check_api_request(KEY, SECRET, other, now),
            Err(ApiAuthError::Missing("body_md5"))
        );
        let twice = format!("{query}&auth_key={KEY}");
        let other = ApiRequest {
            query: &twice,
            ..request
        };
        assert!(matches!(
            check_api_request(KEY, SECRET, other, now),
            Err(ApiAuthError::BadQuery(_))
        ));
        assert_eq!(ApiAuthError::Stale.status(), 401);
        assert_eq!(ApiAuthError::Missing("x").status(), 400);
    }

    proptest! {
        /// Any query and body: Ok or a typed error, never a panic.
        #[test]
        fn any_request(query in "\\PC{0,200}", body in proptest::collection::vec(any::<u8>(), 0..64), now in any::<u64>()) {
            let request = ApiRequest { method: "GET", path: "/apps/1/channels", query: &query, body: &body };
            let _ = check_api_request(KEY, SECRET, request, now);
        }

        #[test]
        fn any_auth(auth in "\\PC{0,100}") {
            prop_assert!(check_channel_auth(KEY, SECRET, "1.2", "private-a", None, Some(&auth)).is_err());
        }
    }
}
