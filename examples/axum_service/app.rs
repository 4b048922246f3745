//! The service: a small inventory of items over pgrouter, with the probes
//! Kubernetes calls. `main.rs` serves it; `tests/it/axum_service.rs` includes
//! this file and serves it on a test listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use pgrouter::causal::CausalLayer;
use pgrouter::error::RetryHint;
use pgrouter::tokio_postgres::Row;
use pgrouter::CallInfo;
use pgrouter::DatabaseManager;
use pgrouter::Error;
use serde::{Deserialize, Serialize};

/// The cookie the causal token also travels in (browsers send it back by
/// themselves; API clients can echo the `x-causal-token` header instead).
pub(crate) const TOKEN_COOKIE: &str = "pgrouter_token";

/// The response header naming the node that served the request's last
/// database call.
pub(crate) const SERVED_BY: &str = "x-served-by";

/// Set when the pod is told to stop (SIGTERM): readiness answers 503 from
/// then on, so Kubernetes takes the pod out of its Service's endpoints
/// while it still serves what is in flight.
#[derive(Debug, Clone, Default)]
pub(crate) struct Draining(Arc<AtomicBool>);

impl Draining {
    /// From now on, not ready.
    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`Draining::start`] was called.
    pub(crate) fn started(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The routes. `read_your_writes`: serve every request in a causal scope
/// ([`CausalLayer`]), so a client that sends back the token it was given
/// sees its own writes through any instance. Readiness turns not ready once
/// `draining` starts.
pub(crate) fn router(db: DatabaseManager, read_your_writes: bool, draining: Draining) -> Router {
    let routes = Router::new()
        .route("/health", get(liveness))
        .route("/health/ready", get(readiness))
        .route("/items", get(list_items).post(create_item))
        .route(
            "/items/{id}",
            get(get_item).put(update_item).delete(delete_item),
        )
        .layer(Extension(draining))
        .with_state(db);
    if read_your_writes {
        routes.layer(CausalLayer::new().cookie(TOKEN_COOKIE))
    } else {
        routes
    }
}

/// Serves on `listener` until `stop` resolves, then stops as Kubernetes
/// expects of a pod it sends SIGTERM: readiness turns not ready at once
/// (the pod leaves its Service's endpoints), requests are still served for
/// the delay `stop` gave (load balancers and kube-proxy take a few seconds
/// to stop sending), then the listener stops accepting and the requests in
/// flight finish (axum's graceful shutdown), and last `db.close()` lets the
/// database calls still in flight finish within
/// [`Config::close_timeout`](pgrouter::Config::close_timeout) and closes
/// the pools.
pub(crate) async fn serve_until<F>(
    listener: tokio::net::TcpListener,
    db: DatabaseManager,
    read_your_writes: bool,
    stop: F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = std::time::Duration> + Send + 'static,
{
    let draining = Draining::default();
    let routes = router(db.clone(), read_your_writes, draining.clone());
    axum::serve(listener, routes)
        .with_graceful_shutdown(async move {
            let delay = stop.await;
            draining.start();
            tracing::info!(?delay, "stopping: not ready; serving on for the delay");
            tokio::time::sleep(delay).await;
            tracing::info!("no longer accepting; finishing the requests in flight");
        })
        .await?;
    tracing::info!("requests done; closing the database manager");
    db.close().await;
    Ok(())
}

/// Creates the schema (and the outcome marker table, if configured).
pub(crate) async fn migrate(db: &DatabaseManager) -> Result<(), Error> {
    db.execute(
        "CREATE TABLE IF NOT EXISTS items (
            id bigserial PRIMARY KEY,
            name text NOT NULL UNIQUE,
            qty integer NOT NULL CHECK (qty >= 0))",
        &[],
    )
    .await?;
    if let Some(sql) = db.config().outcomes.marker_table_sql() {
        db.execute(&sql, &[]).await?;
    }
    Ok(())
}

/// Liveness: the process answers and its health monitor runs. A database
/// outage does not fail it (restarting the pod would not help).
async fn liveness(State(db): State<DatabaseManager>) -> StatusCode {
    if db.status().monitor_running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Readiness: pgrouter's judgement of whether this instance can serve its
/// traffic, and the status behind it (no secrets in either); not ready
/// either once the pod is draining.
async fn readiness(
    State(db): State<DatabaseManager>,
    Extension(draining): Extension<Draining>,
) -> Response {
    let readiness = db.readiness();
    let draining = draining.started();
    let code = if readiness.ready && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "readiness": readiness,
        "draining": draining,
        "status": db.status(),
    });
    (code, Json(body)).into_response()
}

/// An item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Item {
    /// Its key.
    pub(crate) id: i64,
    /// A unique name.
    pub(crate) name: String,
    /// How many are in stock.
    pub(crate) qty: i32,
}

/// What a client sends to create or replace an item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NewItem {
    /// A unique name.
    pub(crate) name: String,
    /// How many are in stock.
    pub(crate) qty: i32,
}

impl Item {
    fn of(row: &Row) -> Self {
        Self {
            id: row.get("id"),
            name: row.get("name"),
            qty: row.get("qty"),
        }
    }
}

/// Paging for the list.
#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    after: i64,
    #[serde(default = "Page::default_limit")]
    limit: i64,
}

impl Page {
    fn default_limit() -> i64 {
        50
    }
}

async fn list_items(
    State(db): State<DatabaseManager>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let served = CallInfo::new();
    let limit = page.limit.clamp(1, 500);
    let rows = db
        .read()
        .info(&served)
        .query(
            "SELECT id, name, qty FROM items WHERE id > $1 ORDER BY id LIMIT $2",
            &[&page.after, &limit],
        )
        .await?;
    let items: Vec<Item> = rows.iter().map(Item::of).collect();
    Ok(with_server(&served, Json(items)))
}

/// Creates an item. A lost `COMMIT` answer is resolved
/// ([`WriteBuilder::exactly_once`](pgrouter::WriteBuilder::exactly_once)), so a failover
/// mid-request gives the row once, or a clear error, never a duplicate.
async fn create_item(
    State(db): State<DatabaseManager>,
    Json(new): Json<NewItem>,
) -> Result<Response, ApiError> {
    let served = CallInfo::new();
    let row = db
        .write()
        .exactly_once()
        .info(&served)
        .query_one(
            "INSERT INTO items (name, qty) VALUES ($1, $2) RETURNING id, name, qty",
            &[&new.name, &new.qty],
        )
        .await?;
    Ok(with_server(
        &served,
        (StatusCode::CREATED, Json(Item::of(&row))),
    ))
}

async fn get_item(
    State(db): State<DatabaseManager>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let served = CallInfo::new();
    let row = db
        .read()
        .info(&served)
        .query_opt("SELECT id, name, qty FROM items WHERE id = $1", &[&id])
        .await?;
    Ok(with_server(&served, found(row.as_ref().map(Item::of))))
}

/// Replaces an item: the same request twice leaves the same row, so it is
/// [`idempotent`](pgrouter::WriteBuilder::idempotent) and retried after a lost
/// connection.
async fn update_item(
    State(db): State<DatabaseManager>,
    Path(id): Path<i64>,
    Json(new): Json<NewItem>,
) -> Result<Response, ApiError> {
    let served = CallInfo::new();
    let row = db
        .write()
        .idempotent()
        .info(&served)
        .query_opt(
            "UPDATE items SET name = $2, qty = $3 WHERE id = $1 RETURNING id, name, qty",
            &[&id, &new.name, &new.qty],
        )
        .await?;
    Ok(with_server(&served, found(row.as_ref().map(Item::of))))
}

async fn delete_item(
    State(db): State<DatabaseManager>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let served = CallInfo::new();
    let deleted = db
        .write()
        .idempotent()
        .info(&served)
        .execute("DELETE FROM items WHERE id = $1", &[&id])
        .await?;
    let code = if deleted == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::NO_CONTENT
    };
    Ok(with_server(&served, code))
}

fn found(item: Option<Item>) -> Response {
    match item {
        Some(item) => Json(item).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The response, with the node that served it in a header and the log.
fn with_server(served: &CallInfo, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if let Some(server) = served.server() {
        tracing::debug!(%server, "served");
        if let Ok(value) = HeaderValue::try_from(server.to_string()) {
            response.headers_mut().insert(SERVED_BY, value);
        }
    }
    response
}

/// A pgrouter error as an HTTP answer: the status it suggests, whether a
/// client may send the request again, and the message (which names nodes
/// and SQLSTATEs, never connection strings or passwords).
#[derive(Debug)]
pub(crate) struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.0;
        let code =
            StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let hint = error.retry_hint();
        if code.is_server_error() {
            tracing::warn!(%error, status = code.as_u16(), ?hint, "request failed");
        }
        let mut headers = HeaderMap::new();
        if hint == RetryHint::Retryable && code == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert("retry-after", HeaderValue::from_static("1"));
        }
        let body = serde_json::json!({
            "error": error.to_string(),
            "retry": hint,
            "sqlstate": error.code().map(|code| code.code()),
        });
        (code, headers, Json(body)).into_response()
    }
}
