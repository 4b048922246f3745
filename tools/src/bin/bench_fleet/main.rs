//! The fleet's cost on the database: many service pods, each with its own
//! `DatabaseManager` (its own monitor probing every node), simulated in one
//! process against one local cluster (a primary and two replicas). Measures
//! what the nodes see in a steady state and through a failover (the primary
//! stopped, a replica promoted a few seconds later, as an orchestrator
//! would): sessions opened per second (`pg_stat_database.sessions`),
//! monitor statements per second (`pg_stat_statements`, the load's own
//! statement apart), client backends (`pg_stat_activity`), and the CPU of
//! each node's postmaster and its children (`/proc`), sampled every 100 ms.
//! Also when each pod saw the new primary, after `pg_ctl promote` returned.
//!
//! ```text
//! cargo run --release -p pgrouter-tools --bin bench_fleet
//! ```
//!
//! The fleet runs twice, each time on a fresh cluster, side by side: with
//! the health settings of the failover watch as they were before the
//! fleet's bound (every gap fixed, the watch at 20 ms for as long as no
//! primary is seen) and with the shipped defaults. Every pod uses the
//! library's default health settings otherwise, a pool of
//! `BENCH_FLEET_POOL` (1) per node and writes one row every
//! `BENCH_FLEET_WRITE_EVERY` (2 s; `0s` for none), at a random phase.
//!
//! `BENCH_FLEET_PODS` (200) sets the fleet's size; `BENCH_FLEET_STEADY`
//! (10 s) the steady window; `BENCH_FLEET_PROMOTE_AFTER` (20 s) how long
//! after the primary stops the replica is promoted (an orchestrator's
//! detection time: Patroni's default TTL is 30 s); `BENCH_FLEET_AFTER`
//! (15 s) how long the run goes on after the promotion. The client and the
//! three servers share the machine: on a small box the fleet's own CPU
//! limits how fast its probes can go (each row says how many watched rounds
//! a pod made, against the 50 a second it asks for).

// Shared with the other benches; only the node configurations are used.
#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;
mod sample;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{node_configs, LOCAL_REGION};
use pgrouter::config::{HealthSettings, PoolSettings};
use pgrouter::status::Event;
use pgrouter::{Config, DatabaseManager};
use pgrouter_testkit::{Cluster, StopMode};
use sample::{Sample, Sampler, Target};
use tokio_util::sync::CancellationToken;

/// Rows in `kv`.
const KEYS: i32 = 1_000;
/// The replica promoted.
const PROMOTED: usize = 1;
/// Load before the steady window, not reported (the pods' start-up).
const SETTLE: Duration = Duration::from_secs(3);
/// The CPU of the new primary is averaged over this long after promotion.
const FIRST_SECONDS: Duration = Duration::from_secs(3);

/// The run's shape, from the environment.
#[derive(Debug, Clone, Copy)]
struct Options {
    pods: usize,
    pool: usize,
    write_every: Duration,
    steady: Duration,
    promote_after: Duration,
    after: Duration,
}

impl Options {
    fn from_env() -> Self {
        Self {
            pods: number_from_env("BENCH_FLEET_PODS", 200),
            pool: number_from_env("BENCH_FLEET_POOL", 1),
            write_every: duration_from_env("BENCH_FLEET_WRITE_EVERY", 2_000),
            steady: duration_from_env("BENCH_FLEET_STEADY", 10_000),
            promote_after: duration_from_env("BENCH_FLEET_PROMOTE_AFTER", 20_000),
            after: duration_from_env("BENCH_FLEET_AFTER", 15_000),
        }
    }
}

/// One side of the comparison: a name and the health settings it runs.
struct Mode {
    name: &'static str,
    health: fn() -> HealthSettings,
}

/// The two sides: the shipped defaults, and the same with the watch and
/// the probe gaps as they were before the bound.
fn modes() -> Vec<Mode> {
    vec![
        Mode {
            name: "unbounded (no backoff, no jitter)",
            health: || {
                let mut settings = HealthSettings::default();
                settings.failover_backoff = 0.0;
                settings.probe_jitter = 0.0;
                settings
            },
        },
        Mode {
            name: "shipped defaults",
            health: HealthSettings::default,
        },
    ]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let options = Options::from_env();
    println!("{options:?}");
    let started = Instant::now();
    let mut summaries = Vec::new();
    for mode in modes() {
        println!("\n######## {}: {:?}", mode.name, (mode.health)());
        summaries.push((mode.name, run(&options, &mode).await?));
    }
    print_side_by_side(&options, &summaries);
    println!("\ntotal time {:.1?}", started.elapsed());
    Ok(())
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Summary {
    /// The primary, steady state.
    steady: Rates,
    /// The primary's peak 100 ms window of monitor statements in the
    /// steady state, per second.
    steady_burst: f64,
    /// The replica to be promoted, between the primary's loss and the
    /// promotion (the failover watch).
    watched: Rates,
    /// The other replica: monitor statements from the loss to the
    /// promotion, in all.
    watched_total: f64,
    /// The replica to be promoted over the last 2 s before the promotion.
    watched_late: Rates,
    /// The new primary, peaks of 1 s windows from the primary's loss to
    /// the end.
    peak: Rates,
    /// The new primary's CPU over the first seconds after the promotion.
    first_cpu: f64,
    /// The new primary over the run's last 5 s, and its peak 100 ms window.
    settled: Rates,
    settled_burst: f64,
    /// When each pod saw the new primary, after `pg_ctl promote` returned.
    seen: Vec<Duration>,
    writes_ok: u64,
    writes_failed: u64,
    pods: usize,
}

/// Rates over a window (or peaks over windows).
#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    monitor: f64,
    app: f64,
    sessions: f64,
    backends: f64,
    cpu: f64,
}

async fn run(options: &Options, mode: &Mode) -> Result<Summary, Box<dyn std::error::Error>> {
    println!("load average at the start: {}", load_average());
    let cluster = start_cluster(options)?;
    let ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port()).collect();
    let targets = cluster
        .nodes()
        .iter()
        .map(|node| Target {
            config: node.pg_config(),
            pid_file: node.data_dir().join("postmaster.pid"),
        })
        .collect();

    let fleet_started = Instant::now();
    let mut pods = Vec::with_capacity(options.pods);
    let seen = Arc::new(Mutex::new(vec![None; options.pods]));
    let promoted_name = cluster.node(PROMOTED).name().to_owned();
    for index in 0..options.pods {
        let db = DatabaseManager::new(config(&cluster, &ports, options, mode)).await?;
        watch_promotion(&db, index, &promoted_name, &seen);
        pods.push(db);
    }
    println!(
        "{} pods started in {:.1?}",
        options.pods,
        fleet_started.elapsed()
    );
    let stop = CancellationToken::new();
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writers: Vec<_> = match options.write_every.is_zero() {
        true => Vec::new(),
        false => pods
            .iter()
            .map(|db| write_load(db.clone(), options.write_every, &ok, &failed, &stop))
            .collect(),
    };
    let sampler = Sampler::start(targets);
    tokio::time::sleep(SETTLE).await;
    let steady_start = Instant::now();
    tokio::time::sleep(options.steady).await;
    let steady_end = Instant::now();

    let lost = Instant::now();
    blocking(|| cluster.stop(0, StopMode::Immediate))?;
    sleep_until(lost + options.promote_after).await;
    let promoting = Instant::now();
    blocking(|| cluster.promote(PROMOTED))?;
    let promoted = Instant::now();
    println!(
        "primary stopped; node{PROMOTED} promoted {:.1?} later (pg_ctl promote took {:.0?})",
        promoting - lost,
        promoted - promoting
    );
    sleep_until(promoted + options.after).await;
    let end = Instant::now();

    stop.cancel();
    for writer in writers {
        writer.await?;
    }
    let samples = sampler.finish();
    let closing: Vec<_> = pods
        .into_iter()
        .map(|db| tokio::spawn(async move { db.close().await }))
        .collect();
    for close in closing {
        close.await?;
    }

    let clock = sample::clock_ticks();
    let at = |from: Instant, to: Instant, node: usize| rates(&samples[node], from, to, clock);
    let settled_from = end - Duration::from_secs(5);
    let mut seen: Vec<Duration> = lock(&seen)
        .iter()
        .flatten()
        .map(|at: &Instant| at.saturating_duration_since(promoted))
        .collect();
    seen.sort();
    let summary = Summary {
        steady: at(steady_start, steady_end, 0),
        steady_burst: peak(&samples[0], steady_start, steady_end, sample::EVERY, clock).monitor,
        watched: at(lost + Duration::from_millis(500), promoting, PROMOTED),
        watched_total: total_monitor(&samples[2], lost, promoting),
        watched_late: at(promoting - Duration::from_secs(2), promoting, PROMOTED),
        peak: peak(&samples[PROMOTED], lost, end, Duration::from_secs(1), clock),
        first_cpu: at(promoted, promoted + FIRST_SECONDS, PROMOTED).cpu,
        settled: at(settled_from, end, PROMOTED),
        settled_burst: peak(&samples[PROMOTED], settled_from, end, sample::EVERY, clock).monitor,
        seen,
        writes_ok: ok.load(Ordering::Relaxed),
        writes_failed: failed.load(Ordering::Relaxed),
        pods: options.pods,
    };
    println!("load average at the end: {}", load_average());
    print_timeline(&samples, lost, steady_start, end, clock);
    print_summary(&summary);
    Ok(summary)
}

/// A primary and two replicas with room for the fleet's connections and
/// `pg_stat_statements` loaded; the `kv` table.
fn start_cluster(options: &Options) -> Result<Cluster, Box<dyn std::error::Error>> {
    // Each pod: one probe connection and a pool per node; the sampler, the
    // replication senders and some slack.
    let max_connections = options.pods * (options.pool + 1) + 30;
    let builder = Cluster::builder()
        .replicas(2)
        .setting("max_connections", &max_connections.to_string())
        .setting("shared_preload_libraries", "pg_stat_statements");
    let cluster = blocking(|| builder.start())?;
    blocking(|| {
        cluster.psql(
            0,
            &format!(
                "CREATE EXTENSION pg_stat_statements;
                 CREATE TABLE kv (id int PRIMARY KEY, v int NOT NULL);
                 INSERT INTO kv SELECT g, 0 FROM generate_series(1, {KEYS}) g;"
            ),
        )?;
        cluster.wait_for_replicas(Duration::from_secs(30))
    })?;
    Ok(cluster)
}

/// One pod's configuration: the mode's health settings, a small pool.
fn config(cluster: &Cluster, ports: &[u16], options: &Options, mode: &Mode) -> Config {
    let mut config = Config::new(node_configs(cluster, ports));
    config.local_region = LOCAL_REGION.to_owned();
    config.pool = {
        let mut settings = PoolSettings::default();
        settings.max_size = options.pool;
        settings
    };
    config.health = (mode.health)();
    config
}

/// Records, in `seen[index]`, when pod `index` first named `promoted` the
/// primary.
fn watch_promotion(
    db: &DatabaseManager,
    index: usize,
    promoted: &str,
    seen: &Arc<Mutex<Vec<Option<Instant>>>>,
) {
    let mut events = db.subscribe();
    let (promoted, seen) = (promoted.to_owned(), Arc::clone(seen));
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let Event::PrimaryChanged { to: Some(to), .. } = event {
                if to == promoted {
                    lock(&seen)[index].get_or_insert(Instant::now());
                }
            }
        }
    });
}

/// One write every `every`, at a random phase, until `stop`.
fn write_load(
    db: DatabaseManager,
    every: Duration,
    ok: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (ok, failed, stop) = (Arc::clone(ok), Arc::clone(failed), stop.clone());
    tokio::spawn(async move {
        let phase = every.mul_f64(fastrand::f64());
        let mut next = tokio::time::Instant::now() + phase;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            next += every;
            let key = fastrand::i32(1..=KEYS);
            let written = db
                .execute("UPDATE kv SET v = v + 1 WHERE id = $1", &[&key])
                .await;
            match written {
                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    })
}

/// Rates over `[from, to]` from the first and last samples inside it.
fn rates(samples: &[Sample], from: Instant, to: Instant, clock: f64) -> Rates {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .collect();
    match (inside.first(), inside.last()) {
        (Some(a), Some(b)) if b.at > a.at => {
            let mut rates = between(a, b, clock);
            rates.backends =
                inside.iter().map(|s| s.backends as f64).sum::<f64>() / inside.len() as f64;
            rates
        }
        _ => Rates::default(),
    }
}

/// Monitor statements a node ran between the samples nearest `from` and
/// `to`.
fn total_monitor(samples: &[Sample], from: Instant, to: Instant) -> f64 {
    let first = samples.iter().find(|s| s.at >= from);
    let last = samples.iter().rev().find(|s| s.at <= to);
    match (first, last) {
        (Some(a), Some(b)) => (b.monitor_calls - a.monitor_calls) as f64,
        _ => 0.0,
    }
}

/// Rates between two samples of one node.
fn between(a: &Sample, b: &Sample, clock: f64) -> Rates {
    let seconds = (b.at - a.at).as_secs_f64();
    let per_second = |x: i64, y: i64| (y - x) as f64 / seconds;
    Rates {
        monitor: per_second(a.monitor_calls, b.monitor_calls),
        app: per_second(a.app_calls, b.app_calls),
        sessions: per_second(a.sessions, b.sessions),
        backends: b.backends as f64,
        cpu: match (a.cpu_ticks, b.cpu_ticks) {
            (Some(x), Some(y)) => y.saturating_sub(x) as f64 / clock / seconds,
            _ => 0.0,
        },
    }
}

/// The highest rate of each kind over any window of about `width` (sample
/// to sample) inside `[from, to]`.
fn peak(samples: &[Sample], from: Instant, to: Instant, width: Duration, clock: f64) -> Rates {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .collect();
    let mut best = Rates::default();
    for (i, a) in inside.iter().enumerate() {
        let Some(b) = inside[i + 1..].iter().find(|b| b.at - a.at >= width) else {
            break;
        };
        let r = between(a, b, clock);
        best.monitor = best.monitor.max(r.monitor);
        best.app = best.app.max(r.app);
        best.sessions = best.sessions.max(r.sessions);
        best.backends = best.backends.max(r.backends);
        best.cpu = best.cpu.max(r.cpu);
    }
    best
}

/// Each node, second by second from the steady window on (time from the
/// primary's loss): monitor statements/s, sessions/s, backends, CPU cores.
fn print_timeline(samples: &[Vec<Sample>], lost: Instant, from: Instant, end: Instant, clock: f64) {
    println!("\n   t (s) | node: monitor stmts/s, sessions/s, backends, cpu cores");
    let mut at = from;
    while at + Duration::from_secs(1) <= end {
        let next = at + Duration::from_secs(1);
        let t = if at >= lost {
            (at - lost).as_secs_f64()
        } else {
            -(lost - at).as_secs_f64()
        };
        let mut line = format!("{t:>8.1} |");
        for (node, samples) in samples.iter().enumerate() {
            let r = rates(samples, at, next, clock);
            line += &format!(
                " node{node}: {:>7.0} {:>5.0} {:>4.0} {:>4.2} |",
                r.monitor, r.sessions, r.backends, r.cpu
            );
        }
        println!("{line}");
        at = next;
    }
}

fn print_summary(s: &Summary) {
    let row = |what: &str, r: &Rates| {
        println!(
            "{what:<52} monitor {:>8.0}/s  load {:>6.0}/s  sessions {:>6.1}/s  backends {:>5.0}  cpu {:>4.2}",
            r.monitor, r.app, r.sessions, r.backends, r.cpu
        );
    };
    println!();
    row("primary, steady state (mean)", &s.steady);
    println!(
        "{:<52} monitor {:>8.0}/s",
        "primary, steady state, busiest 100 ms", s.steady_burst
    );
    row(
        "replica to be promoted, before the promotion (mean)",
        &s.watched,
    );
    row(
        "replica to be promoted, last 2 s before the promotion",
        &s.watched_late,
    );
    println!(
        "{:<52} {:.0} statements ({:.0} per pod)",
        "node2, from the loss to the promotion, in all",
        s.watched_total,
        s.watched_total / s.pods as f64
    );
    row("new primary, peak 1 s window from the loss on", &s.peak);
    println!(
        "{:<52} cpu {:.2} cores",
        "new primary, first 3 s after promote returned", s.first_cpu
    );
    row("new primary, last 5 s (mean)", &s.settled);
    println!(
        "{:<52} monitor {:>8.0}/s",
        "new primary, last 5 s, busiest 100 ms", s.settled_burst
    );
    println!(
        "pods that saw the new primary: {}; after promote returned: p50 {} p99 {} max {}",
        s.seen.len(),
        ms(quantile(&s.seen, 0.5)),
        ms(quantile(&s.seen, 0.99)),
        ms(s.seen.last().copied().unwrap_or_default())
    );
    println!("writes: {} ok, {} failed", s.writes_ok, s.writes_failed);
}

fn print_side_by_side(options: &Options, summaries: &[(&str, Summary)]) {
    println!(
        "\n######## side by side ({} pods, pool {} per node, primary stopped, replica promoted {:?} later)",
        options.pods, options.pool, options.promote_after
    );
    let header: Vec<&str> = summaries.iter().map(|(name, _)| *name).collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(header.len()));
    type Figure = fn(&Summary) -> String;
    let rows: [(&str, Figure); 15] = [
        ("primary, steady: monitor statements/s", |s| {
            format!("{:.0}", s.steady.monitor)
        }),
        ("primary, steady: busiest 100 ms, statements/s", |s| {
            format!("{:.0}", s.steady_burst)
        }),
        ("primary, steady: sessions/s", |s| {
            format!("{:.1}", s.steady.sessions)
        }),
        ("primary, steady: client backends", |s| {
            format!("{:.0}", s.steady.backends)
        }),
        ("primary, steady: CPU (cores)", |s| {
            format!("{:.2}", s.steady.cpu)
        }),
        ("replica, before the promotion: monitor statements/s", |s| {
            format!("{:.0}", s.watched.monitor)
        }),
        ("replica, before the promotion: CPU (cores)", |s| {
            format!("{:.2}", s.watched.cpu)
        }),
        (
            "replica, last 2 s before the promotion: monitor statements/s",
            |s| format!("{:.0}", s.watched_late.monitor),
        ),
        (
            "other replica, loss to promotion: monitor statements (per pod)",
            |s| {
                format!(
                    "{:.0} ({:.0})",
                    s.watched_total,
                    s.watched_total / s.pods as f64
                )
            },
        ),
        ("new primary, peak 1 s: monitor statements/s", |s| {
            format!("{:.0}", s.peak.monitor)
        }),
        ("new primary, peak 1 s: sessions/s", |s| {
            format!("{:.0}", s.peak.sessions)
        }),
        ("new primary, peak: client backends", |s| {
            format!("{:.0}", s.peak.backends)
        }),
        ("new primary, CPU first 3 s / peak 1 s (cores)", |s| {
            format!("{:.2} / {:.2}", s.first_cpu, s.peak.cpu)
        }),
        (
            "new primary, last 5 s: statements/s (busiest 100 ms)",
            |s| format!("{:.0} ({:.0})", s.settled.monitor, s.settled_burst),
        ),
        ("pods seeing the new primary: p50 / p99 / max ms", |s| {
            format!(
                "{} / {} / {} ({} pods)",
                ms(quantile(&s.seen, 0.5)),
                ms(quantile(&s.seen, 0.99)),
                ms(s.seen.last().copied().unwrap_or_default()),
                s.seen.len()
            )
        }),
    ];
    for (label, figure) in rows {
        let cells: Vec<String> = summaries.iter().map(|(_, s)| figure(s)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    if let [(_, before), (_, after)] = summaries {
        let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
        println!(
            "ratios (second / first): statements on a replica from the loss to the promotion {:.3}x, \
             in its last 2 s {:.3}x; replica before the promotion {:.3}x statements/s, new primary peak {:.3}x, first-3-s CPU {:.3}x",
            ratio(before.watched_total, after.watched_total),
            ratio(before.watched_late.monitor, after.watched_late.monitor),
            ratio(before.watched.monitor, after.watched.monitor),
            ratio(before.peak.monitor, after.peak.monitor),
            ratio(before.first_cpu, after.first_cpu)
        );
    }
}

/// `/proc/loadavg`'s first three fields: what else the machine ran.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The `q` quantile of sorted `values` (zero when empty).
fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}

fn ms(duration: Duration) -> String {
    format!("{:.0}", duration.as_secs_f64() * 1000.0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Blocking cluster work (`pg_ctl`, `psql`) off the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn sleep_until(instant: Instant) {
    tokio::time::sleep_until(instant.into()).await;
}

fn number_from_env(variable: &str, default: usize) -> usize {
    match std::env::var(variable) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|error| panic!("{variable}={text:?}: {error}")),
        Err(_) => default,
    }
}

/// The humantime duration in `variable`, or `default_ms`.
fn duration_from_env(variable: &str, default_ms: u64) -> Duration {
    match std::env::var(variable) {
        Ok(text) => humantime::parse_duration(&text)
            .unwrap_or_else(|error| panic!("{variable}={text:?}: {error}")),
        Err(_) => Duration::from_millis(default_ms),
    }
}
