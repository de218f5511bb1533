//! A TCP proxy between a node and Redis that can black-hole: stop forwarding while
//! keeping every socket open, as a NAT or firewall that dropped a flow does. The
//! node sees no error, no reset, no FIN: only silence.
//!
//! It can also cut: close every open connection on both sides and turn new ones
//! away until told otherwise, as a Wi-Fi blip or a restarting load balancer does to
//! a browser in front of a server that itself stays up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    /// Where new connections are forwarded.
    upstream: Mutex<SocketAddr>,
    /// Connections numbered below this are frozen for good.
    frozen_below: AtomicU64,
    /// New connections are accepted and frozen at once.
    freeze_new: AtomicBool,
    /// Connections numbered below this are closed (both sides).
    cut_below: AtomicU64,
    /// New connections are accepted and closed at once.
    refuse_new: AtomicBool,
    /// Wakes the open connections when `cut_below` rises.
    cut: Notify,
    next: AtomicU64,
}

impl Proxy {
    /// Listens on a free port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State {
            upstream: Mutex::new(upstream),
            frozen_below: AtomicU64::new(0),
            freeze_new: AtomicBool::new(false),
            cut_below: AtomicU64::new(0),
            refuse_new: AtomicBool::new(false),
            cut: Notify::new(),
            next: AtomicU64::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = shared.next.fetch_add(1, Ordering::SeqCst);
                let frozen_at_accept = shared.freeze_new.load(Ordering::SeqCst);
                if shared.refuse_new.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let state = shared.clone();
                tokio::spawn(async move {
                    if frozen_at_accept {
                        // Hold the socket open and never answer.
                        let _held = client;
                        return std::future::pending::<()>().await;
                    }
                    let upstream = *state.upstream.lock().expect("proxy upstream");
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let frozen = {
                        let state = state.clone();
                        move || number < state.frozen_below.load(Ordering::SeqCst)
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = pump(&mut client_read, &mut server_write, frozen.clone());
                    let down = pump(&mut server_read, &mut client_write, frozen);
                    let cut = async {
                        loop {
                            // Registered before the check, so a cut in between still wakes it.
                            let woken = state.cut.notified();
                            if number < state.cut_below.load(Ordering::SeqCst) {
                                return;
                            }
                            woken.await;
                        }
                    };
                    // A cut drops both pumps, and with them both sockets (FIN each way).
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        () = cut => {}
                    }
                });
            }
        });
        Proxy { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Black-holes every connection open now and every new one.
    pub fn freeze(&self) {
        self.state.freeze_new.store(true, Ordering::SeqCst);
        let next = self.state.next.load(Ordering::SeqCst);
        self.state.frozen_below.store(next, Ordering::SeqCst);
    }

    /// New connections are forwarded again; the frozen ones stay silent for good.
    pub fn thaw_new(&self) {
        self.state.freeze_new.store(false, Ordering::SeqCst);
    }

    /// Closes every connection open now, and every new one until [`Proxy::reopen`]:
    /// both peers see the connection end (the server keeps running).
    pub fn cut(&self) {
        self.state.refuse_new.store(true, Ordering::SeqCst);
        let next = self.state.next.load(Ordering::SeqCst);
        self.state.cut_below.store(next, Ordering::SeqCst);
        self.state.cut.notify_waiters();
    }

    /// New connections go to `to` from now on (open ones stay where they are).
    pub fn redirect(&self, to: SocketAddr) {
        *self.state.upstream.lock().expect("proxy upstream") = to;
    }

    /// New connections are forwarded again after [`Proxy::cut`].
    pub fn reopen(&self) {
        self.state.refuse_new.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either side closes; once `frozen`, it swallows what
/// it read and waits for ever, keeping both sockets open.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    frozen: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
