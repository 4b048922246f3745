//! The command line, each run's line, and the summary: medians over the
//! rounds per service and window, and the ratios asked for.

use std::time::Duration;

use crate::common::{median, millis};
use crate::load::Window;

/// The windows measured in each run, in order.
pub(crate) const WINDOWS: [&str; 3] = [
    "no fault",
    "after the local replica returns from a black hole",
    "after the local replica restarts",
];

/// A service to load: `NAME=BINARY[,VAR=VALUE...]`.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) binary: String,
    pub(crate) env: Vec<(String, String)>,
}

/// `--compare A/B`: A's figures over B's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compare {
    numerator: usize,
    denominator: usize,
}

/// One service's run in one round.
#[derive(Debug)]
pub(crate) struct Run {
    /// Its index in the services given.
    pub(crate) service: usize,
    pub(crate) round: usize,
    pub(crate) load_average: String,
    /// No fault, after the black hole, after the restart.
    pub(crate) windows: [Window; 3],
    /// While node1 was black-holed, while it was down.
    pub(crate) during: [Window; 2],
}

const USAGE: &str =
    "usage: bench_service --service NAME=BINARY[,VAR=VALUE...] ... [--compare A/B ...]";

/// The services and comparisons on the command line.
pub(crate) fn parse_args(
    args: impl Iterator<Item = String>,
) -> Result<(Vec<Service>, Vec<Compare>), String> {
    let mut services = Vec::new();
    let mut pairs = Vec::new();
    let mut args = args;
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value; {USAGE}"))?;
        match arg.as_str() {
            "--service" => {
                let mut parts = value.split(',');
                let first = parts.next().unwrap_or_default();
                let (name, binary) = first
                    .split_once('=')
                    .ok_or(format!("--service {value:?}: NAME=BINARY; {USAGE}"))?;
                let env = parts
                    .map(|pair| {
                        pair.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .ok_or(format!("--service {value:?}: {pair:?} is not VAR=VALUE"))
                    })
                    .collect::<Result<_, _>>()?;
                services.push(Service {
                    name: name.to_owned(),
                    binary: binary.to_owned(),
                    env,
                });
            }
            "--compare" => {
                let (a, b) = value
                    .split_once('/')
                    .ok_or(format!("--compare {value:?}: A/B; {USAGE}"))?;
                pairs.push((a.to_owned(), b.to_owned()));
            }
            _ => return Err(format!("unknown argument {arg:?}; {USAGE}")),
        }
    }
    if services.is_empty() {
        return Err(USAGE.to_owned());
    }
    let index = |name: &str| {
        services
            .iter()
            .position(|service| service.name == name)
            .ok_or(format!("--compare: no service named {name:?}"))
    };
    let mut compares = Vec::new();
    for (a, b) in &pairs {
        compares.push(Compare {
            numerator: index(a)?,
            denominator: index(b)?,
        });
    }
    if compares.is_empty() {
        compares = (1..services.len())
            .map(|numerator| Compare {
                numerator,
                denominator: 0,
            })
            .collect();
    }
    Ok((services, compares))
}

/// Answers per second in `window` (windows differ by a few percent in
/// length: each ends when the counts of the one before are read).
fn rate(window: &Window) -> f64 {
    window.requests() as f64 / window.elapsed.as_secs_f64().max(1e-9)
}

/// Requests, rate, p50, p99 and errors of one window.
fn cell(window: &Window) -> String {
    let rate = rate(window);
    let cpu = window
        .cpu_per_request()
        .map_or_else(|| "?".to_owned(), |micros| format!("{micros:.0}"));
    let sessions = window
        .sessions
        .map_or_else(|| "?".to_owned(), |count| count.to_string());
    let commits = window.commits.as_ref().map_or_else(
        || "?".to_owned(),
        |commits| {
            let total: i64 = commits.iter().sum();
            let shares: Vec<String> = commits
                .iter()
                .map(|count| format!("{:.0}", *count as f64 * 100.0 / total.max(1) as f64))
                .collect();
            shares.join("/")
        },
    );
    format!(
        "{} ({:.0}/s), p50 {} ms, p99 {} ms, {} err, service CPU {cpu} µs/request, \
         {sessions} new sessions, commits by node {commits} %",
        window.requests(),
        rate,
        millis(window.latencies.quantile(0.5)),
        millis(window.latencies.quantile(0.99)),
        window.errors
    )
}

/// One run's line, as soon as it ends.
pub(crate) fn print_run(round: usize, service: &Service, run: &Run) {
    println!(
        "\nround {round}, {} (load average before: {})",
        service.name, run.load_average
    );
    for (name, window) in WINDOWS.iter().zip(&run.windows) {
        println!("  {name:<50} {}", cell(window));
    }
    for (name, window) in ["while black-holed", "while down and restarting"]
        .iter()
        .zip(&run.during)
    {
        println!(
            "  {name:<50} {} requests in {:.1?}, {} err, {} new sessions",
            window.requests(),
            window.elapsed,
            window.errors,
            window
                .sessions
                .map_or_else(|| "?".to_owned(), |count| count.to_string())
        );
    }
    for window in run.windows.iter().chain(&run.during) {
        for sample in &window.samples {
            println!("    error: {sample}");
        }
    }
}

/// Medians over the rounds of one service's window `w`: requests a second, p50 and
/// p99 in ms, the service's CPU µs per request, new sessions; and the
/// errors summed.
fn medians(runs: &[&Run], w: usize) -> (f64, f64, f64, f64, f64, u64) {
    let pick = |f: &dyn Fn(&Window) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(|run| f(&run.windows[w])).collect();
        median(&mut values)
    };
    (
        pick(&rate),
        pick(&|window| ms(window.latencies.quantile(0.5))),
        pick(&|window| ms(window.latencies.quantile(0.99))),
        pick(&|window| window.cpu_per_request().unwrap_or(f64::NAN)),
        pick(&|window| window.sessions.map_or(f64::NAN, |count| count as f64)),
        runs.iter().map(|run| run.windows[w].errors).sum(),
    )
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The table of medians and the ratios.
pub(crate) fn print_summary(services: &[Service], compares: &[Compare], runs: &[Run]) {
    let of = |service: usize| -> Vec<&Run> {
        runs.iter().filter(|run| run.service == service).collect()
    };
    let rounds = runs.iter().map(|run| run.round + 1).max().unwrap_or(0);
    println!(
        "\n## Medians of {rounds} rounds (requests a second, p50 / p99, the service's CPU \
         time per request, sessions opened; errors summed over the rounds)\n"
    );
    println!("| service | {} |", WINDOWS.join(" | "));
    println!("|---|---|---|---|");
    for (index, service) in services.iter().enumerate() {
        let own = of(index);
        let cells: Vec<String> = (0..WINDOWS.len())
            .map(|w| {
                let (requests, p50, p99, cpu, sessions, errors) = medians(&own, w);
                format!(
                    "{requests:.0}/s, {p50:.2} / {p99:.2} ms, {cpu:.0} µs, {sessions:.0} sess, \
                     {errors} err"
                )
            })
            .collect();
        println!("| {} | {} |", service.name, cells.join(" | "));
    }
    println!("\n## Ratios (medians' ratio; in brackets the range of the per-round ratios)\n");
    println!("| ratio | {} |", WINDOWS.join(" | "));
    println!("|---|---|---|---|");
    for compare in compares {
        let (a, b) = (of(compare.numerator), of(compare.denominator));
        let cells: Vec<String> = (0..WINDOWS.len())
            .map(|w| {
                let (ra, _, pa, ca, _, _) = medians(&a, w);
                let (rb, _, pb, cb, _, _) = medians(&b, w);
                let paired = |f: &dyn Fn(&Window) -> f64| {
                    let ratios: Vec<f64> = a
                        .iter()
                        .filter_map(|x| {
                            let y = b.iter().find(|y| y.round == x.round)?;
                            Some(f(&x.windows[w]) / f(&y.windows[w]))
                        })
                        .collect();
                    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                    let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    format!("{low:.2}–{high:.2}")
                };
                format!(
                    "throughput {:.2}× [{}], p99 {:.2}× [{}], CPU/request {:.2}× [{}]",
                    ra / rb,
                    paired(&rate),
                    pa / pb,
                    paired(&|window| ms(window.latencies.quantile(0.99))),
                    ca / cb,
                    paired(&|window| window.cpu_per_request().unwrap_or(f64::NAN)),
                )
            })
            .collect();
        println!(
            "| {} / {} | {} |",
            services[compare.numerator].name,
            services[compare.denominator].name,
            cells.join(" | ")
        );
    }
}
