//! A tiny real HTTP/1.1 server on a free port that records every request (method,
//! path, query, headers, body) and answers each with the next scripted reply (then
//! `200 {}`): to capture what an SDK sends, or to be a webhook receiver that fails.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::WAIT;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`), as sent.
    pub query: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct HttpCapture {
    pub addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Captured>,
}

impl HttpCapture {
    /// Starts the server; `replies` are `(status, body)` for the first requests.
    pub async fn start(replies: Vec<(u16, &'static str)>) -> HttpCapture {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let replies = std::sync::Arc::new(std::sync::Mutex::new(replies.into_iter()));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (tx, replies) = (tx.clone(), replies.clone());
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut read = BufReader::new(read);
                    while let Some(request) = read_request(&mut read).await {
                        let (status, body) = replies.lock().unwrap().next().unwrap_or((200, "{}"));
                        let _ = tx.send(request);
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HttpCapture { addr, rx }
    }

    /// The next request; panics after `WAIT`.
    pub async fn next(&mut self) -> Captured {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("no request within WAIT")
            .expect("capture server stopped")
    }

    /// The requests that already arrived, without waiting.
    pub fn drain(&mut self) -> Vec<Captured> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }

    /// Whether a request arrives within `within`.
    pub async fn quiet(&mut self, within: std::time::Duration) -> bool {
        tokio::time::timeout(within, self.rx.recv()).await.is_err()
    }
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> Option<Captured> {
    let mut line = String::new();
    read.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        read.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")),
        "capture server: chunked bodies are not supported"
    );
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.ok()?;
    Some(Captured {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
    })
}
