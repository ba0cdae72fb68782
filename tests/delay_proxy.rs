//! The TCP delay proxy of `tests/common/delay.rs` (also `examples/tcp_delay.rs`), against a
//! small echo server on loopback: a round trip gains twice the one-way delay and not much more,
//! many chunks in flight take about one delay rather than one each, a hold keeps every byte
//! and a release delivers them in order, a drop resets, and dropping the proxy closes it all.
//!
//! No test sleeps to be right: states are polled with deadlines (the proxy's counters say when
//! every byte sent is held), and elapsed times are measured. The upper bounds on times are
//! generous: the machine running the suite may be small and busy.

mod common;

use common::delay::{DelayProxy, Mode};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read and write timeout of every test connection.
const IO: Duration = Duration::from_secs(10);
/// How long a test waits for a state it polls for.
const DEADLINE: Duration = Duration::from_secs(10);
/// What a loaded 2-core machine may add to a round trip on top of the proxy's delays.
const SLACK: Duration = Duration::from_millis(250);

/// An echo server on an ephemeral loopback port: every connection gets back what it sends.
/// Counts the connections it accepted and the bytes it received. Its threads end with their
/// connections (the accepting one with the test process).
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
        let addr = listener.local_addr().expect("echo address");
        let accepted = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (a, r) = (Arc::clone(&accepted), Arc::clone(&received));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let _ = stream.set_nodelay(true);
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        r.fetch_add(n as u64, Ordering::SeqCst);
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            accepted,
            received,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(IO)).expect("read timeout");
    s.set_write_timeout(Some(IO)).expect("write timeout");
    s
}

/// Polls `f` every 200 µs until it holds (true) or `DEADLINE` passes (false).
fn poll(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    f()
}

/// Sends `msg`, reads it back, and returns how long that took.
fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = Instant::now();
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read the echo back");
    let took = start.elapsed();
    assert_eq!(back, msg, "the echo came back altered");
    took
}

/// Message `i` of a numbered sequence: fixed width, so a reader can split and check order.
fn numbered(i: usize) -> Vec<u8> {
    format!("message {i:06} of the sequence\n").into_bytes()
}

/// Reads `count` numbered messages and checks they are 0..count in order.
fn read_in_order(s: &mut TcpStream, count: usize) {
    let len = numbered(0).len();
    let mut back = vec![0u8; len * count];
    s.read_exact(&mut back)
        .expect("read the held messages back");
    for (i, got) in back.chunks(len).enumerate() {
        assert_eq!(
            got,
            numbered(i).as_slice(),
            "message {i} out of order or altered: {:?}",
            String::from_utf8_lossy(got)
        );
    }
}

/// Whether a read says the connection was closed (an end of stream or a reset), rather than
/// that nothing came.
fn closed(r: &std::io::Result<usize>) -> bool {
    match r {
        Ok(n) => *n == 0,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn a_round_trip_gains_twice_the_delay_and_not_much_more() {
    let echo = Echo::start();
    let one_way = Duration::from_millis(50);
    let proxy = DelayProxy::start(echo.addr, one_way);
    let mut s = connect(proxy.addr());
    let trips: Vec<Duration> = (0..6).map(|_| round_trip(&mut s, b"ping\n")).collect();
    for (i, t) in trips.iter().enumerate() {
        assert!(
            *t >= 2 * one_way,
            "round trip {i} took {t:?}, less than twice the one-way delay {one_way:?}: {trips:?}"
        );
    }
    let m = median(trips.clone());
    assert!(
        m <= 2 * one_way + SLACK,
        "median round trip {m:?}, much more than 2 x {one_way:?}: {trips:?}"
    );
}

#[test]
fn set_delay_applies_to_what_is_sent_next() {
    let echo = Echo::start();
    let proxy = DelayProxy::start(echo.addr, Duration::from_millis(100));
    let mut s = connect(proxy.addr());
    let slow = round_trip(&mut s, b"slow\n");
    assert!(slow >= Duration::from_millis(200), "{slow:?}");

    proxy.set_delay(Duration::from_millis(10));
    assert_eq!(proxy.delay(), Duration::from_millis(10));
    let fast: Vec<Duration> = (0..6).map(|_| round_trip(&mut s, b"fast\n")).collect();
    assert!(
        fast.iter().all(|t| *t >= Duration::from_millis(20)),
        "{fast:?}"
    );
    let m = median(fast.clone());
    assert!(
        m < Duration::from_millis(200) && m <= Duration::from_millis(20) + SLACK,
        "the new delay was not applied: {fast:?}"
    );

    proxy.set_delay(Duration::ZERO);
    let none = median((0..6).map(|_| round_trip(&mut s, b"none\n")).collect());
    assert!(none <= SLACK, "{none:?}");
}

#[test]
fn many_messages_in_flight_take_about_one_delay_not_one_each() {
    let echo = Echo::start();
    let one_way = Duration::from_millis(100);
    let proxy = DelayProxy::start(echo.addr, one_way);
    let mut s = connect(proxy.addr());
    let mut reader = s.try_clone().expect("clone the stream");
    const N: usize = 100;
    let len = numbered(0).len();

    // Each message is written only once the proxy has read the previous one, so each is a
    // chunk of its own in the proxy's queue: one delay per chunk, one after another, would
    // take N x 100 ms.
    let receiver = std::thread::spawn(move || {
        let mut arrived = Vec::with_capacity(N);
        let mut buf = vec![0u8; len];
        for i in 0..N {
            reader.read_exact(&mut buf).expect("read an echoed message");
            assert_eq!(buf, numbered(i), "message {i} out of order or altered");
            arrived.push(Instant::now());
        }
        arrived
    });
    let mut sent = Vec::with_capacity(N);
    let before = proxy.stats().read_bytes;
    for i in 0..N {
        s.write_all(&numbered(i)).expect("write a message");
        sent.push(Instant::now());
        let want = before + ((i + 1) * len) as u64;
        assert!(
            poll(|| proxy.stats().read_bytes >= want),
            "the proxy never read message {i}: {:?}",
            proxy.stats()
        );
    }
    let arrived = receiver.join().expect("the reader thread");

    let trips: Vec<Duration> = sent.iter().zip(&arrived).map(|(s, a)| *a - *s).collect();
    let min = *trips.iter().min().expect("N > 0");
    let max = *trips.iter().max().expect("N > 0");
    let span = sent[N - 1] - sent[0];
    assert!(
        min >= 2 * one_way,
        "a message came back in {min:?}, under 2 x {one_way:?}"
    );
    assert!(
        max <= 2 * one_way + 2 * SLACK,
        "with {N} messages in flight (written over {span:?}) one took {max:?} to come back: \
         the delays add up instead of overlapping"
    );
}

#[test]
fn throughput_is_not_limited_by_the_delay() {
    let echo = Echo::start();
    let one_way = Duration::from_millis(50);
    let proxy = DelayProxy::start(echo.addr, one_way);
    let s = connect(proxy.addr());
    let mut writer = s.try_clone().expect("clone the stream");
    let mut reader = s;
    // 8 MiB is at least 128 reads of 64 KiB each way: 6.4 s if each waited out its delay
    // after the previous one.
    const TOTAL: usize = 8 << 20;
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let start = Instant::now();
    let w = std::thread::spawn(move || writer.write_all(&data).expect("write 8 MiB"));
    let mut back = vec![0u8; TOTAL];
    reader.read_exact(&mut back).expect("read 8 MiB back");
    let took = start.elapsed();
    w.join().expect("the writer thread");
    assert!(back == expected, "the bytes came back altered");
    assert!(took >= 2 * one_way, "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "8 MiB through a 50 ms delay took {took:?}: throughput is limited by the delay"
    );
}

#[test]
fn hold_keeps_every_byte_and_release_delivers_them_in_order() {
    let echo = Echo::start();
    let proxy = DelayProxy::start(echo.addr, Duration::from_millis(20));
    let mut s = connect(proxy.addr());
    round_trip(&mut s, b"before the hold\n");
    let received_before = echo.received();

    proxy.hold();
    assert_eq!(proxy.mode(), Mode::Hold);
    const N: usize = 200;
    let mut total = 0u64;
    for i in 0..N {
        let msg = numbered(i);
        s.write_all(&msg).expect("write while held");
        total += msg.len() as u64;
    }
    // Every byte read by the proxy and past its delay, none written.
    assert!(
        poll(|| proxy.stats().held_bytes == total),
        "the proxy should hold all {total} bytes: {:?}",
        proxy.stats()
    );
    assert_eq!(
        echo.received(),
        received_before,
        "bytes reached the server during the hold"
    );
    s.set_nonblocking(true).expect("nonblocking");
    let mut one = [0u8; 1];
    let early = s.read(&mut one);
    assert!(
        matches!(&early, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the client got something during the hold: {early:?}"
    );
    s.set_nonblocking(false).expect("blocking");

    // A new connection is accepted but not connected to the server.
    let mut late = connect(proxy.addr());
    late.write_all(b"sent by a connection opened during the hold\n")
        .expect("write on the new connection");
    assert!(
        poll(|| {
            let st = proxy.stats();
            st.accepted == 2 && st.waiting == 1
        }),
        "the new connection should be accepted and waiting: {:?}",
        proxy.stats()
    );
    assert_eq!(echo.accepted(), 1, "the new connection reached the server");

    proxy.release();
    read_in_order(&mut s, N);
    let mut back = vec![0u8; 44];
    late.read_exact(&mut back)
        .expect("the late connection's echo after the release");
    assert_eq!(&back, b"sent by a connection opened during the hold\n");
    assert_eq!(echo.accepted(), 2);
    assert!(
        poll(|| proxy.stats().held_bytes == 0),
        "{:?}",
        proxy.stats()
    );
    round_trip(&mut s, b"after the release\n");
}

#[test]
fn a_hold_longer_than_the_delay_then_a_release_keeps_both_directions_in_order() {
    // The server's answers are held too: a request forwarded before the hold whose echo is
    // on its way back is kept, and arrives before anything sent later.
    let echo = Echo::start();
    let proxy = DelayProxy::start(echo.addr, Duration::from_millis(30));
    let mut s = connect(proxy.addr());
    round_trip(&mut s, b"warm\n");
    s.write_all(&numbered(0)).expect("write");
    // The first message reaches the server, then everything stalls.
    assert!(
        poll(|| echo.received() >= (5 + numbered(0).len()) as u64),
        "the first message never reached the server"
    );
    proxy.hold();
    for i in 1..50 {
        s.write_all(&numbered(i)).expect("write while held");
    }
    let total: u64 = (1..50).map(|i| numbered(i).len() as u64).sum();
    // Held: the 49 messages going out, and the echo of the first coming back once it was read.
    assert!(
        poll(|| proxy.stats().held_bytes >= total),
        "the proxy should hold at least the {total} bytes sent during the hold: {:?}",
        proxy.stats()
    );
    proxy.release();
    read_in_order(&mut s, 50);
}

#[test]
fn drop_resets_connections_and_new_ones_until_release() {
    let echo = Echo::start();
    let proxy = DelayProxy::start(echo.addr, Duration::from_millis(5));
    let mut s = connect(proxy.addr());
    round_trip(&mut s, b"before\n");

    proxy.drop_connections();
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(closed(&r), "the connection should be closed: {r:?}");
    assert!(poll(|| proxy.stats().open == 0), "{:?}", proxy.stats());

    // A new connection is accepted by the kernel, then reset by the proxy: seen at the first
    // read, or already by `connect` when the reset comes before it returns (a loaded machine).
    match TcpStream::connect(proxy.addr()) {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::ConnectionReset,
            "a connection made while dropping is accepted, then reset: {e}"
        ),
        Ok(mut refused) => {
            refused.set_read_timeout(Some(IO)).expect("read timeout");
            let _ = refused.write_all(b"x\n");
            let r = refused.read(&mut buf);
            assert!(
                closed(&r),
                "a connection made while dropping should be closed: {r:?}"
            );
        }
    }
    assert_eq!(echo.accepted(), 1, "no new connection reaches the server");

    proxy.release();
    let mut again = connect(proxy.addr());
    let t = round_trip(&mut again, b"after the release\n");
    assert!(t >= Duration::from_millis(10), "{t:?}");
}

#[test]
fn dropping_the_proxy_closes_its_connections_and_its_port() {
    let echo = Echo::start();
    let proxy = DelayProxy::start(echo.addr, Duration::from_millis(5));
    let addr = proxy.addr();
    assert_eq!(proxy.target(), echo.addr);
    let mut s = connect(addr);
    round_trip(&mut s, b"hello\n");
    drop(proxy);
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        closed(&r),
        "the connection should be closed once the proxy is dropped: {r:?}"
    );
    let after = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    assert!(
        after.is_err(),
        "the port still accepts after the proxy was dropped"
    );
}

#[test]
fn works_from_inside_a_tokio_runtime() {
    // Started and dropped inside an async test: the proxy's own runtime runs on its own
    // thread, so neither panics with "cannot start a runtime from within a runtime".
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let echo = Echo::start();
        let proxy = DelayProxy::start(echo.addr, Duration::from_millis(10));
        let mut s = tokio::net::TcpStream::connect(proxy.addr())
            .await
            .expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let start = Instant::now();
        s.write_all(b"async\n").await.expect("write");
        let mut back = [0u8; 6];
        tokio::time::timeout(IO, s.read_exact(&mut back))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&back, b"async\n");
        assert!(start.elapsed() >= Duration::from_millis(20));
        drop(proxy);
    });
}
