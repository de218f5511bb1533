//! Pusher Channels clients (`--pusher KEY`), as pusher-js 8.6 speaks to a server:
//! each connects to `/app/{KEY}?protocol=7&client=js&version=8.6.0`, waits for
//! `pusher:connection_established`, subscribes to its page as a public channel
//! (`{"event":"pusher:subscribe","data":{"channel":"X"}}`), waits for
//! `pusher_internal:subscription_succeeded`, and only then counts as open.
//!
//! A channel event `{"event":E,"channel":X,"data":"<text>"}` is a delivery: its
//! `data` text is read with `--seq-from` exactly as the native mode reads a frame
//! (scenecast's bridge puts the native payload there), and timed and counted by the
//! same [`Run`]. On top of the run's per-push lost / extra, each client checks the
//! order of its own seqs: a seq not above the previous one is a duplicate (or out of
//! order), one that skips a push meant for this client is a gap.
//!
//! Protocol reference: pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol.

use crate::clients::{ClientCfg, ConnectResult, Plan, Ws, connect_url};
use crate::stats::Run;
use crate::trigger::Target;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// What pusher-js 8.6 puts in its query string.
const QUERY: &str = "protocol=7&client=js&version=8.6.0";

/// Pusher-specific counts of one run, beside the shared [`Run`].
#[derive(Default)]
pub struct PusherStats {
    /// `pusher:error` frames received after the subscription.
    pub errors: AtomicU64,
    /// Other protocol frames (`pusher:*`, `pusher_internal:*`) after the subscription.
    pub control: AtomicU64,
    /// Channel events for a channel the client did not subscribe to.
    pub wrong_channel: AtomicU64,
    /// Seqs not above the client's previous one.
    pub seq_dups: AtomicU64,
    /// Seqs that skipped at least one push meant for the client.
    pub seq_gaps: AtomicU64,
}

/// The client URL for app `key`: the scheme and host:port of `url` (the native
/// `--url` template), path `/app/{key}` and pusher-js's query.
pub fn app_url(url: &str, key: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ws", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}/app/{key}?{QUERY}")
}

/// Pusher channels are pages: a push for everyone (`all`) or for a uid has no
/// public channel, so only page targets make sense here.
pub fn check_target(target: &Target) -> Result<(), String> {
    match target {
        Target::Page(_) | Target::Pages => Ok(()),
        _ => {
            Err("--pusher takes --target page:NAME or pages (Pusher has no channel for all or for a uid)"
                .into())
        }
    }
}

/// One frame as Pusher frames it: event name, channel, and `data` as text (a JSON
/// string's content, or any other JSON value's text).
#[derive(Debug, PartialEq)]
pub struct Event<'a> {
    pub event: Cow<'a, str>,
    pub channel: Option<Cow<'a, str>>,
    pub data: Option<Cow<'a, str>>,
}

/// Reads one frame; `None` when it is not a Pusher frame. The server's own key
/// order (`event`, `channel`, `data`) is scanned without building a JSON tree, and
/// `data` unescaped into `buf` (reused from frame to frame), which keeps the
/// generator's CPU per frame near the native mode's: on two cores the generator's
/// cost changes how far the server's fan-out falls behind, hence its batching and
/// its CPU per frame. Any other shape takes a full parse.
pub fn parse<'a>(text: &'a str, buf: &'a mut String) -> Option<Event<'a>> {
    if let Some(ev) = fast(text, buf) {
        return Some(ev);
    }
    slow(text)
}

/// Unescapes a JSON string's content that has only `\"`, `\\` and `\/` escapes into
/// `buf`; false for anything else (the caller then lets serde_json do it).
fn unescape_simple(inner: &str, buf: &mut String) -> bool {
    buf.clear();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\' | '/')) => buf.push(e),
                _ => return false,
            },
            '"' => return false,
            c if (c as u32) < 0x20 => return false,
            c => buf.push(c),
        }
    }
    true
}

fn fast<'a>(text: &'a str, buf: &'a mut String) -> Option<Event<'a>> {
    let rest = text.strip_prefix(r#"{"event":""#)?;
    let (event, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(r#","channel":""#)?;
    let (channel, rest) = rest.split_once('"')?;
    if event.contains('\\') || channel.contains('\\') {
        return None;
    }
    // Exactly one JSON string and the closing brace (a `user_id` after it, or an
    // object as data, goes to the full parse).
    let raw = rest.strip_prefix(r#","data":"#)?.strip_suffix('}')?;
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let data = if unescape_simple(inner, buf) {
        Cow::Borrowed(buf.as_str())
    } else {
        Cow::Owned(serde_json::from_str::<String>(raw).ok()?)
    };
    Some(Event { event: event.into(), channel: Some(channel.into()), data: Some(data) })
}

fn slow(text: &str) -> Option<Event<'_>> {
    let v: Value = serde_json::from_str(text).ok()?;
    let event = v.get("event")?.as_str()?.to_string().into();
    let channel = v.get("channel").and_then(Value::as_str).map(|c| c.to_string().into());
    let data = v.get("data").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string).into());
    Some(Event { event, channel, data })
}

/// `pusher:subscribe` to `channel`.
fn subscribe(channel: &str) -> String {
    serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string()
}

/// Reads frames until one named `want` (for `channel`, when given); a
/// `pusher:error` or `pusher:subscription_error` first, or the end, is an error.
async fn expect(ws: &mut Ws, want: &str, channel: Option<&str>) -> Result<(), String> {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Close(c))) => {
                return Err(c.map_or("close before ".to_string() + want, |c| {
                    format!("close {} before {want}", c.code)
                }));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("{e} before {want}")),
            None => return Err(format!("end of stream before {want}")),
        };
        let mut buf = String::new();
        let Some(ev) = parse(&text, &mut buf) else { continue };
        match &*ev.event {
            e if e == want && (channel.is_none() || ev.channel.as_deref() == channel) => return Ok(()),
            "pusher:error" | "pusher:subscription_error" => {
                return Err(format!("{}: {}", ev.event, ev.data.unwrap_or_default()));
            }
            _ => {}
        }
    }
}

/// Which pushes client `i` (on page `page_idx`) should get, for the gap check.
fn for_me(target: &Target, plan: &Plan, page_idx: usize, seq: u64) -> bool {
    match target {
        Target::Page(p) => plan.pages.get(page_idx) == Some(p),
        Target::Pages => seq as usize % plan.pages.len() == page_idx,
        Target::All | Target::Uid => false,
    }
}

/// One client's check of the order of its seqs.
struct SeqOrder<F> {
    pushes: u64,
    mine: F,
    last: Option<u64>,
    next: Option<u64>,
}

#[derive(Debug, PartialEq)]
enum Seen {
    /// The next push meant for this client.
    Next,
    /// Not above the previous seq: a repeat, or out of order.
    Duplicate,
    /// Above the next one meant for this client: one or more were skipped.
    Gap,
}

impl<F: Fn(u64) -> bool> SeqOrder<F> {
    fn new(pushes: u64, mine: F) -> Self {
        let next = (0..pushes).find(|&s| mine(s));
        SeqOrder { pushes, mine, last: None, next }
    }

    fn see(&mut self, seq: u64) -> Seen {
        if self.last.is_some_and(|l| seq <= l) {
            return Seen::Duplicate;
        }
        let gap = self.next.is_some_and(|n| seq > n);
        self.last = Some(seq);
        self.next = (seq + 1..self.pushes).find(|&s| (self.mine)(s));
        if gap { Seen::Gap } else { Seen::Next }
    }
}

/// Settings of the Pusher clients beyond [`ClientCfg`].
pub struct PusherCfg {
    /// The URL every client opens (`app_url`).
    pub url: String,
    pub target: Target,
    pub pushes: u64,
}

/// Client `i`: connect, subscribe to its page, report the time to the
/// subscription on `done`, then read events until the socket ends.
#[allow(clippy::too_many_arguments)]
pub async fn run_client(
    i: usize,
    cfg: Arc<ClientCfg>,
    pcfg: Arc<PusherCfg>,
    plan: Arc<Plan>,
    run: Arc<Run>,
    stats: Arc<PusherStats>,
    sem: Arc<Semaphore>,
    done: mpsc::UnboundedSender<ConnectResult>,
) {
    let permit = sem.acquire().await;
    if plan.connect_over.load(Ordering::Acquire) {
        return;
    }
    let page_idx = plan.page_idx(i);
    let channel = plan.pages[page_idx].clone();
    let t0 = Instant::now();
    let opened = tokio::time::timeout(cfg.connect_timeout, async {
        let mut ws = connect_url(i, &cfg, cfg.server, pcfg.url.clone()).await?;
        expect(&mut ws, "pusher:connection_established", None).await?;
        ws.send(Message::text(subscribe(&channel))).await.map_err(|e| format!("subscribe: {e}"))?;
        expect(&mut ws, "pusher_internal:subscription_succeeded", Some(&channel)).await?;
        Ok::<_, String>(ws)
    })
    .await;
    drop(permit);
    let mut ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return drop(done.send(Err(e))),
        Err(_) => return drop(done.send(Err("connect + subscribe timeout".into()))),
    };
    // As in the native mode: no await between this check and the report.
    if plan.connect_over.load(Ordering::Acquire) {
        return;
    }
    plan.open_by_page[page_idx].fetch_add(1, Ordering::Relaxed);
    plan.open_by_uid[i % plan.uids].fetch_add(1, Ordering::Relaxed);
    let _ = done.send(Ok(t0.elapsed()));

    let mut order = SeqOrder::new(pcfg.pushes, |s| for_me(&pcfg.target, &plan, page_idx, s));
    let mut nth = 0u64;
    let mut buf = String::with_capacity(256);
    let why = loop {
        let Some(frame) = ws.next().await else { break "end of stream".to_string() };
        let now = run.now_ns();
        let text = match &frame {
            Ok(Message::Text(t)) => t.as_str(),
            Ok(Message::Close(c)) => {
                break c.as_ref().map_or("close".into(), |c| format!("close {}", c.code));
            }
            Err(e) => break e.to_string(),
            Ok(_) => continue,
        };
        let Some(ev) = parse(text, &mut buf) else {
            run.unmatched.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if ev.event.starts_with("pusher:") || ev.event.starts_with("pusher_internal:") {
            match &*ev.event {
                "pusher:ping" => {
                    if let Err(e) = ws.send(Message::text(r#"{"event":"pusher:pong","data":"{}"}"#)).await {
                        break format!("pong: {e}");
                    }
                }
                "pusher:error" => drop(stats.errors.fetch_add(1, Ordering::Relaxed)),
                _ => drop(stats.control.fetch_add(1, Ordering::Relaxed)),
            }
            continue;
        }
        if ev.channel.as_deref() != Some(channel.as_str()) {
            stats.wrong_channel.fetch_add(1, Ordering::Relaxed);
            run.unmatched.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match cfg.seq_from.extract(ev.data.as_deref().unwrap_or(""), nth) {
            Some(seq) => {
                match order.see(seq) {
                    Seen::Next => {}
                    Seen::Duplicate => drop(stats.seq_dups.fetch_add(1, Ordering::Relaxed)),
                    Seen::Gap => drop(stats.seq_gaps.fetch_add(1, Ordering::Relaxed)),
                }
                run.deliver(seq, now);
            }
            None => drop(run.unmatched.fetch_add(1, Ordering::Relaxed)),
        }
        nth += 1;
    };
    run.dropped(why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bridge_event_and_protocol_frames() {
        let bridged = r#"{"event":"scenecast.push","channel":"home","data":"{\"code\":200,\"seq\":\"7\",\"t_ns\":\"9\"}"}"#;
        let mut buf = String::new();
        let ev = parse(bridged, &mut buf).unwrap();
        assert_eq!(ev.event, "scenecast.push");
        assert_eq!(ev.channel.as_deref(), Some("home"));
        assert_eq!(ev.data.as_deref(), Some(r#"{"code":200,"seq":"7","t_ns":"9"}"#));
        let seq = crate::clients::SeqFrom::parse(r#"regex:"seq"\s*:\s*"?(\d+)"#).unwrap();
        assert_eq!(seq.extract(ev.data.as_deref().unwrap(), 0), Some(7));

        // Another key order, a user_id, an object as data: the full parse.
        let other = r#"{"channel":"home","event":"client-x","data":{"seq":3},"user_id":"u1"}"#;
        let mut buf = String::new();
        let ev = parse(other, &mut buf).unwrap();
        assert_eq!(
            (&*ev.event, ev.channel.as_deref(), ev.data.as_deref()),
            ("client-x", Some("home"), Some(r#"{"seq":3}"#))
        );
        let est = r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":30,\"socket_id\":\"1.2\"}"}"#;
        assert_eq!(parse(est, &mut String::new()).unwrap().event, "pusher:connection_established");
        let err = r#"{"event":"pusher:error","data":{"code":4301,"message":"x"}}"#;
        assert_eq!(parse(err, &mut String::new()).unwrap().event, "pusher:error");
        assert!(parse(r#"{"code":200,"seq":"1"}"#, &mut String::new()).is_none());
        assert!(parse("not json", &mut String::new()).is_none());
        // Escapes beyond \" and \\ go to serde_json; an unescaped quote is not one string.
        let uni = r#"{"event":"e","channel":"home","data":"a\u00e9\n\"b\\"}"#;
        assert_eq!(parse(uni, &mut String::new()).unwrap().data.as_deref(), Some("aé\n\"b\\"));
        let two = r#"{"event":"e","channel":"home","data":"a","user_id":"u"}"#;
        let mut buf = String::new();
        let ev = parse(two, &mut buf).unwrap();
        assert_eq!((ev.data.as_deref(), ev.channel.as_deref()), (Some("a"), Some("home")));
    }

    #[test]
    fn seq_order_finds_duplicates_and_gaps() {
        // Pushes 0..6 round-robin over two pages; this client is on the second.
        let mut o = SeqOrder::new(6, |s| s % 2 == 1);
        assert_eq!(o.see(1), Seen::Next);
        assert_eq!(o.see(1), Seen::Duplicate);
        assert_eq!(o.see(5), Seen::Gap); // 3 skipped
        assert_eq!(o.see(3), Seen::Duplicate); // late: out of order
        let mut o = SeqOrder::new(3, |_| true);
        assert_eq!(o.see(1), Seen::Gap); // 0 never came
        assert_eq!(o.see(2), Seen::Next);
    }

    #[test]
    fn app_url_keeps_the_host_and_takes_pushers_path() {
        assert_eq!(
            app_url("ws://127.0.0.1:9502/?page={page}&token=T", "k"),
            "ws://127.0.0.1:9502/app/k?protocol=7&client=js&version=8.6.0"
        );
        assert_eq!(
            app_url("ws://localhost:1", "k"),
            "ws://localhost:1/app/k?protocol=7&client=js&version=8.6.0"
        );
    }
}
