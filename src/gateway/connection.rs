//! One WebSocket connection after the handshake: a task on the HTTP worker that
//! accepted it, owning the socket's reading side and finishing what the fan-out
//! could not write at once.
//!
//! Nothing is allocated while the connection is idle: bytes from the client are read
//! into a buffer that exists only until they are decoded, and frames to the client
//! are written from the shared, pre-encoded push ([`crate::hub::Outbox`]). The task
//! sleeps until the client sends something or the socket drains after being full.
//!
//! Everything the server sends — pushes, pongs, pings, the close frame — goes
//! through the outbox, in order.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::app::AppState;
use crate::auth::Role;
use crate::config::WsPublish;
use crate::hub::{ClosingGuard, ConnId, ConnMeta, Flush, Outbox, Wire, frame};
use crate::ingress::rate::PerConnection;
use crate::push::{Ingress, Push, route_json_line};

/// Longest first frame taken as a uid (Workerman's `ws.send(uid)`).
const MAX_BOUND_UID_LEN: usize = 64;
/// `{"type":"pong"}` as a text frame, the answer to the seed client's heartbeat.
const PONG: Bytes = Bytes::from_static(b"\x81\x0f{\"type\":\"pong\"}");
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 4096;
/// How long a closed connection waits for the client's answer to the close frame
/// before the socket is dropped anyway.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

const NORMAL: u16 = 1000;
const PROTOCOL: u16 = 1002;
const INVALID: u16 = 1007;
/// Policy violation: a publisher over `ingress.push_rate_per_sec` (RFC 6455 §7.4.1).
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;

impl Wire for TcpStream {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }
}

/// Registers the connection and spawns its task on the calling HTTP worker.
/// `early` holds bytes the client sent right behind its handshake.
pub(super) fn start(
    state: Arc<AppState>,
    meta: ConnMeta,
    role: Role,
    socket: TcpStream,
    early: &[u8],
    peer: Option<SocketAddr>,
) {
    let worker = state.bus.fanout().local_worker();
    let (id, outbox) = state.hub.open(meta.clone(), worker);
    state.registry.opened(id, &meta);
    log::debug!(
        "conn {id} open from {}: page={:?} uid={:?} {role:?}",
        peer.map(|a| a.to_string()).unwrap_or_default(),
        meta.page,
        meta.uid
    );
    let socket = Arc::new(socket);
    outbox.attach(socket.clone());
    let max = state.settings.server.max_message_bytes;
    let connection = Connection {
        id,
        role,
        uid_bound: meta.uid.is_some(),
        first_text: true,
        reading: true,
        outbox,
        socket,
        inbound: Inbound::new(max, early),
        close_deadline: None,
        left: None,
        rate: PerConnection::default(),
        state,
    };
    tokio::task::spawn_local(connection.run());
}

/// How a connection ended, for the log.
enum Ended {
    /// The close frame (ours, or the echo of the client's) is written.
    Closed(u16),
    /// The socket closed or failed; nothing more can be sent.
    Disconnected,
    /// The close frame could not be written in time.
    CloseTimedOut(u16),
}

/// What the task wakes up for.
enum Event {
    Frame(Frame),
    Ended(Ended),
}

struct Connection {
    id: ConnId,
    role: Role,
    /// A uid is bound (at connect or by the first frame); it never changes after.
    uid_bound: bool,
    first_text: bool,
    /// False once the client broke the protocol or closed: nothing more is read.
    reading: bool,
    state: Arc<AppState>,
    outbox: Arc<Outbox>,
    socket: Arc<TcpStream>,
    inbound: Inbound,
    /// Armed when a close waits behind a full socket.
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set once the connection has left the hub and the registry while its socket
    /// finishes closing.
    left: Option<ClosingGuard>,
    /// This publisher's push budget (built at its first push).
    rate: PerConnection,
}

impl Connection {
    async fn run(mut self) {
        let ended = self.serve().await;
        self.leave();
        match ended {
            Ended::Closed(code) => log::debug!("conn {} closed ({code})", self.id),
            Ended::Disconnected => log::debug!("conn {} disconnected", self.id),
            Ended::CloseTimedOut(code) => log::info!(
                "conn {} dropped: its close frame ({code}) found no room in {}s \
                 (server.send_timeout_secs)",
                self.id,
                self.state.settings.server.send_timeout_secs
            ),
        }
        if let Ended::Closed(_) = ended {
            // Let the client read the close frame and answer before the socket goes:
            // dropping it with unread input would reset the connection instead.
            Box::pin(linger(&self.socket)).await;
        }
    }

    /// Takes the connection out of the hub and the registry: no more pushes, no
    /// longer counted. Its socket may still be finishing the close.
    fn leave(&mut self) {
        if self.left.is_none() {
            self.left = Some(self.state.hub.closing_guard());
            if let Some(meta) = self.state.hub.close(self.id) {
                self.state.registry.closed(self.id, &meta);
            }
        }
    }

    async fn serve(&mut self) -> Ended {
        loop {
            match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Ended(ended) => return ended,
                Event::Frame(frame) => {
                    self.outbox.touch();
                    if let Some(push) = self.on_frame(frame) {
                        // Boxed: publishing (in redis mode a Redis round trip) is rare
                        // on a connection, and inline it would size every connection's
                        // task (which is also why frames are handled synchronously).
                        Box::pin(self.state.publish(push, Ingress::Publisher)).await;
                    }
                }
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Poll::Ready(ended) = self.poll_write(cx) {
            return Poll::Ready(Event::Ended(ended));
        }
        if !self.reading {
            return Poll::Pending;
        }
        loop {
            match self.inbound.next_frame() {
                Ok(Some(frame)) => return Poll::Ready(Event::Frame(frame)),
                Ok(None) => {}
                Err(e) => {
                    self.protocol_error(e);
                    // The close frame is queued: the write side takes it from here.
                    return self.poll_write(cx).map(Event::Ended);
                }
            }
            if ready!(self.socket.poll_read_ready(cx)).is_err() {
                return Poll::Ready(Event::Ended(Ended::Disconnected));
            }
            match self.inbound.read_from(&self.socket) {
                Ok(0) => return Poll::Ready(Event::Ended(Ended::Disconnected)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("conn {} read error: {e}", self.id);
                    return Poll::Ready(Event::Ended(Ended::Disconnected));
                }
            }
        }
    }

    /// Writes what waits in the outbox whenever the socket can take it; ready when
    /// the connection is over (close frame written, or the socket failed).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        self.outbox.set_writer(cx.waker());
        loop {
            if !self.outbox.wants_flush() {
                return Poll::Pending;
            }
            match self.outbox.flush() {
                Flush::Idle => return Poll::Pending,
                Flush::Closed(code) => return Poll::Ready(Ended::Closed(code)),
                Flush::Broken => return Poll::Ready(Ended::Disconnected),
                Flush::Blocked => {
                    if let Some(code) = self.outbox.closing() {
                        // Closed for everyone at once; the client gets
                        // `send_timeout_secs` to make room for the close frame.
                        self.leave();
                        let timeout = self.state.settings.server.send_timeout_secs;
                        let deadline = self.close_deadline.get_or_insert_with(|| {
                            Box::pin(tokio::time::sleep(Duration::from_secs(timeout)))
                        });
                        if deadline.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Ended::CloseTimedOut(code));
                        }
                    }
                    // Pending until the socket drains; tokio wakes this task then.
                    match self.socket.poll_write_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(_)) => return Poll::Ready(Ended::Disconnected),
                        Poll::Ready(Ok(())) => {}
                    }
                }
            }
        }
    }

    /// Handles one frame from the client; returns what a publisher asked to push.
    fn on_frame(&mut self, frame: Frame) -> Option<Push> {
        match frame {
            Frame::Text(bytes) => return self.on_message(&bytes),
            Frame::Continuation(item) => match self.inbound.continue_message(item) {
                Ok(Some((true, bytes))) => return self.on_message(&bytes),
                Ok(_) => {}
                Err(e) => self.protocol_error(e),
            },
            Frame::Ping(bytes) => {
                self.outbox.offer(&frame::pong(&bytes));
            }
            Frame::Pong(_) | Frame::Binary(_) => {}
            Frame::Close(reason) => {
                let (code, description) = reason.map_or((NORMAL, String::new()), |r| {
                    (r.code.into(), r.description.unwrap_or_default())
                });
                self.reading = false;
                self.outbox
                    .close_with(code, frame::close(code, &description));
            }
        }
        None
    }

    /// Handles one complete text message; returns what a publisher asked to push.
    fn on_message(&mut self, bytes: &[u8]) -> Option<Push> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.state.metrics.rejected("not_utf8");
            log::info!("conn {} closed: text frame is not UTF-8", self.id);
            self.close(INVALID, "text frame is not UTF-8");
            return None;
        };
        let first = std::mem::take(&mut self.first_text);
        if text == "heartbeat" || is_ping(text) {
            self.outbox.offer(&PONG);
            return None;
        }
        if self.may_publish() && text.starts_with('{') {
            return match route_json_line(text, None) {
                Ok(_) if !self.rate.admit(&self.state.settings.ingress) => {
                    self.state.metrics.rejected("rate_limited");
                    self.close(POLICY, "over ingress.push_rate_per_sec");
                    None
                }
                Ok(push) => Some(push),
                Err(e) => {
                    self.state.metrics.rejected("publisher_frame");
                    log::warn!("conn {} publisher frame refused: {e}", self.id);
                    self.close(INVALID, &format!("not routable: {e}"));
                    None
                }
            };
        }
        if first && !self.uid_bound && is_plain_id(text) {
            self.uid_bound = true;
            if let Some(meta) = self.state.hub.bind_uid(self.id, Arc::from(text)) {
                self.state.registry.updated(self.id, &meta);
                log::debug!("conn {} bound uid {text:?} by first frame", self.id);
            }
            return None;
        }
        log::debug!("conn {} frame ignored ({} bytes)", self.id, text.len());
        None
    }

    fn protocol_error(&mut self, error: ProtocolError) {
        if let ProtocolError::Overflow = error {
            self.state.metrics.rejected("too_big");
            log::info!(
                "conn {} closed: message over server.max_message_bytes",
                self.id
            );
            return self.close(TOO_BIG, "message too big");
        }
        self.state.metrics.rejected("protocol");
        log::info!("conn {} closed: {error}", self.id);
        self.close(PROTOCOL, &error.to_string());
    }

    fn may_publish(&self) -> bool {
        match self.state.settings.ingress.ws_publish {
            WsPublish::Any => true,
            WsPublish::ApiToken => self.role == Role::Publisher,
            WsPublish::Off => false,
        }
    }

    /// Queues the close frame (after whatever is queued) and stops reading.
    fn close(&mut self, code: u16, description: &str) {
        self.reading = false;
        self.outbox
            .close_with(code, frame::close(code, description));
    }
}

/// After our close frame: no more writes, and the client's answer (its close frame,
/// then end of stream) is read and dropped, for at most [`LINGER_TIMEOUT`].
async fn linger(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    let mut sink = vec![0; 512];
    let drained = async {
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            match socket.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drained).await;
}

/// The client's side of the socket: bytes read and not yet decoded, and a message
/// arriving in fragments. Both are empty, with no allocation, between messages.
struct Inbound {
    buffer: BytesMut,
    codec: Codec,
    /// A fragmented message so far: whether it is text, and its bytes.
    fragments: Option<(bool, BytesMut)>,
    max_message_bytes: usize,
}

impl Inbound {
    fn new(max_message_bytes: usize, early: &[u8]) -> Self {
        Self {
            buffer: BytesMut::from(early),
            codec: Codec::new().max_size(max_message_bytes),
            fragments: None,
            max_message_bytes,
        }
    }

    /// Reads what the socket has, without waiting.
    fn read_from(&mut self, socket: &TcpStream) -> io::Result<usize> {
        self.buffer.reserve(READ_CHUNK);
        socket.try_read_buf(&mut self.buffer)
    }

    /// The next complete frame in the buffer, if any.
    fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let frame = self.codec.decode(&mut self.buffer)?;
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            // Idle connections keep no read buffer.
            self.buffer = BytesMut::new();
        }
        Ok(frame)
    }

    /// Adds a fragment; returns the whole message (is-text, bytes) with the last one.
    fn continue_message(&mut self, item: Item) -> Result<Option<(bool, Bytes)>, ProtocolError> {
        let (text, bytes, last) = match item {
            Item::FirstText(bytes) => (Some(true), bytes, false),
            Item::FirstBinary(bytes) => (Some(false), bytes, false),
            Item::Continue(bytes) => (None, bytes, false),
            Item::Last(bytes) => (None, bytes, true),
        };
        let (is_text, message) = match (text, &mut self.fragments) {
            (Some(is_text), _) => self.fragments.insert((is_text, BytesMut::new())),
            (None, Some(fragments)) => fragments,
            (None, None) => return Err(ProtocolError::ContinuationNotStarted),
        };
        if message.len() + bytes.len() > self.max_message_bytes {
            self.fragments = None;
            return Err(ProtocolError::Overflow);
        }
        message.extend_from_slice(&bytes);
        let is_text = *is_text;
        if !last {
            return Ok(None);
        }
        Ok(self
            .fragments
            .take()
            .map(|(_, message)| (is_text, message.freeze())))
    }
}

/// `{"type":"ping"}` (with any spacing).
fn is_ping(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<&'a str>,
    }
    text.starts_with('{')
        && text.len() < 64
        && serde_json::from_str::<Typed<'_>>(text).is_ok_and(|t| t.kind == Some("ping"))
}

/// A Workerman-style uid frame: short, no whitespace, not JSON, not `heartbeat`.
fn is_plain_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_BOUND_UID_LEN
        && text != "heartbeat"
        && !text.starts_with(['{', '[', '"'])
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_short_bare_words() {
        assert!(is_plain_id("1"));
        assert!(is_plain_id("uid1"));
        assert!(!is_plain_id("heartbeat"));
        assert!(!is_plain_id(r#"{"type":"ping"}"#));
        assert!(!is_plain_id("two words"));
        assert!(!is_plain_id(&"x".repeat(65)));
    }

    #[test]
    fn ping_is_recognised_in_json() {
        assert!(is_ping(r#"{"type":"ping"}"#));
        assert!(is_ping(r#"{ "type" : "ping" }"#));
        assert!(!is_ping(r#"{"type":"pong"}"#));
        assert!(!is_ping("ping"));
    }

    #[test]
    fn pong_is_the_text_frame_of_the_seed_reply() {
        assert_eq!(frame::text(r#"{"type":"pong"}"#), PONG);
    }

    #[test]
    fn fragments_make_one_message_within_the_limit() {
        let mut inbound = Inbound::new(10, &[]);
        let first = inbound.continue_message(Item::FirstText(Bytes::from_static(b"ab")));
        assert_eq!(first.unwrap(), None);
        let middle = inbound.continue_message(Item::Continue(Bytes::from_static(b"cd")));
        assert_eq!(middle.unwrap(), None);
        let last = inbound.continue_message(Item::Last(Bytes::from_static(b"ef")));
        assert_eq!(last.unwrap(), Some((true, Bytes::from_static(b"abcdef"))));
        assert!(inbound.fragments.is_none());

        inbound
            .continue_message(Item::FirstBinary(Bytes::from_static(b"123456")))
            .unwrap();
        let over = inbound.continue_message(Item::Last(Bytes::from_static(b"78901")));
        assert!(matches!(over, Err(ProtocolError::Overflow)));
    }
}
