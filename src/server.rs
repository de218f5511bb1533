//! Assembles the server: binds the listeners, builds the shared state, runs the HTTP
//! workers, and owns the graceful stop (1001 to every client, registry entries
//! removed, then the HTTP server drained).
//!
//! The HTTP side is actix-web's `App` on actix-http's `HttpService`, assembled by hand
//! rather than through `HttpServer`, for one reason: `HttpService` can hand WebSocket
//! upgrades, socket and all, to [`gateway::upgrade_service`], so a WebSocket does not
//! keep an HTTP dispatcher and its buffers for its whole life.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_http::HttpService;
use actix_server::ServerHandle;
use actix_service::map_config;
use actix_web::dev::AppConfig;
use actix_web::{App, web};
use tokio::net::TcpStream;

use crate::app::AppState;
use crate::auth::Tokens;
use crate::bus::{Bus, Fanout, RedisBus};
use crate::config::Settings;
use crate::hub::Hub;
use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::net::ConnectionCaps;
use crate::registry::Registry;
use crate::scenes::SceneTable;
use crate::{gateway, ingress, ops};

/// A dead peer that stopped acknowledging our writes is dropped by the kernel after
/// this long, even if we are not reading from it.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful stop waits for clients to answer the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Settings every accepted TCP connection gets, HTTP/WebSocket and text port alike:
/// no Nagle delay on small pushes, and `TCP_USER_TIMEOUT` so that a peer which
/// stopped acknowledging is dropped by the kernel.
pub(crate) fn tune_accepted(socket: &socket2::SockRef<'_>) {
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    /// Another live node holds `server.node_id`.
    #[error("{0}")]
    NodeIdInUse(#[from] crate::registry::StartRefused),
}

impl StartError {
    /// The process exit status for this error: 2 for a configuration that cannot
    /// run (a node id held by a live node), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::NodeIdInUse(_) => 2,
            StartError::Bind { .. } | StartError::Setup(_) => 1,
        }
    }
}

/// A task this node cannot work without (bus links and delivery, registry worker,
/// heartbeat, fan-out ordering), by name.
type CriticalTask = (&'static str, tokio::task::JoinHandle<()>);

/// Watches the critical tasks: none of them ends while the server runs, so one
/// that ends (a panic, or a return) is reported on `ended` and the process stops
/// with a non-zero status (crash-only: a supervisor such as systemd or Kubernetes
/// starts a fresh one) rather than staying up, silent and `ok`.
struct Critical {
    aborts: Vec<tokio::task::AbortHandle>,
    ended: tokio::sync::mpsc::UnboundedReceiver<(&'static str, String)>,
}

impl Critical {
    fn watch(tasks: Vec<CriticalTask>) -> Self {
        let (report, ended) = tokio::sync::mpsc::unbounded_channel();
        let mut aborts = Vec::new();
        for (name, task) in tasks {
            aborts.push(task.abort_handle());
            let report = report.clone();
            tokio::spawn(async move {
                let how = match task.await {
                    Ok(()) => "returned".to_string(),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e)),
                    Err(_) => return, // aborted by `stop`
                };
                let _ = report.send((name, how));
            });
        }
        Self { aborts, ended }
    }

    fn abort_all(&self) {
        for task in &self.aborts {
            task.abort();
        }
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A started server. Dropping it does not stop it; call [`Running::stop`].
pub struct Running {
    /// Where HTTP and WebSocket are served.
    pub http_addr: SocketAddr,
    /// Where the Workerman text port listens (`ingress.text_bind`), when on.
    pub text_addr: Option<SocketAddr>,
    /// Where the UDP port listens (`ingress.udp_bind`), when on.
    pub udp_addr: Option<SocketAddr>,
    pub node_id: String,
    state: web::Data<AppState>,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    critical: Critical,
    /// The text and UDP ports; stopped first on [`Running::stop`].
    ingress_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The ports of one server, bound and not yet served.
struct Listeners {
    http: TcpListener,
    http_addr: SocketAddr,
    text: Option<tokio::net::TcpListener>,
    text_addr: Option<SocketAddr>,
    udp: Option<tokio::net::UdpSocket>,
    udp_addr: Option<SocketAddr>,
}

impl Listeners {
    async fn bind(settings: &Settings) -> Result<Self, StartError> {
        let bind = &settings.server.bind;
        let http = TcpListener::bind(bind).map_err(|e| bind_error("server.bind", bind, e))?;
        let http_addr = http
            .local_addr()
            .map_err(|e| bind_error("server.bind", bind, e))?;

        let (text, text_addr) = match settings.ingress.text_bind.as_str() {
            "" => (None, None),
            addr => {
                let error = |e| bind_error("ingress.text_bind", addr, e);
                let listener = ingress::text::bind(addr).await.map_err(error)?;
                let local = listener.local_addr().map_err(error)?;
                (Some(listener), Some(local))
            }
        };
        let (udp, udp_addr) = match settings.ingress.udp_bind.as_str() {
            "" => (None, None),
            addr => {
                let error = |e| bind_error("ingress.udp_bind", addr, e);
                let socket = ingress::udp::bind(addr).await.map_err(error)?;
                let local = socket.local_addr().map_err(error)?;
                (Some(socket), Some(local))
            }
        };
        Ok(Self {
            http,
            http_addr,
            text,
            text_addr,
            udp,
            udp_addr,
        })
    }
}

/// Starts every listener configured in `settings` and returns once they are bound.
/// Must be called inside a multi-threaded tokio runtime.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    let settings = Arc::new(settings);
    // Every port is bound before any task is spawned, so a port in use fails the
    // start with nothing left running.
    let listeners = Listeners::bind(&settings).await?;
    let (http_addr, text_addr, udp_addr) =
        (listeners.http_addr, listeners.text_addr, listeners.udp_addr);
    let (listener, text_listener, udp_socket) = (listeners.http, listeners.text, listeners.udp);

    let node_id = settings.node_id();
    let hub = Hub::new(settings.server.send_queue_bytes);
    let metrics = Metrics::with_pages(hub.clone(), crate::metrics::labelled_pages(&settings));
    let scenes = SceneTable::compile(&settings.scene_configs())
        .map_err(|e| StartError::Setup(e.to_string()))?;
    let origin = crate::redis::instance_token();
    // One command link per node, shared by the registry and the bus's publishes.
    let commands = match settings.redis.url.as_str() {
        "" => None,
        url => Some(crate::redis::Link::open("commands", url, None).map_err(StartError::Setup)?),
    };
    let (registry, mut critical) = Registry::start(
        &settings.redis,
        commands.clone(),
        &node_id,
        origin,
        hub.clone(),
        metrics.clone(),
    )
    .await
    .map_err(|e| match e {
        crate::registry::StartError::Setup(e) => StartError::Setup(e),
        crate::registry::StartError::Refused(e) => StartError::NodeIdInUse(e),
    })?;
    let window = Duration::from_secs(settings.history.idempotency_secs);
    let idempotency = match &commands {
        None => Idempotency::memory(window, metrics.clone()),
        Some(link) => Idempotency::redis(
            link.clone(),
            crate::redis::RedisKeys::new(&settings.redis.prefix, &node_id),
            window,
            metrics.clone(),
        ),
    };
    let (channels, tasks) = crate::pusher::state::start(
        &settings.pusher,
        commands.clone().map(|link| {
            (
                link,
                crate::redis::RedisKeys::new(&settings.redis.prefix, &node_id),
                Duration::from_secs(settings.redis.node_ttl_secs),
            )
        }),
    )
    .map_err(|e| StartError::Setup(format!("pusher webhooks: {e}")))?;
    critical.extend(tasks);
    let (fanout, ordering) = Fanout::start(hub.clone(), metrics.clone());
    critical.push(("fan-out ordering", ordering));
    let bus = match commands {
        None => Bus::embedded(fanout, &settings.history),
        Some(commands) => {
            critical.push((
                "commands link prober",
                tokio::spawn(commands.clone().probe_forever()),
            ));
            let (bus, tasks) = RedisBus::start(
                &settings.redis,
                &settings.history,
                commands,
                &node_id,
                origin,
                fanout,
                metrics.clone(),
                settings.server.max_message_bytes,
            )
            .map_err(StartError::Setup)?;
            critical.extend(tasks);
            Bus::Redis(bus)
        }
    };
    metrics.pusher_state.watch(channels.clone());
    // Also the channel state's member sink: presence joins and leaves go out
    // through the bus.
    let pusher = crate::pusher::Publisher::new(bus.clone(), &settings.pusher, channels.clone());
    let state = web::Data::new(AppState {
        settings: settings.clone(),
        node_id: Arc::from(node_id.as_str()),
        hub,
        registry,
        bus,
        tokens: Tokens::new(&settings.auth),
        scenes,
        metrics,
        caps: ConnectionCaps::new(
            settings
                .server
                .max_connections
                .unwrap_or_else(crate::net::auto_max_connections),
            settings.server.max_connections_per_ip,
        ),
        idempotency,
        channels,
        pusher,
    });

    critical.push((
        "heartbeat",
        tokio::spawn(gateway::heartbeat::run(
            state.hub.clone(),
            settings.clone(),
            state.metrics.clone(),
        )),
    ));

    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };

    let app_state = state.clone();
    let builder = actix_server::Server::build();
    let stopping = builder.graceful_shutdown_signal();
    let server = builder
        .workers(workers)
        .backlog(4096)
        .disable_signals()
        .shutdown_timeout(settings.server.shutdown_timeout_secs)
        .listen("scenecast-http", listener, move || {
            let app = App::new()
                .app_data(app_state.clone())
                .configure(ingress::http::routes)
                .configure(crate::pusher::api::routes)
                .configure(ops::routes)
                .configure(crate::web::routes)
                .default_service(web::to(ops::not_found));
            let stopping = stopping.clone();
            HttpService::build()
                // As actix-web's HttpServer: a second to finish a response to a
                // client that is going away, and idle keep-alive connections closed
                // at once on a graceful stop (the signal is what HttpServer wires in;
                // without it a stop waits out every client's keep-alive).
                .client_disconnect_timeout(Duration::from_secs(1))
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .on_connect_ext(|socket: &TcpStream, _: &mut _| {
                    tune_accepted(&socket2::SockRef::from(socket));
                })
                .upgrade(gateway::upgrade_service(app_state.clone().into_inner()))
                .finish(map_config(app, |_| AppConfig::default()))
                .tcp()
        })
        .map_err(|e| bind_error("server.bind", &settings.server.bind, e))?
        .run();
    let handle = server.handle();
    let server = tokio::spawn(server);

    log::info!(
        "scenecast node {node_id} serving HTTP + WebSocket on {http_addr} ({workers} workers), mode {}",
        state.registry.mode()
    );
    match state.caps.limit() {
        0 => log::warn!(
            "no WebSocket connection cap (server.max_connections = 0): a connection flood \
             can exhaust the file descriptors"
        ),
        global => log::info!(
            "WebSocket connection caps: {global} per node{}, {} per address (0 = none)",
            if settings.server.max_connections.is_none() {
                " (server.max_connections unset: the fd limit less a reserve)"
            } else {
                ""
            },
            settings.server.max_connections_per_ip
        ),
    }
    log_start_notes(&settings, http_addr);
    let open_publish = settings.auth.allow_anonymous
        && settings.ingress.ws_publish == crate::config::WsPublish::Any;
    if open_publish && !http_addr.ip().is_loopback() {
        log::warn!(
            "server.bind = {http_addr} is reachable from other machines with \
             auth.allow_anonymous = true and ingress.ws_publish = \"any\": anyone (and any \
             web page its visitors open, unless server.allowed_origins is set) can push to \
             every connection; prefer ws_publish = \"api_token\""
        );
    }
    let mut ingress_tasks = Vec::new();
    if let (Some(listener), Some(addr)) = (text_listener, text_addr) {
        let token = if settings.ingress.text_token.is_empty() {
            "no token"
        } else {
            "token required"
        };
        log::info!("text port (Workerman protocol) on {addr}, {token}");
        warn_if_exposed("ingress.text_bind", addr, &settings.ingress.text_token);
        ingress_tasks.push(ingress::text::spawn(listener, state.clone().into_inner()));
    }
    if let (Some(socket), Some(addr)) = (udp_socket, udp_addr) {
        log::info!("UDP port on {addr}");
        warn_if_exposed("ingress.udp_bind", addr, &settings.ingress.text_token);
        ingress_tasks.push(ingress::udp::spawn(socket, state.clone().into_inner()));
    }
    Ok(Running {
        http_addr,
        text_addr,
        udp_addr,
        node_id,
        state,
        handle,
        server,
        critical: Critical::watch(critical),
        ingress_tasks,
    })
}

/// A bind failure that names the config key, as every start error does.
fn bind_error(key: &str, addr: &str, source: std::io::Error) -> StartError {
    StartError::Bind {
        addr: format!("{addr} ({key})"),
        source,
    }
}

/// What a person starting the server needs to read: where the pages are, and that
/// nothing will work when no token is configured and anonymous access is off.
fn log_start_notes(settings: &Settings, http_addr: SocketAddr) {
    let auth = &settings.auth;
    let no_jwt = auth.jwt_secret.is_empty() && auth.jwt_public_key_file.is_empty();
    if auth.client_tokens.is_empty()
        && auth.api_tokens.is_empty()
        && !auth.allow_anonymous
        && no_jwt
    {
        log::warn!(
            "NO TOKEN CONFIGURED: auth.client_tokens and auth.api_tokens are empty and \
             auth.allow_anonymous is false, so every WebSocket connect and every push gets 401. \
             Set SCENECAST__AUTH__CLIENT_TOKENS / SCENECAST__AUTH__API_TOKENS, or give a \
             config file with --config (see scenecast --help)"
        );
    }
    if !no_jwt && !auth.require_signed_uid {
        log::warn!(
            "signed connect tokens are on but auth.require_signed_uid is false: a client \
             token with ?uid= or a first frame still claims any uid unsigned; set it to true \
             once your pages send signed tokens (README: Signed identities)"
        );
    }
    // A wildcard bind is reachable as localhost too; print a URL that opens.
    let mut shown = http_addr;
    if shown.ip().is_unspecified() {
        shown.set_ip(if shown.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let urls: Vec<String> = [
        "/",
        "/home",
        "/list",
        "/back",
        "/dashboard",
        "/healthz",
        "/metrics",
    ]
    .iter()
    .map(|path| format!("http://{shown}{path}"))
    .collect();
    log::info!("pages: {}", urls.join(" "));
}

/// The socket ingresses trust whoever reaches them unless a token is set.
fn warn_if_exposed(key: &str, addr: SocketAddr, token: &str) {
    if token.is_empty() && !addr.ip().is_loopback() {
        log::warn!(
            "{key} = {addr} is reachable from other machines and ingress.text_token is empty: \
             anyone who can reach it can push; bind it to 127.0.0.1 or set a token"
        );
    }
}

impl Running {
    /// Graceful stop: every client gets a 1001 close, this node's registry entries
    /// are removed, then the HTTP server drains and stops.
    pub async fn stop(self) {
        let state = &self.state;
        log::info!(
            "stopping: closing {} connections with 1001",
            state.hub.len()
        );
        self.handle.pause().await;
        // The socket ingresses stop taking pushes first; awaiting the aborted tasks
        // makes sure their ports are closed when `stop` returns.
        for task in self.ingress_tasks {
            task.abort();
            let _ = task.await;
        }
        // From here on upgrades are answered 503 (one on a kept-alive HTTP
        // connection would otherwise open after this and never get its 1001).
        state.hub.stop();
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(state.settings.server.shutdown_timeout_secs);
        // Until every close frame is written (or the time is up)...
        while !state.hub.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ...and briefly, until clients answered it: a socket dropped with their
        // answer unread is reset, and a reset can cost a client the close frame.
        let answered = deadline.min(tokio::time::Instant::now() + CLOSE_GRACE);
        while !state.hub.is_drained() && tokio::time::Instant::now() < answered {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        state.channels.shutdown().await;
        state.registry.shutdown().await;
        self.critical.abort_all();
        self.handle.stop(true).await;
        let _ = self.server.await;
        log::info!("stopped");
    }

    /// Runs until SIGINT or SIGTERM, then stops gracefully. Returns an error at
    /// once, without the graceful stop, when a critical task ended: the process
    /// then exits non-zero.
    pub async fn serve_until_signal(mut self) -> std::io::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
            _ = term.recv() => log::info!("SIGTERM received"),
            Some((name, how)) = self.critical.ended.recv() => {
                log::error!("critical task {name} {how}; stopping this node (crash-only)");
                self.critical.abort_all();
                return Err(std::io::Error::other(format!("critical task {name} {how}")));
            }
        }
        // A second signal during the graceful stop ends the process at once.
        tokio::select! {
            () = self.stop() => Ok(()),
            _ = tokio::signal::ctrl_c() => Err(std::io::Error::other("second signal during the graceful stop")),
            _ = term.recv() => Err(std::io::Error::other("second signal during the graceful stop")),
        }
    }

    /// Waits until a critical task ends, and says which and how (tests; the
    /// binary uses [`Running::serve_until_signal`]).
    pub async fn critical_ended(&mut self) -> Option<(&'static str, String)> {
        self.critical.ended.recv().await
    }
}
