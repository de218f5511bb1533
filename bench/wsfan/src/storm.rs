//! `--storm`: a recovery storm against scenecast (`?recover=1`, README "Recovery").
//! N clients connect and keep their welcome's position, all drop their sockets at
//! once (no close frame, as a network blip or a crashed node does), M pushes are
//! made while they are away, then all N reconnect at once with
//! `epoch`/`since`/`prev` (to `--reconnect-url`, e.g. another node, when given).
//! Each client must get exactly the M pushes it missed, in order, then
//! `{"type":"recovered","recovered":true,"replayed":M}`. Reported: how many did,
//! what was lost or duplicated, the time from the release of the reconnects to the
//! last `recovered` frame, and the server's CPU over that time.

use crate::clients::{ClientCfg, Plan, check_offset, connect_url};
use crate::envelope::{self, Frame};
use crate::stats::{Run, cpu_secs, machine_cpu_secs, new_hist, quantiles_ms, rss_kb};
use crate::trigger::{self, TriggerCfg};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// What `--storm` needs besides the shared client and trigger settings.
pub struct StormCfg {
    pub clients: usize,
    /// URL template for the reconnects ({i} {page} {uid}); the position is appended.
    pub reconnect_url: String,
    /// Where the reconnects go: the address of `reconnect_url`.
    pub reconnect_server: std::net::SocketAddr,
    pub connect_concurrency: usize,
    pub reconnect_concurrency: usize,
    pub connect_deadline: Duration,
    /// Pause after the sockets are dropped, before the first push.
    pub away: Duration,
    /// Bound on the whole reconnect phase.
    pub drain_timeout: Duration,
    pub server_pid: Option<u32>,
    pub label: String,
}

/// Where a client stood when its first connection was welcomed.
struct Position {
    conn: String,
    epoch: String,
    offset: u128,
}

/// How one client's reconnect went.
#[derive(Default)]
struct Outcome {
    error: Option<String>,
    recovered: Option<bool>,
    replayed: u64,
    pushes: u64,
    /// Pushes whose seq was not the previous one plus one.
    out_of_order: u64,
    after: Duration,
}

const CONNECTED: u8 = 1;
const DROP: u8 = 2;
const RECONNECT: u8 = 3;

pub async fn storm(
    sc: StormCfg,
    cfg: Arc<ClientCfg>,
    plan: Arc<Plan>,
    run: Arc<Run>,
    tcfg: Arc<TriggerCfg>,
) -> Result<Value, String> {
    let (phase_tx, phase_rx) = watch::channel(0u8);
    let connect_sem = Arc::new(Semaphore::new(sc.connect_concurrency.max(1)));
    let reconnect_sem = Arc::new(Semaphore::new(sc.reconnect_concurrency.max(1)));
    let (welcome_tx, mut welcome_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let reconnect_url = Arc::new(sc.reconnect_url.clone());
    let reconnect_server = sc.reconnect_server;
    let t_release = Arc::new(std::sync::OnceLock::<Instant>::new());

    // ---- connect: every client keeps its welcome's position -------------------
    eprintln!("storm: connecting {} recover=1 clients...", sc.clients);
    let t_conn = Instant::now();
    for i in 0..sc.clients {
        let (cfg, plan, run) = (cfg.clone(), plan.clone(), run.clone());
        let (connect_sem, reconnect_sem) = (connect_sem.clone(), reconnect_sem.clone());
        let (welcome_tx, done_tx) = (welcome_tx.clone(), done_tx.clone());
        let (mut phase, reconnect_url, t_release) =
            (phase_rx.clone(), reconnect_url.clone(), t_release.clone());
        tokio::spawn(async move {
            let first = {
                let _permit = connect_sem.acquire().await;
                tokio::time::timeout(cfg.connect_timeout, first_connect(i, &cfg, &plan)).await
            };
            let (ws, pos) = match first {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => return drop(welcome_tx.send(Err(e))),
                Err(_) => return drop(welcome_tx.send(Err("connect timeout".into()))),
            };
            if *phase.borrow() >= CONNECTED {
                return; // the connect deadline passed: not counted, not expected
            }
            run.welcomes.fetch_add(1, Ordering::Relaxed);
            let _ = welcome_tx.send(Ok(()));
            // Hold the socket (unread) until every client is in, then drop it.
            let _ = phase.wait_for(|p| *p >= DROP).await;
            drop(ws);
            let _ = phase.wait_for(|p| *p >= RECONNECT).await;
            let url = format!(
                "{}{}epoch={}&since={}&prev={}",
                plan.render(&reconnect_url, i),
                if reconnect_url.contains('?') { "&" } else { "?" },
                pos.epoch,
                envelope::offset_text(pos.offset),
                pos.conn
            );
            let outcome = {
                let _permit = reconnect_sem.acquire().await;
                match tokio::time::timeout(cfg.connect_timeout, connect_url(i, &cfg, reconnect_server, url))
                    .await
                {
                    Ok(Ok(ws)) => Ok(ws),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("reconnect timeout".into()),
                }
            };
            let outcome = match outcome {
                Ok(ws) => recover(ws, &cfg, &run, pos.offset).await,
                Err(e) => Outcome { error: Some(e), ..Outcome::default() },
            };
            let started = t_release.get().copied().unwrap_or_else(Instant::now);
            let _ = done_tx.send(Outcome { after: started.elapsed(), ..outcome });
        });
    }
    drop((welcome_tx, done_tx));
    let mut welcomed = 0u64;
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + sc.connect_deadline;
    for _ in 0..sc.clients {
        match tokio::time::timeout_at(deadline, welcome_rx.recv()).await {
            Ok(Some(Ok(()))) => welcomed += 1,
            Ok(Some(Err(e))) => *failures.entry(e).or_default() += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let _ = phase_tx.send(CONNECTED);
    let connect_s = t_conn.elapsed().as_secs_f64();
    eprintln!("storm: {welcomed} welcomed in {connect_s:.1}s; dropping every socket");

    // ---- away: drop every socket, push M ----------------------------------------
    let _ = phase_tx.send(DROP);
    tokio::time::sleep(sc.away).await;
    let pushes = tcfg.pushes;
    let next = Arc::new(AtomicUsize::new(0));
    let t = trigger::worker(tcfg.clone(), plan.clone(), run.clone(), next).await;
    eprintln!("storm: {} of {pushes} pushes sent while away ({} rejected)", t.sent, t.rejected);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // ---- storm: every client reconnects at once ---------------------------------
    let rss_before = sc.server_pid.and_then(rss_kb);
    let (gen0, srv0, machine0) =
        (cpu_secs(None), sc.server_pid.and_then(|p| cpu_secs(Some(p))), machine_cpu_secs());
    let release = Instant::now();
    let _ = t_release.set(release);
    let _ = phase_tx.send(RECONNECT);
    eprintln!("storm: {welcomed} clients reconnect with their positions...");
    let mut hist = new_hist();
    let (mut recovered_true, mut recovered_false, mut replayed_total, mut replayed_short) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut out_of_order, mut reconnected, mut last_done) = (0u64, 0u64, Duration::ZERO);
    let mut reconnect_failures: BTreeMap<String, u64> = BTreeMap::new();
    let end = tokio::time::Instant::now() + sc.drain_timeout;
    let mut reported = 0u64;
    while reported < welcomed {
        let Ok(Some(o)) = tokio::time::timeout_at(end, done_rx.recv()).await else { break };
        reported += 1;
        if let Some(e) = o.error {
            *reconnect_failures.entry(e).or_default() += 1;
            continue;
        }
        reconnected += 1;
        match o.recovered {
            Some(true) => recovered_true += 1,
            Some(false) => recovered_false += 1,
            None => {}
        }
        replayed_total += o.replayed;
        if o.replayed != pushes as u64 || o.pushes != pushes as u64 {
            replayed_short += 1;
        }
        out_of_order += o.out_of_order;
        last_done = last_done.max(o.after);
        hist.saturating_record((o.after.as_micros() as u64).max(1));
    }
    if reported < welcomed {
        *reconnect_failures.entry("no outcome before the drain timeout".into()).or_default() +=
            welcomed - reported;
    }
    let wall = release.elapsed().as_secs_f64();
    let storm_s = if reported == welcomed { last_done.as_secs_f64() } else { wall };
    let srv_s = sc.server_pid.and_then(|p| cpu_secs(Some(p))).zip(srv0).map(|(b, a)| b - a);
    let gen_s = cpu_secs(None).zip(gen0).map(|(b, a)| b - a);
    let others = machine_cpu_secs().zip(machine0).map(|((u2, _), (u1, _))| {
        ((u2 - u1 - srv_s.unwrap_or(0.0) - gen_s.unwrap_or(0.0)) / wall * 100.0).max(0.0).round()
    });

    let expected = welcomed * pushes as u64;
    let got: Vec<u64> = run.got.iter().map(|g| g.load(Ordering::Relaxed) as u64).collect();
    let received: u64 = got.iter().sum();
    let lost: u64 = got.iter().map(|g| welcomed.saturating_sub(*g)).sum();
    let extra: u64 = got.iter().map(|g| g.saturating_sub(welcomed)).sum();
    let q = quantiles_ms(&hist);
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let summary = json!({
        "label": sc.label, "mode": "storm", "clients": sc.clients, "connected": welcomed,
        "connect_failures": failures, "connect_s": r3(connect_s),
        "pushes": pushes, "pushes_sent": t.sent, "trigger_rejected": t.rejected,
        "trigger_first_problem": t.first_problem,
        "reconnected": reconnected, "reconnect_failures": reconnect_failures,
        "recovered_true": recovered_true, "recovered_false": recovered_false,
        "replayed_total": replayed_total, "clients_not_replayed_all": replayed_short,
        "expected": expected, "received": received, "lost": lost, "extra": extra,
        "offset_dups": run.offset_dups.load(Ordering::Relaxed),
        "offset_gaps": run.offset_gaps.load(Ordering::Relaxed), "out_of_order": out_of_order,
        "unmatched": run.unmatched.load(Ordering::Relaxed),
        "storm_s": r3(storm_s), "recover_ms_p50": q[0], "recover_ms_p99": q[2], "recover_ms_max": q[3],
        "server_cpu_s_storm": srv_s.map(r3),
        "server_cpu_pct_storm": srv_s.map(|s| (s / wall * 100.0).round()),
        "gen_cpu_pct_storm": gen_s.map(|s| (s / wall * 100.0).round()),
        "others_cpu_pct_storm": others,
        "server_rss_kb_before_storm": rss_before, "server_rss_kb_end": sc.server_pid.and_then(rss_kb),
    });
    eprintln!("\n== wsfan storm {} ==", sc.label);
    eprintln!(
        "clients      {welcomed}/{} welcomed in {connect_s:.2}s, {reconnected} reconnected",
        sc.clients
    );
    eprintln!(
        "recovered    {recovered_true} true, {recovered_false} false; replayed {replayed_total} (expected {expected})"
    );
    eprintln!(
        "deliveries   {received}/{expected}  lost {lost}  extra {extra}  offset dups {}  gaps {}  out of order {out_of_order}",
        summary["offset_dups"], summary["offset_gaps"]
    );
    eprintln!(
        "storm        {storm_s:.2}s to the last recovered frame (per client p50 {:.0} p99 {:.0} max {:.0} ms)",
        q[0], q[2], q[3]
    );
    eprintln!(
        "CPU          server {} s, wsfan {} s, other load {}% of one core",
        srv_s.map_or("-".into(), |s| format!("{s:.2}")),
        gen_s.map_or("-".into(), |s| format!("{s:.2}")),
        others.map_or("-".into(), |o| o.to_string())
    );
    Ok(summary)
}

/// Connects client `i` with the plain template and reads its welcome frame.
async fn first_connect(
    i: usize,
    cfg: &ClientCfg,
    plan: &Plan,
) -> Result<(crate::clients::Ws, Position), String> {
    let mut ws = connect_url(i, cfg, cfg.server, plan.render(&cfg.url_template, i)).await?;
    match next_text(&mut ws).await? {
        Some(text) => match envelope::parse(&text) {
            Frame::Welcome { conn, epoch, offset } => Ok((ws, Position { conn, epoch, offset })),
            _ => Err("first frame is not a welcome".into()),
        },
        None => Err("closed before the welcome".into()),
    }
}

/// Reads a reconnected client until its `recovered` frame: the welcome, then the
/// replayed pushes, each checked for offset order and seq order.
async fn recover(mut ws: crate::clients::Ws, cfg: &ClientCfg, run: &Run, since: u128) -> Outcome {
    let mut o = Outcome::default();
    let mut last = Some(since);
    let mut prev_seq: Option<u64> = None;
    let mut welcomed = false;
    loop {
        let text = match next_text(&mut ws).await {
            Ok(Some(t)) => t,
            Ok(None) => break o.error = Some("closed before recovered".into()),
            Err(e) => break o.error = Some(e),
        };
        let now = run.now_ns();
        match envelope::parse(&text) {
            Frame::Welcome { .. } if !welcomed => welcomed = true,
            Frame::Push { offset } if welcomed => {
                check_offset(run, &mut last, offset);
                o.pushes += 1;
                match cfg.seq_from.extract(&text, 0) {
                    Some(seq) => {
                        if prev_seq.is_some_and(|p| seq != p + 1) {
                            o.out_of_order += 1;
                        }
                        prev_seq = Some(seq);
                        run.deliver(seq, now);
                    }
                    None => drop(run.unmatched.fetch_add(1, Ordering::Relaxed)),
                }
            }
            Frame::Recovered { recovered, replayed } if welcomed => {
                o.recovered = Some(recovered);
                o.replayed = replayed;
                return o;
            }
            _ => {
                break o.error =
                    Some(format!("unexpected frame: {}", text.chars().take(80).collect::<String>()));
            }
        }
    }
    o
}

/// The next text (or UTF-8 binary) frame; `None` when the socket closed.
async fn next_text(ws: &mut crate::clients::Ws) -> Result<Option<String>, String> {
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
            Some(Ok(Message::Binary(b))) => return Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Some(Ok(Message::Close(c))) => {
                return Err(c.map_or("close".into(), |c| format!("close {}", c.code)));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}
