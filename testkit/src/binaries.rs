//! Finding the PostgreSQL server binaries and running them.
//!
//! PostgreSQL refuses to run as root, so when the effective uid is 0 every
//! server command is run as the `postgres` user through `runuser`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestkitError;

/// Environment variable naming the directory that holds `initdb`, `pg_ctl`, ...
pub(crate) const BINDIR_ENV: &str = "PGROUTER_PG_BINDIR";

/// libpq environment variables that could redirect our commands elsewhere.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGDATA",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
];

/// How many bytes of a node's log file are quoted in errors.
const LOG_TAIL_BYTES: u64 = 4096;

/// A directory of PostgreSQL server binaries and the user to run them as.
#[derive(Debug, Clone)]
pub(crate) struct PgBin {
    dir: PathBuf,
    /// `(uid, gid)` of the `postgres` user when we run as root.
    run_as: Option<(u32, u32)>,
}

impl PgBin {
    /// Finds the binaries (see [`find_bindir`]) and decides who runs them.
    pub(crate) fn discover(override_dir: Option<&Path>) -> Result<Self, TestkitError> {
        let dir = find_bindir(override_dir)?;
        let run_as = if effective_uid_is_root() {
            Some((postgres_id("-u")?, postgres_id("-g")?))
        } else {
            None
        };
        tracing::debug!(bindir = %dir.display(), as_postgres = run_as.is_some(), "using PostgreSQL binaries");
        Ok(Self { dir, run_as })
    }

    /// `(uid, gid)` that must own the data directories, when we run as root.
    pub(crate) fn owner(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// A command for `program` from the binaries directory, wrapped in
    /// `runuser -u postgres --` when we are root, with a neutral environment.
    pub(crate) fn command(&self, program: &str) -> Command {
        let path = self.dir.join(program);
        let mut cmd = if self.run_as.is_some() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        };
        // The postgres user may not be allowed into the caller's directory.
        cmd.current_dir("/").stdin(Stdio::null()).env("LC_ALL", "C");
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        cmd
    }
}

/// Runs `cmd` to completion and returns its standard output.
///
/// On failure the error carries the command's standard error and, when `log`
/// is given, the tail of that log file (read from byte `log_from` on).
pub(crate) fn run(cmd: &mut Command, log: Option<(&Path, u64)>) -> Result<String, TestkitError> {
    let output = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| command_error(cmd, format!("could not run: {e}"), String::new(), None))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = stdout.trim().to_owned();
    }
    Err(command_error(cmd, output.status.to_string(), stderr, log))
}

/// Builds a [`TestkitError::Command`], appending the log tail if any.
pub(crate) fn command_error(
    cmd: &Command,
    status: String,
    mut stderr: String,
    log: Option<(&Path, u64)>,
) -> TestkitError {
    if let Some((path, from)) = log {
        let tail = log_tail(path, from);
        if !tail.trim().is_empty() {
            stderr.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                path.display(),
                tail.trim_end()
            ));
        }
    }
    TestkitError::Command {
        command: describe(cmd),
        status,
        stderr,
    }
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The current length of a file (0 if it does not exist).
pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// At most the last [`LOG_TAIL_BYTES`] of `path` written after byte `from`.
pub(crate) fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(LOG_TAIL_BYTES)).min(len);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    // Drop a partial first line when we started in the middle of the file.
    match (start > from, text.split_once('\n')) {
        (true, Some((_, rest))) => rest.to_owned(),
        _ => text,
    }
}

/// `(uid, gid)` of the `postgres` user when we run as root (servers and
/// PgBouncer refuse to run as root), else `None`.
pub(crate) fn run_as() -> Result<Option<(u32, u32)>, TestkitError> {
    match effective_uid_is_root() {
        true => Ok(Some((postgres_id("-u")?, postgres_id("-g")?))),
        false => Ok(None),
    }
}

/// Whether the effective uid is 0, from `/proc/self/status` or `id -u`.
fn effective_uid_is_root() -> bool {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        });
    let euid = from_proc.or_else(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    euid.as_deref() == Some("0")
}

/// The uid (`-u`) or gid (`-g`) of the `postgres` user.
fn postgres_id(flag: &str) -> Result<u32, TestkitError> {
    let mut cmd = Command::new("id");
    cmd.args([flag, "postgres"]);
    let out = run(&mut cmd, None).map_err(|e| match e {
        TestkitError::Command {
            command,
            status,
            stderr,
        } => TestkitError::Command {
            command,
            status,
            stderr: format!(
                "{stderr} (running as root: PostgreSQL refuses to run as root, so a \
                 `postgres` user is needed; the PostgreSQL server packages create it)"
            ),
        },
        other => other,
    })?;
    out.trim().parse().map_err(|_| TestkitError::Command {
        command: describe(&cmd),
        status: "exit status: 0".to_owned(),
        stderr: format!("unexpected output {:?}", out.trim()),
    })
}

/// Whether `dir` holds the server binaries we need.
fn is_bindir(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "pg_basebackup"]
        .iter()
        .all(|program| dir.join(program).is_file())
}

/// Finds the binaries directory, in this order: the builder override, the
/// `PGROUTER_PG_BINDIR` environment variable, `pg_config --bindir`, the
/// directory of `initdb` on `PATH` (symlinks resolved), and the highest
/// versioned `/usr/lib/postgresql/*/bin`. An explicit override that does not
/// hold the binaries is an error rather than being skipped.
pub(crate) fn find_bindir(override_dir: Option<&Path>) -> Result<PathBuf, TestkitError> {
    let explicit = override_dir
        .map(|dir| (dir.to_path_buf(), "builder bindir"))
        .or_else(|| std::env::var_os(BINDIR_ENV).map(|dir| (PathBuf::from(dir), BINDIR_ENV)));
    if let Some((dir, source)) = explicit {
        return if is_bindir(&dir) {
            Ok(dir)
        } else {
            Err(TestkitError::BinariesNotFound {
                searched: format!("{} (from {source})", dir.display()),
            })
        };
    }

    let mut searched = Vec::new();
    match Command::new("pg_config").arg("--bindir").output() {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if is_bindir(&dir) {
                return Ok(dir);
            }
            searched.push(format!("`pg_config --bindir` ({})", dir.display()));
        }
        _ => searched.push("`pg_config --bindir` (no pg_config on PATH)".to_owned()),
    }

    if let Some(path) = std::env::var_os("PATH") {
        for entry in std::env::split_paths(&path) {
            let initdb = entry.join("initdb");
            if !initdb.is_file() {
                continue;
            }
            let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(dir) = real.parent().filter(|dir| is_bindir(dir)) {
                return Ok(dir.to_path_buf());
            }
        }
    }
    searched.push("initdb on PATH".to_owned());

    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.into_iter().rev().find(|(_, dir)| is_bindir(dir)) {
        return Ok(dir);
    }
    searched.push(format!("{}/*/bin", root.display()));

    Err(TestkitError::BinariesNotFound {
        searched: searched.join(", "),
    })
}
