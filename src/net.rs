//! The process's connection capacity: the file-descriptor limit, and the caps on
//! WebSocket connections (`server.max_connections`, `server.max_connections_per_ip`).
//!
//! Every WebSocket holds one descriptor. Linux starts most processes with a soft
//! limit of 1024, far below what a push server is for, so the binary raises the soft
//! limit to the hard limit at start (no privilege needed) and logs the capacity.
//! actix's own `max_concurrent_connections` stops counting a socket once it is
//! upgraded, so WebSockets are capped here, by permits each connection holds for its
//! life ([`ConnectionCaps::admit`]): without a cap, anyone with the public client
//! token (or anyone, under `allow_anonymous`) can open WebSockets until `accept`
//! fails with EMFILE for the HTTP port, the text port and Redis reconnects alike.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rlimit::Resource;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for listeners, Redis, the runtime's own and stdio.
const RESERVED: u64 = 64;
/// Below this many possible connections the log line is a warning.
const LOW_CAPACITY: u64 = 10_000;
/// Linux's default `fs.nr_open`: the most a soft limit can be raised to when the
/// hard limit is unlimited and `/proc/sys/fs/nr_open` cannot be read.
const NR_OPEN_DEFAULT: u64 = 1 << 20;
/// The automatic `server.max_connections` leaves this share of the descriptor limit
/// (at least [`RESERVED`], at most [`AUTO_RESERVE_MAX`]) to HTTP requests, the text
/// port, Redis and the listeners.
const AUTO_RESERVE_DIVISOR: u64 = 10;
const AUTO_RESERVE_MAX: u64 = 4096;

/// The soft and hard `RLIMIT_NOFILE` after raising the soft one as far as allowed
/// (the hard limit, or `fs.nr_open` when the hard limit is unlimited).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let (_, hard) = Resource::NOFILE.get()?;
    let ceiling = if hard == rlimit::INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(NR_OPEN_DEFAULT)
    } else {
        hard
    };
    let soft = rlimit::increase_nofile_limit(ceiling)?;
    Ok((soft, hard))
}

/// Raises the limit and logs how many connections this process can hold.
pub fn raise_and_report() {
    match raise_nofile() {
        Ok((soft, hard)) => {
            let capacity = soft.saturating_sub(RESERVED);
            if capacity < LOW_CAPACITY {
                log::warn!(
                    "file descriptor limit is {soft} (hard limit {hard}): at most ~{capacity} \
                     WebSocket connections; raise the hard limit (ulimit -Hn, systemd \
                     LimitNOFILE=, docker --ulimit nofile=) for more"
                );
            } else {
                log::info!(
                    "file descriptor limit {soft} (hard limit {hard}); the WebSocket cap \
                     below keeps a share of it for HTTP, the text port and Redis"
                );
            }
        }
        Err(e) => log::warn!("cannot read or raise the file descriptor limit: {e}"),
    }
}

/// The `server.max_connections` used when none is configured: the soft descriptor
/// limit minus a reserve of a tenth of it (64..=4096), so that a flood of WebSockets
/// is answered 503 while HTTP, the text port and Redis still get descriptors.
/// 0 (no cap) when the limit is unlimited or cannot be read.
pub fn auto_max_connections() -> usize {
    match Resource::NOFILE.get() {
        Ok((soft, _)) if soft != rlimit::INFINITY => {
            let reserve = (soft / AUTO_RESERVE_DIVISOR).clamp(RESERVED, AUTO_RESERVE_MAX);
            usize::try_from(soft.saturating_sub(reserve))
                .unwrap_or(usize::MAX)
                .max(1)
        }
        _ => 0,
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapRefusal {
    /// `server.max_connections` WebSockets are open on this node (HTTP 503).
    Full { limit: usize },
    /// `server.max_connections_per_ip` WebSockets are open from this address (HTTP 429).
    FullForIp { limit: usize },
}

impl CapRefusal {
    /// The `scenecast_rejected_total` reason.
    pub fn reason(self) -> &'static str {
        match self {
            CapRefusal::Full { .. } => "max_connections",
            CapRefusal::FullForIp { .. } => "max_connections_per_ip",
        }
    }
}

impl std::fmt::Display for CapRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapRefusal::Full { limit } => write!(
                f,
                "server at capacity: {limit} WebSocket connections are open \
                 (server.max_connections); retry later"
            ),
            CapRefusal::FullForIp { limit } => write!(
                f,
                "too many connections from your address: {limit} are open \
                 (server.max_connections_per_ip)"
            ),
        }
    }
}

/// Open connections per peer address; an address leaves the map with its last one.
type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

fn lock(per_ip: &Mutex<HashMap<IpAddr, usize>>) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    // Every update is one insert or remove: the map is consistent after a panic.
    per_ip.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The WebSocket caps of one node. Cheap to share; [`ConnectionCaps::admit`] never
/// waits.
pub struct ConnectionCaps {
    /// `None`: no global cap.
    global: Option<Arc<Semaphore>>,
    limit: usize,
    /// 0: no per-address cap.
    per_ip_limit: usize,
    per_ip: PerIp,
}

/// A place under the caps, held by a connection for its life and given back on drop.
#[derive(Debug)]
pub struct Slot {
    _global: Option<OwnedSemaphorePermit>,
    _ip: Option<IpSlot>,
}

#[derive(Debug)]
struct IpSlot {
    ip: IpAddr,
    per_ip: PerIp,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.per_ip);
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionCaps {
    /// `max_connections` and `max_connections_per_ip`: 0 means no cap.
    pub fn new(max_connections: usize, max_connections_per_ip: usize) -> Self {
        let limit = max_connections.min(Semaphore::MAX_PERMITS);
        Self {
            global: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
            per_ip_limit: max_connections_per_ip,
            per_ip: PerIp::default(),
        }
    }

    /// The global cap in force (0 = none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a place for a connection from `peer` (unknown peers are only counted
    /// globally), or says which cap is full.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<Slot, CapRefusal> {
        // The address first: a client over its own share is told so (429), whatever
        // the node's load.
        let ip = match peer {
            Some(ip) if self.per_ip_limit > 0 => {
                let mut per_ip = lock(&self.per_ip);
                let open = per_ip.entry(ip).or_insert(0);
                if *open >= self.per_ip_limit {
                    return Err(CapRefusal::FullForIp {
                        limit: self.per_ip_limit,
                    });
                }
                *open += 1;
                Some(IpSlot {
                    ip,
                    per_ip: self.per_ip.clone(),
                })
            }
            _ => None,
        };
        // On refusal `ip` drops here and gives its place back.
        let global = match &self.global {
            Some(semaphore) => Some(
                semaphore
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| CapRefusal::Full { limit: self.limit })?,
            ),
            None => None,
        };
        Ok(Slot {
            _global: global,
            _ip: ip,
        })
    }

    /// Connections holding a place under the global cap (0 without one).
    pub fn open(&self) -> usize {
        self.global
            .as_ref()
            .map_or(0, |s| self.limit.saturating_sub(s.available_permits()))
    }

    /// Addresses with at least one connection counted (only with a per-address cap).
    pub fn addresses(&self) -> usize {
        lock(&self.per_ip).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (soft, hard) = raise_nofile().expect("getrlimit/setrlimit");
        if hard != rlimit::INFINITY {
            assert_eq!(soft, hard);
        }
        assert_eq!(raise_nofile().expect("again"), (soft, hard), "idempotent");
        let auto = auto_max_connections();
        assert!(auto > 0 && (auto as u64) < soft, "{auto} of {soft}");
    }

    #[test]
    fn the_global_cap_refuses_then_frees_a_place_per_drop() {
        let caps = ConnectionCaps::new(2, 0);
        let first = caps.admit(A).unwrap();
        let _second = caps.admit(B).unwrap();
        assert_eq!(caps.admit(A).unwrap_err(), CapRefusal::Full { limit: 2 });
        assert_eq!(caps.open(), 2);
        drop(first);
        assert_eq!(caps.open(), 1);
        assert!(caps.admit(None).is_ok());
        assert_eq!(caps.addresses(), 0, "no per-address cap, no map");
    }

    #[test]
    fn the_per_address_cap_counts_each_address_and_forgets_it_at_zero() {
        let caps = ConnectionCaps::new(0, 2);
        let a1 = caps.admit(A).unwrap();
        let a2 = caps.admit(A).unwrap();
        assert_eq!(
            caps.admit(A).unwrap_err(),
            CapRefusal::FullForIp { limit: 2 }
        );
        let b1 = caps.admit(B).unwrap();
        assert_eq!(caps.addresses(), 2);
        drop(a1);
        let a3 = caps.admit(A).unwrap();
        drop((a2, a3, b1));
        assert_eq!(
            caps.addresses(),
            0,
            "an address leaves with its last connection"
        );
    }

    #[test]
    fn a_global_refusal_gives_the_address_place_back() {
        let caps = ConnectionCaps::new(1, 5);
        let _a = caps.admit(A).unwrap();
        assert_eq!(caps.admit(B).unwrap_err(), CapRefusal::Full { limit: 1 });
        assert_eq!(caps.addresses(), 1, "B was not left counted");
    }
}
