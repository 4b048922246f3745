//! Where a cluster's servers run: the [`Backend`] of a [`ClusterBuilder`](crate::ClusterBuilder).

use std::str::FromStr;

use crate::TestkitError;

/// Environment variable choosing the [`Backend`] of [`Backend::from_env`].
pub const BACKEND_ENV: &str = "PGROUTER_TESTKIT_BACKEND";

/// Where a [`Cluster`](crate::Cluster)'s servers run. Both run the same
/// steps (`initdb`, `pg_basebackup`, `pg_ctl`, `psql`) and give the same
/// API; only where the programs come from differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// Processes on this machine, from its PostgreSQL server binaries.
    #[default]
    Local,
    /// One container per node on a private Docker network, started with the
    /// `testcontainers` crate from any image that has the server binaries
    /// on its `PATH` (the official `postgres` image, or one built by
    /// `testkit/docker/build.sh`): see
    /// [`ClusterBuilder::image`](crate::ClusterBuilder::image). Needs the
    /// testkit's `docker` feature and a Docker engine; adds the container
    /// runtime's faults (`Cluster::kill_container`, `pause_container`,
    /// `disconnect`, with the feature on).
    Docker,
}

impl Backend {
    /// The backend named by `PGROUTER_TESTKIT_BACKEND` (`local` or
    /// `docker`); [`Backend::Local`] when it is unset.
    pub fn from_env() -> Result<Self, TestkitError> {
        match std::env::var(BACKEND_ENV) {
            Ok(value) => value.parse(),
            Err(std::env::VarError::NotPresent) => Ok(Self::Local),
            Err(std::env::VarError::NotUnicode(_)) => Err(invalid("not unicode")),
        }
    }

    /// `"local"` or `"docker"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Docker => "docker",
        }
    }
}

impl FromStr for Backend {
    type Err = TestkitError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "" | "local" => Ok(Self::Local),
            "docker" => Ok(Self::Docker),
            other => Err(invalid(&format!("{other:?} is not local or docker"))),
        }
    }
}

fn invalid(reason: &str) -> TestkitError {
    TestkitError::InvalidArgument {
        what: BACKEND_ENV.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_bad_input_names_the_variable() {
        assert_eq!("docker".parse::<Backend>().ok(), Some(Backend::Docker));
        assert_eq!("local".parse::<Backend>().ok(), Some(Backend::Local));
        assert_eq!("".parse::<Backend>().ok(), Some(Backend::Local));
        let error = "podman".parse::<Backend>().unwrap_err().to_string();
        assert!(
            error.contains(BACKEND_ENV) && error.contains("podman"),
            "{error}"
        );
    }
}
