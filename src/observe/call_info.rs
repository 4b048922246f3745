//! What a call reports about itself: [`CallInfo`], a slot a caller hands
//! to any call builder, filled when the call succeeds.

use std::sync::{Mutex, PoisonError};

use crate::causal::lsn::CausalToken;
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

/// What a successful call reports about itself: the node that served it
/// and, when asked for, the causal token of a write or transaction. The one
/// way to get call metadata, for every call kind: give the slot to
/// [`ReadBuilder::info`](crate::ReadBuilder::info) or
/// [`WriteBuilder::info`](crate::WriteBuilder::info), await the call, then
/// read it. A call that fails leaves it as it was (the error names its
/// node). Calls given no slot pay nothing.
///
/// [`CallInfo::new`] records the server only, with no extra query.
/// [`CallInfo::with_token`] also has a write or transaction fetch its
/// [`CausalToken`] for read-your-writes: the token query is sent right
/// behind the statement (or `COMMIT`) on the same connection, in the same
/// round trip. A read never has a token.
///
/// ```no_run
/// # async fn demo(db: pgrouter::DatabaseManager) -> Result<(), pgrouter::Error> {
/// use pgrouter::CallInfo;
///
/// let info = CallInfo::with_token();
/// db.write()
///     .info(&info)
///     .execute("UPDATE users SET name = 'Ada' WHERE id = 1", &[])
///     .await?;
/// let token = info.token().expect("a successful write asked for its token");
/// let row = db
///     .read()
///     .after(token)
///     .query_one("SELECT name FROM users WHERE id = 1", &[])
///     .await?;
/// if let Some(server) = info.server() {
///     tracing::info!(%server, "write served");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct CallInfo {
    wants_token: bool,
    state: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    server: Option<Server>,
    token: Option<CausalToken>,
}

impl CallInfo {
    /// An empty slot that records the serving node.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty slot that records the serving node and has a write or
    /// transaction fetch its causal token.
    pub fn with_token() -> Self {
        Self {
            wants_token: true,
            ..Self::default()
        }
    }

    /// The node that served the last successful call given this slot.
    pub fn server(&self) -> Option<Server> {
        self.lock().server.clone()
    }

    /// The causal token of the last successful write or transaction given
    /// this slot, when it was made with [`CallInfo::with_token`].
    pub fn token(&self) -> Option<CausalToken> {
        self.lock().token
    }

    /// Whether a write given this slot fetches its token.
    pub(crate) fn wants_token(&self) -> bool {
        self.wants_token
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records node `index` of `hub` as the server, and `token` when this
    /// slot asked for one.
    fn record(&self, hub: &impl Deployment, index: usize, token: Option<CausalToken>) {
        let role = hub.role(index);
        let (node, region) = match hub.node(index) {
            Some(node) => (
                node.context.node.to_string(),
                node.context.region.to_string(),
            ),
            None => (format!("slot {index}"), String::new()),
        };
        let mut state = self.lock();
        state.server = Some(Server { node, region, role });
        state.token = token.filter(|_| self.wants_token);
    }
}

/// Records a successful call on node `index` (and its token, if any) into
/// `slot`, if the caller gave one (a `None` check otherwise).
pub(crate) fn record(
    slot: Option<&CallInfo>,
    hub: &impl Deployment,
    index: usize,
    token: Option<CausalToken>,
) {
    if let Some(slot) = slot {
        slot.record(hub, index, token);
    }
}
