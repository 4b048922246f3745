//! What a test does when something it needs is missing from the machine
//! (Docker and an image, `pgbouncer`): it is skipped, and says so, unless
//! the environment requires that thing (as CI does), and then it fails.

use std::fmt::Display;
use std::io::Write as _;

/// `Ok` when `found` is; otherwise prints `skipped: <test>: <reason> (set
/// <require_env>=require to fail instead)` on stderr and returns `Err`.
///
/// The line goes to the process's stderr itself, not through `eprintln!`,
/// which the test harness captures and shows only for failing tests: a
/// skip is seen in a plain `cargo test`. `<test>` is the current thread's
/// name, which libtest sets to the running test's.
///
/// # Panics
///
/// When `found` is an error and `require_env` is `require`, so that the
/// test never passes by skipping.
pub(crate) fn or_skip<T, E: Display>(found: Result<T, E>, require_env: &str) -> Option<T> {
    let reason = match found {
        Ok(value) => return Some(value),
        Err(reason) => reason,
    };
    if std::env::var(require_env).as_deref() == Ok("require") {
        panic!("{require_env}=require, but: {reason}");
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipped: {test}: {reason} (set {require_env}=require to fail instead)"
    );
    None
}
