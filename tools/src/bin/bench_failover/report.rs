//! Phases of the run, the topology events seen, and the per-event report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pgrouter::DatabaseManager;

use pgrouter::status::Event;

use pgrouter::status::HedgeCounts;

use crate::common::{millis, Latencies};
use crate::load::{Kind, Record};

/// One stretch of the run: a fault and what followed it.
#[derive(Debug)]
pub(crate) struct Phase {
    /// What happened.
    pub name: &'static str,
    /// The node the fault hit.
    pub node: Option<String>,
    /// When the fault was injected.
    pub start: Instant,
    /// When the next phase's fault was injected (or the run drained): the
    /// calls that *finished* in `[start, end)` belong to the phase, so a call
    /// cut off by a fault counts against that fault.
    pub end: Instant,
    /// When `db.status()` first showed the node unhealthy.
    pub detected: Option<Instant>,
    /// When the fault was lifted (node started, proxy passing again).
    pub cleared: Option<Instant>,
    /// When the node was healthy again (or, after a promotion, when the new
    /// primary became the write target).
    pub recovered: Option<Instant>,
    /// When `pg_ctl promote -w` was started.
    pub promoting: Option<Instant>,
    /// When `pg_ctl promote -w` returned (the new primary accepts writes).
    pub promoted: Option<Instant>,
    /// The manager's hedge counts when the phase started, and when it ended.
    pub hedges: (HedgeCounts, HedgeCounts),
}

impl Phase {
    /// A phase starting now.
    pub(crate) fn new(name: &'static str, node: Option<String>, db: &DatabaseManager) -> Self {
        let now = Instant::now();
        let hedges = db.status().hedging;
        Self {
            name,
            node,
            start: now,
            end: now,
            detected: None,
            cleared: None,
            recovered: None,
            promoting: None,
            promoted: None,
            hedges: (hedges, hedges),
        }
    }

    /// From the fault's injection to its lifting (the node back, or the
    /// new primary the write target); the whole phase for the baseline.
    fn fault_window(&self) -> (Instant, Instant) {
        let lifted = self.cleared.or(self.recovered).unwrap_or(self.end);
        (self.start, lifted.min(self.end))
    }

    /// Hedges sent, won, refused in this phase.
    fn hedges(&self) -> (u64, u64, u64) {
        let (start, end) = self.hedges;
        (
            end.sent - start.sent,
            end.won - start.won,
            end.refused - start.refused,
        )
    }

    /// Connections of losing hedges (and other dropped statements) kept and
    /// discarded (a reconnect each) in this phase.
    fn losers(&self) -> (u64, u64) {
        let (start, end) = self.hedges;
        (
            end.connections_kept - start.connections_kept,
            end.connections_discarded - start.connections_discarded,
        )
    }

    fn contains(&self, record: &Record) -> bool {
        record.end() >= self.start && record.end() < self.end
    }
}

/// Calls at least this slow are counted separately.
const SLOW: Duration = Duration::from_millis(100);

/// Topology events as they arrive, with their arrival time.
#[derive(Debug)]
pub(crate) struct EventLog(Arc<Mutex<Vec<(Instant, Event)>>>);

impl EventLog {
    /// Subscribes now and records every event from here on.
    pub(crate) fn start(db: &DatabaseManager) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut receiver = db.subscribe();
        let sink = Arc::clone(&events);
        tokio::spawn(async move {
            while let Ok(event) = receiver.recv().await {
                lock(&sink).push((Instant::now(), event));
            }
        });
        Self(events)
    }

    /// Every event so far.
    pub(crate) fn take(&self) -> Vec<(Instant, Event)> {
        lock(&self.0).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends each phase where the next one starts, and the last at `drained`
/// (with the hedge counts `last`).
pub(crate) fn close_phases(phases: &mut [Phase], drained: Instant, last: HedgeCounts) {
    let ends: Vec<(Instant, HedgeCounts)> = phases
        .iter()
        .skip(1)
        .map(|p| (p.start, p.hedges.0))
        .chain([(drained, last)])
        .collect();
    for (phase, (end, hedges)) in phases.iter_mut().zip(ends) {
        phase.end = end;
        phase.hedges.1 = hedges;
    }
}

/// One fault in one run, for the side-by-side table.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    name: &'static str,
    /// Reads that finished in the phase, and those that failed.
    reads: usize,
    failed: usize,
    /// Reads issued during the fault window: p50, p99, max.
    window: (Duration, Duration, Duration),
    /// Hedges sent, won, refused.
    hedges: (u64, u64, u64),
}

/// Each phase's summary.
pub(crate) fn summarize(phases: &[Phase], records: &[Record]) -> Vec<Summary> {
    phases
        .iter()
        .map(|phase| {
            let reads: Vec<&Record> = records
                .iter()
                .filter(|r| r.kind == Kind::Read && phase.contains(r))
                .collect();
            let (from, to) = phase.fault_window();
            let mut latencies = Latencies::default();
            for record in records
                .iter()
                .filter(|r| r.kind == Kind::Read && r.start >= from && r.start < to)
            {
                latencies.record(record.latency);
            }
            Summary {
                name: phase.name,
                reads: reads.len(),
                failed: reads.iter().filter(|r| r.failure.is_some()).count(),
                window: (
                    latencies.quantile(0.5),
                    latencies.quantile(0.99),
                    latencies.quantile(1.0),
                ),
                hedges: phase.hedges(),
            }
        })
        .collect()
}

/// Both runs, fault by fault, and the hedging goals.
pub(crate) fn print_side_by_side(runs: &[(bool, Vec<Summary>)]) {
    println!("\n== hedged reads on and off, same command, one fresh cluster each");
    println!(
        "{:<36} {:>7} {:>6} {:>7} {:>9} {:>9} {:>9}  {:>16}",
        "fault (reads in the fault window)",
        "hedging",
        "reads",
        "failed",
        "p50 ms",
        "p99 ms",
        "max ms",
        "hedges sent/won/refused"
    );
    let phases = runs.first().map_or(0, |(_, run)| run.len());
    for index in 0..phases {
        for (hedging, run) in runs {
            let Some(row) = run.get(index) else { continue };
            let (p50, p99, max) = row.window;
            let (sent, won, refused) = row.hedges;
            println!(
                "{:<36} {:>7} {:>6} {:>7} {:>9} {:>9} {:>9}  {:>16}",
                row.name,
                if *hedging { "on" } else { "off" },
                row.reads,
                row.failed,
                millis(p50),
                millis(p99),
                millis(max),
                format!("{sent}/{won}/{refused}")
            );
        }
    }
    println!("\ngoals with hedging on:");
    for (hedging, run) in runs.iter().filter(|(hedging, _)| *hedging) {
        let _ = hedging;
        let (Some(baseline), Some(hole)) = (
            run.iter().find(|s| s.name.starts_with("baseline")),
            run.iter().find(|s| s.name.contains("black-holed")),
        ) else {
            continue;
        };
        let ratio = hole.window.1.as_secs_f64() / baseline.window.1.as_secs_f64().max(1e-9);
        println!(
            "  black hole: failed reads {} (goal 0); read p99 during the fault {} ms = {ratio:.2}× the \
             no-fault p99 {} ms (goal ≤ 2×)",
            hole.failed,
            millis(hole.window.1),
            millis(baseline.window.1)
        );
    }
    for name in ["replica stopped", "primary stopped"] {
        let row = |on: bool| {
            runs.iter()
                .find(|(hedging, _)| *hedging == on)
                .and_then(|(_, run)| run.iter().find(|s| s.name.starts_with(name)))
        };
        if let (Some(on), Some(off)) = (row(true), row(false)) {
            println!(
                "  {name}: failed reads {} on vs {} off; p99 {} vs {} ms (goal: unchanged or better)",
                on.failed,
                off.failed,
                millis(on.window.1),
                millis(off.window.1)
            );
        }
    }
}

/// Prints one section per phase and a summary against the goals.
pub(crate) fn print(phases: &[Phase], records: &[Record], events: &[(Instant, Event)]) {
    for (number, phase) in phases.iter().enumerate() {
        print_phase(number, phase, records, events);
    }
    print_goals(phases, records);
}

fn print_phase(number: usize, phase: &Phase, records: &[Record], events: &[(Instant, Event)]) {
    let since = |at: Instant| at.saturating_duration_since(phase.start);
    let node = phase.node.as_deref().unwrap_or("-");
    println!(
        "\n== ({number}) {} [{node}], {:.1?}",
        phase.name,
        phase.end - phase.start
    );
    if phase.node.is_some() {
        println!(
            "  detected (unhealthy in status): {}",
            after(phase.detected.map(since))
        );
    }
    if let Some(cleared) = phase.cleared {
        let back = phase
            .recovered
            .map(|at| at.saturating_duration_since(cleared));
        println!(
            "  healthy again after the fault was lifted: {}",
            after(back)
        );
    }
    if let (Some(promoting), Some(promoted)) = (phase.promoting, phase.promoted) {
        let target = phase
            .recovered
            .map(|at| at.saturating_duration_since(promoted));
        println!(
            "  promote started at +{}, returned at +{}; write target switched {} after it returned",
            ms(since(promoting)),
            ms(since(promoted)),
            after(target)
        );
        let first = first_write_after(records, promoted);
        println!("  first successful write after promotion: {}", after(first));
    }
    let (sent, won, refused) = phase.hedges();
    let (kept, discarded) = phase.losers();
    println!(
        "  hedges: {sent} sent, {won} won, {refused} refused by the budget; \
         losers' connections {kept} kept, {discarded} discarded (reconnects)"
    );
    let inside: Vec<&Record> = records.iter().filter(|r| phase.contains(r)).collect();
    for kind in [Kind::Read, Kind::Write] {
        print_calls(kind, &inside, phase.start, phase.detected);
    }
    for (at, event) in events
        .iter()
        .filter(|(at, _)| *at >= phase.start && *at < phase.end)
    {
        println!("  event +{}: {}", ms(since(*at)), describe(event));
    }
}

fn print_calls(kind: Kind, records: &[&Record], phase_start: Instant, detected: Option<Instant>) {
    let since = |at: Instant| ms(at.saturating_duration_since(phase_start));
    let mut calls: Vec<&Record> = records.iter().copied().filter(|r| r.kind == kind).collect();
    calls.sort_by_key(|call| call.start);
    let mut latencies = Latencies::default();
    // Per error kind: how many, and the first one issued.
    let mut failures = BTreeMap::<&str, (usize, &Record)>::new();
    for call in &calls {
        latencies.record(call.latency);
        if let Some(failure) = &call.failure {
            failures.entry(failure).or_insert((0, call)).0 += 1;
        }
    }
    let failed: usize = failures.values().map(|(count, _)| count).sum();
    let after_detection = detected.map(|at| {
        calls
            .iter()
            .filter(|call| call.start >= at && call.failure.is_some())
            .count()
    });
    let label = match kind {
        Kind::Read => "reads ",
        Kind::Write => "writes",
    };
    println!(
        "  {label}: {:>5} done, {:>4} failed{}, p50 {} ms, p99 {} ms, max {} ms",
        calls.len(),
        failed,
        after_detection.map_or_else(String::new, |n| format!(" ({n} after detection)")),
        millis(latencies.quantile(0.5)),
        millis(latencies.quantile(0.99)),
        millis(latencies.quantile(1.0)),
    );
    for (failure, (count, first)) in failures {
        println!(
            "      {count:>4} × {failure}; first issued +{} ms: {}",
            since(first.start),
            first.detail.as_deref().unwrap_or_default()
        );
    }
    if std::env::var_os("BENCH_FAILURES").is_some() {
        for call in calls.iter().filter(|call| call.failure.is_some()) {
            println!(
                "      failed: issued +{} ms, after {} ms: {}",
                since(call.start),
                millis(call.latency),
                call.detail.as_deref().unwrap_or_default()
            );
        }
    }
    let mut served = BTreeMap::<&str, usize>::new();
    for node in calls.iter().filter_map(|call| call.served_by.as_deref()) {
        *served.entry(node).or_default() += 1;
    }
    if !served.is_empty() {
        let spread: Vec<String> = served.iter().map(|(n, c)| format!("{n}={c}")).collect();
        println!("      served by: {}", spread.join(" "));
    }
    let slow: Vec<&&Record> = calls.iter().filter(|call| call.latency >= SLOW).collect();
    if !slow.is_empty() {
        let first = slow
            .iter()
            .map(|call| call.start)
            .min()
            .unwrap_or(phase_start);
        let last = slow
            .iter()
            .map(|call| call.start)
            .max()
            .unwrap_or(phase_start);
        let ok = slow.iter().filter(|call| call.failure.is_none()).count();
        println!(
            "      {} took over {} ms ({ok} of them succeeded), issued from +{} to +{} ms",
            slow.len(),
            SLOW.as_millis(),
            since(first),
            since(last)
        );
    }
    if let Some((from, gap)) = longest_gap(&calls) {
        println!(
            "      longest gap between successes: {} ms, from +{} ms",
            ms(gap),
            since(from)
        );
    }
    if let Some(slowest) = calls.iter().max_by_key(|call| call.latency) {
        println!(
            "      slowest: issued +{} ms, took {} ms, {}",
            since(slowest.start),
            millis(slowest.latency),
            slowest.failure.as_deref().unwrap_or("ok")
        );
    }
}

/// The longest time between two consecutive successful completions, and
/// when it began.
fn longest_gap(calls: &[&Record]) -> Option<(Instant, Duration)> {
    let mut ends: Vec<Instant> = calls
        .iter()
        .filter(|call| call.failure.is_none())
        .map(|call| call.end())
        .collect();
    ends.sort();
    ends.windows(2)
        .map(|pair| (pair[0], pair[1] - pair[0]))
        .max_by_key(|(_, gap)| *gap)
}

/// The first write that succeeded after `promoted`, as the time from the
/// promotion to its completion.
fn first_write_after(records: &[Record], promoted: Instant) -> Option<Duration> {
    records
        .iter()
        .filter(|r| r.kind == Kind::Write && r.failure.is_none() && r.end() >= promoted)
        .map(|r| r.end() - promoted)
        .min()
}

fn print_goals(phases: &[Phase], records: &[Record]) {
    println!("\ngoals:");
    if let Some(stopped) = phases
        .iter()
        .find(|p| p.name.starts_with("replica stopped"))
    {
        let failed = stopped.detected.map(|at| {
            records
                .iter()
                .filter(|r| r.kind == Kind::Read && stopped.contains(r) && r.start >= at)
                .filter(|r| r.failure.is_some())
                .count()
        });
        println!(
            "  replica stopped: failed reads once detected = {} (goal 0)",
            failed.map_or("not detected".to_owned(), |n| n.to_string())
        );
    }
    if let Some(promoted) = phases.iter().find_map(|p| p.promoted) {
        println!(
            "  first successful write after promotion = {} (goal ≤ 20 ms)",
            after(first_write_after(records, promoted))
        );
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::PrimaryChanged { from, to } => format!("primary changed {from:?} -> {to:?}"),
        Event::NodeDown { node, error } => format!("{node} down ({error})"),
        Event::NodeUp { node } => format!("{node} up"),
        other => format!("{other:?}"),
    }
}

fn after(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "never (within the wait limit)".to_owned(),
        |d| format!("{} ms", ms(d)),
    )
}

fn ms(duration: Duration) -> String {
    format!("{:.0}", duration.as_secs_f64() * 1000.0)
}
