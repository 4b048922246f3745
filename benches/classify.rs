//! Error classification: a server error on a sent statement, classified as
//! an attempt classifies it, and `Error::retry_decision`, as the retry loops
//! consult it; and the scan that tells a statement sent as a read that can
//! write (no server needed).
//!
//! ```text
//! cargo bench --bench classify
//! ```

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgrouter::bench::{retry_after_server_error, statement_writes};
use pgrouter::tokio_postgres::error::SqlState;
use pgrouter::Error;

/// Conflicts, topology changes and permanent errors, as a mix.
const CODES: [&str; 16] = [
    "23505", "40001", "57P01", "42601", "23503", "40P01", "57P02", "42501", "23514", "25006",
    "57P03", "42P01", "23502", "22012", "22P02", "57014",
];

fn sqlstates(c: &mut Criterion) {
    let table: Vec<SqlState> = CODES.iter().map(|code| SqlState::from_code(code)).collect();
    let mut group = c.benchmark_group("classify_server_error");
    group.throughput(Throughput::Elements(table.len() as u64));
    group.bench_function("16-sqlstates", |b| {
        b.iter(|| {
            table
                .iter()
                .filter(|code| retry_after_server_error(black_box(code)))
                .count()
        })
    });
    group.throughput(Throughput::Elements(1));
    for code in ["23505", "40001", "57P01", "42601"] {
        let state = SqlState::from_code(code);
        group.bench_function(code, |b| {
            b.iter(|| retry_after_server_error(black_box(&state)))
        });
    }
    group.finish();
}

fn retry_decisions(c: &mut Criterion) {
    let config = Error::from(pgrouter::config::ConfigError::NoNodes);
    let aborted = Error::aborted("business rule");
    let mut group = c.benchmark_group("retry_hint");
    group.bench_function("config", |b| b.iter(|| black_box(&config).retry_hint()));
    group.bench_function("aborted", |b| b.iter(|| black_box(&aborted).retry_hint()));
    group.finish();
}

fn statements(c: &mut Criterion) {
    let statements = [
        ("select-1", "SELECT 1"),
        (
            "select-by-id",
            "SELECT id, name, email FROM users WHERE id = $1",
        ),
        (
            "select-join",
            "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
             WHERE o.created_at > $1 AND c.region = 'eu' ORDER BY o.created_at DESC LIMIT 50",
        ),
        ("insert-returning", "INSERT INTO t VALUES (1) RETURNING id"),
    ];
    let mut group = c.benchmark_group("statement_writes");
    for (name, sql) in statements {
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| b.iter(|| statement_writes(black_box(sql))));
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
    targets = sqlstates, retry_decisions, statements
}
criterion_main!(benches);
