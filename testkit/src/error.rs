//! The testkit's error type.

/// Everything that can go wrong while setting up or driving a test cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// The PostgreSQL server binaries (`initdb`, `pg_ctl`, ...) could not be found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup, psql) not found \
         (searched: {searched}); install the PostgreSQL server packages, e.g. \
         `apt-get install postgresql`, or set PGROUTER_PG_BINDIR to the directory \
         that contains initdb"
    )]
    BinariesNotFound {
        /// The places that were searched, in order.
        searched: String,
    },

    /// An external command (`initdb`, `pg_ctl`, `psql`, ...) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line that was run.
        command: String,
        /// How it ended (exit code or signal).
        status: String,
        /// Its standard error, followed by the tail of the node's log file where
        /// that helps.
        stderr: String,
    },

    /// An I/O error (creating directories, writing configuration, spawning, ...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The throwaway TLS certificates could not be made.
    #[error("could not generate TLS certificates: {reason}")]
    Tls {
        /// What went wrong.
        reason: String,
    },

    /// A node index that is out of range for this cluster.
    #[error("no node with index {0} in this cluster")]
    NoSuchNode(usize),

    /// An argument (or environment variable) the test kit cannot use.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The argument or variable.
        what: String,
        /// Why.
        reason: String,
    },

    /// The Docker engine (the `docker` backend) failed or could not be
    /// reached, or refused a request.
    #[error("docker: {reason}")]
    Docker {
        /// What went wrong, with the engine's message.
        reason: String,
    },

    /// The cluster's backend cannot do this (say, a Docker fault on a local
    /// cluster, or TLS in containers).
    #[error("not supported by the {backend} backend: {what}")]
    Unsupported {
        /// `local` or `docker`.
        backend: &'static str,
        /// The operation.
        what: String,
    },

    /// Something did not happen within the allowed time.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
    },
}
