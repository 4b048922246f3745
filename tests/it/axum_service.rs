//! The axum service example (`examples/axum_service`) over real HTTP and a
//! real cluster: read-your-writes across instances with the causal layer
//! (and stale reads without it), readiness through a promotion and through
//! a black-holed local replica.

#[path = "../../examples/axum_service/app.rs"]
#[allow(dead_code)]
mod app;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use pgrouter::causal::CAUSAL_TOKEN_HEADER;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter_testkit::{Fault, StopMode};
use serde_json::Value;

/// One instance of the service (a pod): its manager, served on a loopback
/// listener until dropped.
struct Pod {
    base: String,
    server: tokio::task::JoinHandle<()>,
}

impl Pod {
    async fn serve(db: DatabaseManager, read_your_writes: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let router = app::router(db.clone(), read_your_writes, app::Draining::default());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs an item; the response.
async fn create(http: &reqwest::Client, pod: &Pod, name: &str) -> reqwest::Response {
    http.post(pod.url("/items"))
        .json(&app::NewItem {
            name: name.to_owned(),
            qty: 1,
        })
        .send()
        .await
        .unwrap()
}

async fn ready(http: &reqwest::Client, pod: &Pod) -> (u16, Value) {
    let response = http.get(pod.url("/health/ready")).send().await.unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_writes_through_another_pod_with_the_layer_and_stale_data_without() {
    let cluster = start_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    // Two pods in the replica's region, so their reads go to node1.
    let config = fast_config(node_configs(&cluster, &ports));
    let (pod_a, pod_b) = (
        DatabaseManager::new(config.clone()).await.unwrap(),
        DatabaseManager::new(config).await.unwrap(),
    );
    app::migrate(&pod_a).await.unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let (writer, reader) = (
        Pod::serve(pod_a.clone(), true).await,
        Pod::serve(pod_b.clone(), true).await,
    );
    let (plain_writer, plain_reader) = (
        Pod::serve(pod_a, false).await,
        Pod::serve(pod_b, false).await,
    );
    let http = client();
    // Replay paused on both replicas: whatever is written now, a replica
    // read does not see.
    blocking(|| cluster.pause_replay(1)).unwrap();
    blocking(|| cluster.pause_replay(2)).unwrap();

    const ROUNDS: usize = 20;
    let mut misses = 0;
    for round in 0..ROUNDS {
        let created = create(&http, &writer, &format!("layer-{round}")).await;
        assert_eq!(created.status(), 201);
        let token = created.headers()[CAUSAL_TOKEN_HEADER].clone();
        let item: app::Item = created.json().await.unwrap();
        let read = http
            .get(reader.url(&format!("/items/{}", item.id)))
            .header(CAUSAL_TOKEN_HEADER, token)
            .send()
            .await
            .unwrap();
        if read.status() == 404 {
            misses += 1;
            continue;
        }
        assert_eq!(read.status(), 200);
        let served = read.headers()[app::SERVED_BY].to_str().unwrap().to_owned();
        assert!(served.contains("primary"), "{served}");
        assert_eq!(read.json::<app::Item>().await.unwrap(), item);
    }
    eprintln!("with the layer: {misses} of {ROUNDS} reads missed their write");
    assert_eq!(misses, 0);

    // The control: the same client, pods without the layer.
    let mut stale = 0;
    for round in 0..ROUNDS {
        let created = create(&http, &plain_writer, &format!("plain-{round}")).await;
        assert_eq!(created.status(), 201);
        assert!(created.headers().get(CAUSAL_TOKEN_HEADER).is_none());
        let item: app::Item = created.json().await.unwrap();
        let read = http
            .get(plain_reader.url(&format!("/items/{}", item.id)))
            .send()
            .await
            .unwrap();
        match read.status().as_u16() {
            404 => stale += 1,
            200 => {}
            other => panic!("read answered {other}"),
        }
    }
    eprintln!("without the layer: {stale} of {ROUNDS} reads missed their write");
    assert!(stale >= ROUNDS / 2, "{stale} of {ROUNDS} stale");

    // The cookie carries it too (a browser's way).
    let created = create(&http, &writer, "cookie").await;
    let cookie = created.headers()["set-cookie"].to_str().unwrap().to_owned();
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with(app::TOKEN_COOKIE), "{cookie}");
    let item: app::Item = created.json().await.unwrap();
    let read = http
        .get(reader.url(&format!("/items/{}", item.id)))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    blocking(|| cluster.resume_replay(1)).unwrap();
    blocking(|| cluster.resume_replay(2)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_stays_ready_through_a_promotion_and_writes_succeed() {
    const MARKERS: &str = "pgrouter_markers";
    let cluster = start_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut config = fast_config(node_configs(&cluster, &ports));
    // Room for `pg_ctl promote` on a loaded machine: writes are held
    // meanwhile, and readiness stays ready as long as they may be.
    config.write_hold = Duration::from_secs(15);
    config.deadline = Duration::from_secs(20);
    config.retry.max_retries = 20;
    // A COMMIT cut off by the crash is resolved on the new primary.
    config.outcomes.marker_table = Some(MARKERS.to_owned());
    let db = DatabaseManager::new(config).await.unwrap();
    app::migrate(&db).await.unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let pod = Arc::new(Pod::serve(db.clone(), true).await);
    let http = client();
    let (code, body) = ready(&http, &pod).await;
    assert_eq!(code, 200, "{body}");

    let stop = Arc::new(AtomicBool::new(false));
    let not_ready = Arc::new(Mutex::new(Vec::new()));
    let probe = tokio::spawn({
        let (pod, stop, not_ready, http, db) = (
            pod.clone(),
            stop.clone(),
            not_ready.clone(),
            http.clone(),
            db.clone(),
        );
        async move {
            let (mut probes, mut old_signal_red) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let (code, body) = ready(&http, &pod).await;
                if code != 200 {
                    not_ready.lock().unwrap().push(body["readiness"].clone());
                }
                old_signal_red += usize::from(!db.status().can_write());
                probes += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (probes, old_signal_red)
        }
    });
    let writes = tokio::spawn({
        let (pod, stop, http) = (pod.clone(), stop.clone(), http.clone());
        async move {
            let mut codes = Vec::new();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let created = create(&http, &pod, &format!("failover-{round}")).await;
                let code = created.status().as_u16();
                let served = created
                    .headers()
                    .get(app::SERVED_BY)
                    .map(|value| value.to_str().unwrap().to_owned());
                codes.push((code, served, created.text().await.unwrap()));
                round += 1;
            }
            codes
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocking(|| cluster.stop(0, StopMode::Immediate)).unwrap();
    blocking(|| cluster.promote(1)).unwrap();
    // Writes go on a while on the new primary.
    let followed = wait_until(Duration::from_secs(30), || {
        db.status().write_target.as_deref() == Some("node1")
    })
    .await;
    assert!(followed.is_some(), "{:?}", db.status());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (probes, old_signal_red) = probe.await.unwrap();
    let codes = writes.await.unwrap();

    let failed: Vec<_> = codes.iter().filter(|(code, ..)| *code != 201).collect();
    let on_node1 = codes
        .iter()
        .filter(|(_, served, _)| served.as_deref().is_some_and(|s| s.starts_with("node1")))
        .count();
    eprintln!(
        "{} writes ({on_node1} on the promoted node1); {probes} readiness probes, \
         of which status().can_write() was false at {old_signal_red}",
        codes.len()
    );
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    assert!(on_node1 > 0, "no write reached the promoted node");
    let not_ready = not_ready.lock().unwrap();
    assert!(not_ready.is_empty(), "readiness turned red: {not_ready:?}");
    // The old signal (a healthy primary) is red while the failover runs;
    // how often a probe catches it is timing, so it is only reported.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_red_while_reads_fail_on_a_black_holed_local_replica_and_back() {
    let (cluster, proxies, db) = proxied_with(|config: &mut Config| {
        // Reads fail after 1 s at the silent node; the window is short so
        // that the calls before the fault are forgotten by the time it
        // starts, and calls failing now are judged.
        config.deadline = Duration::from_secs(1);
        config.readiness.window = Duration::from_secs(2);
        config.readiness.min_calls = 3;
        // With hedged reads on (not the default) the black hole costs no
        // read at all (tests/it/hedging.rs), and readiness rightly stays green. Off,
        // with outlier detection, the reads sent there fail as reads do
        // that nothing can hedge (a read marked for the primary, a node
        // the budget cannot cover): what readiness must then report.
        config.hedging.enabled = false;
        config.outliers.enabled = false;
    })
    .await;
    app::migrate(&db).await.unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let pod = Arc::new(Pod::serve(db.clone(), false).await);
    let http = client();
    let item: app::Item = create(&http, &pod, "black-hole")
        .await
        .json()
        .await
        .unwrap();
    let synced = wait_until_async(Duration::from_secs(10), || async {
        let read = http
            .get(pod.url(&format!("/items/{}", item.id)))
            .send()
            .await
            .unwrap();
        read.status() == 200
    })
    .await;
    assert!(synced.is_some());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (code, body) = ready(&http, &pod).await;
    assert_eq!(code, 200, "{body}");

    // node1, the local replica every read goes to, goes silent. Readers
    // that get an error ask readiness at once, as a load balancer's
    // failing traffic would be judged.
    proxies[1].set(Fault::BlackHole);
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (pod, http) = (pod.clone(), http.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..20 {
                    let read = http
                        .get(pod.url(&format!("/items/{}", item.id)))
                        .send()
                        .await
                        .unwrap();
                    let code = read.status().as_u16();
                    if code != 200 {
                        let (ready_code, body) = ready(&http, &pod).await;
                        seen.push((code, ready_code, body["readiness"].clone()));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            })
        })
        .collect();
    let mut failures = Vec::new();
    for reader in readers {
        failures.extend(reader.await.unwrap());
    }
    eprintln!("{} failed reads", failures.len());
    assert!(
        !failures.is_empty(),
        "no read failed through the black hole"
    );
    assert!(
        failures
            .iter()
            .all(|(code, ..)| *code == 504 || *code == 503),
        "{failures:?}"
    );
    let red: Vec<_> = failures
        .iter()
        .filter(|(_, ready, _)| *ready == 503)
        .collect();
    assert!(
        !red.is_empty(),
        "readiness stayed green while reads failed: {failures:?}"
    );
    let (_, _, readiness) = red[0];
    assert!(
        readiness["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|reason| reason["reason"] == "reads-failing"),
        "{readiness}"
    );
    // The old signal saw nothing wrong: the primary was healthy throughout.
    assert!(db.status().can_write());

    // Reads go elsewhere now; once the failures leave the window, ready.
    let back = wait_until_async(Duration::from_secs(20), || async {
        let read = http
            .get(pod.url(&format!("/items/{}", item.id)))
            .send()
            .await
            .unwrap();
        read.status() == 200 && ready(&http, &pod).await.0 == 200
    })
    .await;
    assert!(back.is_some(), "{:?}", ready(&http, &pod).await);
    proxies[1].set(Fault::Pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_readiness_json_and_errors_as_http() {
    let cluster = start_cluster();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    let mut nodes = node_configs(&cluster, &ports);
    for node in &mut nodes {
        let url = format!("{} password=sekret-pw", node.url.expose());
        node.url = url.into();
    }
    let db = DatabaseManager::new(fast_config(nodes)).await.unwrap();
    app::migrate(&db).await.unwrap();
    blocking(|| cluster.wait_for_replicas(Duration::from_secs(10))).unwrap();
    let pod = Pod::serve(db.clone(), true).await;
    let http = client();

    let live = http.get(pod.url("/health")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let (code, body) = ready(&http, &pod).await;
    assert_eq!(code, 200, "{body}");
    let text = body.to_string();
    assert!(!text.contains("sekret"), "{text}");
    assert_eq!(body["status"]["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(body["readiness"]["ready"], true);

    // CRUD, and a constraint violation as 409.
    let created = create(&http, &pod, "crud").await;
    assert_eq!(created.status(), 201);
    assert!(created.headers()[app::SERVED_BY]
        .to_str()
        .unwrap()
        .starts_with("node0 (primary"));
    let item: app::Item = created.json().await.unwrap();
    let duplicate = create(&http, &pod, "crud").await;
    assert_eq!(duplicate.status(), 409);
    let error: Value = duplicate.json().await.unwrap();
    assert_eq!(
        (error["retry"].as_str(), error["sqlstate"].as_str()),
        (Some("not-retryable"), Some("23505"))
    );
    let updated = http
        .put(pod.url(&format!("/items/{}", item.id)))
        .json(&app::NewItem {
            name: "crud".into(),
            qty: 7,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    // The client sends back the token it was given, to read its write.
    let token = updated.headers()[CAUSAL_TOKEN_HEADER].clone();
    assert_eq!(updated.json::<app::Item>().await.unwrap().qty, 7);
    let list = http
        .get(pod.url("/items"))
        .header(CAUSAL_TOKEN_HEADER, token)
        .send()
        .await
        .unwrap();
    let list: Value = list.json().await.unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let deleted = http
        .delete(pod.url(&format!("/items/{}", item.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = http
        .delete(pod.url(&format!("/items/{}", item.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    // No node at all: 503, retryable, and not ready; liveness stays up.
    blocking(|| cluster.stop(0, StopMode::Immediate)).unwrap();
    blocking(|| cluster.stop(1, StopMode::Immediate)).unwrap();
    blocking(|| cluster.stop(2, StopMode::Immediate)).unwrap();
    let down = wait_until(Duration::from_secs(10), || !db.status().can_read()).await;
    assert!(down.is_some());
    let read = http.get(pod.url("/items/1")).send().await.unwrap();
    assert_eq!(read.status(), 503);
    assert_eq!(read.headers()["retry-after"], "1");
    // Not ready once no node could serve a read for the write hold (the
    // replicas, stopped after the primary, serve reads until they stop
    // themselves: no primary is missed first).
    let red = wait_until_async(Duration::from_secs(20), || async {
        let (code, body) = ready(&http, &pod).await;
        let reasons = body["readiness"]["reasons"].to_string();
        code == 503 && reasons.contains("no-read-node") && reasons.contains("no-primary")
    })
    .await;
    assert!(red.is_some(), "{:?}", ready(&http, &pod).await);
    assert_eq!(
        http.get(pod.url("/health")).send().await.unwrap().status(),
        200
    );

    // Closed: liveness turns red.
    db.close().await;
    assert_eq!(
        http.get(pod.url("/health")).send().await.unwrap().status(),
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn told_to_stop_a_pod_turns_not_ready_serves_on_for_the_delay_then_drains_and_closes() {
    let (_cluster, db) = cluster_and_manager(pgrouter::ReadStrategy::RegionalPreferred).await;
    app::migrate(&db).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let url = |path: &str| format!("{base}{path}");
    let (sigterm, told) = tokio::sync::oneshot::channel::<()>();
    let delay = Duration::from_secs(2);
    let serving = tokio::spawn(app::serve_until(listener, db.clone(), true, async move {
        let _ = told.await;
        delay
    }));
    let http = client();
    let ready = |http: reqwest::Client, url: String| async move {
        let response = http.get(url).send().await?;
        let code = response.status().as_u16();
        let body: Value = response.json().await?;
        Ok::<_, reqwest::Error>((code, body))
    };
    let (code, body) = ready(http.clone(), url("/health/ready")).await.unwrap();
    assert_eq!(
        (code, &body["draining"]),
        (200, &Value::Bool(false)),
        "{body}"
    );

    sigterm.send(()).unwrap();
    let told_at = std::time::Instant::now();
    let red = wait_until_async(Duration::from_secs(2), || async {
        ready(http.clone(), url("/health/ready"))
            .await
            .is_ok_and(|(code, body)| code == 503 && body["draining"] == true)
    })
    .await;
    assert!(red.is_some(), "readiness did not turn not ready");
    // Still serving meanwhile (the pod is leaving the endpoints).
    let item = app::NewItem {
        name: "during-the-delay".into(),
        qty: 1,
    };
    let created = http.post(url("/items")).json(&item).send().await.unwrap();
    assert_eq!(created.status(), 201);
    assert!(
        told_at.elapsed() < delay,
        "the delay passed before the checks"
    );

    // Then the listener closes, the requests end, and the manager closes.
    tokio::time::timeout(delay + Duration::from_secs(10), serving)
        .await
        .expect("the server stopped after the delay")
        .unwrap()
        .unwrap();
    assert!(told_at.elapsed() >= delay);
    assert!(
        http.get(url("/health")).send().await.is_err(),
        "no longer accepting"
    );
    let after = db.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(*after.kind(), pgrouter::error::ErrorKind::Closed);
}
