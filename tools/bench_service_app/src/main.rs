//! The service under test of `bench_service` (tools/src/bin/bench_service):
//! a minimal axum service over pgrouter, the same source for every library
//! build it is compared across.
//!
//! - `GET /items/{id}`: `db.read().query_opt(…)` (the configured read
//!   strategy: regional-preferred), `200` with `{"id","name"}`, `404`, or
//!   `503` with the error;
//! - `POST /items` with `{"name": …}`: `db.transaction(…)` on the primary,
//!   one `INSERT … RETURNING id`, `201` with `{"id"}`, or `503`;
//! - `GET /health`: `200`, without touching the database.
//!
//! Configured only by the environment (the same variables for every
//! build): `LISTEN_ADDR` (`127.0.0.1:3000`), `SERVICE_NODES`
//! (`name|region|primary-or-replica|connection string`, entries separated
//! by `;`), `SERVICE_LOCAL_REGION`, and, to override the library's
//! defaults, `SERVICE_HEDGING` and `SERVICE_OUTLIERS` (`on` or `off`) and
//! `SERVICE_SET` (`field.path=value …`, any setting; HEAD's build only).
//! Everything else is the library's default, as shipped. The table `items (id bigserial PRIMARY
//! KEY, name text NOT NULL)` must exist.
//!
//! The library API differs between builds in two places only (where
//! `NodeConfig` lives, and hedging and outlier settings), kept in
//! `head.rs` and, with `--features old`, `old.rs`.

#[cfg_attr(not(feature = "old"), path = "head.rs")]
#[cfg_attr(feature = "old", path = "old.rs")]
mod api;

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgrouter::DatabaseManager;
use serde::{Deserialize, Serialize};

/// One node from `SERVICE_NODES`.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) region: String,
    pub(crate) primary: bool,
    pub(crate) url: String,
}

/// What the environment sets.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) nodes: Vec<Node>,
    pub(crate) local_region: String,
    /// `SERVICE_HEDGING`: `None` leaves the library's default.
    pub(crate) hedging: Option<bool>,
    /// `SERVICE_OUTLIERS`: `None` leaves the library's default.
    pub(crate) outliers: Option<bool>,
    /// `SERVICE_SET`: `field.path=value` pairs, separated by spaces, set on
    /// the configuration through its serde form (HEAD's build only), to
    /// find which setting a cost comes from.
    pub(crate) set: Vec<(String, String)>,
}

#[derive(Serialize)]
struct Item {
    id: i64,
    name: String,
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
}

#[derive(Serialize)]
struct Created {
    id: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = settings()?;
    let addr: SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()
        .map_err(|error| format!("LISTEN_ADDR: {error}"))?;
    let db = api::connect(&settings).await?;
    eprintln!("bench-service-app: {}", api::describe(&db));
    if api::counters(&db).is_some() {
        let db = db.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                if let Some(line) = api::counters(&db) {
                    eprintln!("bench-service-app: {line}");
                }
            }
        });
    }
    let app = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/items/{id}", get(get_item))
        .route("/items", post(create_item))
        .with_state(db);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn get_item(State(db): State<DatabaseManager>, Path(id): Path<i64>) -> Response {
    let row = db
        .read()
        .query_opt("SELECT id, name FROM items WHERE id = $1", &[&id])
        .await;
    match row {
        Ok(Some(row)) => match (row.try_get(0), row.try_get(1)) {
            (Ok(id), Ok(name)) => Json(Item { id, name }).into_response(),
            (Err(error), _) | (_, Err(error)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
            }
        },
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

async fn create_item(State(db): State<DatabaseManager>, Json(item): Json<NewItem>) -> Response {
    let created = db
        .transaction(|tx| {
            let name = item.name.clone();
            Box::pin(async move {
                let row = tx
                    .query_one(
                        "INSERT INTO items (name) VALUES ($1) RETURNING id",
                        &[&name],
                    )
                    .await?;
                Ok(row.try_get::<_, i64>(0))
            })
        })
        .await;
    match created {
        Ok(Ok(id)) => (StatusCode::CREATED, Json(Created { id })).into_response(),
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

/// The environment's settings; an error names the variable.
fn settings() -> Result<Settings, String> {
    let nodes_text = std::env::var("SERVICE_NODES").map_err(|_| "SERVICE_NODES is not set")?;
    let mut nodes = Vec::new();
    for entry in nodes_text
        .split(';')
        .filter(|entry| !entry.trim().is_empty())
    {
        let fields: Vec<&str> = entry.splitn(4, '|').collect();
        let [name, region, role, url] = fields[..] else {
            return Err(format!(
                "SERVICE_NODES: {entry:?} is not name|region|role|connection string"
            ));
        };
        let primary = match role {
            "primary" => true,
            "replica" => false,
            other => return Err(format!("SERVICE_NODES: role {other:?}: primary or replica")),
        };
        nodes.push(Node {
            name: name.to_owned(),
            region: region.to_owned(),
            primary,
            url: url.to_owned(),
        });
    }
    Ok(Settings {
        nodes,
        local_region: std::env::var("SERVICE_LOCAL_REGION").unwrap_or_default(),
        hedging: flag("SERVICE_HEDGING")?,
        outliers: flag("SERVICE_OUTLIERS")?,
        set: std::env::var("SERVICE_SET")
            .unwrap_or_default()
            .split_whitespace()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(path, value)| (path.to_owned(), value.to_owned()))
                    .ok_or_else(|| format!("SERVICE_SET: {pair:?} is not field.path=value"))
            })
            .collect::<Result<_, _>>()?,
    })
}

fn flag(variable: &str) -> Result<Option<bool>, String> {
    match std::env::var(variable).as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok("on") => Ok(Some(true)),
        Ok("off") => Ok(Some(false)),
        Ok(other) => Err(format!("{variable}={other:?}: on or off")),
    }
}
