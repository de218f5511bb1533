//! A real WebSocket client (tokio-tungstenite) with the waits tests need.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server answered instead of upgrading.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: serde_json::Value,
}

impl WsClient {
    /// Connects and panics with the server's answer if the upgrade is refused.
    pub async fn connect(url: &str) -> Self {
        match Self::try_connect(url, None).await {
            Ok(client) => client,
            Err(refused) => panic!("websocket {url} refused: {refused:?}"),
        }
    }

    /// Connects with an optional `Origin` header; a refusal returns status and JSON body.
    pub async fn try_connect(url: &str, origin: Option<&str>) -> Result<Self, Refused> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("valid ws url");
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("origin header"));
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(serde_json::Value::Null);
                Err(Refused { status, body })
            }
            Err(e) => panic!("websocket {url} failed: {e}"),
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("send a text frame");
    }

    /// Next text frame within `WAIT` (pings are answered by tungstenite as we read).
    pub async fn recv_text(&mut self) -> String {
        match self.next_text(WAIT).await {
            Some(text) => text,
            None => panic!("no text frame within {WAIT:?}"),
        }
    }

    /// Next text frame parsed as JSON.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame {text:?} is not JSON: {e}"))
    }

    /// The next text frame within `wait`, or `None` (timeout or close).
    pub async fn next_text(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return Some(text.to_string()),
                Ok(Some(Ok(Message::Close(frame)))) => panic!("closed by server: {frame:?}"),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("websocket error: {e}"),
                Ok(None) => panic!("websocket ended"),
                Err(_) => return None,
            }
        }
    }

    /// Asserts that no text frame arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(text) = self.next_text(wait).await {
            panic!("expected no message, got {text:?}");
        }
    }

    /// Reads until the server's close frame and returns its code (text frames
    /// before it are skipped). Panics if the stream ends without one.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Ok(Some(Ok(Message::Close(None)))) => {
                    return (u16::from(CloseCode::Status), String::new());
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("websocket error before a close frame: {e}"),
                Ok(None) => panic!("websocket ended without a close frame"),
                Err(_) => panic!("no close frame within {WAIT:?}"),
            }
        }
    }

    /// Closes from the client side and waits for the server's echo.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ =
            tokio::time::timeout(WAIT, async { while self.stream.next().await.is_some() {} }).await;
    }

    /// Drops the TCP connection without a close frame (a crashed tab).
    pub fn drop_abruptly(self) {
        drop(self.stream);
    }

    /// Reads nothing for `wait` (a client that stopped reading).
    pub fn raw(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.stream
    }
}

/// A WebSocket client that never writes after the handshake: no pongs, no close
/// reply. It stands for a browser tab that froze, and lets a test read exactly the
/// frames the server sent (tungstenite would answer pings and may hit a reset).
pub struct SilentClient {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl SilentClient {
    /// Performs the upgrade for `path_and_query` on `addr` by hand.
    pub async fn connect(addr: std::net::SocketAddr, path_and_query: &str) -> Self {
        Self::connect_sending(addr, path_and_query, &[]).await
    }

    /// Like [`SilentClient::connect`], with `early` (client frames) written in the same
    /// packet as the upgrade request, before the server's answer.
    pub async fn connect_sending(
        addr: std::net::SocketAddr,
        path_and_query: &str,
        early: &[u8],
    ) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("tcp connect");
        let mut request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(early);
        stream.write_all(&request).await.expect("send upgrade");
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("upgrade answer in time")
                .expect("read upgrade answer");
            assert!(n > 0, "server closed during the upgrade");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buffer.drain(..end);
        SilentClient { stream, buffer }
    }

    async fn fill(&mut self, want: usize) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 65536];
        while self.buffer.len() < want {
            match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no frame within {WAIT:?}"),
            }
        }
        true
    }

    /// Writes raw bytes (frames made with [`client_frame`]).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write frame");
    }

    /// The next frame's opcode and payload, or `None` when the socket ended.
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2).await {
            return None;
        }
        let opcode = self.buffer[0] & 0x0f;
        let (len, header) = match self.buffer[1] & 0x7f {
            126 => {
                if !self.fill(4).await {
                    return None;
                }
                (
                    u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                    4,
                )
            }
            127 => {
                if !self.fill(10).await {
                    return None;
                }
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.buffer[2..10]);
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if !self.fill(header + len).await {
            return None;
        }
        let payload = self.buffer[header..header + len].to_vec();
        self.buffer.drain(..header + len);
        Some((opcode, payload))
    }

    /// Reads frames (counting text frames) until the close frame; returns its code
    /// and reason and how many text frames came before it.
    pub async fn expect_close(&mut self) -> (u16, String, usize) {
        let mut texts = 0;
        loop {
            match self.next_frame().await {
                Some((0x8, payload)) => {
                    assert!(payload.len() >= 2, "close frame without a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    return (
                        code,
                        String::from_utf8_lossy(&payload[2..]).to_string(),
                        texts,
                    );
                }
                Some((0x1, _)) => texts += 1,
                Some(_) => {}
                None => panic!("socket ended without a close frame after {texts} text frames"),
            }
        }
    }
}

/// A client frame as a browser sends it: masked (RFC 6455 §5.3), with `fin` and
/// `opcode` as given; `masked: false` makes the protocol error servers must refuse.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}
