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
use bytes::buf::Limit;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::net::TcpStream;

use super::membership::Membership;
use super::pusher::{After, PusherConn};
use super::recovery::Preamble;
use crate::app::AppState;
use crate::auth::Role;
use crate::config::WsPublish;
use crate::hub::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};
use crate::hub::{ClosingGuard, ConnId, ConnMeta, Flush, Outbox, Wire, frame};
use crate::ingress::json_line::route_json_line;
use crate::ingress::rate::PerConnection;
use crate::ingress::throttle::WarnThrottle;
use crate::push::{Ingress, Name, Push};

/// Longest first frame taken as a uid (Workerman's `ws.send(uid)`).
const MAX_BOUND_UID_LEN: usize = 64;

/// One budget for every connection's refusal lines (protocol errors, refused
/// publisher frames): a client looping on bad frames must not fill the log.
static REFUSALS: std::sync::LazyLock<WarnThrottle> =
    std::sync::LazyLock::new(|| WarnThrottle::new(module_path!()));
/// `{"type":"pong"}` as a text frame, the answer to the seed client's heartbeat.
const PONG: Bytes = Bytes::from_static(b"\x81\x0f{\"type\":\"pong\"}");
/// The most one read takes from the socket.
const READ_CHUNK: usize = 4096;
/// The longest frame header (RFC 6455 §5.2): 2 bytes, 8 of extended length, 4 of mask.
#[cfg(test)]
const MAX_HEADER: usize = 14;
/// The longest control frame payload (RFC 6455 §5.5), as a header's length.
const MAX_CONTROL_PAYLOAD: u64 = frame::MAX_CONTROL_PAYLOAD as u64;
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

/// Spawns the task of a connection that joined the hub (its [`Membership`]) and
/// got its `101`, on the calling HTTP worker. `early` holds bytes the client sent
/// right behind its handshake.
#[allow(clippy::too_many_arguments)]
pub(super) fn start(
    state: Arc<AppState>,
    membership: Membership,
    outbox: Arc<Outbox>,
    meta: &ConnMeta,
    role: Role,
    socket: TcpStream,
    early: &[u8],
    peer: Option<SocketAddr>,
    preamble: Option<Preamble>,
    pusher: Option<Box<PusherConn>>,
) -> tokio::task::JoinHandle<()> {
    let id = membership.id();
    log::debug!(
        "conn {id} open from {}: page={:?} uid={:?} {role:?}",
        peer.map(|a| a.to_string()).unwrap_or_default(),
        meta.page,
        meta.uid
    );
    let socket = Arc::new(socket);
    if preamble.is_none() {
        outbox.attach(socket.clone());
    }
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
        membership: Some(membership),
        closing: None,
        rate: PerConnection::default(),
        pusher,
        state,
    };
    tokio::task::spawn_local(connection.run(preamble))
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
    /// The connection's hub and registry entries and cap slot, until it leaves;
    /// dropped with the task whatever ends it.
    membership: Option<Membership>,
    /// Set once the connection has left the hub and the registry while its socket
    /// finishes closing.
    closing: Option<ClosingGuard>,
    /// This publisher's push budget (built at its first push).
    rate: PerConnection,
    /// A Pusher connection's side (`/app/{key}`): its text frames are Pusher
    /// frames. Boxed: native connections pay one pointer.
    pusher: Option<Box<PusherConn>>,
}

/// What a client frame asks of the connection's task.
enum Work {
    /// A publisher's push.
    Publish(Push),
    /// A Pusher connection's text message.
    Pusher(String),
}

impl Connection {
    async fn run(mut self, preamble: Option<Preamble>) {
        if let Some(preamble) = preamble {
            // Boxed: only recover connections carry this future's state.
            if !Box::pin(self.recover(preamble)).await {
                self.leave();
                return;
            }
        }
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

    /// A `?recover=1` connection's start: writes its welcome, replay and
    /// `recovered` frames straight to the socket (waiting for it, within
    /// `server.send_timeout_secs`) while the fan-out holds its live pushes, then
    /// releases them above the preamble's position and attaches the outbox to the
    /// socket. If this node found a hole in what its subscription delivered
    /// meanwhile, the held pushes are dropped and the connection closed with 1012
    /// instead (see [`crate::hub::Hub::close_recovering`], which leaves holding
    /// connections to this check). False when the socket failed or the client did
    /// not read in time.
    async fn recover(&mut self, preamble: Preamble) -> bool {
        let timeout = Duration::from_secs(self.state.settings.server.send_timeout_secs);
        let written = tokio::time::timeout(timeout, write_all(&self.socket, &preamble.bytes)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log::debug!("conn {} preamble not written: {e}", self.id);
                return false;
            }
            Err(_) => {
                log::debug!("conn {} preamble not read within {timeout:?}", self.id);
                return false;
            }
        }
        let bus = &self.state.bus;
        let released = self
            .outbox
            .release_unless(preamble.floor, || bus.holes() != preamble.holes);
        if released.is_none() {
            // The node missed pushes after the floor while the preamble was being
            // written: what it held has a hole. Nothing of it is sent; the client
            // reconnects with the preamble's position and gets the hole replayed.
            let code = crate::history::RESUME_CODE;
            self.outbox.close_with(
                code,
                frame::close(code, "missed pushes: reconnect with your position"),
            );
        }
        self.outbox.attach(self.socket.clone());
        true
    }

    /// Takes the connection out of the hub and the registry: no more pushes, no
    /// longer counted. Its socket may still be finishing the close.
    fn leave(&mut self) {
        if let Some(membership) = self.membership.take() {
            self.closing = Some(self.state.hub.closing_guard());
            drop(membership);
        }
        if let Some(pusher) = &mut self.pusher {
            pusher.release();
        }
    }

    async fn serve(&mut self) -> Ended {
        loop {
            match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Ended(ended) => return ended,
                Event::Frame(frame) => {
                    self.outbox.touch();
                    match self.on_frame(frame) {
                        None => {}
                        Some(Work::Publish(push)) => {
                            // Boxed: publishing (in redis mode a Redis round trip) is
                            // rare on a connection, and inline it would size every
                            // connection's task (which is also why frames are handled
                            // synchronously).
                            Box::pin(self.state.publish(push, Ingress::Publisher)).await;
                        }
                        Some(Work::Pusher(text)) => {
                            if let Some(pusher) = &mut self.pusher {
                                let after = Box::pin(pusher.on_text(&self.outbox, &text)).await;
                                if let After::Close(code, reason) = after {
                                    self.close(code, reason);
                                }
                            }
                        }
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

    /// Handles one frame from the client; returns what is left to do.
    fn on_frame(&mut self, frame: Frame) -> Option<Work> {
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
                // Echoed after what is queued; out of the hub first, as in `close`.
                self.leave();
                self.reading = false;
                self.outbox
                    .close_with(code, frame::close(code, &description));
            }
        }
        None
    }

    /// Handles one complete text message; returns what is left to do.
    fn on_message(&mut self, bytes: &[u8]) -> Option<Work> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.state.metrics.rejected("not_utf8");
            REFUSALS.log(
                log::Level::Info,
                format_args!("conn {} closed: text frame is not UTF-8", self.id),
            );
            self.close(INVALID, "text frame is not UTF-8");
            return None;
        };
        if self.pusher.is_some() {
            return Some(Work::Pusher(text.to_string()));
        }
        let first = std::mem::take(&mut self.first_text);
        if text == "heartbeat" || is_ping(text) {
            self.outbox.offer(&PONG);
            return None;
        }
        // A publisher's frame that looks like JSON is a publish: it routes, or the
        // connection is closed with 1007 (an array or a cut-off object alike). A BOM
        // (.NET clients) and leading whitespace are skipped; other frames (a uid, a
        // word) fall through as for any connection.
        let looks_like_json = crate::edge::strip_bom(text)
            .trim_start()
            .starts_with(['{', '[']);
        if self.may_publish() && looks_like_json {
            return match route_json_line(text, None) {
                Ok(_) if !self.rate.admit(&self.state.settings.ingress) => {
                    self.state.metrics.rejected("rate_limited");
                    self.close(POLICY, "over ingress.push_rate_per_sec");
                    None
                }
                Ok(push) => Some(Work::Publish(push)),
                Err(e) => {
                    self.state.metrics.rejected("publisher_frame");
                    REFUSALS.warn(format_args!(
                        "conn {} publisher frame refused: {e}",
                        self.id
                    ));
                    self.close(INVALID, &format!("not routable: {e}"));
                    None
                }
            };
        }
        if first
            && !self.uid_bound
            && let Some(uid) = plain_id(text)
        {
            self.uid_bound = true;
            if self.state.settings.auth.require_signed_uid {
                // Only a JWT's `sub` binds a uid; the frame is ignored (no answer: a
                // Workerman-style client expects none), counted and logged.
                self.state.metrics.rejected("unsigned_uid");
                REFUSALS.log(
                    log::Level::Info,
                    format_args!(
                        "conn {} uid frame ignored: auth.require_signed_uid",
                        self.id
                    ),
                );
                return None;
            }
            if let Some(meta) = self.state.hub.bind_uid(self.id, uid) {
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
            REFUSALS.log(
                log::Level::Info,
                format_args!(
                    "conn {} closed: message over server.max_message_bytes",
                    self.id
                ),
            );
            return self.close(TOO_BIG, "message too big");
        }
        self.state.metrics.rejected("protocol");
        REFUSALS.log(
            log::Level::Info,
            format_args!("conn {} closed: {error}", self.id),
        );
        self.close(PROTOCOL, &error.to_string());
    }

    fn may_publish(&self) -> bool {
        match self.state.settings.ingress.ws_publish {
            WsPublish::Any => true,
            WsPublish::ApiToken => self.role == Role::Publisher,
            WsPublish::Off => false,
        }
    }

    /// Leaves the hub, queues the close frame (after whatever is queued) and stops
    /// reading. Leaving first: once the client reads the close, the connection is no
    /// longer counted in a push's `delivered` nor offered pushes.
    fn close(&mut self, code: u16, description: &str) {
        self.leave();
        self.reading = false;
        self.outbox
            .close_with(code, frame::close(code, description));
    }
}

/// Writes all of `bytes` to `socket`, waiting whenever it is full.
pub(super) async fn write_all(socket: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        socket.writable().await?;
        match socket.try_write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// After our close frame: no more writes, and the client's answer (its close frame,
/// then end of stream) is read and dropped, for at most [`LINGER_TIMEOUT`].
pub(super) async fn linger(socket: &TcpStream) {
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
///
/// Bounded: each frame's header is checked before its payload is waited for
/// ([`Inbound::check_header`]), and each read takes at most [`READ_CHUNK`] bytes,
/// so the buffer never holds more than [`Inbound::buffer_bound`] bytes, whatever a
/// client announces (actix-http's codec alone would buffer a frame's whole announced
/// payload before comparing it with the limit), and the fragments of a message never
/// more than `max_message_bytes`.
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

    /// The most the read buffer holds after a read: a frame short of complete (a
    /// header, and a payload within the limit) plus one read.
    #[cfg(test)]
    fn buffer_bound(&self) -> usize {
        MAX_HEADER + self.max_message_bytes + READ_CHUNK
    }

    /// Reads what the socket has, without waiting.
    fn read_from(&mut self, socket: &TcpStream) -> io::Result<usize> {
        self.read_with(|buf| socket.try_read_buf(buf))
    }

    /// Lets `read` append at most [`READ_CHUNK`] bytes to the buffer.
    fn read_with(
        &mut self,
        read: impl FnOnce(&mut Limit<&mut BytesMut>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.buffer.reserve(READ_CHUNK);
        read(&mut (&mut self.buffer).limit(READ_CHUNK))
    }

    /// The next complete frame in the buffer, if any.
    fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        self.check_header()?;
        let frame = self.codec.decode(&mut self.buffer)?;
        if self.buffer.is_empty() && self.buffer.capacity() > 0 {
            // Idle connections keep no read buffer.
            self.buffer = BytesMut::new();
        }
        Ok(frame)
    }

    /// Refuses the frame at the front of the buffer from its header alone (RFC 6455
    /// §5.2: 2 bytes, then a 16- or 64-bit extended length), before any payload
    /// is read: `Overflow` (1009) for a data frame announcing more than
    /// `max_message_bytes`, or a continuation that would take the message so far
    /// past it; `InvalidLength` (1002) for a control frame over 125 bytes (§5.5).
    /// Headers broken otherwise (reserved bits, no mask, unknown opcode) are left to
    /// the codec, which refuses them from their first two bytes too.
    fn check_header(&self) -> Result<(), ProtocolError> {
        let (Some(&first), Some(&second)) = (self.buffer.first(), self.buffer.get(1)) else {
            return Ok(());
        };
        if first & 0x70 != 0 || second & 0x80 == 0 {
            return Ok(());
        }
        let length = match second & 0x7f {
            126 => match self.buffer.get(2..4) {
                Some(&[a, b]) => u64::from(u16::from_be_bytes([a, b])),
                _ => return Ok(()),
            },
            127 => match self.buffer.get(2..10).map(<[u8; 8]>::try_from) {
                Some(Ok(bytes)) => u64::from_be_bytes(bytes),
                _ => return Ok(()),
            },
            n => u64::from(n),
        };
        let max = self.max_message_bytes as u64;
        match first & 0x0f {
            OP_CONTINUATION => {
                let so_far = self.fragments.as_ref().map_or(0, |(_, m)| m.len() as u64);
                if so_far.saturating_add(length) > max {
                    return Err(ProtocolError::Overflow);
                }
            }
            OP_TEXT | OP_BINARY if length > max => return Err(ProtocolError::Overflow),
            OP_CLOSE | OP_PING | OP_PONG if length > MAX_CONTROL_PAYLOAD => {
                return Err(ProtocolError::InvalidLength(
                    usize::try_from(length).unwrap_or(usize::MAX),
                ));
            }
            _ => {}
        }
        Ok(())
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

/// A Workerman-style uid frame (`ws.send(1)`, `ws.send('uid1')`): a [`Name`] of at
/// most [`MAX_BOUND_UID_LEN`] bytes without whitespace, not starting like JSON
/// (`{`, `[`, `"`) and not `heartbeat`.
fn plain_id(text: &str) -> Option<Name> {
    if text.len() > MAX_BOUND_UID_LEN
        || text == "heartbeat"
        || text.starts_with(['{', '[', '"'])
        || text.chars().any(char::is_whitespace)
    {
        return None;
    }
    Name::try_from(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_plain_id(text: &str) -> bool {
        plain_id(text).is_some()
    }

    #[test]
    fn plain_ids_are_short_bare_words() {
        assert!(is_plain_id("1"));
        assert!(is_plain_id("uid1"));
        assert!(!is_plain_id("heartbeat"));
        assert!(!is_plain_id(r#"{"type":"ping"}"#));
        assert!(!is_plain_id("two words"));
        assert!(!is_plain_id(&"x".repeat(65)));
        assert!(is_plain_id(&"x".repeat(64)));
        assert!(!is_plain_id(""));
        assert!(!is_plain_id("a\u{202e}b"));
        assert!(!is_plain_id("a\u{1}b"));
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

    /// A client frame: masked (RFC 6455 §5.3), with `fin` and `opcode` as given.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// What the connection makes of the client's bytes: whole messages and control
    /// frames, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Message(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close,
    }

    /// Feeds `stream` to an `Inbound` in reads of the given sizes (each capped at
    /// `READ_CHUNK` by the inbound itself), decoding between reads as the
    /// connection does, and checking the buffer bound after every read. Returns
    /// the events and the error that ended the stream, if any.
    fn decode(max: usize, stream: &[u8], reads: &[usize]) -> (Vec<Event>, Option<ProtocolError>) {
        let mut inbound = Inbound::new(max, &[]);
        let mut events = Vec::new();
        let mut rest = stream;
        let mut sizes = reads.iter().copied().cycle();
        loop {
            match inbound.next_frame() {
                Ok(Some(frame)) => match frame {
                    Frame::Text(b) => events.push(Event::Message(true, b.to_vec())),
                    Frame::Binary(b) => events.push(Event::Message(false, b.to_vec())),
                    Frame::Ping(b) => events.push(Event::Ping(b.to_vec())),
                    Frame::Pong(b) => events.push(Event::Pong(b.to_vec())),
                    Frame::Close(_) => {
                        events.push(Event::Close);
                        return (events, None);
                    }
                    Frame::Continuation(item) => match inbound.continue_message(item) {
                        Ok(Some((text, b))) => events.push(Event::Message(text, b.to_vec())),
                        Ok(None) => {}
                        Err(e) => return (events, Some(e)),
                    },
                },
                Ok(None) => {
                    if rest.is_empty() {
                        return (events, None);
                    }
                    let want = sizes.next().unwrap_or(1).max(1);
                    let read = inbound
                        .read_with(|buf| {
                            let n = want.min(rest.len()).min(buf.remaining_mut());
                            buf.put_slice(&rest[..n]);
                            Ok(n)
                        })
                        .unwrap();
                    rest = &rest[read..];
                    assert!(read <= READ_CHUNK);
                    assert!(
                        inbound.buffer.len() <= inbound.buffer_bound(),
                        "{} buffered, bound {}",
                        inbound.buffer.len(),
                        inbound.buffer_bound()
                    );
                    let fragments = inbound.fragments.as_ref().map_or(0, |(_, m)| m.len());
                    assert!(fragments <= max);
                }
                Err(e) => return (events, Some(e)),
            }
        }
    }

    #[test]
    fn a_frame_announcing_too_much_is_refused_at_its_header() {
        // The issue's example: a text frame announcing 32 MiB, and only its header.
        let header = [0x81, 0xff, 0, 0, 0, 0, 2, 0, 0, 0, 0x37, 0xfa, 0x21, 0x3d];
        let (events, error) = decode(65536, &header, &[4096]);
        assert!(events.is_empty());
        assert!(matches!(error, Some(ProtocolError::Overflow)), "{error:?}");
        // Even before the mask arrives.
        let (_, error) = decode(65536, &header[..10], &[4096]);
        assert!(matches!(error, Some(ProtocolError::Overflow)), "{error:?}");
    }

    #[test]
    fn a_continuation_passing_the_limit_is_refused_at_its_header() {
        let mut stream = client_frame(false, OP_TEXT, &[b'a'; 150]);
        // Announces 100 more (150 + 100 > 200); its payload never comes.
        stream.extend_from_slice(&client_frame(true, OP_CONTINUATION, &[b'b'; 100])[..8]);
        let (events, error) = decode(200, &stream, &[4096]);
        assert!(events.is_empty());
        assert!(matches!(error, Some(ProtocolError::Overflow)), "{error:?}");
    }

    #[test]
    fn a_long_control_frame_is_refused_at_its_header() {
        let stream = &client_frame(true, OP_PING, &[0; 126])[..8];
        let (_, error) = decode(65536, stream, &[4096]);
        assert!(
            matches!(error, Some(ProtocolError::InvalidLength(126))),
            "{error:?}"
        );
    }

    /// The whole connection task, on a real socket, dropped from outside: what it
    /// held in the hub, the caps and the kernel is released all the same.
    #[tokio::test]
    async fn an_aborted_connection_task_leaves_and_closes_its_socket() {
        use tokio::io::AsyncReadExt;

        use crate::gateway::membership::{test_meta, test_state};

        let state = test_state(10, 10);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, peer) = listener.accept().await.unwrap();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let meta = test_meta("home");
                let slot = state.caps.admit(Some(peer.ip())).unwrap();
                let worker = state.bus.fanout().local_worker();
                let (membership, outbox) =
                    Membership::join(state.clone(), &meta, worker, slot, false).unwrap();
                let task = start(
                    state.clone(),
                    membership,
                    outbox,
                    &meta,
                    Role::Client,
                    socket,
                    &[],
                    Some(peer),
                    None,
                    None,
                );
                tokio::task::yield_now().await;
                assert_eq!(state.hub.len(), 1);
                task.abort();
                assert!(task.await.unwrap_err().is_cancelled());
            })
            .await;
        assert!(state.hub.is_empty(), "the hub entry is gone");
        assert_eq!((state.caps.open(), state.caps.addresses()), (0, 0));
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "the server's socket is closed: {read:?}"
        );
    }

    use proptest::prelude::*;

    /// One message as a client may send it: whole or in fragments, with control
    /// frames between the fragments.
    #[derive(Debug, Clone)]
    struct Message {
        text: bool,
        fragments: Vec<Vec<u8>>,
        controls: Vec<(u8, Vec<u8>)>,
    }

    fn message(max: usize) -> impl Strategy<Value = Message> {
        let fragment = prop::collection::vec(any::<u8>(), 0..max / 3);
        let control = (
            prop::sample::select(vec![OP_PING, OP_PONG]),
            prop::collection::vec(any::<u8>(), 0..=125),
        );
        (
            any::<bool>(),
            prop::collection::vec(fragment, 1..4),
            prop::collection::vec(control, 0..3),
        )
            .prop_map(|(text, fragments, controls)| Message {
                text,
                fragments,
                controls,
            })
    }

    fn encode(messages: &[Message]) -> (Vec<u8>, Vec<Event>) {
        let (mut stream, mut events) = (Vec::new(), Vec::new());
        for m in messages {
            let opcode = if m.text { OP_TEXT } else { OP_BINARY };
            let last = m.fragments.len() - 1;
            for (i, fragment) in m.fragments.iter().enumerate() {
                let op = if i == 0 { opcode } else { OP_CONTINUATION };
                stream.extend(client_frame(i == last, op, fragment));
                // Control frames may come between fragments (RFC 6455 §5.4).
                if i < last {
                    for (op, payload) in &m.controls {
                        stream.extend(client_frame(true, *op, payload));
                        events.push(match *op {
                            OP_PING => Event::Ping(payload.clone()),
                            _ => Event::Pong(payload.clone()),
                        });
                    }
                }
            }
            events.push(Event::Message(m.text, m.fragments.concat()));
        }
        (stream, events)
    }

    const MAX: usize = 600;

    proptest! {
        #[test]
        fn any_bytes_in_any_reads_never_panic_nor_pass_the_bound(
            stream in prop::collection::vec(any::<u8>(), 0..20_000),
            reads in prop::collection::vec(1usize..6000, 1..20),
        ) {
            decode(MAX, &stream, &reads);
        }

        #[test]
        fn headers_of_any_length_never_pass_the_bound(
            first in any::<u8>(),
            second in any::<u8>(),
            extended in any::<[u8; 12]>(),
            tail in prop::collection::vec(any::<u8>(), 0..10_000),
            reads in prop::collection::vec(1usize..6000, 1..20),
        ) {
            let mut stream = vec![first, second];
            stream.extend_from_slice(&extended);
            stream.extend_from_slice(&tail);
            decode(MAX, &stream, &reads);
        }

        #[test]
        fn frames_decoded_are_the_frames_sent(
            messages in prop::collection::vec(message(MAX), 0..6),
            reads in prop::collection::vec(1usize..5000, 1..20),
        ) {
            let (stream, expected) = encode(&messages);
            let (events, error) = decode(MAX, &stream, &reads);
            prop_assert!(error.is_none(), "{:?}", error);
            prop_assert_eq!(events, expected);
        }
    }
}
