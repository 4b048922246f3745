//! The harness both instruction benches share (`instructions.rs`,
//! `spread_instructions.rs`): a counting allocator, callgrind runs of a
//! worker at two query counts, and the per-function table. Each bench
//! includes it with `#[path]` and keeps its own clients and worker.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Default query counts of the two runs whose difference is measured.
pub(crate) const DEFAULT_QUERIES: (u64, u64) = (2_000, 12_000);
/// Rows of the per-function breakdown.
pub(crate) const BREAKDOWN_ROWS: usize = 30;
/// Reads before the measured part of every run.
pub(crate) const WARM_UP: u64 = 200;

/// The system allocator, counting allocations while `COUNTING` is set.
/// The worker is single-threaded (a current-thread runtime), so a global
/// flag counts exactly the measured loop.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn note_allocation() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches
// only atomics, which never allocate.
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

/// The functions whose own instructions a read differ most between the two
/// clients: where pgrouter's extra goes.
pub(crate) fn breakdown(bare: &HashMap<String, u64>, routed: &HashMap<String, u64>, reads: f64) {
    let mut names: Vec<&String> = bare.keys().chain(routed.keys()).collect();
    names.sort();
    names.dedup();
    let per_read = |map: &HashMap<String, u64>, name: &String| {
        map.get(name).copied().unwrap_or(0) as f64 / reads
    };
    let mut rows: Vec<(f64, f64, f64, &String)> = names
        .into_iter()
        .map(|name| {
            let (b, r) = (per_read(bare, name), per_read(routed, name));
            (r - b, b, r, name)
        })
        .filter(|(difference, ..)| difference.abs() >= 40.0)
        .collect();
    rows.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
    println!("\nwhere the difference goes (own instructions a read, |difference| >= 40):");
    println!("{:>8} {:>8} {:>8}  function", "diff", "bare", "pgrouter");
    for (difference, b, r, name) in rows.iter().take(BREAKDOWN_ROWS) {
        let name: String = name.chars().take(110).collect();
        println!("{difference:>+8.0} {b:>8.0} {r:>8.0}  {name}");
    }
    let shown: f64 = rows.iter().take(BREAKDOWN_ROWS).map(|row| row.0).sum();
    println!("{shown:>+8.0}                    (sum of the rows shown)");
}

pub(crate) fn queries() -> (u64, u64) {
    let Ok(value) = std::env::var("BENCH_QUERIES") else {
        return DEFAULT_QUERIES;
    };
    let parsed: Vec<u64> = value
        .split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    match parsed[..] {
        [small, large] if small < large => (small, large),
        _ => panic!("BENCH_QUERIES must be two increasing counts, e.g. 2000,12000"),
    }
}

/// The bench's `main`: with `--worker CLIENT QUERIES URL`, one worker run
/// (`worker`, the client parsed by `parse`); with `--test` (as `cargo test
/// --benches` runs bench binaries), nothing; otherwise the `driver`.
pub(crate) fn dispatch<C>(
    parse: impl Fn(&str) -> Option<C>,
    worker: impl FnOnce(C, u64, &str),
    driver: impl FnOnce(),
) {
    let args: Vec<String> = std::env::args().collect();
    if let Some(position) = args.iter().position(|arg| arg == "--worker") {
        let client = args.get(position + 1).and_then(|arg| parse(arg));
        let queries = args.get(position + 2).and_then(|arg| arg.parse().ok());
        let url = args.get(position + 3);
        match (client, queries, url) {
            (Some(client), Some(queries), Some(url)) => worker(client, queries, url),
            _ => panic!("usage: --worker CLIENT QUERIES CONNECTION_STRING"),
        }
        return;
    }
    if args.iter().any(|arg| arg == "--test") {
        return;
    }
    driver();
}

/// Instructions a read, and each function's own instructions a read (summed
/// over the measured reads).
pub(crate) type Cost = (f64, HashMap<String, u64>);

/// One client's cost a read: its allocations (native runs) and, with
/// `valgrind`, its instructions and each function's own instructions over
/// the reads between the two counts. `args` gives the worker's arguments
/// for a query count.
pub(crate) fn client_cost(
    exe: &Path,
    (small, large): (u64, u64),
    valgrind: bool,
    args: impl Fn(u64) -> Vec<String>,
) -> (Option<Cost>, f64) {
    let allocations = per_query(small, large, |queries| {
        let output = run(Command::new(exe).args(args(queries)));
        field(&output, "allocations")
    });
    // The whole run's instructions a read, and each function's own.
    let profiles = valgrind.then(|| {
        let at_small = callgrind(exe, &args(small));
        let at_large = callgrind(exe, &args(large));
        let instructions = (at_large.total as f64 - at_small.total as f64) / (large - small) as f64;
        let mut functions = at_large.functions;
        for (name, count) in functions.iter_mut() {
            let before = at_small.functions.get(name).copied().unwrap_or(0);
            *count = count.saturating_sub(before);
        }
        (instructions, functions)
    });
    (profiles, allocations)
}

/// The per-query cost from whole-run totals at two query counts.
pub(crate) fn per_query(small: u64, large: u64, mut total: impl FnMut(u64) -> u64) -> f64 {
    let at_small = total(small);
    let at_large = total(large);
    (at_large as f64 - at_small as f64) / (large - small) as f64
}

pub(crate) fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A callgrind run: the whole-process instruction count, and each
/// function's own (exclusive) count.
pub(crate) struct Profile {
    pub(crate) total: u64,
    pub(crate) functions: HashMap<String, u64>,
}

/// The worker's whole-process instruction count under callgrind: `exe`
/// run with `args`.
pub(crate) fn callgrind(exe: &Path, args: &[String]) -> Profile {
    let out = tempfile::NamedTempFile::new().expect("a temporary file");
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.path().display()))
        .arg(exe)
        .args(args);
    let _ = run(&mut command);
    let profile = std::fs::read_to_string(out.path()).expect("callgrind's output file");
    let total = profile
        .lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("a summary line in callgrind's output");
    let annotated = run(Command::new("callgrind_annotate")
        .arg("--threshold=100")
        .arg(out.path()));
    Profile {
        total,
        functions: functions(&annotated),
    }
}

/// Per-function exclusive counts from `callgrind_annotate`'s table: lines
/// such as `1,234 ( 0.5%)  ???:name [object]`.
pub(crate) fn functions(annotated: &str) -> HashMap<String, u64> {
    let mut functions = HashMap::new();
    for line in annotated.lines() {
        let Some((count, rest)) = line.trim_start().split_once(" (") else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        let Some((_, name)) = rest.split_once(")  ") else {
            continue;
        };
        if name.contains("PROGRAM TOTALS") {
            continue;
        }
        // `file:function [object]`: keep the function.
        let name = name.rsplit_once(" [").map_or(name, |(name, _)| name);
        let name = name.split_once(':').map_or(name, |(_, name)| name);
        *functions.entry(name.trim().to_owned()).or_insert(0) += count;
    }
    functions
}

pub(crate) fn run(command: &mut Command) -> String {
    let output = command.output().expect("the worker starts");
    assert!(
        output.status.success(),
        "worker failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the worker prints UTF-8")
}

pub(crate) fn field(output: &str, name: &str) -> u64 {
    output
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix('=')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name}= line in the worker's output: {output}"))
}

/// Warms up, then runs `queries` reads one after another, counting
/// allocations.
pub(crate) async fn measure<F, Fut>(queries: u64, read: F) -> u64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..WARM_UP {
        read().await;
    }
    counted(async {
        for _ in 0..queries {
            read().await;
        }
    })
    .await
}

/// The allocations made while `work` runs (on this thread: tasks it
/// spawns on a current-thread runtime included).
pub(crate) async fn counted(work: impl std::future::Future<Output = ()>) -> u64 {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    work.await;
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed)
}
