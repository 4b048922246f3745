//! Which node served a call: [`ServedBy`], a slot a caller hands to a
//! read or write builder, filled when the call succeeds.

use std::sync::{Mutex, PoisonError};

use crate::config::Role;
use crate::observe::spans::Deployment;

/// The node that served a successful call, as routing saw it then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Server {
    /// The node's name.
    pub node: String,
    /// The node's region.
    pub region: String,
    /// Its role at its last probe when the call ended.
    pub role: Role,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = match self.role {
            Role::Primary => "primary",
            Role::Replica => "replica",
        };
        write!(f, "{} ({role}, {})", self.node, self.region)
    }
}

/// A slot that learns which node served a call, for logs and debugging,
/// without an extra query: give it to [`Read::served_by`](crate::Read::served_by)
/// or [`Write::served_by`](crate::Write::served_by), await the call, then
/// [`get`](ServedBy::get) it. A call that fails leaves it as it was (the
/// error names its node, see [`Error::context`](crate::Error::context)).
/// Calls that are not given one pay nothing.
///
/// ```no_run
/// # async fn demo(db: pgrouter::DatabaseManager) -> Result<(), pgrouter::Error> {
/// let served = pgrouter::ServedBy::new();
/// let row = db.read().served_by(&served).query_one("SELECT 1", &[]).await?;
/// if let Some(server) = served.get() {
///     tracing::info!(%server, "read served");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct ServedBy {
    server: Mutex<Option<Server>>,
}

impl ServedBy {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node that served the last successful call given this slot.
    pub fn get(&self) -> Option<Server> {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records node `index` of `hub` as the server.
    pub(crate) fn record(&self, hub: &impl Deployment, index: usize) {
        let role = hub.role(index);
        let (node, region) = match hub.node(index) {
            Some(node) => (
                node.context.node.to_string(),
                node.context.region.to_string(),
            ),
            None => (format!("slot {index}"), String::new()),
        };
        let server = Server { node, region, role };
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(server);
    }
}

/// Records `index` into `slot`, if the caller gave one (a `None` check
/// otherwise).
pub(crate) fn record(slot: Option<&ServedBy>, hub: &impl Deployment, index: usize) {
    if let Some(slot) = slot {
        slot.record(hub, index);
    }
}
