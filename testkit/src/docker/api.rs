//! Talking to Docker engines older than the `testcontainers` crate's client.
//!
//! testcontainers 0.27 (through bollard 0.20) sends every request as Docker
//! API 1.52 and does not negotiate: an engine that supports less (Docker 20
//! to 28, e.g. Debian bookworm's `docker.io` 20.10, API 1.41) answers each
//! request with "client version 1.52 is too new". [`ensure_compatible`]
//! asks the engine for its version and, when it is older, serves the
//! engine's socket again on a socket of its own through a relay that
//! rewrites the version in request paths (`/v1.52/` → `/v1.41/`, the same
//! length, so nothing else in the stream changes), and points `DOCKER_HOST`
//! at it for the rest of the process. Fields the older API lacks are
//! ignored by the engine; testcontainers' models have every field optional.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::TestkitError;

/// The API version testcontainers' client sends.
const CLIENT_API: &str = "1.52";
/// The engine's socket when `DOCKER_HOST` does not name another.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The outcome of the first [`ensure_compatible`], shared by later calls.
static SHIM: OnceLock<Result<(), String>> = OnceLock::new();

/// Makes sure testcontainers' client can talk to the Docker engine (see the
/// module docs); idempotent. Call it before the first testcontainers call
/// of the process. Does nothing when the engine speaks API 1.52 or newer,
/// when it cannot be asked (testcontainers then looks for it and reports
/// its own errors), or when `DOCKER_HOST` is not a Unix socket.
pub fn ensure_compatible() -> Result<(), TestkitError> {
    SHIM.get_or_init(|| start().map_err(|e| e.to_string()))
        .clone()
        .map_err(|reason| TestkitError::Docker { reason })
}

fn start() -> Result<(), TestkitError> {
    let Some(engine) = engine_socket() else {
        return Ok(());
    };
    // An engine that cannot be asked is left to testcontainers' own
    // discovery (other sockets) and its own errors.
    let version = match engine_api_version(&engine) {
        Ok(version) => version,
        Err(e) => {
            tracing::debug!(error = %e, "Docker API version unknown; no relay");
            return Ok(());
        }
    };
    if !older(&version, CLIENT_API) {
        return Ok(());
    }
    if version.len() != CLIENT_API.len() {
        return Err(docker_error(format!(
            "the Docker engine speaks API {version}, older than testcontainers' {CLIENT_API}, \
             and cannot be relayed"
        )));
    }
    let dir = std::env::temp_dir().join(format!("pgrouter-docker-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("docker.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let from = format!("/v{CLIENT_API}/").into_bytes();
    let to = format!("/v{version}/").into_bytes();
    std::thread::Builder::new()
        .name("pgrouter-docker-api".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                if let Ok(listener) = UnixListener::from_std(listener) {
                    serve(listener, engine, from, to).await;
                }
            })
        })?;
    tracing::info!(engine_api = %version, socket = %socket.display(), "relaying Docker API requests for testcontainers");
    // Rust's own environment functions hold a lock; this runs once, before
    // testcontainers reads DOCKER_HOST.
    std::env::set_var("DOCKER_HOST", format!("unix://{}", socket.display()));
    Ok(())
}

/// The engine's Unix socket, from `DOCKER_HOST` or the default.
fn engine_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) => host.strip_prefix("unix://").map(PathBuf::from),
        Err(_) => Some(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// `ApiVersion` from the engine's `GET /version` (unversioned path).
fn engine_api_version(socket: &Path) -> Result<String, TestkitError> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        docker_error(format!(
            "cannot reach the Docker engine at {}: {e}",
            socket.display()
        ))
    })?;
    stream.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let key = "\"ApiVersion\":\"";
    answer
        .find(key)
        .map(|at| &answer[at + key.len()..])
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .ok_or_else(|| docker_error(format!("unexpected answer to GET /version: {answer:.200}")))
}

/// Whether API version `a` is older than `b` (`major.minor`).
fn older(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (major, minor) = v.split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    matches!((parse(a), parse(b)), (Some(a), Some(b)) if a < b)
}

async fn serve(listener: UnixListener, engine: PathBuf, from: Vec<u8>, to: Vec<u8>) {
    while let Ok((client, _)) = listener.accept().await {
        let engine = engine.clone();
        let (from, to) = (from.clone(), to.clone());
        tokio::spawn(async move {
            if let Ok(server) = UnixStream::connect(&engine).await {
                relay(client, server, from, to).await;
            }
        });
    }
}

/// Copies both ways until either side closes, rewriting `from` to `to`
/// (same length) in what the client sends.
async fn relay(client: UnixStream, server: UnixStream, from: Vec<u8>, to: Vec<u8>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            replace_all(&mut pending, &from, &to);
            // Hold back only a tail that could begin a pattern split
            // across reads; a request always ends with something else.
            let keep = partial_match(&pending, &from);
            let send = pending.len() - keep;
            if server_write.write_all(&pending[..send]).await.is_err() {
                return;
            }
            pending.drain(..send);
        }
        let _ = server_write.write_all(&pending).await;
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// The length of the longest end of `bytes` that is a proper start of
/// `pattern`.
fn partial_match(bytes: &[u8], pattern: &[u8]) -> usize {
    (1..pattern.len())
        .rev()
        .find(|&k| bytes.ends_with(&pattern[..k]))
        .unwrap_or(0)
}

fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let mut at = 0;
    while at + from.len() <= bytes.len() {
        if &bytes[at..at + from.len()] == from {
            bytes[at..at + from.len()].copy_from_slice(to);
            at += from.len();
        } else {
            at += 1;
        }
    }
}

fn docker_error(reason: String) -> TestkitError {
    TestkitError::Docker { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_and_paths_are_rewritten_in_place() {
        assert!(older("1.41", "1.52"));
        assert!(!older("1.52", "1.52") && !older("1.53", "1.52") && !older("x", "1.52"));
        let mut request = b"GET /v1.52/containers/json HTTP/1.1\r\n\r\nPOST /v1.52/x".to_vec();
        replace_all(&mut request, b"/v1.52/", b"/v1.41/");
        assert_eq!(
            request,
            b"GET /v1.41/containers/json HTTP/1.1\r\n\r\nPOST /v1.41/x".to_vec()
        );
        assert_eq!(partial_match(b"GET /v1.5", b"/v1.52/"), 5);
        assert_eq!(partial_match(b"\r\n\r\n", b"/v1.52/"), 0);
    }
}
