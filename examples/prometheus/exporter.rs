//! The exporter set-up, shared with `tests/metrics.rs` (which scrapes it).

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Histogram buckets for pgrouter's `_seconds` histograms (call latency,
/// pool wait): from a local round trip to a cross-region deadline.
pub(crate) const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder and serves `GET /metrics` on `addr`.
/// Call it before building the `DatabaseManager`: pgrouter registers its
/// metric handles with the recorder installed when the manager is built.
pub(crate) fn install(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        // Real histograms (`_bucket`, `_sum`, `_count`), not summaries.
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)?
        .install()
}
