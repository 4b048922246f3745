//! Shared by the `bench_*` binaries and `chaos` (each includes it with
//! `#[path]`): node configurations for a local test cluster, and latency
//! histograms.

use std::time::Duration;

use hdrhistogram::Histogram;
use pgrouter_testkit::{Cluster, TestkitError};

// The node configurations the integration tests use, shared rather than copied.
#[path = "../../tests/it/support.rs"]
mod support;

pub(crate) use support::{node_configs, LOCAL_REGION};

/// Call latencies in microseconds, 1 µs to 60 s, three significant digits.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    /// Records one call.
    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    /// Adds every call recorded in `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds");
    }

    /// The latency at quantile `q` (0.5 for the median), zero when empty.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(q))
    }

    /// Calls recorded.
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// zero when empty.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// A duration in milliseconds with two decimals, e.g. `0.23`.
pub(crate) fn millis(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

/// A primary and two streaming replicas with `keys` rows of
/// `kv (id, v)` on all three (bench_failover's and bench_wan's cluster).
#[allow(dead_code)] // not every binary that includes this file starts one
pub(crate) fn kv_cluster(keys: i32) -> Result<Cluster, TestkitError> {
    let cluster = Cluster::start(2)?;
    cluster.psql(
        0,
        &format!(
            "CREATE TABLE kv (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO kv SELECT g, 0 FROM generate_series(1, {keys}) g;"
        ),
    )?;
    cluster.wait_for_replicas(Duration::from_secs(30))?;
    Ok(cluster)
}
