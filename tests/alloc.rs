//! The routing hot path allocates nothing: a counting global allocator
//! around 100,000 read-routing decisions per strategy, at 3 and 30 nodes,
//! around error classification, and around a call's span and metrics hooks
//! when no subscriber listens (the default build has no `metrics` feature).
//!
//! Only allocations made by the measuring thread while it measures are
//! counted, so the test harness's other threads cannot disturb the result.

// A global allocator is an `unsafe` trait; each call forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use pgrouter::bench::{retry_after_server_error, RoutingBench};
use pgrouter::tokio_postgres::error::SqlState;
use pgrouter::Error;
use pgrouter::ReadStrategy;

/// Decisions per strategy and topology size.
const DECISIONS: usize = 100_000;

/// The system allocator, counting what the current thread allocates while
/// its `COUNTING` flag is set.
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counting only
// touches const-initialised thread-locals without destructors, which never
// allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// How many allocations `work` made on this thread.
fn allocations_in(work: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|count| count.set(0));
    COUNTING.with(|flag| flag.set(true));
    work();
    COUNTING.with(|flag| flag.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// Every strategy without a staleness bound, then regional-preferred with one.
fn cases() -> Vec<(ReadStrategy, Option<Duration>)> {
    let mut cases: Vec<_> = ReadStrategy::ALL.into_iter().map(|s| (s, None)).collect();
    cases.push((
        ReadStrategy::RegionalPreferred,
        Some(Duration::from_secs(1)),
    ));
    cases
}

#[test]
fn the_allocator_counts_this_threads_allocations() {
    let counted = allocations_in(|| {
        black_box(Box::new(black_box(1u64)));
    });
    assert_eq!(counted, 1);
}

#[test]
fn routing_decisions_allocate_nothing() {
    for size in [3, 30] {
        let bench = RoutingBench::new(size).expect("a valid synthetic topology");
        // A replica beyond the bound: the bounded decision searches.
        let stale = RoutingBench::with_a_stale_replica(size).expect("a valid synthetic topology");
        let bounded = (
            ReadStrategy::RegionalPreferred,
            Some(Duration::from_secs(1)),
        );
        let mut rng = fastrand::Rng::with_seed(11);
        let cases = cases().into_iter().map(|case| (&bench, case));
        for (bench, (strategy, max_staleness)) in cases.chain([(&stale, bounded)]) {
            // Warm-up: arc-swap registers this thread on its first load.
            assert!(bench.pick(strategy, max_staleness, &mut rng).is_some());
            let mut chosen = 0usize;
            let counted = allocations_in(|| {
                for _ in 0..DECISIONS {
                    let pick = bench.pick(black_box(strategy), black_box(max_staleness), &mut rng);
                    chosen += usize::from(pick.is_some());
                }
            });
            assert_eq!(
                chosen, DECISIONS,
                "{strategy} at {size} nodes found no node"
            );
            assert_eq!(
                counted, 0,
                "{strategy} (max_staleness {max_staleness:?}) at {size} nodes: \
                 {counted} allocations in {DECISIONS} decisions"
            );
        }
    }
}

#[test]
fn error_classification_allocates_nothing() {
    let codes: Vec<SqlState> = ["23505", "40001", "57P01", "42601", "25006", "40P01"]
        .iter()
        .map(|code| SqlState::from_code(code))
        .collect();
    let no_node = Error::from(pgrouter::config::ConfigError::NoNodes);
    let aborted = Error::aborted("business rule");
    let counted = allocations_in(|| {
        for _ in 0..DECISIONS / codes.len() {
            for code in &codes {
                black_box(retry_after_server_error(black_box(code)));
            }
            black_box(black_box(&no_node).retry_hint());
            black_box(black_box(&aborted).retry_hint());
        }
    });
    assert_eq!(counted, 0, "{counted} allocations while classifying");
}

#[test]
fn a_calls_span_and_hooks_allocate_nothing_without_a_subscriber() {
    let bench = RoutingBench::new(3).expect("a valid synthetic topology");
    // Warm-up: the span's callsite registers its interest once.
    bench.observe_read(ReadStrategy::RegionalPreferred, "SELECT 1");
    let counted = allocations_in(|| {
        for _ in 0..DECISIONS {
            bench.observe_read(
                black_box(ReadStrategy::RegionalPreferred),
                black_box("SELECT 1"),
            );
        }
    });
    assert_eq!(
        counted, 0,
        "{counted} allocations in {DECISIONS} observed calls"
    );
}
