//! A TCP delay proxy for tests and scripts: it puts a server (Redis, in the accuracy runs) a
//! chosen latency away without limiting throughput, and can stall its traffic like a partition
//! that holds packets rather than refusing them.
//!
//! It listens on a loopback port and forwards each accepted connection to one target. Every
//! chunk read in either direction is stamped with `now + delay` and queued; a second stage
//! hands it to the writer once that moment has passed. A chunk never waits for an earlier
//! chunk's delay to elapse after its own (the queue is ordered by the moment each chunk was
//! read), so a round trip gains twice the one-way delay while throughput stays that of
//! loopback, and order is kept.
//!
//! Controls, at any time:
//! - [`DelayProxy::set_delay`]: the one-way delay of the chunks read from then on;
//! - [`DelayProxy::hold`]: every connection stalls. Bytes keep being read and queued, none is
//!   written; new connections are accepted but not connected to the target;
//! - [`DelayProxy::release`]: everything queued is delivered, in order (at once when its delay
//!   has already elapsed), and the waiting connections are connected;
//! - [`DelayProxy::drop_connections`]: every connection is reset, and new ones are reset as
//!   soon as accepted, until [`DelayProxy::release`].
//!
//! [`DelayProxy::stats`] lets a test wait for a state instead of sleeping: for instance, after
//! `hold`, `held_bytes` reaching what was sent means every byte was read and is past its delay,
//! and none was written.
//!
//! The proxy runs a single-threaded tokio runtime on a thread of its own, so it works from
//! plain tests and from `#[tokio::test]` ones alike; dropping it stops it and closes every
//! socket before `drop` returns. Used by the integration tests through `tests/common/mod.rs`
//! and by scripts through `examples/tcp_delay.rs`, which includes this file.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// The most bytes read at once from one side of a connection.
const CHUNK: usize = 64 * 1024;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward every chunk once its delay has elapsed.
    Forward,
    /// Keep every byte, write none; accept new connections without connecting them.
    Hold,
    /// Reset every connection, and every new one as soon as it is accepted.
    Refuse,
}

/// Counters of a running proxy (all connections, both directions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since the start (the refused ones included).
    pub accepted: u64,
    /// Accepted connections waiting to be connected to the target (while held).
    pub waiting: u64,
    /// Connections connected to the target now.
    pub open: u64,
    /// Bytes read since the start.
    pub read_bytes: u64,
    /// Bytes past their delay and not written yet: while held, all of them; otherwise only
    /// those being written at this moment.
    pub held_bytes: u64,
    /// Bytes written since the start.
    pub forwarded_bytes: u64,
}

struct Shared {
    target: SocketAddr,
    delay_ns: AtomicU64,
    mode: watch::Sender<Mode>,
    accepted: AtomicU64,
    waiting: AtomicU64,
    open: AtomicU64,
    read_bytes: AtomicU64,
    held_bytes: AtomicU64,
    forwarded_bytes: AtomicU64,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A running delay proxy; stopped (every socket closed) on drop.
pub struct DelayProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DelayProxy {
    /// A proxy on `127.0.0.1:0` to `target`, adding `one_way` to each direction. Panics if it
    /// cannot start.
    pub fn start(target: SocketAddr, one_way: Duration) -> DelayProxy {
        DelayProxy::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target, one_way)
            .unwrap_or_else(|e| panic!("start a delay proxy to {target}: {e}"))
    }

    /// A proxy listening on `listen` (port 0 picks one; see [`DelayProxy::addr`]).
    pub fn start_on(
        listen: SocketAddr,
        target: SocketAddr,
        one_way: Duration,
    ) -> io::Result<DelayProxy> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            target,
            delay_ns: AtomicU64::new(nanos(one_way)),
            mode: watch::Sender::new(Mode::Forward),
            accepted: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            open: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("delay-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        () = serve(listener, serving) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection's task, closing its sockets.
                drop(runtime);
            })?;
        Ok(DelayProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The one-way delay now.
    pub fn delay(&self) -> Duration {
        self.shared.delay()
    }

    /// Sets the one-way delay of every chunk read from now on (chunks already queued keep
    /// theirs; order is kept either way).
    pub fn set_delay(&self, one_way: Duration) {
        self.shared
            .delay_ns
            .store(nanos(one_way), Ordering::Relaxed);
    }

    /// Stalls every connection: bytes are kept, none is written, new connections wait.
    pub fn hold(&self) {
        self.shared.mode.send_replace(Mode::Hold);
    }

    /// Back to forwarding: what was held is delivered in order, waiting connections connect.
    pub fn release(&self) {
        self.shared.mode.send_replace(Mode::Forward);
    }

    /// Resets every connection, and every new one, until [`DelayProxy::release`].
    pub fn drop_connections(&self) {
        self.shared.mode.send_replace(Mode::Refuse);
    }

    /// The mode now.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        Stats {
            accepted: get(&s.accepted),
            waiting: get(&s.waiting),
            open: get(&s.open),
            read_bytes: get(&s.read_bytes),
            held_bytes: get(&s.held_bytes),
            forwarded_bytes: get(&s.forwarded_bytes),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Adds to a shared counter now and takes the same amount back when dropped (a task dropped
/// with the runtime included).
struct Count<'a> {
    counter: &'a AtomicU64,
    mine: AtomicU64,
}

impl<'a> Count<'a> {
    fn new(counter: &'a AtomicU64, n: u64) -> Count<'a> {
        counter.fetch_add(n, Ordering::SeqCst);
        Count {
            counter,
            mine: AtomicU64::new(n),
        }
    }

    fn add(&self, n: u64) {
        self.counter.fetch_add(n, Ordering::SeqCst);
        self.mine.fetch_add(n, Ordering::SeqCst);
    }

    fn sub(&self, n: u64) {
        self.mine.fetch_sub(n, Ordering::SeqCst);
        self.counter.fetch_sub(n, Ordering::SeqCst);
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        self.counter
            .fetch_sub(self.mine.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "refused by the delay proxy",
    )
}

/// Returns once the mode is `Forward`; an error once it is `Refuse`.
async fn until_forwarding(mode: &mut watch::Receiver<Mode>) -> io::Result<()> {
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Forward => return Ok(()),
            Mode::Refuse => return Err(aborted()),
            Mode::Hold => {}
        }
        mode.changed().await.map_err(|_| aborted())?;
    }
}

/// Returns once the mode is `Refuse` (never, if the proxy is going away).
async fn until_refusing(mut mode: watch::Receiver<Mode>) {
    loop {
        if *mode.borrow_and_update() == Mode::Refuse {
            return;
        }
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Makes the socket's close, when it is dropped, a reset rather than a FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors, or a connection reset before it was accepted: try again.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if *shared.mode.borrow() == Mode::Refuse {
            reset(&client);
            continue;
        }
        tokio::spawn(connection(client, Arc::clone(&shared)));
    }
}

async fn connection(mut client: TcpStream, shared: Arc<Shared>) {
    let waiting = Count::new(&shared.waiting, 1);
    let mut mode = shared.mode.subscribe();
    let connect = async {
        until_forwarding(&mut mode).await?;
        TcpStream::connect(shared.target).await
    };
    let connected = tokio::select! {
        r = connect => r,
        () = until_refusing(shared.mode.subscribe()) => Err(aborted()),
    };
    drop(waiting);
    let Ok(mut upstream) = connected else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let open = Count::new(&shared.open, 1);
    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let both = async {
            tokio::try_join!(
                direction(client_read, upstream_write, &shared),
                direction(upstream_read, client_write, &shared),
            )
        };
        tokio::select! {
            r = both => r.map(drop),
            () = until_refusing(shared.mode.subscribe()) => Err(aborted()),
        }
    };
    if outcome.is_err() {
        reset(&client);
        reset(&upstream);
    }
    drop(open);
}

/// What the reader hands on: bytes, the end of the stream, or a failed read.
enum Piece {
    Data(Vec<u8>),
    End,
    Failed,
}

/// Forwards one direction: read and stamp, wait out the delay, write unless held. Ends when the
/// end of the stream has been passed on (`Ok`) or at the first failure (`Err`), which tears the
/// connection down.
async fn direction(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
) -> io::Result<()> {
    let (stamped_tx, mut stamped_rx) = mpsc::unbounded_channel::<(Instant, Piece)>();
    let (ripe_tx, mut ripe_rx) = mpsc::unbounded_channel::<Piece>();
    let held = Count::new(&shared.held_bytes, 0);
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let piece = match from.read(&mut buf).await {
                Ok(0) => Piece::End,
                Ok(n) => {
                    shared.read_bytes.fetch_add(n as u64, Ordering::SeqCst);
                    Piece::Data(buf[..n].to_vec())
                }
                Err(_) => Piece::Failed,
            };
            let last = !matches!(piece, Piece::Data(_));
            let due = Instant::now() + shared.delay();
            if stamped_tx.send((due, piece)).is_err() || last {
                return;
            }
        }
    };
    let held_ref = &held;
    let ripen = async move {
        while let Some((due, piece)) = stamped_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if let Piece::Data(bytes) = &piece {
                held_ref.add(bytes.len() as u64);
            }
            if ripe_tx.send(piece).is_err() {
                return;
            }
        }
    };
    let write = async move {
        let mut mode = shared.mode.subscribe();
        while let Some(piece) = ripe_rx.recv().await {
            until_forwarding(&mut mode).await?;
            match piece {
                Piece::Data(bytes) => {
                    to.write_all(&bytes).await?;
                    held_ref.sub(bytes.len() as u64);
                    shared
                        .forwarded_bytes
                        .fetch_add(bytes.len() as u64, Ordering::SeqCst);
                }
                Piece::End => {
                    // Half-close: the other direction goes on until its own end.
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Piece::Failed => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the other side failed",
                    ))
                }
            }
        }
        Ok(())
    };
    // The writer decides when the direction is over; reading and ripening only feed it
    // (`feed` never completes).
    let feed = async {
        tokio::join!(read, ripen);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        r = write => r,
        () = feed => Ok(()),
    }
}
