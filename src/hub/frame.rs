//! WebSocket frames exactly as the server puts them on the wire (RFC 6455 §5.2: one
//! final frame, no mask). A push is framed once here, before the fan-out, so every
//! connection is sent the same bytes (or queues a reference to them) and nothing is
//! encoded per connection.
//!
//! This is the one piece of WebSocket knowledge in the hub; the handshake and the
//! client's frames are the gateway's business.

use bytes::{BufMut, Bytes, BytesMut};

/// The FIN bit of a frame's first byte (RFC 6455 §5.2).
const FIN: u8 = 0x80;
/// Opcodes (RFC 6455 §5.2), shared with the gateway's reading of client frames.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Control frames carry at most 125 bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// An empty ping, the server's heartbeat.
pub const PING: Bytes = Bytes::from_static(&[FIN | OP_PING, 0]);

/// A text frame carrying `text`.
pub fn text(text: &str) -> Bytes {
    encode(OP_TEXT, text.as_bytes())
}

/// A pong answering a ping whose payload was `payload` (cut to 125 bytes).
pub fn pong(payload: &[u8]) -> Bytes {
    let cut = payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload);
    encode(OP_PONG, cut)
}

/// A close frame with `code` and a reason cut to fit a control frame (123 bytes,
/// at a character boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    // The longest prefix that fits and ends at a character boundary.
    let mut reason = reason;
    while reason.len() > MAX_CONTROL_PAYLOAD - 2 {
        let mut chars = reason.chars();
        chars.next_back();
        reason = chars.as_str();
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(OP_CLOSE, &payload)
}

fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut frame = BytesMut::with_capacity(10 + len);
    frame.put_u8(FIN | opcode);
    if len < 126 {
        frame.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        frame.put_u8(126);
        frame.put_u16(len);
    } else {
        frame.put_u8(127);
        frame.put_u64(len as u64);
    }
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// The opcode and payload of one frame made here (tests and benches read frames back).
pub fn parse(frame: &[u8]) -> Option<(u8, &[u8])> {
    let opcode = frame.first()? & 0x0f;
    let (len, header) = match frame.get(1)? & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = frame.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    Some((opcode, frame.get(header..header + len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_header() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let payload = "x".repeat(len);
            let frame = text(&payload);
            assert_eq!(frame.len(), header + len, "payload of {len}");
            assert_eq!(frame[0], 0x81);
            assert_eq!(parse(&frame), Some((OP_TEXT, payload.as_bytes())));
        }
    }

    #[test]
    fn control_frames_fit_in_125_bytes() {
        let frame = close(4008, &"é".repeat(100));
        let (opcode, payload) = parse(&frame).unwrap();
        assert_eq!(opcode, OP_CLOSE);
        assert!(payload.len() <= 125);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4008);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(parse(&pong(&[7; 300])).unwrap().1.len(), 125);
        assert_eq!(parse(&PING), Some((OP_PING, &[][..])));
    }
}
