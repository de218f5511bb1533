//! The process's file-descriptor limit is its connection capacity: every WebSocket
//! holds one descriptor. Linux starts most processes with a soft limit of 1024, far
//! below what a push server is for, so the soft limit is raised to the hard limit at
//! start (no privilege needed) and the resulting capacity is logged.
//!
//! This lives in the binary, not the library, because it needs two `libc` calls: the
//! library forbids `unsafe`, and tests that start servers in-process have no business
//! changing their runner's limits.

/// Descriptors kept for listeners, Redis, the runtime's own and stdio.
const RESERVED: u64 = 64;
/// Below this many possible connections the log line is a warning.
const LOW_CAPACITY: u64 = 10_000;

/// The soft and hard `RLIMIT_NOFILE` after raising the soft one as far as allowed.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid `rlimit` for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok((limit.rlim_cur, limit.rlim_max))
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
                    "file descriptor limit {soft}: room for ~{capacity} WebSocket connections"
                );
            }
        }
        Err(e) => log::warn!("cannot read or raise the file descriptor limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (soft, hard) = raise_nofile().expect("getrlimit/setrlimit");
        assert_eq!(soft, hard);
        assert_eq!(raise_nofile().expect("again"), (soft, hard), "idempotent");
    }
}
