//! Faults only a container runtime can cause: a node's whole host killed,
//! frozen, or cut off the network.

use std::time::Duration;

use crate::{Cluster, TestkitError};

impl Cluster {
    /// Kills node `index`'s container at once (`docker stop -t 0`: every
    /// process in it gets SIGKILL), as a host losing power: its server
    /// does not shut down, connections to it are reset. The container's
    /// file system stays; [`Cluster::start_container`] brings it back.
    /// Docker backend only.
    pub fn kill_container(&self, index: usize) -> Result<(), TestkitError> {
        self.containers("kill_container")?.kill(index)
    }

    /// Starts node `index`'s killed container again and its server in it
    /// (crash recovery from its data directory), on the same published
    /// port. Docker backend only.
    pub fn start_container(&self, index: usize) -> Result<(), TestkitError> {
        let containers = self.containers("start_container")?;
        containers.start_container(index)?;
        // The server may have left a pid file: pg_ctl handles that.
        self.start_node(index)
    }

    /// Freezes every process of node `index`'s container (`docker pause`):
    /// connections to it stay open and connection attempts are accepted,
    /// but nothing answers, not even a TCP reset — a true black hole.
    /// Replication to and from it stops. Docker backend only.
    pub fn pause_container(&self, index: usize) -> Result<(), TestkitError> {
        self.containers("pause_container")?.pause(index, true)
    }

    /// Thaws a container frozen by [`Cluster::pause_container`]: it goes on
    /// where it stopped. Docker backend only.
    pub fn unpause_container(&self, index: usize) -> Result<(), TestkitError> {
        self.containers("unpause_container")?.pause(index, false)
    }

    /// Takes node `index` off the cluster's network (`docker network
    /// disconnect`): a real partition. Packets to and from it, including
    /// through its published port, go nowhere; its server keeps running,
    /// and so do its replicas' and clients' connections until their own
    /// timeouts. Docker backend only.
    pub fn disconnect(&self, index: usize) -> Result<(), TestkitError> {
        self.containers("disconnect")?.connect(index, false)
    }

    /// Puts a node taken off by [`Cluster::disconnect`] back on the
    /// network (it may get another address there; nodes reach each other
    /// by name). Docker backend only.
    pub fn reconnect(&self, index: usize) -> Result<(), TestkitError> {
        self.containers("reconnect")?.connect(index, true)?;
        // The published port follows the new endpoint within moments.
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    }
}
