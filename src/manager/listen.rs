//! `LISTEN` that follows the primary: a connection of its own (a pool's
//! connections drop notifications), `LISTEN` on the node that is primary
//! now, and after a failover (or a lost connection) `LISTEN` again on the
//! node that is primary then, with a [`Notice::Gap`] saying notifications
//! sent meanwhile may be lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_postgres::{Client, Notification};
use tokio_util::sync::CancellationToken;

use crate::failure::error::Error;
use crate::hub::Hub;

/// Notices waiting for the caller before the listener stops reading.
const BACKLOG: usize = 1024;
/// The first and the largest pause between attempts to listen again.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// What a [`Listener`] hands over.
#[derive(Debug)]
#[non_exhaustive]
pub enum Notice {
    /// A notification on the channel (`NOTIFY channel, 'payload'`).
    Notification(Notification),
    /// The listening connection was lost, or the primary changed, and the
    /// listener now listens on `node`: notifications sent between the two
    /// may be lost (PostgreSQL queues a notification only for sessions
    /// listening when it commits). Reconcile from the table if that matters.
    Gap {
        /// The node listened on from now on.
        node: String,
    },
}

/// Notifications on one channel, on whichever node is primary; see
/// [`DatabaseManager::listen`](crate::DatabaseManager::listen). Dropping it
/// stops listening.
#[derive(Debug)]
pub struct Listener {
    notices: mpsc::Receiver<Notice>,
    task: JoinHandle<()>,
}

impl Listener {
    /// The next notice, in the order the server sent them; `None` once the
    /// manager is closed (or all its handles dropped).
    pub async fn recv(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A session listening on one node.
struct Subscribed {
    index: usize,
    /// Kept for the session's life.
    _client: Client,
    driver: JoinHandle<()>,
    notifications: mpsc::UnboundedReceiver<Notification>,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// `channel` quoted as an identifier, or why it cannot be one.
fn quoted(channel: &str) -> Result<String, Error> {
    if channel.is_empty() || channel.contains('\0') {
        return Err(Error::invalid_argument(
            "channel",
            "must be non-empty, without NUL",
        ));
    }
    Ok(format!("\"{}\"", channel.replace('"', "\"\"")))
}

/// Listens on `channel` on the primary (waiting for one up to the write
/// hold), within the call deadline; the listener then follows the primary
/// until `shutdown`.
pub(crate) async fn listen(
    hub: &Arc<Hub>,
    channel: &str,
    shutdown: CancellationToken,
) -> Result<Listener, Error> {
    hub.ensure_open()?;
    let quoted = quoted(channel)?;
    let budget = hub.config.deadline;
    let deadline = crate::config::clock::after(Instant::now(), budget);
    let index = hub.await_primary(deadline).await?;
    let first = match timeout_at(deadline, subscribe(hub, index, &quoted)).await {
        Ok(Ok(subscribed)) => subscribed,
        Ok(Err(error)) => return Err(Error::from(error)),
        Err(_) => return Err(Error::timeout(hub.context(index), budget, false)),
    };
    let (notices, receiver) = mpsc::channel(BACKLOG);
    let task = tokio::spawn(follow(Arc::clone(hub), quoted, first, notices, shutdown));
    Ok(Listener {
        notices: receiver,
        task,
    })
}

/// A connection of its own to node `index`, listening on `quoted`.
async fn subscribe(
    hub: &Hub,
    index: usize,
    quoted: &str,
) -> Result<Subscribed, tokio_postgres::Error> {
    let Some(node) = hub.node(index) else {
        unreachable!("an elected primary is a filled node")
    };
    let (sender, notifications) = mpsc::unbounded_channel();
    let (client, driver) = node
        .connector
        .connect_listening(&node.probe_config, sender)
        .await?;
    let subscribed = Subscribed {
        index,
        _client: client,
        driver,
        notifications,
    };
    subscribed
        ._client
        .batch_execute(&format!("LISTEN {quoted}"))
        .await?;
    tracing::debug!(node = %hub.context(index).node, channel = quoted, "listening");
    Ok(subscribed)
}

/// Hands `first`'s notifications over; when its connection ends or the
/// primary changes, listens again on the primary (reporting the gap),
/// until `shutdown` or the listener is dropped.
async fn follow(
    hub: Arc<Hub>,
    quoted: String,
    first: Subscribed,
    notices: mpsc::Sender<Notice>,
    shutdown: CancellationToken,
) {
    let mut published = hub.on_publish();
    let mut current = Some(first);
    let mut pause = FIRST_PAUSE;
    loop {
        let Some(mut subscribed) = current.take() else {
            // Listen again on the node that is primary now.
            let relisten = async {
                loop {
                    if let Some(index) = hub.primary_index() {
                        match subscribe(&hub, index, &quoted).await {
                            Ok(subscribed) => return subscribed,
                            Err(error) => tracing::debug!(%error, "listening again failed"),
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    } else if published.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            let subscribed = tokio::select! {
                () = shutdown.cancelled() => return,
                () = notices.closed() => return,
                subscribed = relisten => subscribed,
            };
            pause = FIRST_PAUSE;
            let node = hub.context(subscribed.index).node.to_string();
            tracing::info!(%node, channel = quoted, "listening again: notifications may have been lost");
            if notices.send(Notice::Gap { node }).await.is_err() {
                return;
            }
            current = Some(subscribed);
            continue;
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = notices.closed() => return,
            notification = subscribed.notifications.recv() => {
                // None: the connection ended; listen again.
                if let Some(notification) = notification {
                    if notices.send(Notice::Notification(notification)).await.is_err() {
                        return;
                    }
                    current = Some(subscribed);
                }
            }
            changed = published.changed() => {
                let moved = hub.primary_index().is_some_and(|index| index != subscribed.index);
                if changed.is_ok() && !moved {
                    current = Some(subscribed);
                }
            }
        }
    }
}
