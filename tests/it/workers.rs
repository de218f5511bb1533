//! Several HTTP workers: each serves its own connections and runs its own fan-out
//! worker, fed in one order by the node's ordering task. Whatever door pushes come
//! in by, and whichever worker serves a client, every client gets every push once,
//! in the one order. (The other suites run with `SCENECAST_TEST_WORKERS` workers.)

use serde_json::{Value, json};

use crate::common::{API_TOKEN, CLIENT_TOKEN, TestServer, TextClient, WsClient};

const PER_SOURCE: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_two_workers_every_client_sees_every_push_once_in_one_order() {
    interleaved(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_four_workers_every_client_sees_every_push_once_in_one_order() {
    interleaved(4).await;
}

/// HTTP, text-port and UDP pushes sent at once from three tasks to clients spread
/// over `workers` workers (actix hands connections to its workers in turn).
async fn interleaved(workers: usize) {
    let server = TestServer::start(|s| {
        s.server.workers = workers;
        s.ingress.text_bind = "127.0.0.1:0".into();
        s.ingress.udp_bind = "127.0.0.1:0".into();
    })
    .await;
    let url = server.ws_url(&format!("/?page=home&token={CLIENT_TOKEN}"));
    let mut clients = Vec::new();
    for _ in 0..3 * workers {
        clients.push(WsClient::connect(&url).await);
    }

    let push_url = server.http_url("/api/push");
    let http = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for n in 0..PER_SOURCE {
            let body = json!({"page": "home", "message": {"src": "http", "n": n}});
            let response = client
                .post(&push_url)
                .bearer_auth(API_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("POST /api/push");
            assert_eq!(response.status(), 200);
        }
    });
    let text_addr = server.text_addr.expect("text port");
    let text = tokio::spawn(async move {
        let mut client = TextClient::connect(text_addr).await;
        for n in 0..PER_SOURCE {
            let line = json!({"page": "home", "src": "text", "n": n}).to_string();
            assert_eq!(client.push(&line).await, "ok\n");
        }
    });
    let udp_addr = server.udp_addr.expect("udp port");
    let udp = tokio::spawn(async move {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        for n in 0..PER_SOURCE {
            let datagram = json!({"page": "home", "src": "udp", "n": n}).to_string();
            socket
                .send_to(datagram.as_bytes(), udp_addr)
                .await
                .expect("send");
            // Paced a little, so the datagrams interleave with the other doors
            // rather than queue in the kernel.
            tokio::task::yield_now().await;
        }
    });
    for task in [http, text, udp] {
        task.await.expect("a pushing task");
    }
    let (status, _) = server
        .api_push(r#"{"page":"home","message":{"src":"end"}}"#)
        .await;
    assert_eq!(status, 200);

    let mut sequences = Vec::new();
    for client in &mut clients {
        let mut seen = Vec::new();
        loop {
            let frame: Value = client.recv_json().await;
            if frame["src"] == "end" {
                break;
            }
            seen.push((
                frame["src"].as_str().unwrap_or("?").to_string(),
                frame["n"].clone(),
            ));
        }
        for src in ["http", "text", "udp"] {
            let ns: Vec<Value> = seen
                .iter()
                .filter(|(s, _)| s == src)
                .map(|(_, n)| n.clone())
                .collect();
            let expected: Vec<Value> = (0..PER_SOURCE).map(|n| json!(n)).collect();
            assert_eq!(ns, expected, "{src} pushes, once each, in order");
        }
        sequences.push(seen);
    }
    for (i, seen) in sequences.iter().enumerate().skip(1) {
        assert_eq!(
            seen, &sequences[0],
            "client {i} saw another order than client 0 ({workers} workers)"
        );
    }
    server.stop().await;
}
