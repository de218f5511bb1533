//! The push path without sockets: rendering a scene, framing a payload, and one
//! fan-out to 10k in-memory connections. `cargo bench`; end-to-end figures with real
//! sockets come from `bench/run.sh`.
// Test code: a panic is a failed test (or bench), so unwrapping and indexing are fine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scenecast::config::SceneConfig;
use scenecast::edge::Query;
use scenecast::history::Stamp;
use scenecast::hub::{ConnMeta, Delivery, Hub, Outbox, frame};
use scenecast::ingress::json_line::route_json_line;
use scenecast::push::{Name, Push, Target};
use scenecast::scenes::{Params, SceneTable};

const CONNECTIONS: usize = 10_000;
/// Fan-out workers the connections are spread over, as on a 2-core server.
const WORKERS: usize = 2;

fn meta(page: &str) -> ConnMeta {
    ConnMeta {
        page: Some(Name::try_from(page).expect("a valid page")),
        uid: None,
        session: None,
        connected_at: 0,
    }
}

/// The time `deliver` takes, summed over `iterations` calls; each must reach
/// `matched` connections. The outboxes are drained between calls, outside the
/// measured time (the writers' work is not the fan-out's).
fn time_deliveries(
    iterations: u64,
    outboxes: &[Arc<Outbox>],
    matched: usize,
    mut deliver: impl FnMut() -> Delivery,
) -> Duration {
    let mut measured = Duration::ZERO;
    for _ in 0..iterations {
        let start = Instant::now();
        let delivery = deliver();
        measured += start.elapsed();
        assert_eq!(delivery.delivered, matched);
        for outbox in outboxes {
            while outbox.try_next().is_some() {}
        }
    }
    measured
}

/// A 10k fan-out: the time to queue one frame in every matching outbox (the
/// writers' draining is done outside the measured time).
fn fan_out(c: &mut Criterion) {
    let hub = Hub::new(1 << 20);
    let outboxes: Vec<Arc<Outbox>> = (0..CONNECTIONS)
        .filter_map(|i| hub.open(meta(if i % 2 == 0 { "home" } else { "list" }), i % WORKERS))
        .map(|(_, outbox)| outbox)
        .collect();
    let payload = r#"{"code":200,"message":"后端按了按钮1","seq":"12345","t_ns":"123456789012"}"#;
    let mut group = c.benchmark_group("hub_fan_out");
    for (name, target, matched) in [
        ("all_10k", Target::All, CONNECTIONS),
        (
            "page_5k",
            Target::Page(Name::try_from("home").expect("a name")),
            CONNECTIONS / 2,
        ),
    ] {
        let push = Push::new(target, payload);
        group.throughput(Throughput::Elements(matched as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                time_deliveries(iterations, &outboxes, matched, || {
                    hub.deliver(black_box(&push))
                })
            })
        });
    }
    // The same 10k fan-out to `?recover=1` connections: one envelope per push,
    // then the hold/floor gate per connection (issue 11: within 1.5x of raw).
    let recovering = Hub::new(1 << 20);
    let envelopes: Vec<Arc<Outbox>> = (0..CONNECTIONS)
        .filter_map(|i| recovering.open_with(meta("home"), i % WORKERS, true))
        .map(|(_, outbox)| outbox)
        .collect();
    for outbox in &envelopes {
        outbox.release(Stamp {
            epoch: 1,
            offset: 0,
        });
    }
    let push = Push::new(Target::All, payload);
    let mut offset = 0;
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    group.bench_function("all_10k_recover", |b| {
        b.iter_custom(|iterations| {
            time_deliveries(iterations, &envelopes, CONNECTIONS, || {
                offset += 1;
                recovering.deliver_stamped(black_box(&push), Some(Stamp { epoch: 1, offset }))
            })
        })
    });
    // Issue 14: a page push to 10k Pusher subscribers of its channel (one Pusher
    // event frame per push) next to the same push to 10k native page connections
    // (within 1.5x).
    let orders = Name::try_from("orders").expect("a name");
    let app = Name::try_from("1").expect("a name");
    for (name, pusher) in [("page_10k_native", false), ("page_10k_pusher", true)] {
        let hub = Hub::new(1 << 20);
        let outboxes: Vec<Arc<Outbox>> = (0..CONNECTIONS)
            .filter_map(|i| {
                if pusher {
                    let (id, outbox) =
                        hub.open_pusher(meta("x"), i % WORKERS, app.clone(), true)?;
                    hub.subscribe(id, &orders);
                    Some(outbox)
                } else {
                    hub.open(meta("orders"), i % WORKERS)
                        .map(|(_, outbox)| outbox)
                }
            })
            .collect();
        let push = Push::new(Target::Page(orders.clone()), payload);
        group.throughput(Throughput::Elements(CONNECTIONS as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                time_deliveries(iterations, &outboxes, CONNECTIONS, || {
                    hub.deliver(black_box(&push))
                })
            })
        });
    }
    // What each worker does first in the server: pick its own matching outboxes.
    let mut picked = Vec::new();
    group.throughput(Throughput::Elements(CONNECTIONS as u64));
    group.bench_function("collect_one_worker_of_all_10k", |b| {
        b.iter(|| {
            hub.collect(black_box(&Target::All), None, 0, &mut picked);
            assert_eq!(picked.len(), CONNECTIONS / WORKERS);
        })
    });
    group.finish();
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_text");
    for len in [100, 4 * 1024, 64 * 1024] {
        let payload = "x".repeat(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &payload, |b, p| {
            b.iter(|| frame::text(black_box(p)))
        });
    }
    group.finish();
}

fn scene_rendering(c: &mut Criterion) {
    let configs = [SceneConfig {
        event: None,
        func: "pushHomeLogic".into(),
        page: Some("{page}".into()),
        uid: None,
        all: false,
        message: serde_json::json!({
            "code": 200, "message": "order {order} by {who}", "seq": "{seq}", "t_ns": "{t_ns}"
        }),
    }];
    let table = SceneTable::compile(&configs).expect("bench scene compiles");
    let scene = table.get("pushHomeLogic").expect("scene");
    let query = "func=pushHomeLogic&token=t&page=home&order=1234&who=A%22B&seq=42&t_ns=123456789";
    c.bench_function("scene_render", |b| {
        b.iter(|| {
            let query = Query::parse(black_box(query)).expect("a UTF-8 query");
            scene.render(&Params::from_query(&query)).expect("renders")
        })
    });
}

/// The text port's, UDP port's and publishers' router: one Workerman line, as is and
/// with the inner token cut out.
fn json_line(c: &mut Criterion) {
    let line = r#"{"uid":"uid1","percent":"88%","order":{"id":1234,"items":[1,2,3]},"t":1.5}"#;
    let tokenised = r#"{"uid":"uid1","token":"inner-secret","percent":"88%","order":{"id":1234,"items":[1,2,3]},"t":1.5}"#;
    let mut group = c.benchmark_group("json_line");
    group.bench_function("route", |b| {
        b.iter(|| route_json_line(black_box(line), None).expect("routes"))
    });
    group.bench_function("route_cut_token", |b| {
        b.iter(|| route_json_line(black_box(tokenised), Some("inner-secret")).expect("routes"))
    });
    group.finish();
}

criterion_group!(benches, fan_out, framing, scene_rendering, json_line);
criterion_main!(benches);
