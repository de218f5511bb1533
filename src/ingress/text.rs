//! The Workerman text port: back offices open a TCP connection (PHP
//! `stream_socket_client` + `fwrite` + `fread`, or `nc`), write one JSON object per
//! line and read one reply line per request: `ok\n` when at least one connection got
//! the push, `fail\n` when none did or the line was refused.
//!
//! Each line is routed by [`route_json_line`] (uid/user_id, else page, else all) and
//! the frame pushed is the line as sent (minus `"token"` when `ingress.text_token` is
//! set). Replies come in request order. Bad input (not UTF-8, not a JSON object, wrong
//! token, longer than `server.max_message_bytes`, a line cut off by the disconnect)
//! gets `fail\n` and a throttled warning, and only ever affects its own line.
//!
//! Limits, so nobody can exhaust the process or lock the back office out:
//! - at most [`MAX_CONNECTIONS`] connections at once, and at most
//!   `ingress.text_max_connections_per_ip` from one peer IP; one more is closed at
//!   accept (counted as `text_connections` / `text_connections_per_ip`);
//! - a connection that sends nothing for `ingress.text_idle_timeout_secs` between
//!   lines is closed (Workerman clients that keep theirs open reconnect), and a
//!   line that has started must end within [`LINE_TIMEOUT`], else `fail\n` and the
//!   connection is closed;
//! - a line longer than the limit is skipped up to its newline without being
//!   buffered, then answered `fail\n`; the connection stays usable;
//! - pushes over the peer IP's `ingress.push_rate_per_sec` are answered `fail\n`
//!   (counted as `rate_limited`);
//! - a client that stops reading its replies is closed after `server.send_timeout_secs`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout, timeout_at};

use super::json_line::route_json_line;
use super::rate::PerIp;
use super::throttle::WarnThrottle;
use crate::app::AppState;
use crate::push::{Ingress, Push};

/// Text connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long the rest of a started line may take to arrive.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keepalive probes start after this much silence; a dead peer is dropped ~30 s later.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// After an accept error (e.g. out of file descriptors), wait before the next accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const OK: &[u8] = b"ok\n";
const FAIL: &[u8] = b"fail\n";

/// What every connection of the port shares.
struct Port {
    state: Arc<AppState>,
    /// `ingress.text_token`, when set.
    token: Option<String>,
    max_line: usize,
    send_timeout: Duration,
    /// `ingress.text_idle_timeout_secs`; `None` = connections may idle for ever.
    idle_timeout: Option<Duration>,
    /// `ingress.text_max_connections_per_ip`; 0 = no per-IP limit.
    max_per_ip: usize,
    /// Open connections per peer IP (entries at 0 are removed).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    rate: PerIp,
    warnings: WarnThrottle,
}

/// One connection's place in [`Port::per_ip`], given back on drop (also when the
/// connection task panics or is aborted).
struct IpSlot {
    port: Arc<Port>,
    ip: IpAddr,
}

impl Port {
    /// A slot for one more connection from `ip`, or `None` when it holds its share.
    fn take_slot(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let open = per_ip.entry(ip).or_insert(0);
        if self.max_per_ip > 0 && *open >= self.max_per_ip {
            return None;
        }
        *open += 1;
        Some(IpSlot {
            port: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.port.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Binds the text port (`ingress.text_bind`).
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `listener` until the returned task is aborted; aborting it also ends
/// every open text connection.
pub fn spawn(listener: TcpListener, state: Arc<AppState>) -> JoinHandle<()> {
    let settings = &state.settings;
    let port = Arc::new(Port {
        token: Some(settings.ingress.text_token.clone()).filter(|t| !t.is_empty()),
        max_line: settings.server.max_message_bytes,
        send_timeout: Duration::from_secs(settings.server.send_timeout_secs),
        idle_timeout: Some(settings.ingress.text_idle_timeout_secs)
            .filter(|&secs| secs > 0)
            .map(Duration::from_secs),
        max_per_ip: settings.ingress.text_max_connections_per_ip,
        per_ip: Mutex::new(HashMap::new()),
        rate: PerIp::new(&settings.ingress),
        warnings: WarnThrottle::new(module_path!()),
        state,
    });
    tokio::spawn(accept_loop(listener, port))
}

async fn accept_loop(listener: TcpListener, port: Arc<Port>) {
    // Owning the connection tasks here means that dropping this future (abort on
    // stop) drops, and so closes, every text connection too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        port.state.metrics.rejected("text_connections");
                        port.warnings.warn(format_args!(
                            "text port: refused {peer}: {MAX_CONNECTIONS} connections already open"
                        ));
                        continue;
                    }
                    let Some(slot) = port.take_slot(peer.ip()) else {
                        port.state.metrics.rejected("text_connections_per_ip");
                        port.warnings.warn(format_args!(
                            "text port: refused {peer}: {} connections already open from {} \
                             (ingress.text_max_connections_per_ip)",
                            port.max_per_ip,
                            peer.ip()
                        ));
                        continue;
                    };
                    connections.spawn(serve_connection(stream, peer, slot));
                }
                Err(e) => {
                    port.warnings.warn(format_args!("text port: accept failed: {e}"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, slot: IpSlot) {
    let port = &slot.port;
    let socket = SockRef::from(&stream);
    crate::server::tune_accepted(&socket);
    // Text connections may idle between lines for ever, so keepalive finds dead peers.
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(3);
    let _ = socket.set_tcp_keepalive(&keepalive);
    log::debug!("text port: {peer} connected");

    let (read, write) = stream.split();
    let mut lines = LineReader::new(read, port.max_line, LINE_TIMEOUT, port.idle_timeout);
    let mut replies = Replies {
        writer: BufWriter::new(write),
        timeout: port.send_timeout,
    };
    loop {
        // Replies are batched while more lines are already here, and flushed
        // before waiting on the socket, so a client awaiting its reply gets it.
        if !lines.has_line_buffered() && !replies.flush().await {
            return;
        }
        let reply = match lines.next().await {
            Ok(Frame::Line) => match port.handle(lines.line(), peer.ip()).await {
                Some(Ok(delivered)) if delivered > 0 => OK,
                Some(Ok(_)) => FAIL,
                Some(Err((reason, problem))) => {
                    port.refuse(reason, peer, format_args!("{problem}"));
                    FAIL
                }
                None => continue,
            },
            Ok(Frame::TooLong) => {
                port.refuse(
                    "text_too_big",
                    peer,
                    format_args!("line over server.max_message_bytes ({})", port.max_line),
                );
                FAIL
            }
            Ok(Frame::Unfinished(bytes)) => {
                port.refuse(
                    "text_unfinished",
                    peer,
                    format_args!("disconnected in the middle of a line ({bytes} bytes lost)"),
                );
                // The client may have closed only its sending side and still read.
                if replies.send(FAIL).await {
                    replies.flush().await;
                }
                return;
            }
            Ok(Frame::Stalled) => {
                port.refuse(
                    "text_unfinished",
                    peer,
                    format_args!(
                        "line unfinished after {}s, closing the connection",
                        LINE_TIMEOUT.as_secs()
                    ),
                );
                if replies.send(FAIL).await {
                    replies.flush().await;
                }
                return;
            }
            Ok(Frame::Idle) => {
                log::debug!("text port: {peer} closed: idle for ingress.text_idle_timeout_secs");
                return;
            }
            Ok(Frame::End) => {
                replies.flush().await;
                log::debug!("text port: {peer} disconnected");
                return;
            }
            Err(e) => {
                if lines.unfinished() > 0 {
                    port.refuse(
                        "text_unfinished",
                        peer,
                        format_args!(
                            "connection lost in the middle of a line ({} bytes lost): {e}",
                            lines.unfinished()
                        ),
                    );
                } else {
                    log::debug!("text port: {peer} connection lost: {e}");
                }
                return;
            }
        };
        if !replies.send(reply).await {
            return;
        }
    }
}

impl Port {
    /// Routes and publishes one complete line: the number of connections reached,
    /// the reason it was refused, or `None` for a blank line (no reply).
    async fn handle(
        &self,
        line: &[u8],
        ip: IpAddr,
    ) -> Option<Result<usize, (&'static str, String)>> {
        let push = match self.route(line)? {
            Ok(push) => push,
            Err(refusal) => return Some(Err(refusal)),
        };
        if !self.rate.admit(ip) {
            return Some(Err((
                "rate_limited",
                "over ingress.push_rate_per_sec".into(),
            )));
        }
        let published = self.state.publish(push, Ingress::Text).await;
        Some(Ok(published.delivered))
    }

    fn route(&self, line: &[u8]) -> Option<Result<Push, (&'static str, String)>> {
        let Ok(line) = std::str::from_utf8(line) else {
            return Some(Err(("text_encoding", "line is not UTF-8".into())));
        };
        // Only a line of ASCII blanks gets no reply (a keep-alive newline); a BOM or
        // a Unicode space alone is a request like any other, answered `fail`, so a
        // client waiting for one reply per line is never left hanging.
        if line.trim_ascii().is_empty() {
            return None;
        }
        Some(
            route_json_line(line, self.token.as_deref())
                .map_err(|e| (e.reason(Ingress::Text), e.to_string())),
        )
    }

    fn refuse(&self, reason: &'static str, peer: SocketAddr, problem: std::fmt::Arguments<'_>) {
        self.state.metrics.rejected(reason);
        self.warnings.warn(format_args!(
            "text port: line from {peer} refused: {problem}"
        ));
    }
}

/// The reply side of a connection, every write bounded by the send timeout.
struct Replies<W> {
    writer: BufWriter<W>,
    timeout: Duration,
}

impl<W: AsyncWrite + Unpin> Replies<W> {
    /// Queues one reply; false when the client is gone or stopped reading.
    async fn send(&mut self, reply: &[u8]) -> bool {
        matches!(
            timeout(self.timeout, self.writer.write_all(reply)).await,
            Ok(Ok(()))
        )
    }

    async fn flush(&mut self) -> bool {
        matches!(timeout(self.timeout, self.writer.flush()).await, Ok(Ok(())))
    }
}

/// What [`LineReader::next`] found.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A complete line, available from [`LineReader::line`].
    Line,
    /// A line over the limit was skipped, up to and including its newline.
    TooLong,
    /// The peer closed in the middle of a line of this many bytes.
    Unfinished(usize),
    /// A started line did not end within [`LINE_TIMEOUT`].
    Stalled,
    /// The peer closed between lines.
    End,
    /// Nothing arrived between lines for the idle timeout.
    Idle,
}

/// Newline-delimited lines with a length limit. A line over the limit is never held
/// in memory: once it outgrows the limit its bytes are dropped as they arrive.
struct LineReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    max: usize,
    /// The current line outgrew `max`; skipping to its newline.
    overflowed: bool,
    /// Bytes of the current, unfinished line received so far.
    pending: usize,
    /// When the current unfinished line began to arrive.
    started: Option<Instant>,
    /// How long a started line may take to end.
    line_timeout: Duration,
    /// How long the reader waits for the first byte of a line; `None` = for ever.
    idle_timeout: Option<Duration>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize, line_timeout: Duration, idle_timeout: Option<Duration>) -> Self {
        Self {
            inner: BufReader::new(inner),
            line: Vec::new(),
            max,
            overflowed: false,
            pending: 0,
            started: None,
            line_timeout,
            idle_timeout,
        }
    }

    /// The line returned by the last [`Frame::Line`], without its `\n` or `\r\n`.
    fn line(&self) -> &[u8] {
        &self.line
    }

    /// Whether a complete line is already buffered (reading it will not wait).
    fn has_line_buffered(&self) -> bool {
        self.inner.buffer().contains(&b'\n')
    }

    /// Bytes of a line that has started but not ended.
    fn unfinished(&self) -> usize {
        self.pending
    }

    /// Reads up to the end of the next line. Cancel-safe: state lives in `self`.
    async fn next(&mut self) -> io::Result<Frame> {
        if self.pending == 0 {
            self.line.clear();
        }
        loop {
            let chunk = match self.started {
                Some(started) => {
                    match timeout_at(started + self.line_timeout, self.inner.fill_buf()).await {
                        Ok(chunk) => chunk?,
                        Err(_) => {
                            self.reset();
                            return Ok(Frame::Stalled);
                        }
                    }
                }
                None => match self.idle_timeout {
                    None => self.inner.fill_buf().await?,
                    Some(idle) => match timeout(idle, self.inner.fill_buf()).await {
                        Ok(chunk) => chunk?,
                        Err(_) => return Ok(Frame::Idle),
                    },
                },
            };
            if chunk.is_empty() {
                let lost = self.pending;
                self.reset();
                return Ok(if lost == 0 {
                    Frame::End
                } else {
                    Frame::Unfinished(lost)
                });
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let part = chunk.get(..newline.unwrap_or(chunk.len())).unwrap_or(chunk);
            // One byte of slack for the `\r` of a `\r\n` ending.
            if !self.overflowed && self.line.len() + part.len() > self.max + 1 {
                self.overflowed = true;
                self.line = Vec::new();
            }
            if !self.overflowed {
                self.line.extend_from_slice(part);
            }
            let used = part.len() + usize::from(newline.is_some());
            self.pending += part.len();
            self.inner.consume(used);

            if newline.is_none() {
                self.started.get_or_insert_with(Instant::now);
                continue;
            }
            let overflowed = self.overflowed;
            self.pending = 0;
            self.started = None;
            self.overflowed = false;
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if overflowed || self.line.len() > self.max {
                self.line.clear();
                return Ok(Frame::TooLong);
            }
            return Ok(Frame::Line);
        }
    }

    fn reset(&mut self) {
        self.line.clear();
        self.pending = 0;
        self.started = None;
        self.overflowed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max: usize) -> Vec<Result<String, Frame>> {
        let mut reader = LineReader::new(input, max, LINE_TIMEOUT, None);
        let mut out = Vec::new();
        loop {
            match reader.next().await.unwrap() {
                Frame::Line => out.push(Ok(String::from_utf8_lossy(reader.line()).into())),
                Frame::End => return out,
                other => out.push(Err(other)),
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_strips_line_endings() {
        assert_eq!(
            frames(b"{\"a\":1}\n\r\n{\"b\":2}\r\n", 64).await,
            [
                Ok("{\"a\":1}".into()),
                Ok("".into()),
                Ok("{\"b\":2}".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_long_line_is_skipped_and_the_next_one_read() {
        let mut input = vec![b'x'; 1000];
        input.extend_from_slice(b"\nabcd\nabcde\r\nabcdef\n");
        assert_eq!(
            frames(&input, 5).await,
            [
                Err(Frame::TooLong),
                Ok("abcd".into()),
                Ok("abcde".into()),
                Err(Frame::TooLong),
            ]
        );
    }

    #[tokio::test]
    async fn an_unfinished_last_line_is_reported_not_returned() {
        assert_eq!(
            frames(b"{\"a\":1}\n{\"uid\":", 64).await,
            [Ok("{\"a\":1}".into()), Err(Frame::Unfinished(7))]
        );
    }

    #[tokio::test]
    async fn a_stalled_line_times_out_but_an_idle_connection_does_not() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = LineReader::new(server, 64, Duration::from_millis(50), None);
        client.write_all(b"{}\n").await.unwrap();
        assert_eq!(reader.next().await.unwrap(), Frame::Line);
        // Idle between lines: no deadline.
        assert!(
            timeout(Duration::from_millis(200), reader.next())
                .await
                .is_err()
        );
        client.write_all(b"{\"uid\"").await.unwrap();
        assert_eq!(reader.next().await.unwrap(), Frame::Stalled);
    }

    #[tokio::test]
    async fn an_idle_timeout_ends_a_silent_connection_between_lines() {
        let (mut client, server) = tokio::io::duplex(64);
        let idle = Some(Duration::from_millis(50));
        let mut reader = LineReader::new(server, 64, Duration::from_secs(30), idle);
        client.write_all(b"{}\n").await.unwrap();
        assert_eq!(reader.next().await.unwrap(), Frame::Line);
        assert_eq!(reader.next().await.unwrap(), Frame::Idle);
    }

    /// Serves `chunks` one read at a time, as a socket delivering segments would.
    struct Chunked(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// What the reader must return for `input`: lines split at `\n`, one `\r`
    /// stripped, over `max` refused, an unterminated tail reported with its size.
    fn reference(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, Frame>> {
        let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        let tail = parts.pop().unwrap_or_default();
        let mut out: Vec<_> = parts
            .into_iter()
            .map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() > max {
                    Err(Frame::TooLong)
                } else {
                    Ok(line.to_vec())
                }
            })
            .collect();
        if !tail.is_empty() {
            out.push(Err(Frame::Unfinished(tail.len())));
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_in_any_chunks_read_as_the_reference_and_stay_bounded(
            input in proptest::collection::vec(
                proptest::prop_oneof![4 => proptest::prelude::any::<u8>(), 1 => proptest::strategy::Just(b'\n'), 1 => proptest::strategy::Just(b'\r')],
                0..400,
            ),
            cuts in proptest::collection::vec(1usize..64, 1..20),
            max in 1usize..40,
        ) {
            let mut chunks = std::collections::VecDeque::new();
            let mut rest = input.as_slice();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, after) = rest.split_at((*cut).min(rest.len()));
                chunks.push_back(chunk.to_vec());
                rest = after;
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let got = runtime.block_on(async {
                let mut reader = LineReader::new(Chunked(chunks), max, LINE_TIMEOUT, None);
                let mut out = Vec::new();
                loop {
                    let frame = reader.next().await.unwrap();
                    // Never more than the limit plus the `\r` slack is held.
                    assert!(reader.line.len() <= max + 1);
                    match frame {
                        Frame::Line => out.push(Ok(reader.line().to_vec())),
                        Frame::End => return out,
                        Frame::Unfinished(n) => {
                            out.push(Err(Frame::Unfinished(n)));
                            return out;
                        }
                        other => out.push(Err(other)),
                    }
                }
            });
            proptest::prop_assert_eq!(got, reference(&input, max));
        }
    }
}
