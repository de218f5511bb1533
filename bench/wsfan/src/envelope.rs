//! scenecast's recovery frames (`?recover=1`, README "Recovery"): a welcome with the
//! connection id, epoch and offset; each push as `{"type":"push","offset":..,"data":..}`;
//! after a reconnect with `epoch` + `since`, `{"type":"recovered",...}`.
//! Offsets are decimal strings (20 digits, zero-padded), read here as integers.

use serde_json::Value;

pub enum Frame {
    Welcome {
        conn: String,
        epoch: String,
        offset: u128,
    },
    Push {
        offset: u128,
    },
    Recovered {
        recovered: bool,
        replayed: u64,
    },
    /// Anything else (a raw payload, a pong).
    Other,
}

const PUSH_HEAD: &str = r#"{"type":"push""#;
const OFFSET_KEY: &str = r#""offset":""#;

/// Reads one frame. Push frames, the hot path, are scanned without a JSON parse
/// when they start with the server's own key order (`type`, `offset`, `data`);
/// other shapes fall back to a full parse.
pub fn parse(text: &str) -> Frame {
    if let Some(rest) = text.strip_prefix(PUSH_HEAD)
        && let Some(at) = rest.find(OFFSET_KEY)
        && rest[..at].trim_matches([',', ' ']).is_empty()
    {
        let digits = &rest[at + OFFSET_KEY.len()..];
        let end = digits.find('"').unwrap_or(0);
        if let Ok(offset) = digits[..end].parse() {
            return Frame::Push { offset };
        }
    }
    if !text.starts_with('{') || !text.contains(r#""type""#) {
        return Frame::Other;
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else { return Frame::Other };
    let text_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let offset_of = |k: &str| text_of(k).and_then(|o| o.parse::<u128>().ok());
    match v.get("type").and_then(Value::as_str) {
        Some("welcome") => match (text_of("conn"), text_of("epoch"), offset_of("offset")) {
            (Some(conn), Some(epoch), Some(offset)) => Frame::Welcome { conn, epoch, offset },
            _ => Frame::Other,
        },
        Some("push") => offset_of("offset").map_or(Frame::Other, |offset| Frame::Push { offset }),
        Some("recovered") => Frame::Recovered {
            recovered: v.get("recovered").and_then(Value::as_bool).unwrap_or(false),
            replayed: v.get("replayed").and_then(Value::as_u64).unwrap_or(0),
        },
        _ => Frame::Other,
    }
}

/// The offset back in the server's text form, for `since=`.
pub fn offset_text(offset: u128) -> String {
    format!("{offset:020}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_frames() {
        let w =
            r#"{"type":"welcome","conn":"1.7","epoch":"00000000deadbeef","offset":"00000000000000000042"}"#;
        assert!(matches!(parse(w), Frame::Welcome { offset: 42, .. }));
        let p = r#"{"type":"push","offset":"00000000000000000043","data":{"seq":"5","offset":"1"}}"#;
        assert!(matches!(parse(p), Frame::Push { offset: 43 }));
        let p2 = r#"{"offset":"00000000000000000044","type":"push","data":1}"#;
        assert!(matches!(parse(p2), Frame::Push { offset: 44 }));
        let r = r#"{"type":"recovered","recovered":true,"replayed":50}"#;
        assert!(matches!(parse(r), Frame::Recovered { recovered: true, replayed: 50 }));
        assert!(matches!(parse(r#"{"code":200,"seq":"1"}"#), Frame::Other));
        assert!(matches!(parse(r#"{"type":"pong"}"#), Frame::Other));
        assert_eq!(offset_text(43), "00000000000000000043");
    }
}
