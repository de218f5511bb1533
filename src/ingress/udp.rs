//! The Swoole UDP side port: each datagram is one JSON object (a trailing newline is
//! allowed, so `echo '{..}' | socat - UDP:host:port` works), routed like a text line
//! by [`route_json_line`]: uid/user_id, else page, else all. Nothing is sent back.
//!
//! Without a reply, a refused datagram is visible only in the metrics
//! (`scenecast_rejected_total{reason="udp_..."}`) and in the log, where warnings are
//! throttled so a flood cannot fill it. When `ingress.text_token` is set, datagrams
//! must carry the same `"token"` as text lines; bind to loopback otherwise.
//!
//! Each source IP may push `ingress.push_rate_per_sec` datagrams a second (bursts of
//! `ingress.push_burst`); the rest are dropped and counted as `rate_limited`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::rate::PerIp;
use super::throttle::WarnThrottle;
use crate::app::AppState;
use crate::push::{Ingress, RouteError, route_json_line};

/// After a receive error, wait this long so a persistent error cannot spin the CPU.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Binds the UDP port (`ingress.udp_bind`).
pub async fn bind(addr: &str) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr).await
}

/// Receives on `socket` until the returned task is aborted.
pub fn spawn(socket: UdpSocket, state: Arc<AppState>) -> JoinHandle<()> {
    tokio::spawn(receive_loop(socket, state))
}

async fn receive_loop(socket: UdpSocket, state: Arc<AppState>) {
    let max = state.settings.server.max_message_bytes;
    let token = Some(state.settings.ingress.text_token.as_str()).filter(|t| !t.is_empty());
    let warnings = WarnThrottle::new(module_path!());
    let rate = PerIp::new(&state.settings.ingress);
    // Room for the largest object plus `\r\n`, and one byte more: a datagram that
    // fills the buffer was longer than that (the kernel truncates it silently).
    let mut buffer = vec![0u8; max + 3];
    loop {
        let (len, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                warnings.warn(format_args!("udp port: receive failed: {e}"));
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        let datagram = strip_line_end(buffer.get(..len).unwrap_or_default());
        let refusal = if len == buffer.len() || datagram.len() > max {
            Some((
                "udp_too_big",
                format!("over server.max_message_bytes ({max})"),
            ))
        } else if datagram.trim_ascii().is_empty() {
            Some(("udp_empty", "empty datagram".to_string()))
        } else {
            match std::str::from_utf8(datagram) {
                Err(_) => Some(("udp_encoding", "not UTF-8".to_string())),
                Ok(text) => match route_json_line(text, token) {
                    // Checked after routing, so that only well-formed pushes (not
                    // garbage from spoofed sources) take from a source's budget.
                    Ok(_) if !rate.admit(peer.ip()) => {
                        Some(("rate_limited", "over ingress.push_rate_per_sec".to_string()))
                    }
                    Ok(push) => {
                        state.publish(push, Ingress::Udp).await;
                        None
                    }
                    Err(e) => {
                        let reason = match e {
                            RouteError::NotJson(_) => "udp_json",
                            RouteError::BadToken => "udp_token",
                            RouteError::BadTarget(_) => "udp_target",
                        };
                        Some((reason, e.to_string()))
                    }
                },
            }
        };
        if let Some((reason, problem)) = refusal {
            state.metrics.rejected(reason);
            warnings.warn(format_args!(
                "udp port: datagram from {peer} refused: {problem}"
            ));
        }
    }
}

/// The datagram without one trailing `\n` or `\r\n`.
fn strip_line_end(datagram: &[u8]) -> &[u8] {
    let datagram = datagram.strip_suffix(b"\n").unwrap_or(datagram);
    datagram.strip_suffix(b"\r").unwrap_or(datagram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_ending_is_stripped() {
        assert_eq!(strip_line_end(b"{}\r\n"), b"{}");
        assert_eq!(strip_line_end(b"{}\n"), b"{}");
        assert_eq!(strip_line_end(b"{}"), b"{}");
        assert_eq!(strip_line_end(b"{}\n\n"), b"{}\n");
    }
}
