//! The closed loop: `clients` HTTP/1.1 connections, each sending its next
//! request when the last is answered, `GET /items/{id}` (80 % by default)
//! or `POST /items`; every answer recorded into the current window.
//!
//! The client is hyper's own low-level HTTP/1.1 connection (already in the
//! workspace through axum and reqwest): one kept-alive connection per
//! client and nothing else per request (no pool, no redirect handling), so
//! the generator, which shares the CPUs with the service, costs as little
//! as a well-kept client allows.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::common::Latencies;

/// Distinct error messages kept per window.
const ERROR_SAMPLES: usize = 3;

/// What one window recorded.
#[derive(Debug, Default, Clone)]
pub(crate) struct Window {
    /// Answers with the expected status (200 for a read, 201 for an insert).
    pub(crate) ok: u64,
    /// Other statuses and transport errors.
    pub(crate) errors: u64,
    /// Latency of every answer, successful or not.
    pub(crate) latencies: Latencies,
    /// The first few distinct error messages.
    pub(crate) samples: Vec<String>,
    /// How long the window lasted.
    pub(crate) elapsed: Duration,
    /// The CPU time the service process used in it, if known.
    pub(crate) service_cpu: Option<Duration>,
    /// Sessions opened on the servers in it, if known.
    pub(crate) sessions: Option<i64>,
    /// Transactions committed on each node in it, if known.
    pub(crate) commits: Option<Vec<i64>>,
}

impl Window {
    /// Every answer, successful or not.
    pub(crate) fn requests(&self) -> u64 {
        self.ok + self.errors
    }

    /// The service's CPU time per answer, in microseconds.
    pub(crate) fn cpu_per_request(&self) -> Option<f64> {
        let cpu = self.service_cpu?;
        (self.requests() > 0).then(|| cpu.as_secs_f64() * 1e6 / self.requests() as f64)
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.samples.len() < ERROR_SAMPLES && !self.samples.contains(&message) {
            self.samples.push(message);
        }
    }
}

/// The running clients and the window they record into.
pub(crate) struct Load {
    current: Arc<Mutex<(Instant, Window)>>,
    stop: CancellationToken,
    clients: JoinSet<()>,
}

impl Load {
    /// Starts `clients` clients against `addr`, `read_percent` % of their
    /// requests reads of ids `1..=items`, the others inserts.
    pub(crate) fn start(addr: SocketAddr, clients: usize, read_percent: u32, items: i64) -> Load {
        let current = Arc::new(Mutex::new((Instant::now(), Window::default())));
        let stop = CancellationToken::new();
        let mut set = JoinSet::new();
        for client in 0..clients {
            let (current, stop) = (current.clone(), stop.clone());
            set.spawn(async move {
                let seed = 0x5eed_0000 + u64::try_from(client).unwrap_or(0);
                let rng = fastrand::Rng::with_seed(seed);
                run_client(addr, read_percent, items, rng, current, stop).await;
            });
        }
        Load {
            current,
            stop,
            clients: set,
        }
    }

    /// Ends the current window and starts the next: what was recorded
    /// since the last call.
    pub(crate) fn take(&self) -> Window {
        let mut guard = self
            .current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let now = Instant::now();
        let started = std::mem::replace(&mut guard.0, now);
        let mut window = std::mem::take(&mut guard.1);
        window.elapsed = now - started;
        window
    }

    /// Stops every client (a request in flight is dropped).
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        while self.clients.join_next().await.is_some() {}
    }
}

/// One client: connects (again after a transport error) and sends requests
/// back to back until stopped.
async fn run_client(
    addr: SocketAddr,
    read_percent: u32,
    items: i64,
    mut rng: fastrand::Rng,
    current: Arc<Mutex<(Instant, Window)>>,
    stop: CancellationToken,
) {
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    while !stop.is_cancelled() {
        let read = rng.u32(0..100) < read_percent;
        let request = if read {
            Request::get(format!("/items/{}", rng.i64(1..=items))).body(Full::new(Bytes::new()))
        } else {
            Request::builder()
                .method(Method::POST)
                .uri("/items")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(br#"{"name":"load"}"#)))
        };
        let Ok(mut request) = request else {
            return;
        };
        request.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_static("bench"),
        );
        let expected = if read {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        let start = Instant::now();
        let outcome = tokio::select! {
            outcome = send(&mut sender, addr, request) => outcome,
            () = stop.cancelled() => return,
        };
        let latency = start.elapsed();
        let lost = outcome.is_err();
        record(&current, latency, expected, outcome);
        if lost {
            sender = None;
            // A refused or reset connection: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Records one answer (or transport error) into the current window.
fn record(
    current: &Mutex<(Instant, Window)>,
    latency: Duration,
    expected: StatusCode,
    outcome: Result<(StatusCode, Bytes), Box<dyn std::error::Error + Send + Sync>>,
) {
    let mut guard = current.lock().unwrap_or_else(|poison| poison.into_inner());
    let window = &mut guard.1;
    window.latencies.record(latency);
    match outcome {
        Ok((status, _)) if status == expected => window.ok += 1,
        Ok((status, body)) => {
            let body = String::from_utf8_lossy(&body);
            let body: String = body.chars().take(200).collect();
            window.error(format!("{status}: {body}"));
        }
        Err(error) => window.error(format!("transport: {error}")),
    }
}

/// Sends one request on the client's connection, opening it first when
/// there is none; the status and the whole body.
async fn send(
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    if sender.as_ref().is_none_or(SendRequest::is_closed) {
        *sender = Some(connect(addr).await?);
    }
    let Some(connection) = sender.as_mut() else {
        return Err("no connection".into());
    };
    connection.ready().await?;
    let response = connection.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A new HTTP/1.1 connection to the service, its driver on a task of its
/// own.
async fn connect(
    addr: SocketAddr,
) -> Result<SendRequest<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the service closes the connection or the sender is
        // dropped; its error reaches the next request on it.
        let _ = connection.await;
    });
    Ok(sender)
}

/// `GET /health` once: whether the service answered 200.
pub(crate) async fn healthy(addr: SocketAddr) -> bool {
    let mut sender = None;
    let Ok(request) = Request::get("/health")
        .header(hyper::header::HOST, "bench")
        .body(Full::new(Bytes::new()))
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), send(&mut sender, addr, request)).await,
        Ok(Ok((StatusCode::OK, _)))
    )
}
