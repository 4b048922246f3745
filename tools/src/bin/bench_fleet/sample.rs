//! What each node sees, sampled every 100 ms from a thread of its own (the
//! fleet's 200 monitors keep the bench's runtime busy, which must not delay
//! the samples): sessions opened (`pg_stat_database.sessions`), statements
//! run (`pg_stat_statements` calls, the monitor's and the load's apart),
//! client backends (`pg_stat_activity`), and the CPU time of the node's
//! postmaster and every process it forked (`/proc`, in clock ticks).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// The gap between two samples of one node.
pub(crate) const EVERY: Duration = Duration::from_millis(100);

/// One look at one node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    /// `pg_stat_database.sessions` of the bench's database.
    pub(crate) sessions: i64,
    /// `pg_stat_statements` calls of every statement but the load's and
    /// the sampler's: the monitors' probes.
    pub(crate) monitor_calls: i64,
    /// `pg_stat_statements` calls of the load's statement (`kv`).
    pub(crate) app_calls: i64,
    /// Client backends in `pg_stat_activity`.
    pub(crate) backends: i64,
    /// utime + stime of the postmaster and its children, reaped ones
    /// included; `None` when it could not be read.
    pub(crate) cpu_ticks: Option<u64>,
}

/// The sampler's query. Its alias keeps its own calls out of the counts
/// (`pg_stat_statements` keeps aliases, and replaces constants).
const QUERY: &str = "
SELECT d.sessions AS fleet_sampler_marker,
       (SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements
         WHERE query NOT LIKE '%fleet_sampler_marker%' AND query NOT LIKE '%kv%'),
       (SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements
         WHERE query LIKE '%kv%' AND query NOT LIKE '%fleet_sampler_marker%'),
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int8
  FROM pg_stat_database d WHERE d.datname = current_database()";

/// One node the sampler watches.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) config: tokio_postgres::Config,
    /// `postmaster.pid` of the node's data directory.
    pub(crate) pid_file: PathBuf,
}

/// The sampler's thread and what it recorded, per node.
pub(crate) struct Sampler {
    samples: Arc<Mutex<Vec<Vec<Sample>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `targets` every [`EVERY`].
    pub(crate) fn start(targets: Vec<Target>) -> Self {
        let samples = Arc::new(Mutex::new(vec![Vec::new(); targets.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (Arc::clone(&samples), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            raise_priority();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the sampler");
            runtime.block_on(run(targets, sink, stopped));
        });
        Self {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; every sample, per node.
    pub(crate) fn finish(mut self) -> Vec<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        lock(&self.samples).clone()
    }
}

/// Renices this thread (its own id, from `/proc/thread-self`) to -10, so a
/// box the fleet keeps busy still takes the samples on time; as root only,
/// silently skipped otherwise.
fn raise_priority() {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = link.file_name().and_then(|name| name.to_str()) else {
        return;
    };
    let _ = std::process::Command::new("renice")
        .args(["-n", "-10", "-p", tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

async fn run(targets: Vec<Target>, sink: Arc<Mutex<Vec<Vec<Sample>>>>, stop: Arc<AtomicBool>) {
    let mut clients: Vec<Option<Client>> = targets.iter().map(|_| None).collect();
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (index, target) in targets.iter().enumerate() {
            if clients[index].as_ref().is_none_or(Client::is_closed) {
                clients[index] = connect(&target.config).await;
            }
            let Some(client) = &clients[index] else {
                continue;
            };
            let row =
                match tokio::time::timeout(Duration::from_secs(1), client.query_one(QUERY, &[]))
                    .await
                {
                    Ok(Ok(row)) => row,
                    _ => {
                        clients[index] = None;
                        continue;
                    }
                };
            let sample = Sample {
                at: Instant::now(),
                sessions: row.get(0),
                monitor_calls: row.get(1),
                app_calls: row.get(2),
                backends: row.get(3),
                cpu_ticks: cpu_ticks(&target.pid_file),
            };
            lock(&sink)[index].push(sample);
        }
        next += EVERY;
        tokio::time::sleep_until(next).await;
    }
}

async fn connect(config: &tokio_postgres::Config) -> Option<Client> {
    let connecting = tokio::time::timeout(Duration::from_secs(1), config.connect(NoTls));
    let (client, connection) = connecting.await.ok()?.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100
/// when it cannot be asked).
pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The CPU time, in clock ticks, of the postmaster `pid_file` names and of
/// its children: the postmaster's own utime + stime + cutime + cstime
/// (children it reaped), plus utime + stime of each live child.
fn cpu_ticks(pid_file: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let postmaster: u32 = text.lines().next()?.trim().parse().ok()?;
    let own = stat_fields(postmaster)?;
    let mut total = own.utime + own.stime + own.cutime + own.cstime;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(child) = stat_fields(pid).filter(|s| s.ppid == postmaster) {
            total += child.utime + child.stime;
        }
    }
    Some(total)
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// Fields 4 and 14-17 of `/proc/<pid>/stat` (after the command name, which
/// may hold spaces and parentheses: everything after its last `)`).
fn stat_fields(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}
