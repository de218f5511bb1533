//! Clients for the socket ingresses, as back offices use them: a text-port
//! connection that writes lines and reads reply lines, the PHP recipe's blocking
//! `stream_socket_client` + `fwrite` + `fread`, and UDP datagrams.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::WAIT;

/// One text-port connection; replies are read as lines.
pub struct TextClient {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl TextClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the text port");
        let (read, writer) = stream.into_split();
        TextClient {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// Writes raw bytes (a line must end with `\n` itself).
    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .await
            .expect("write to the text port");
    }

    /// The next reply line with its `\n`, or "" when the server closed.
    pub async fn reply(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("no reply line within {WAIT:?}"))
            .expect("read a reply line");
        line
    }

    /// Writes `line` plus `\n` and returns the reply.
    pub async fn push(&mut self, line: &str) -> String {
        self.write(format!("{line}\n").as_bytes()).await;
        self.reply().await
    }
}

/// The Workerman recipe's back office, byte for byte: connect, `fwrite` the JSON and
/// a newline, `fread($client, 8192)`. Blocking, like PHP, on a blocking thread.
pub async fn php_push(addr: SocketAddr, json: &str) -> String {
    let payload = format!("{json}\n");
    tokio::task::spawn_blocking(move || {
        let mut client = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .expect("stream_socket_client");
        client.set_read_timeout(Some(WAIT)).expect("read timeout");
        client.write_all(payload.as_bytes()).expect("fwrite");
        let mut reply = [0u8; 8192];
        let n = client.read(&mut reply).expect("fread");
        String::from_utf8_lossy(&reply[..n]).into_owned()
    })
    .await
    .expect("the PHP-like client ran")
}

/// Sends one datagram from a fresh socket, as `socat - UDP:host:port` does.
pub fn udp_send(addr: SocketAddr, datagram: &[u8]) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP client socket");
    let sent = socket.send_to(datagram, addr).expect("send a datagram");
    assert_eq!(sent, datagram.len());
}
