//! No panic or abort on any configuration that deserializes (or that code
//! builds: the builder takes any `Duration`): 10,000 seeded configurations
//! built from each field's extremes are serialized and deserialized (when
//! humantime can write the durations back), validated and — when valid —
//! run: a manager is built against nodes nobody listens on, and reads,
//! writes, a transaction, status and close are called. Errors are expected;
//! panics are failures.

use std::time::Duration;

use crate::support::dead_port;
use pgrouter::config::NodeConfig;
use pgrouter::config::StatementMode;
use pgrouter::Config;
use pgrouter::DatabaseManager;
use pgrouter::ReadStrategy;
use pgrouter::Role;

const CASES: usize = 10_000;

/// Durations at and around every limit a field has.
fn duration(rng: &mut fastrand::Rng) -> Duration {
    const CHOICES: [Duration; 15] = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
        Duration::from_millis(1),
        Duration::from_millis(999),
        Duration::from_secs(1),
        Duration::from_secs(5),
        Duration::from_secs(32_767),
        Duration::from_secs(32_768),
        Duration::from_millis(i32::MAX as u64),
        Duration::from_millis(1 << 31),
        Duration::from_secs(u32::MAX as u64),
        Duration::from_secs(u64::MAX / 1_000_000_000),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ];
    CHOICES[rng.usize(..CHOICES.len())]
}

fn count(rng: &mut fastrand::Rng) -> u64 {
    const CHOICES: [u64; 9] = [
        0,
        1,
        2,
        16,
        10_000,
        10_001,
        i32::MAX as u64,
        u32::MAX as u64,
        u64::MAX,
    ];
    CHOICES[rng.usize(..CHOICES.len())]
}

fn text(rng: &mut fastrand::Rng) -> String {
    let choices = [
        "",
        " ",
        "a",
        "eu-west-1",
        "ünïcødé",
        "x\0y",
        &"r".repeat(300),
    ];
    choices[rng.usize(..choices.len())].to_owned()
}

fn url(rng: &mut fastrand::Rng, port: u16) -> String {
    let choices = [
        format!("host=127.0.0.1 port={port} user=app password=s3cret dbname=db"),
        format!("postgres://app:s3cret@127.0.0.1:{port}/db"),
        "postgres://app:s3cret@127.0.0.1:notaport/db".to_owned(),
        "host=127.0.0.1 port=99999999".to_owned(),
        "host='unterminated".to_owned(),
        String::new(),
        "postgres://".to_owned(),
        format!("host=127.0.0.1 port={port} connect_timeout=0"),
        format!("host=127.0.0.1 port={port} sslmode=require"),
    ];
    choices[rng.usize(..choices.len())].clone()
}

fn config(rng: &mut fastrand::Rng, port: u16) -> Config {
    let nodes = (0..rng.usize(0..=3).max(rng.usize(1..3)))
        .map(|index| {
            let role = if index == 0 || rng.u8(..8) == 0 {
                Role::Primary
            } else {
                Role::Replica
            };
            let odd = rng.u8(..8) == 0;
            let name = if odd { text(rng) } else { format!("n{index}") };
            let region = if odd { text(rng) } else { "r".to_owned() };
            let url = if rng.u8(..4) == 0 {
                url(rng, port)
            } else {
                format!("host=127.0.0.1 port={port} user=app password=s3cret")
            };
            NodeConfig::new(name, region, url, role)
        })
        .collect();
    let mut c = Config::new(nodes);
    if rng.u8(..4) == 0 {
        c.local_region = text(rng);
    }
    if rng.u8(..4) == 0 {
        c.read_strategy = ReadStrategy::ALL[rng.usize(..ReadStrategy::ALL.len())];
    }
    if rng.u8(..4) == 0 {
        c.deadline = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.max_staleness = rng.bool().then(|| duration(rng));
    }
    if rng.u8(..4) == 0 {
        c.write_hold = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.nearest.window = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.nearest.preferred_regions = (0..rng.usize(0..3)).map(|_| text(rng)).collect();
    }
    if rng.u8(..4) == 0 {
        c.pool.max_size = count(rng).min(usize::MAX as u64) as usize;
    }
    if rng.u8(..4) == 0 {
        c.pool.wait_timeout = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.pool.create_timeout = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.pool.recycle_timeout = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.pool.verify_idle_after = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.pool.connect_timeout = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.pool.keepalive_idle = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.pool.tcp_user_timeout = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.tls.enabled = rng.u8(..8) == 0;
    }
    if rng.u8(..4) == 0 {
        c.tls.ca_file = rng.bool().then(|| "/nonexistent/ca.pem".into());
    }
    if rng.u8(..4) == 0 {
        c.health.interval = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.health.probe_timeout = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.health.recovery_initial = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.health.recovery_max = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.health.fall = count(rng).min(u32::MAX as u64) as u32;
    }
    if rng.u8(..4) == 0 {
        c.health.rise = count(rng).min(u32::MAX as u64) as u32;
    }
    if rng.u8(..4) == 0 {
        c.retry.max_retries = count(rng).min(usize::MAX as u64) as usize;
    }
    if rng.u8(..4) == 0 {
        c.retry.min_delay = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.retry.max_delay = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.retry.jitter = rng.bool();
    }
    if rng.u8(..4) == 0 {
        c.hedging.enabled = rng.bool();
    }
    if rng.u8(..4) == 0 {
        c.hedging.delay = rng.bool().then(|| duration(rng));
    }
    if rng.u8(..4) == 0 {
        c.hedging.min_delay = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.hedging.budget_percent = count(rng).min(u32::MAX as u64) as u32;
    }
    if rng.u8(..4) == 0 {
        c.hedging.budget_per_second = count(rng).min(u32::MAX as u64) as u32;
    }
    if rng.u8(..4) == 0 {
        c.hedging.budget_burst = count(rng).min(u32::MAX as u64) as u32;
    }
    if rng.u8(..4) == 0 {
        c.outliers.enabled = rng.bool();
    }
    if rng.u8(..4) == 0 {
        c.outliers.silence = duration(rng);
    }
    if rng.u8(..4) == 0 {
        c.readiness.window = duration(rng);
    }
    if rng.u8(..4) == 0 {
        let ratios = [0.0, 0.5, 1.0, -1.0, 2.0, f64::MIN_POSITIVE, f64::MAX];
        c.readiness.max_failure_ratio = ratios[rng.usize(..ratios.len())];
    }
    if rng.u8(..4) == 0 {
        c.readiness.min_calls = count(rng).min(u32::MAX as u64) as u32;
    }
    if rng.u8(..4) == 0 {
        c.statement_mode = if rng.bool() {
            StatementMode::Unnamed
        } else {
            StatementMode::Prepared
        };
    }
    if rng.u8(..4) == 0 {
        c.record_query_text = rng.bool();
    }
    c
}

/// Builds a manager from `config` and calls everything once, each call
/// with a short per-call deadline (writes hold for a primary up to it).
async fn exercise(config: Config) {
    let Ok(db) = DatabaseManager::new(config).await else {
        return;
    };
    let short = Duration::from_millis(2);
    let _ = db.read().deadline(short).query("SELECT 1", &[]).await;
    let _ = db
        .read()
        .deadline(short)
        .max_staleness(Duration::from_secs(1))
        .query_opt("SELECT 1", &[])
        .await;
    let _ = db.write().deadline(short).execute("SELECT 1", &[]).await;
    let _ = db
        .write()
        .deadline(short)
        .transaction(|tx| Box::pin(async move { tx.execute("SELECT 1", &[]).await }))
        .await;
    let _ = db.read_pool();
    let _ = db.write_pool();
    let status = db.status();
    let _ = (status.can_write(), status.can_read(), format!("{db:?}"));
    let _ = serde_json::to_string(&status).unwrap();
    let _ = serde_json::to_string(&db.readiness()).unwrap();
    db.close().await;
}

#[test]
fn no_configuration_that_deserializes_panics() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = dead_port();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let (mut deserialized, mut valid) = (0, 0);
    for case in 0..CASES {
        let generated = config(&mut rng, port);
        let json = serde_json::to_string(&generated).unwrap();
        let config = match serde_json::from_str::<Config>(&json) {
            Ok(config) => {
                deserialized += 1;
                config
            }
            Err(_) => generated,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "case {case}: {shown}");
        match config.validate() {
            Ok(()) => {
                valid += 1;
                runtime.block_on(exercise(config));
            }
            Err(error) => {
                let message = error.to_string();
                assert!(!message.contains("s3cret"), "case {case}: {message}");
            }
        }
    }
    eprintln!("{CASES} cases: {deserialized} round-tripped through JSON, {valid} valid and run");
    assert!(
        deserialized > CASES / 2 && valid > 100,
        "{deserialized} / {valid}"
    );
}
