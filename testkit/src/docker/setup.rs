//! Setting up nodes in containers: the local backend's steps, run through
//! `docker exec`.

use super::{Containers, DATA_DIR, LOG_FILE};
use crate::builder::INITDB_OPTIONS;
use crate::cluster::Servers;
use crate::node::{LocalNode, USER};
use crate::{Cluster, TestkitError};

/// `pg_hba.conf` of every node in containers: trust the private network
/// (and the host, whose connections arrive through the published port).
const HBA_CONF: &str = "\
local all all trust
local replication all trust
host all all 0.0.0.0/0 trust
host replication all 0.0.0.0/0 trust
";

impl Cluster {
    /// The containers, or an error naming `what` on the local backend.
    pub(crate) fn containers(&self, what: &str) -> Result<&Containers, TestkitError> {
        match &self.servers {
            Servers::Docker(containers) => Ok(containers),
            Servers::Local(_) => Err(TestkitError::Unsupported {
                backend: "local",
                what: what.to_owned(),
            }),
        }
    }

    /// `initdb`, `conf` and the node's port, `pg_hba.conf`, start.
    pub(crate) fn docker_init_primary(
        &mut self,
        conf: &str,
        port: u16,
    ) -> Result<(), TestkitError> {
        let containers = self.containers("initdb")?;
        let mut initdb = vec!["initdb", "-D", DATA_DIR];
        initdb.extend(INITDB_OPTIONS);
        containers.exec(0, &initdb, &[])?;
        write_file(containers, 0, "postgresql.conf", ">>", conf)?;
        write_file(containers, 0, "pg_hba.conf", ">", HBA_CONF)?;
        self.docker_start_new_node(0, port)
    }

    /// `pg_basebackup -R` of node 0 into node `index`'s container, then start.
    pub(crate) fn docker_add_replica(
        &mut self,
        index: usize,
        port: u16,
    ) -> Result<(), TestkitError> {
        self.docker_base_backup(index, 0)?;
        self.docker_start_new_node(index, port)
    }

    /// Replaces node `index`'s data directory with a base backup of node
    /// `upstream` and starts it (its server must be stopped).
    pub(crate) fn docker_rejoin(
        &self,
        containers: &Containers,
        index: usize,
        upstream: usize,
    ) -> Result<(), TestkitError> {
        containers.exec(index, &["rm", "-rf", DATA_DIR], &[])?;
        self.docker_base_backup(index, upstream)?;
        let port = self.checked_node(index)?.port();
        write_file(
            containers,
            index,
            "postgresql.conf",
            ">>",
            &node_conf(index, port),
        )?;
        self.start_node(index)
    }

    fn docker_base_backup(&self, index: usize, upstream: usize) -> Result<(), TestkitError> {
        let containers = self.containers("pg_basebackup")?;
        let source_port = self.checked_node(upstream)?.port().to_string();
        let backup = [
            "pg_basebackup",
            "-h",
            containers.name(upstream),
            "-p",
            &source_port,
            "-U",
            USER,
            "-D",
            DATA_DIR,
            "-X",
            "stream",
            "-R",
            "--no-sync",
            "-c",
            "fast",
        ];
        containers.exec(index, &backup, &[]).map(drop)
    }

    fn docker_start_new_node(&mut self, index: usize, port: u16) -> Result<(), TestkitError> {
        let containers = self.containers("pg_ctl start")?;
        write_file(
            containers,
            index,
            "postgresql.conf",
            ">>",
            &node_conf(index, port),
        )?;
        let user = self.flavour.client_user();
        let node = LocalNode::new(index, port, DATA_DIR.into(), LOG_FILE.into(), user);
        self.nodes.push(node);
        self.start_node(index)
    }

    fn checked_node(&self, index: usize) -> Result<&LocalNode, TestkitError> {
        self.get(index).ok_or(TestkitError::NoSuchNode(index))
    }
}

/// The settings that make a node itself: its name and port.
fn node_conf(index: usize, port: u16) -> String {
    format!("cluster_name = 'node{index}'\nport = {port}\n")
}

/// Writes (`>`) or appends (`>>`) `text` to `file` in node `index`'s data
/// directory; the text travels as an argument, so it needs no quoting.
fn write_file(
    containers: &Containers,
    index: usize,
    file: &str,
    how: &str,
    text: &str,
) -> Result<(), TestkitError> {
    let path = format!("{DATA_DIR}/{file}");
    let script = format!("printf '%s' \"$1\" {how} \"$2\"");
    let args = ["sh", "-c", &script, "sh", text, &path];
    containers.exec(index, &args, &[]).map(drop)
}
