//! [`PoolSettings`]: one deadpool-postgres pool per node, and the TCP
//! settings of its connections.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::ConfigError;

/// The largest `TCP_KEEPIDLE` Linux accepts.
const MAX_KEEPALIVE_IDLE: Duration = Duration::from_secs(32_767);
/// The largest `TCP_USER_TIMEOUT` Linux accepts (`i32::MAX` ms).
const MAX_TCP_USER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// Connections per node: deadpool sets aside a slot for each up front.
pub(crate) const MAX_POOL_SIZE: usize = 10_000;

/// Connection pool settings (one deadpool-postgres pool per node).
///
/// Every wait is bounded: deadpool's own timeouts default to none, and a pool
/// pointed at a silent server would otherwise hang for ever.
///
/// ```
/// use pgrouter::config::PoolSettings;
///
/// let mut pool = PoolSettings::default();
/// pool.max_size = 8;
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
// Not `Copy`: settings may gain fields that are not (a list, a name).
#[allow(missing_copy_implementations)]
pub struct PoolSettings {
    /// Connections per node, 1 to 10000. Default: 16.
    pub max_size: usize,
    /// How long a checkout waits for a free connection. Default: 2 s.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// How long creating a connection (TCP, TLS, startup) may take. Default: 3 s.
    #[serde(with = "humantime_serde")]
    pub create_timeout: Duration,
    /// How long checking an idle connection before reuse may take (a
    /// round trip; catches a peer that went silent). Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub recycle_timeout: Duration,
    /// A connection not handed out for this long is checked with a round
    /// trip (bounded by `recycle_timeout`) before reuse; busier connections
    /// are reused at once, and a silent peer behind one of them is bounded
    /// by the call deadline instead (which then drops the node's idle
    /// connections). Zero checks every checkout, as deadpool's `Verified`
    /// recycling does, at one extra round trip per call. Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub verify_idle_after: Duration,
    /// TCP connect timeout, unless the connection string sets one. Default: 3 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle time before TCP keepalives start, 1 s to 32767 s (whole
    /// seconds; the kernel's range). Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub keepalive_idle: Duration,
    /// Linux `TCP_USER_TIMEOUT`: unacknowledged data for this long closes the
    /// connection; at most 2147483647 ms (the kernel's range). Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    /// A connection not handed out for this long is closed, so a burst's
    /// connections go back to the server's `max_connections` budget. It is
    /// closed at the next checkout that finds it, or by a sweep that runs
    /// every quarter of the shortest of these limits (at most every 30 s,
    /// at least every 100 ms). Zero: never. Default: 10 min (long enough
    /// that a service with a request every few minutes keeps its
    /// connections warm: a new one costs a TCP, TLS and authentication
    /// handshake, several round trips; the Node.js original used 30 s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection older than this is closed instead of being handed out
    /// (and by the sweep, when idle), so connections follow a rotated
    /// password or IAM token, a DNS endpoint that now points elsewhere,
    /// and replicas added behind one. Each connection's own limit is drawn
    /// between `max_lifetime - max_lifetime_jitter` and `max_lifetime`, so
    /// connections opened together do not all close together; none lives
    /// past `max_lifetime` plus a sweep interval. Zero: never. Default:
    /// 30 min.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// How much earlier than `max_lifetime` a connection may be closed,
    /// spread uniformly over the connections; less than `max_lifetime`
    /// (unless that is zero).
    /// Default: 3 min (a tenth of the default lifetime).
    #[serde(with = "humantime_serde")]
    pub max_lifetime_jitter: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(2),
            create_timeout: Duration::from_secs(3),
            recycle_timeout: Duration::from_secs(1),
            verify_idle_after: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            keepalive_idle: Duration::from_secs(30),
            tcp_user_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
            max_lifetime_jitter: Duration::from_secs(180),
        }
    }
}

impl PoolSettings {
    /// Checks every field; the error names it (`pool.max_size`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("pool.wait_timeout", self.wait_timeout),
            ("pool.create_timeout", self.create_timeout),
            ("pool.recycle_timeout", self.recycle_timeout),
            ("pool.connect_timeout", self.connect_timeout),
            ("pool.keepalive_idle", self.keepalive_idle),
            ("pool.tcp_user_timeout", self.tcp_user_timeout),
        ] {
            check::positive(field, value)?;
        }
        self.validate_kernel_limits()?;
        self.validate_lifetimes()?;
        self.validate_max_size()
    }

    /// The jitter is shorter than a set lifetime (a connection must be
    /// allowed to live).
    fn validate_lifetimes(&self) -> Result<(), ConfigError> {
        let lifetime = self.max_lifetime;
        if !lifetime.is_zero() && self.max_lifetime_jitter >= lifetime {
            return Err(check::invalid(
                "pool.max_lifetime_jitter",
                self.max_lifetime_jitter,
                "must be less than pool.max_lifetime",
            ));
        }
        Ok(())
    }

    /// The kernel's own limits: outside them every connection fails (EINVAL).
    fn validate_kernel_limits(&self) -> Result<(), ConfigError> {
        if !(Duration::from_secs(1)..=MAX_KEEPALIVE_IDLE).contains(&self.keepalive_idle) {
            return Err(check::invalid(
                "pool.keepalive_idle",
                self.keepalive_idle,
                "must be from 1s to 32767s (TCP_KEEPIDLE takes whole seconds up to 32767)",
            ));
        }
        if self.tcp_user_timeout > MAX_TCP_USER_TIMEOUT {
            return Err(check::invalid(
                "pool.tcp_user_timeout",
                self.tcp_user_timeout,
                "must be at most 2147483647ms (TCP_USER_TIMEOUT is a signed 32-bit count of ms)",
            ));
        }
        Ok(())
    }

    fn validate_max_size(&self) -> Result<(), ConfigError> {
        if self.max_size > MAX_POOL_SIZE {
            return Err(ConfigError::InvalidValue {
                field: "pool.max_size".to_owned(),
                value: self.max_size.to_string(),
                reason:
                    "must be at most 10000 (deadpool sets aside a slot per connection up front)",
            });
        }
        check::at_least_one("pool.max_size", self.max_size as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(edit: impl FnOnce(&mut PoolSettings)) -> String {
        let mut pool = PoolSettings::default();
        edit(&mut pool);
        match pool.validate() {
            Err(ConfigError::InvalidValue { field, .. }) => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn zero_values_are_rejected_by_field() {
        type Edit = fn(&mut PoolSettings);
        let cases: [(&str, Edit); 3] = [
            ("pool.max_size", |p| p.max_size = 0),
            ("pool.wait_timeout", |p| p.wait_timeout = Duration::ZERO),
            ("pool.recycle_timeout", |p| {
                p.recycle_timeout = Duration::ZERO
            }),
        ];
        for (name, edit) in cases {
            assert_eq!(field_of(edit), name);
        }
    }

    #[test]
    fn the_jitter_is_shorter_than_the_lifetime() {
        type Edit = fn(&mut PoolSettings);
        let cases: [(&str, Edit); 2] = [
            ("pool.max_lifetime_jitter", |p| {
                p.max_lifetime = Duration::from_secs(60);
                p.max_lifetime_jitter = Duration::from_secs(60);
            }),
            ("pool.max_lifetime_jitter", |p| {
                p.max_lifetime_jitter = Duration::from_secs(3600)
            }),
        ];
        for (name, edit) in cases {
            assert_eq!(field_of(edit), name);
        }
        let unlimited = PoolSettings {
            idle_timeout: Duration::ZERO,
            max_lifetime: Duration::ZERO,
            // Unused without a lifetime.
            max_lifetime_jitter: Duration::from_secs(3600),
            ..PoolSettings::default()
        };
        unlimited.validate().unwrap();
        PoolSettings::default().validate().unwrap();
    }

    #[test]
    fn lifetimes_read_from_a_file_in_humantime() {
        let pool: PoolSettings = serde_json::from_str(
            r#"{"idle_timeout": "30s", "max_lifetime": "1h", "max_lifetime_jitter": "5m"}"#,
        )
        .unwrap();
        assert_eq!(pool.idle_timeout, Duration::from_secs(30));
        assert_eq!(pool.max_lifetime, Duration::from_secs(3600));
        assert_eq!(pool.max_lifetime_jitter, Duration::from_secs(300));
        let never: PoolSettings =
            serde_json::from_str(r#"{"idle_timeout": "0s", "max_lifetime": "0s"}"#).unwrap();
        assert!(never.idle_timeout.is_zero() && never.max_lifetime.is_zero());
        never.validate().unwrap();
        let defaults: PoolSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(defaults, PoolSettings::default());
    }

    #[test]
    fn values_the_kernel_or_deadpool_cannot_take_are_rejected_by_field() {
        type Edit = fn(&mut PoolSettings);
        let cases: [(&str, Edit); 5] = [
            ("pool.keepalive_idle", |p| {
                p.keepalive_idle = Duration::from_millis(999)
            }),
            ("pool.keepalive_idle", |p| {
                p.keepalive_idle = Duration::from_secs(32_768)
            }),
            ("pool.tcp_user_timeout", |p| {
                p.tcp_user_timeout = Duration::from_millis(1 << 31)
            }),
            ("pool.max_size", |p| p.max_size = 10_001),
            ("pool.max_size", |p| p.max_size = u32::MAX as usize),
        ];
        for (name, edit) in cases {
            assert_eq!(field_of(edit), name);
        }
        let edge = PoolSettings {
            keepalive_idle: Duration::from_secs(32_767),
            tcp_user_timeout: Duration::from_millis(i32::MAX as u64),
            max_size: 10_000,
            ..PoolSettings::default()
        };
        edge.validate().unwrap();
    }
}
