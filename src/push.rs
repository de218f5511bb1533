//! The one value every ingress produces and the fan-out consumes: a [`Push`] is a
//! target and the exact text frame to send, serialized once and shared by reference
//! count with every connection that receives it.

use std::fmt;
use std::sync::Arc;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

/// Who a push is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every open connection.
    All,
    /// Every connection opened on this page (scene).
    Page(Arc<str>),
    /// Every connection bound to this user id (all of a user's tabs).
    Uid(Arc<str>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Page(page) => write!(f, "page {page:?}"),
            Target::Uid(uid) => write!(f, "uid {uid:?}"),
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
}

impl Ingress {
    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::HttpFunc => "http_func",
            Ingress::HttpApi => "http_api",
            Ingress::Text => "text",
            Ingress::Udp => "udp",
            Ingress::Publisher => "ws_publisher",
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
}

impl Push {
    pub fn new(target: Target, payload: impl Into<ByteString>) -> Self {
        Self {
            target,
            payload: payload.into(),
        }
    }
}

/// Why a JSON line (text port, UDP datagram, publisher frame) was not routed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("missing or wrong \"token\"")]
    BadToken,
    #[error("\"{0}\" must be a non-empty string or a number")]
    BadTarget(&'static str),
}

/// The routing fields of a line; every other field is carried along untouched.
#[derive(Deserialize)]
struct RouteFields {
    uid: Option<serde_json::Value>,
    user_id: Option<serde_json::Value>,
    page: Option<serde_json::Value>,
    token: Option<serde_json::Value>,
}

/// Routes one JSON object the way the seeds' text port and publishers do: to `uid`
/// (or `user_id`) when present, else to `page`, else to everyone. The frame sent is
/// the line as received, except that a `"token"` field is removed when a token is
/// required, so the secret never reaches a browser.
pub fn route_json_line(line: &str, required_token: Option<&str>) -> Result<Push, RouteError> {
    let line = line.trim_matches(|c: char| c == '\r' || c == '\n' || c == ' ' || c == '\t');
    if !line.starts_with('{') {
        return Err(RouteError::NotJson("expected an object".into()));
    }
    let fields: RouteFields =
        serde_json::from_str(line).map_err(|e| RouteError::NotJson(e.to_string()))?;

    let target = if let Some(uid) = fields.uid.as_ref() {
        Target::Uid(id_value(uid, "uid")?)
    } else if let Some(uid) = fields.user_id.as_ref() {
        Target::Uid(id_value(uid, "user_id")?)
    } else if let Some(page) = fields.page.as_ref() {
        Target::Page(id_value(page, "page")?)
    } else {
        Target::All
    };

    let payload = match required_token {
        None => ByteString::from(line.to_owned()),
        Some(expected) => {
            let given = fields.token.as_ref().and_then(|t| t.as_str()).unwrap_or("");
            if !crate::auth::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                return Err(RouteError::BadToken);
            }
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).map_err(|e| RouteError::NotJson(e.to_string()))?;
            object.remove("token");
            ByteString::from(serde_json::Value::Object(object).to_string())
        }
    };
    Ok(Push { target, payload })
}

fn id_value(value: &serde_json::Value, field: &'static str) -> Result<Arc<str>, RouteError> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Ok(Arc::from(s.as_str())),
        serde_json::Value::Number(n) => Ok(Arc::from(n.to_string())),
        _ => Err(RouteError::BadTarget(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_uid_before_page_before_all() {
        let p = route_json_line(r#"{"uid":"uid1","page":"home","percent":"88%"}"#, None).unwrap();
        assert_eq!(p.target, Target::Uid("uid1".into()));
        assert_eq!(
            &*p.payload,
            r#"{"uid":"uid1","page":"home","percent":"88%"}"#
        );
        let p = route_json_line(r#"{"user_id":1,"cnt":5}"#, None).unwrap();
        assert_eq!(p.target, Target::Uid("1".into()));
        let p = route_json_line("{\"page\":\"list\"}\r\n", None).unwrap();
        assert_eq!(p.target, Target::Page("list".into()));
        let p = route_json_line(r#"{"order_num":1234}"#, None).unwrap();
        assert_eq!(p.target, Target::All);
    }

    #[test]
    fn rejects_what_is_not_a_routable_object() {
        assert!(matches!(
            route_json_line("hello", None),
            Err(RouteError::NotJson(_))
        ));
        assert!(matches!(
            route_json_line("[1,2]", None),
            Err(RouteError::NotJson(_))
        ));
        assert!(matches!(
            route_json_line(r#"{"uid":"#, None),
            Err(RouteError::NotJson(_))
        ));
        assert_eq!(
            route_json_line(r#"{"uid":""}"#, None).unwrap_err(),
            RouteError::BadTarget("uid")
        );
        assert_eq!(
            route_json_line(r#"{"page":{"a":1}}"#, None).unwrap_err(),
            RouteError::BadTarget("page")
        );
    }

    #[test]
    fn a_required_token_is_checked_and_never_forwarded() {
        assert_eq!(
            route_json_line(r#"{"uid":"1"}"#, Some("s3cret")).unwrap_err(),
            RouteError::BadToken
        );
        assert_eq!(
            route_json_line(r#"{"uid":"1","token":"nope"}"#, Some("s3cret")).unwrap_err(),
            RouteError::BadToken
        );
        let p = route_json_line(r#"{"uid":"1","token":"s3cret","n":2}"#, Some("s3cret")).unwrap();
        assert!(!p.payload.contains("s3cret"));
        assert!(p.payload.contains(r#""n":2"#));
    }
}
