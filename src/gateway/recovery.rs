//! The connect side of recovery (README "Recovery"): what a `?recover=1` connect
//! asks for, and the frames it gets before live pushes — the welcome, the replay
//! and the `recovered` frame — computed from one read of the history made after the
//! connection joined the hub holding (see [`crate::hub::Outbox::release`]).

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::app::AppState;
use crate::edge::Query;
use crate::history::{self, Read, Recipient, Stamp};
use crate::hub::ConnMeta;
use crate::push::ConnKey;
use crate::redis::LinkDown;

/// Reads of the history tried before a recover connect is refused (503): a link
/// that died with Redis reconnects by itself, so a second try often succeeds.
const READ_TRIES: u32 = 3;
/// Pause between two tries.
const READ_RETRY: Duration = Duration::from_millis(200);

/// What a `?recover=1` connect asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ask {
    /// `Resume::Fresh` without `epoch`, `since` or `prev`; a reconnect otherwise.
    pub resume: Resume,
}

/// Where a connection resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Resume {
    /// A first connect: welcome, then live pushes (no `recovered` frame).
    Fresh,
    /// A reconnect after `since`, previously connection `prev`.
    After { since: Stamp, prev: Option<ConnKey> },
    /// A reconnect whose `epoch`, `since` or `prev` is missing, empty or
    /// malformed: `recovered:false`, nothing replayed.
    Unusable,
}

/// `?recover=1[&epoch=E&since=O[&prev=ID]]`; `None` without `recover=1` (or
/// `recover=true`): a raw connection. Never an error: a position the server cannot
/// use is answered with `recovered:false`.
pub(super) fn ask(query: &Query) -> Option<Ask> {
    parse(
        query.get("recover"),
        query.get("epoch"),
        query.get("since"),
        query.get("prev"),
    )
}

fn parse(
    recover: Option<&str>,
    epoch: Option<&str>,
    since: Option<&str>,
    prev: Option<&str>,
) -> Option<Ask> {
    if !matches!(recover, Some("1" | "true")) {
        return None;
    }
    if epoch.is_none() && since.is_none() && prev.is_none() {
        return Some(Ask {
            resume: Resume::Fresh,
        });
    }
    let position = epoch
        .and_then(history::parse_epoch)
        .zip(since.and_then(history::parse_offset));
    let prev = match prev.filter(|p| !p.is_empty()) {
        None => Ok(None),
        Some(text) => ConnKey::parse(text).map(Some),
    };
    let resume = match (position, prev) {
        (Some((epoch, offset)), Ok(prev)) => Resume::After {
            since: Stamp { epoch, offset },
            prev,
        },
        _ => Resume::Unusable,
    };
    Some(Ask { resume })
}

/// The frames a recover connection gets before live pushes, and the position they
/// end at (the floor below which live pushes are skipped).
pub(super) struct Preamble {
    /// Welcome, replayed pushes, `recovered`, as one buffer of frames.
    pub bytes: Bytes,
    pub floor: Stamp,
    /// [`crate::bus::Bus::holes`] before the read: if it moved by the time the
    /// preamble is written, this node may have missed pushes after the floor.
    pub holes: u64,
}

/// Reads the history (after the connection joined the hub holding) and makes the
/// connection's preamble; `Err` when the history cannot be read (Redis down): the
/// connect is refused with 503 and the client retries.
pub(super) async fn prepare(
    state: &AppState,
    ask: &Ask,
    conn: ConnKey,
    meta: &ConnMeta,
) -> Result<Preamble, LinkDown> {
    let since = match &ask.resume {
        Resume::After { since, .. } => Some(*since),
        Resume::Fresh | Resume::Unusable => None,
    };
    // Before the read: a hole found while it runs must count (it may lie after
    // the head read). A new epoch found by this very read counts too: one more
    // reconnect, after Redis lost its data.
    let holes = state.bus.holes();
    let read = read(state, since).await?;
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&history::welcome_frame(conn, read.head));
    let outcome = match &ask.resume {
        Resume::Fresh => None,
        Resume::Unusable => Some((false, 0)),
        Resume::After { since, prev } => {
            match read
                .replay
                .as_ref()
                .filter(|_| since.epoch == read.head.epoch && state.settings.history.size > 0)
            {
                Some(entries) => {
                    let recipient = Recipient { meta, prev: *prev };
                    let mut replayed = 0;
                    for entry in entries.iter().filter(|e| recipient.wants(e)) {
                        bytes.extend_from_slice(&history::push_frame(
                            Some(entry.offset),
                            &entry.payload,
                        ));
                        replayed += 1;
                    }
                    Some((true, replayed))
                }
                None => Some((false, 0)),
            }
        }
    };
    if let Some((recovered, replayed)) = outcome {
        state.metrics.recovery(recovered, replayed);
        if !recovered {
            log::debug!("conn {conn} reconnected with a position the history does not cover");
        }
        bytes.extend_from_slice(&history::recovered_frame(recovered, replayed));
    }
    Ok(Preamble {
        bytes: bytes.freeze(),
        floor: read.head,
        holes,
    })
}

async fn read(state: &AppState, since: Option<Stamp>) -> Result<Read, LinkDown> {
    let mut tries = 0;
    loop {
        match state.bus.read_history(since).await {
            Ok(read) => return Ok(read),
            Err(down) => {
                tries += 1;
                if tries >= READ_TRIES {
                    return Err(down);
                }
                tokio::time::sleep(READ_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPOCH: &str = "00000000deadbeef";
    const SINCE: &str = "00000000000000000007";

    #[test]
    fn recover_asks_are_read_leniently_and_never_refused() {
        assert_eq!(parse(None, Some(EPOCH), Some(SINCE), None), None);
        assert_eq!(parse(Some("0"), None, None, None), None);
        assert_eq!(
            parse(Some("1"), None, None, None).unwrap().resume,
            Resume::Fresh
        );
        assert_eq!(
            parse(Some("true"), Some(EPOCH), Some(SINCE), Some("12.3"))
                .unwrap()
                .resume,
            Resume::After {
                since: Stamp {
                    epoch: 0xdeadbeef,
                    offset: 7
                },
                prev: Some(ConnKey { node: 12, local: 3 }),
            }
        );
        assert_eq!(
            parse(Some("1"), Some(EPOCH), Some(SINCE), Some(""))
                .unwrap()
                .resume,
            Resume::After {
                since: Stamp {
                    epoch: 0xdeadbeef,
                    offset: 7
                },
                prev: None,
            }
        );
        for (epoch, since, prev) in [
            (Some(EPOCH), None, None),
            (None, Some(SINCE), None),
            (Some(""), Some(""), None),
            (Some("DEADBEEF"), Some(SINCE), None),
            (Some(EPOCH), Some("7"), None),
            (Some(EPOCH), Some(SINCE), Some("x")),
            (None, None, Some("1.2")),
        ] {
            assert_eq!(
                parse(Some("1"), epoch, since, prev).unwrap().resume,
                Resume::Unusable,
                "{epoch:?} {since:?} {prev:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_query_values_parse_without_panic(
            recover in proptest::option::of("1|true|0|\\PC{0,4}"),
            epoch in proptest::option::of("[0-9a-fA-F]{14,18}|\\PC{0,20}"),
            since in proptest::option::of("[0-9]{18,22}|\\PC{0,24}"),
            prev in proptest::option::of("[0-9]{1,5}\\.[0-9]{1,5}|\\PC{0,10}"),
        ) {
            let asked = parse(recover.as_deref(), epoch.as_deref(), since.as_deref(), prev.as_deref());
            prop_assert_eq!(asked.is_some(), matches!(recover.as_deref(), Some("1" | "true")));
            if let Some(Ask { resume: Resume::After { since: stamp, .. } }) = asked {
                prop_assert_eq!(history::epoch_text(stamp.epoch), epoch.unwrap());
                prop_assert_eq!(history::offset_text(stamp.offset), since.unwrap());
            }
        }
    }
}
