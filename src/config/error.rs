//! [`ConfigError`]: a configuration value that cannot work, naming the field.

use std::time::Duration;

/// A configuration value that cannot work. Each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `nodes` is empty.
    #[error("no nodes configured")]
    NoNodes,
    /// No node has the primary role.
    #[error("no node has role primary")]
    NoPrimary,
    /// More than one node has the primary role.
    #[error("nodes {first:?} and {second:?} both have role primary; exactly one may")]
    MultiplePrimaries {
        /// The first primary.
        first: String,
        /// The second primary.
        second: String,
    },
    /// Two nodes share a name.
    #[error("node name {name:?} is used twice")]
    DuplicateNodeName {
        /// The repeated name.
        name: String,
    },
    /// A required text field is empty.
    #[error("{field} is empty")]
    EmptyField {
        /// The field, e.g. `nodes[1].region`.
        field: String,
    },
    /// A connection string does not parse. The string itself is not repeated:
    /// it may hold a password.
    #[error("{field} (node {node:?}): invalid connection string: {reason}")]
    InvalidConnectionString {
        /// The field: `nodes[1].url`, or the environment variable it came
        /// from (`PRIMARY_DATABASE_URL`, `SECONDARY_DATABASE_URL`).
        field: String,
        /// The node whose `url` is bad.
        node: String,
        /// What the parser said, e.g. ``invalid value for option `port` ``.
        reason: String,
    },
    /// A value is out of range.
    #[error("{field} = {value}: {reason}")]
    InvalidValue {
        /// The field, e.g. `pool.max_size`.
        field: String,
        /// The bad value as written.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// A lower bound is above its upper bound.
    #[error("{low} ({low_value:?}) is greater than {high} ({high_value:?})")]
    InvertedRange {
        /// The lower bound's field.
        low: String,
        /// Its value.
        low_value: Duration,
        /// The upper bound's field.
        high: String,
        /// Its value.
        high_value: Duration,
    },
    /// A read strategy name is unknown.
    #[error("unknown read strategy {value:?}; expected regional-preferred, global-random, primary-only or nearest")]
    UnknownStrategy {
        /// The name given.
        value: String,
    },
    /// A required environment variable is unset or empty.
    #[error("environment variable {var} is not set")]
    MissingEnv {
        /// The variable.
        var: &'static str,
    },
    /// The TLS settings cannot work (an unreadable or empty CA file, …).
    #[error("tls: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
}
