//! Routing decisions: the read path's node choice for every strategy, over a
//! synthetic topology of 3 and 30 healthy nodes (no server needed).
//!
//! ```text
//! cargo bench --bench routing
//! ```
//!
//! Each iteration is one decision exactly as a read makes it: an `arc-swap`
//! snapshot load, the live view (health, suspect flag, freshness) and the
//! strategy function. Every node is caught up, but in the last case, where
//! the last replica lags beyond the bound. `tests/alloc.rs` checks that it allocates nothing.

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pgrouter::bench::RoutingBench;
use pgrouter::ReadStrategy;

/// Topology sizes: a primary and two replicas, and a large fleet.
const SIZES: [usize; 2] = [3, 30];

/// The staleness bound of the bounded regional-preferred case.
const MAX_STALENESS: Duration = Duration::from_secs(1);

/// Every strategy without a bound, then regional-preferred with one.
fn cases() -> Vec<(String, ReadStrategy, Option<Duration>)> {
    let mut cases: Vec<_> = ReadStrategy::ALL
        .into_iter()
        .map(|strategy| (strategy.as_str().to_owned(), strategy, None))
        .collect();
    cases.push((
        "regional-preferred+max_staleness".to_owned(),
        ReadStrategy::RegionalPreferred,
        Some(MAX_STALENESS),
    ));
    cases
}

fn routing(c: &mut Criterion) {
    for size in SIZES {
        let bench = RoutingBench::new(size).expect("a valid synthetic topology");
        let mut group = c.benchmark_group(format!("pick/{size}-nodes"));
        for (name, strategy, max_staleness) in cases() {
            let mut rng = fastrand::Rng::with_seed(7);
            group.bench_function(BenchmarkId::from_parameter(&name), |b| {
                b.iter(|| bench.pick(black_box(strategy), black_box(max_staleness), &mut rng))
            });
        }
        // The bound when a replica lags beyond it: the fresh nodes are
        // searched for.
        let stale = RoutingBench::with_a_stale_replica(size).expect("a valid synthetic topology");
        let mut rng = fastrand::Rng::with_seed(7);
        let name = "regional-preferred+max_staleness+stale-replica";
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                stale.pick(
                    black_box(ReadStrategy::RegionalPreferred),
                    black_box(Some(MAX_STALENESS)),
                    &mut rng,
                )
            })
        });
        group.finish();
    }
}

/// A read's own observation (its call span, the attempt's fields, the end
/// of the call) beside one routing decision, with no tracing subscriber.
/// With the `metrics` feature, once more with a Prometheus recorder
/// installed (built after it, so its handles record): compare
/// `cargo bench --bench routing -- observe` with and without
/// `--features metrics`.
fn observation(c: &mut Criterion) {
    let bench = RoutingBench::new(3).expect("a valid synthetic topology");
    let strategy = ReadStrategy::RegionalPreferred;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut group = c.benchmark_group("observe/3-nodes");
    group.bench_function("pick", |b| {
        b.iter(|| bench.pick(black_box(strategy), None, &mut rng))
    });
    group.bench_function("span+hooks", |b| {
        b.iter(|| bench.observe_read(black_box(strategy), black_box("SELECT 1")))
    });
    #[cfg(feature = "metrics")]
    {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &buckets)
            .expect("buckets")
            .install_recorder()
            .expect("the only recorder of this process");
        let metered = RoutingBench::new(3).expect("a valid synthetic topology");
        let mut calls = 0u32;
        group.bench_function("span+hooks, prometheus recorder", |b| {
            b.iter(|| {
                metered.observe_read(black_box(strategy), black_box("SELECT 1"));
                // What the exporter's upkeep task does every few seconds:
                // fold recorded latencies into the buckets.
                calls = calls.wrapping_add(1);
                if calls.is_multiple_of(65_536) {
                    handle.run_upkeep();
                }
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = routing, observation
}
criterion_main!(benches);
