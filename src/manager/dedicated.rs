//! A pooled connection chosen by the routing rules and handed to the
//! caller, for what one statement cannot do: `COPY`, a streaming
//! `query_raw`, portals, statements prepared by hand. The read rules
//! (strategy, staleness bound, causal token) or the write target pick the
//! node; the connection goes back to its pool when the caller drops it.

use std::time::Duration;

use deadpool_postgres::Object;

use super::attempt::{Attempt, Deadline};
use super::pooled::Pools;
use super::primary::{on_primary, OnPrimary};
use crate::config::ReadStrategy;
use crate::failure::error::{Error, ErrorKind};
use crate::hub::Hub;
use crate::observe::call_info::{self, CallInfo};
use crate::observe::spans::Observer;
use crate::routing::freshness::Freshness;

/// A connection of node `index`, checked out within `deadline` (a failed
/// checkout marks the node suspect, as a call's would).
async fn checkout(hub: &Hub, index: usize, deadline: Deadline) -> Result<Object, Error> {
    let attempt = Attempt::start(hub, Pools, index, deadline);
    Ok(attempt.checkout().await?.take().into_object())
}

/// A connection of the node the read rules pick; if it cannot be had,
/// one of another eligible node (nothing was sent yet).
pub(crate) async fn for_read(
    hub: &Hub,
    strategy: ReadStrategy,
    budget: Duration,
    freshness: Freshness,
    info: Option<&CallInfo>,
) -> Result<Object, Error> {
    hub.ensure_open()?;
    let deadline = Deadline::start(budget);
    let mut rng = fastrand::Rng::new();
    let first = hub
        .pick_read(strategy, freshness, None, &mut rng)
        .ok_or_else(|| Error::no_healthy_node(strategy))?;
    let (index, client) = match checkout(hub, first, deadline).await {
        Err(error) if *error.kind() == ErrorKind::Connect => {
            let Some(second) = hub.pick_read(strategy, freshness, Some(first), &mut rng) else {
                return Err(error);
            };
            (second, checkout(hub, second, deadline).await?)
        }
        result => (first, result?),
    };
    call_info::record(info, hub, index, None);
    Ok(client)
}

/// A connection of the node that is primary now, held for during a
/// failover and tried again as a write's checkout would be.
pub(crate) async fn for_write(
    hub: &Hub,
    deadline: Deadline,
    info: Option<&CallInfo>,
) -> Result<Object, Error> {
    let observer = Observer::checkout(hub);
    let (index, client) = on_primary(hub, deadline, false, Checkout(deadline), observer).await?;
    call_info::record(info, hub, index, None);
    Ok(client)
}

/// A checkout on the primary, as [`on_primary`] runs it.
struct Checkout(Deadline);

impl OnPrimary for Checkout {
    type Output = (usize, Object);

    async fn attempt(
        &mut self,
        hub: &Hub,
        index: usize,
        _number: u32,
    ) -> Result<Self::Output, Error> {
        Ok((index, checkout(hub, index, self.0).await?))
    }
}
