//! A fault-injection TCP proxy.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Bytes read per chunk.
const CHUNK: usize = 16 * 1024;
/// Chunks a direction may hold back (under latency) before it stops reading.
const MAX_QUEUED: usize = 256;
/// How often the accept loop retries a failed re-bind.
const REBIND_RETRY: Duration = Duration::from_millis(50);

/// What a [`FaultProxy`] does to traffic; switch with [`FaultProxy::set`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Forward bytes both ways.
    Pass,
    /// Forward, but hold each chunk back by this long, in each direction (a
    /// round trip takes at least twice as long); byte order is kept. Data
    /// already held back is timed by the current fault, so switching back to
    /// [`Fault::Pass`] releases it at once.
    Latency(Duration),
    /// Like [`Fault::Latency`], with jitter: each chunk is held back by
    /// `delay` plus or minus up to `jitter` (a uniform draw per chunk, made
    /// when it is read), in each direction, but never released before the
    /// chunk read before it: its release time is the later of that chunk's
    /// and its own draw, so byte order is kept (as TCP keeps it on a link
    /// whose packets are delayed unevenly). A `jitter` above `delay` holds
    /// some chunks back for no time.
    Jittered {
        /// The mean one-way delay.
        delay: Duration,
        /// The largest deviation from `delay`, either way.
        jitter: Duration,
    },
    /// Keep new and existing connections open but forward nothing in either
    /// direction, like a silent peer or dropped packets. Held data flows again
    /// once the fault is lifted.
    BlackHole,
    /// Forward what clients send, but hold back everything servers answer,
    /// like a link that fails one way: a statement (or `COMMIT`) reaches the
    /// server and runs there, and its answer never arrives. Held answers
    /// flow again once the fault is lifted (switch to [`Fault::Reset`] to
    /// lose them for good).
    HoldReplies,
    /// Stop listening, so new connections get `ECONNREFUSED`; existing
    /// connections keep working. Leaving `Refuse` listens on the same port
    /// again.
    Refuse,
    /// Reset (TCP RST) every existing connection at once, and accept then
    /// reset every new one.
    Reset,
}

/// A TCP proxy on `127.0.0.1:<free port>` forwarding to an upstream address,
/// whose behaviour ([`Fault`]) can be switched at run time.
///
/// A change applies at once to existing connections too. Dropping the proxy
/// stops listening and forwarding at once; its connections are closed by its
/// tasks right after. It needs a Tokio runtime (its tasks run there) with the
/// `net` and `time` drivers enabled.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    faults: watch::Sender<Fault>,
    /// How many times [`Fault::Reset`] was set: a connection that saw fewer
    /// when it started is reset even if the fault was lifted again before
    /// its tasks ran (a watch channel keeps only the latest fault).
    resets: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    /// `None` while refusing (or if re-binding failed).
    listener: Mutex<Option<TcpListener>>,
    connections: AtomicUsize,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    fn listener(&self) -> MutexGuard<'_, Option<TcpListener>> {
        self.listener.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Listens again on the same port unless already listening.
    fn ensure_listening(&self) {
        let mut listener = self.listener();
        if listener.is_none() {
            let _runtime = self.runtime.enter();
            match bind(self.addr) {
                Ok(bound) => *listener = Some(bound),
                Err(e) => {
                    tracing::warn!(addr = %self.addr, error = %e, "fault proxy could not listen again; retrying")
                }
            }
        }
    }
}

impl FaultProxy {
    /// Starts a proxy in [`Fault::Pass`] mode on a free port of `127.0.0.1`,
    /// forwarding to `upstream`. Must be called within a Tokio runtime.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            addr,
            listener: Mutex::new(Some(listener)),
            connections: AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::current(),
        });
        let (faults, rx) = watch::channel(Fault::Pass);
        let resets = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(
            Arc::clone(&shared),
            upstream,
            rx,
            Arc::clone(&resets),
        ));
        Ok(FaultProxy {
            addr,
            shared,
            faults,
            resets,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches the fault; it applies at once to new and existing connections:
    /// once this returns, no byte is forwarded under the old fault. Entering
    /// [`Fault::Refuse`] closes the listening socket before this returns, and
    /// leaving it listens on the same port again before this returns.
    pub fn set(&self, fault: Fault) {
        if fault == Fault::Refuse {
            let old = self.shared.listener().take();
            drop(old);
        } else {
            self.shared.ensure_listening();
        }
        tracing::debug!(addr = %self.addr, ?fault, "fault proxy switched");
        if fault == Fault::Reset {
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
        self.faults.send_replace(fault);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        self.faults.borrow().clone()
    }

    /// How many client connections the proxy currently holds open.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its `JoinSet`, which aborts every
        // connection task; closing the watch channel ends them too.
        self.accept_task.abort();
        let listener = self.shared.listener().take();
        drop(listener);
    }
}

/// A listener on `addr` with `SO_REUSEADDR`, so the port can be taken again
/// while connections accepted on it are still open.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The resets a connection has lived through.
struct Epoch {
    resets: Arc<AtomicU64>,
    /// The count when the connection was accepted.
    seen: u64,
}

impl Epoch {
    /// Whether a reset was set since the connection was accepted.
    fn passed(&self) -> bool {
        self.resets.load(Ordering::SeqCst) != self.seen
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    upstream: SocketAddr,
    mut faults: watch::Receiver<Fault>,
    resets: Arc<AtomicU64>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let refusing = *faults.borrow_and_update() == Fault::Refuse;
        let missing = !refusing && shared.listener().is_none();
        let accept = poll_fn(|cx| match shared.listener().as_ref() {
            Some(listener) => listener.poll_accept(cx),
            None => Poll::Pending,
        });
        // Biased: a fault change (or the proxy being dropped) wins over traffic.
        tokio::select! {
            biased;
            changed = faults.changed() => if changed.is_err() {
                return;
            },
            accepted = accept => match accepted {
                Ok((client, _)) => {
                    let guard = ConnGuard::new(&shared);
                    let epoch = Epoch {
                        resets: Arc::clone(&resets),
                        seen: resets.load(Ordering::SeqCst),
                    };
                    tasks.spawn(connection(client, upstream, faults.clone(), epoch, guard));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fault proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = tokio::time::sleep(REBIND_RETRY), if missing => shared.ensure_listening(),
        }
    }
}

/// Counts a client connection while it is alive.
struct ConnGuard(Arc<Shared>);

impl ConnGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(shared))
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a direction stopped other than by a clean end of stream.
enum Stop {
    /// The fault became [`Fault::Reset`] or a socket failed: reset both sides.
    Reset,
    /// The proxy was dropped.
    Closed,
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<Fault>,
    epoch: Epoch,
    _guard: ConnGuard,
) {
    // Do not even connect upstream while black-holed: the client just waits.
    loop {
        let fault = faults.borrow_and_update().clone();
        match fault {
            Fault::Reset => return reset(&client),
            Fault::BlackHole => {
                if faults.changed().await.is_err() {
                    return;
                }
            }
            _ => break,
        }
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(e) => {
            tracing::debug!(%upstream, error = %e, "fault proxy could not reach upstream");
            return reset(&client);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let outcome = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::try_join!(
            pump(
                client_read,
                server_write,
                faults.clone(),
                &epoch,
                Direction::Request
            ),
            pump(server_read, client_write, faults, &epoch, Direction::Reply),
        )
    };
    if let Err(Stop::Reset) = outcome {
        reset(&client);
        reset(&server);
    }
}

/// Makes dropping `stream` send a TCP RST instead of a FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Which way a [`pump`] copies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server.
    Request,
    /// Server to client.
    Reply,
}

/// Copies `from` to `to` under the current fault until `from` ends (then
/// shuts `to` down) or the connection must stop.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut faults: watch::Receiver<Fault>,
    epoch: &Epoch,
    direction: Direction,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    // Chunks read but not yet written, with the time they were read: each is
    // due that long after it was read as the *current* fault says, so lifting
    // a latency also releases what is already held back.
    let mut queue: VecDeque<Held> = VecDeque::new();
    // The chunk being written and how many of its bytes are sent.
    let mut current: Option<(Held, usize)> = None;
    let mut rng = fastrand::Rng::new();
    let mut eof = false;
    loop {
        let fault = faults.borrow_and_update().clone();
        if epoch.passed() {
            return Err(Stop::Reset);
        }
        let timing = match fault {
            Fault::Reset => return Err(Stop::Reset),
            Fault::BlackHole => {
                faults.changed().await.map_err(|_| Stop::Closed)?;
                continue;
            }
            Fault::HoldReplies if direction == Direction::Reply => {
                faults.changed().await.map_err(|_| Stop::Closed)?;
                continue;
            }
            Fault::Latency(delay) => Timing::Fixed(delay),
            Fault::Jittered { delay, jitter } => Timing::Jittered { delay, jitter },
            _ => Timing::Now,
        };
        if current.is_none() {
            current = queue.pop_front().map(|held| (held, 0));
        }
        // Chunks are written in the order they were read, each once the
        // one before it is written: one due earlier (a smaller jitter draw)
        // waits for it, so byte order is kept.
        let due = current.as_ref().and_then(|(held, _)| timing.due(held));
        if eof && current.is_none() {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let can_read = !eof && queue.len() < MAX_QUEUED;
        // Biased: once `set` returns, no byte is read or written under the
        // old fault (bytes already held back are timed by the new one).
        tokio::select! {
            biased;
            changed = faults.changed() => changed.map_err(|_| Stop::Closed)?,
            read = from.read(&mut buf), if can_read => match read {
                Ok(0) => eof = true,
                Ok(n) => queue.push_back(Held {
                    read_at: Instant::now(),
                    draw: rng.f64() * 2.0 - 1.0,
                    bytes: buf[..n].to_vec(),
                }),
                Err(_) => return Err(Stop::Reset),
            },
            written = write_due(&mut to, current.as_ref(), due), if current.is_some() => match written {
                Ok(n) => {
                    if let Some((held, sent)) = current.as_mut() {
                        *sent += n;
                        if *sent >= held.bytes.len() {
                            current = None;
                        }
                    }
                }
                Err(_) => return Err(Stop::Reset),
            },
        }
    }
}

/// A chunk read but not yet written.
struct Held {
    /// When it was read.
    read_at: Instant,
    /// Its jitter draw, from -1 to 1 (a share of [`Fault::Jittered`]'s
    /// `jitter`, subtracted when negative).
    draw: f64,
    bytes: Vec<u8>,
}

/// When chunks are due under the current fault.
#[derive(Debug, Clone, Copy)]
enum Timing {
    /// At once.
    Now,
    /// This long after they were read.
    Fixed(Duration),
    /// `delay` plus the chunk's draw of `jitter` after it was read.
    Jittered { delay: Duration, jitter: Duration },
}

impl Timing {
    /// When `held` is due (`None`: at once); it is written no earlier than
    /// the chunk before it, whatever this says.
    fn due(self, held: &Held) -> Option<Instant> {
        match self {
            Timing::Now => None,
            Timing::Fixed(delay) => Some(held.read_at + delay),
            Timing::Jittered { delay, jitter } => {
                Some(jittered_due(held.read_at, delay, jitter, held.draw))
            }
        }
    }
}

/// When a chunk read at `read_at` is due under [`Fault::Jittered`]:
/// `read_at + delay ± |draw| × jitter` (`draw` from -1 to 1, its sign the
/// direction), never before `read_at`. [`pump`] writes it no earlier than
/// the chunk before it, so its release time is the later of the two.
fn jittered_due(read_at: Instant, delay: Duration, jitter: Duration, draw: f64) -> Instant {
    let deviation = jitter.mul_f64(draw.abs().min(1.0));
    let held_for = if draw < 0.0 {
        delay.saturating_sub(deviation)
    } else {
        delay + deviation
    };
    read_at + held_for
}

/// Waits until `due` (at once when `None`), then writes some of the
/// chunk's remaining bytes.
async fn write_due<W: AsyncWrite + Unpin>(
    to: &mut W,
    chunk: Option<&(Held, usize)>,
    due: Option<Instant>,
) -> io::Result<usize> {
    let Some((held, sent)) = chunk else {
        return std::future::pending().await;
    };
    // Without a delay, write at once: a zero-length sleep still waits for
    // the next timer tick (about a millisecond).
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
    match to.write(&held.bytes[*sent..]).await? {
        0 => Err(io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_chunks_are_due_within_the_bounds_on_both_sides() {
        let read_at = Instant::now();
        let delay = Duration::from_millis(40);
        let jitter = Duration::from_millis(4);
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut below, mut above) = (false, false);
        for i in 0..10_000 {
            let due = jittered_due(read_at, delay, jitter, rng.f64() * 2.0 - 1.0);
            assert!(due >= read_at + delay - jitter, "{i}");
            assert!(due <= read_at + delay + jitter, "{i}");
            below |= due < read_at + delay - jitter / 2;
            above |= due > read_at + delay + jitter / 2;
        }
        assert!(below && above, "draws spread over both sides");
        assert_eq!(jittered_due(read_at, delay, jitter, 0.0), read_at + delay);
        assert_eq!(
            jittered_due(read_at, delay, jitter, -1.0),
            read_at + delay - jitter
        );
    }

    #[test]
    fn jitter_above_the_delay_never_makes_a_chunk_due_before_it_was_read() {
        let read_at = Instant::now();
        let delay = Duration::from_millis(1);
        let jitter = Duration::from_millis(5);
        assert_eq!(jittered_due(read_at, delay, jitter, -1.0), read_at);
        assert_eq!(
            jittered_due(read_at, delay, jitter, 1.0),
            read_at + Duration::from_millis(6)
        );
    }
}
