//! `vchan-perf`: how fast vchan-rs moves data, next to Debian's libxenvchan and the kernel's
//! own local channels, in one table.
//!
//! Three subcommands:
//!
//! - `peer server|client ...` is one end of one measurement. Its protocol is shared with the C
//!   peer `tests/c/vchan-perf.c` (Debian's libxenvchan), so either library can sit at either end,
//!   on the simulated host or in two real Xen domains:
//!   ```text
//!   vchan-perf peer server CLIENT_DOMID PORT RING_MIN stream|pingpong MSG_SIZE COUNT
//!   vchan-perf peer client SERVER_DOMID PORT stream|pingpong MSG_SIZE COUNT
//!   ```
//!   The client prints one line: `stream BYTES NANOSECONDS` or `pingpong ROUNDS P50_NS P99_NS`.
//! - `table` runs on the simulated host (under `xensim run --domid 0`, with domain 1 created):
//!   it starts pairs of peers (server in dom0, client in dom1) for every cell, measures the
//!   in-process baselines (socketpair, pipe, TCP, memory copy), and prints the comparison.
//! - `report FILE` prints the same table from measurement lines gathered elsewhere:
//!   `IMPL RING_MIN MSG_SIZE stream BYTES NANOS` or `IMPL RING_MIN MSG_SIZE pingpong ROUNDS P50 P99`.
//!
//! Timing is reported, never judged.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// The proxy row, in a file of its own beside this one.
#[path = "vchan-perf/proxy.rs"]
mod proxy;

use conduit_vchan::Xen;
use proxy::{Carrier, Rig};
use tools::cli::vchan_perf::{Cli, Cmd, Mode, PeerRole, TableArgs};
use tools::describe;
use vchan::layout::{Layout, Side};
use vchan::xensim::XensimDomain;
use vchan::{Address, Backend, RingSizes, State, Vchan, VchanError};
use xen_types::DomId;

/// Untimed ping-pong rounds before the timed ones (the C peer uses the same number).
const WARMUP: u64 = 1000;
/// How long a client waits for its server to publish itself.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long a server waits for its client to connect.
const SERVER_WAIT: Duration = Duration::from_secs(30);
/// How long `table` lets one pair of peers run before it kills them.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// The rings of the table: in-page (1024/2048 bytes), 64 KiB, 1 MiB.
const RINGS: [usize; 3] = [0, 64 << 10, 1 << 20];
/// The write (and read) sizes of the table.
const WRITES: [usize; 2] = [4 << 10, 64 << 10];
/// The ping-pong cell of the table: 64-byte messages over 64 KiB rings.
const PINGPONG: (usize, usize) = (64 << 10, 64);

// ------------------------------------------------------------------------------------------------
// The measurement protocol, shared by the vchan peers and the in-process baselines.

/// The byte at offset `j` of the sender's buffer; the stream is that buffer repeated. The C peer
/// computes the same.
fn pattern_byte(j: u64) -> u8 {
    ((j as u32).wrapping_mul(0x9E37_79B1) >> 24) as u8
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(pattern_byte).collect()
}

/// Send `count` bytes in writes of `msg` bytes from one buffer.
fn send_stream(
    mut write_all: impl FnMut(&[u8]) -> io::Result<()>,
    msg: usize,
    count: u64,
) -> Result<(), String> {
    let buf = pattern(msg);
    let mut left = count;
    while left > 0 {
        let n = usize::try_from(left).map_or(msg, |l| l.min(msg));
        write_all(&buf[..n]).map_err(|e| {
            format!(
                "cannot send after {} of {count} bytes: {}",
                count - left,
                describe(&e)
            )
        })?;
        left -= n as u64;
    }
    Ok(())
}

/// A stream measurement: the bytes that arrived after the first read, and the time from that
/// read to the last byte.
#[derive(Clone, Copy)]
struct Timed {
    bytes: u64,
    nanos: u64,
}

/// Receive `count` bytes with a `msg`-byte buffer, checking the first and last byte of every read
/// against the pattern, then EOF.
fn receive_stream(
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    msg: usize,
    count: u64,
) -> Result<Timed, String> {
    let mut buf = vec![0u8; msg];
    let mut got = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    let size = msg as u64;
    while got < count {
        let n = read(&mut buf)
            .map_err(|e| format!("cannot read after {got} of {count} bytes: {}", describe(&e)))?;
        if n == 0 {
            return Err(format!("the sender closed after {got} of {count} bytes"));
        }
        if first.is_none() {
            first = Some((Instant::now(), n as u64));
        }
        let last = got + n as u64 - 1;
        if buf[0] != pattern_byte(got % size) || buf[n - 1] != pattern_byte(last % size) {
            return Err(format!(
                "the stream does not hold the bytes the sender wrote (within bytes {got}..{last})"
            ));
        }
        got += n as u64;
    }
    let nanos = first.map_or(0, |(start, _)| start.elapsed().as_nanos() as u64);
    if got != count {
        return Err(format!("the sender sent {got} bytes, not {count}"));
    }
    match read(&mut buf) {
        Ok(0) => {}
        Ok(_) => return Err(format!("the sender sent more than {count} bytes")),
        Err(e) => {
            return Err(format!(
                "cannot read the end of the stream: {}",
                describe(&e)
            ))
        }
    }
    let bytes = got - first.map_or(0, |(_, n)| n);
    Ok(Timed { bytes, nanos })
}

/// A ping-pong measurement: timed rounds and nearest-rank percentiles of the round trip.
#[derive(Clone, Copy)]
struct Latency {
    rounds: u64,
    p50: u64,
    p99: u64,
}

/// Nearest rank: the smallest value with at least `p`% of the values at or below it.
fn percentile(sorted: &[u64], p: u64) -> u64 {
    let rank = (sorted.len() as u64 * p).div_ceil(100) as usize;
    sorted[rank.saturating_sub(1)]
}

/// The client side of a ping-pong: `WARMUP + rounds` rounds, each message stamped with its round
/// and its echo checked; only the last `rounds` are timed.
fn ping(
    mut send: impl FnMut(&[u8]) -> io::Result<()>,
    mut recv: impl FnMut(&mut [u8]) -> io::Result<()>,
    msg: usize,
    rounds: u64,
) -> Result<Latency, String> {
    let mut out = pattern(msg);
    let mut back = vec![0u8; msg];
    let mut times = Vec::with_capacity(rounds as usize);
    for round in 0..WARMUP + rounds {
        let stamp = round.to_le_bytes();
        let k = msg.min(stamp.len());
        out[..k].copy_from_slice(&stamp[..k]);
        let start = Instant::now();
        send(&out).map_err(|e| format!("cannot send in round {round}: {}", describe(&e)))?;
        recv(&mut back)
            .map_err(|e| format!("cannot receive in round {round}: {}", describe(&e)))?;
        let nanos = start.elapsed().as_nanos() as u64;
        if back != out {
            return Err(format!(
                "the echo of round {round} differs from what was sent"
            ));
        }
        if round >= WARMUP {
            times.push(nanos);
        }
    }
    times.sort_unstable();
    Ok(Latency {
        rounds,
        p50: percentile(&times, 50),
        p99: percentile(&times, 99),
    })
}

/// The server side of a ping-pong: receive and send back `WARMUP + rounds` messages.
fn pong(
    mut recv: impl FnMut(&mut [u8]) -> io::Result<()>,
    mut send: impl FnMut(&[u8]) -> io::Result<()>,
    msg: usize,
    rounds: u64,
) -> Result<(), String> {
    let mut buf = vec![0u8; msg];
    for round in 0..WARMUP + rounds {
        recv(&mut buf).map_err(|e| format!("cannot receive in round {round}: {}", describe(&e)))?;
        send(&buf).map_err(|e| format!("cannot send in round {round}: {}", describe(&e)))?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The vchan peers.

/// Run one end (or, looped back, both); a client returns its result line.
fn peer<B: Backend + Sync>(backend: &B, role: &PeerRole) -> Result<Option<String>, String> {
    match *role {
        PeerRole::Server {
            client_domid,
            port,
            ring_min,
            mode,
            msg_size,
            count,
        } => serve(backend, client_domid, port, ring_min, mode, msg_size, count).map(|()| None),
        PeerRole::Client {
            server_domid,
            port,
            mode,
            msg_size,
            count,
        } => connect(backend, server_domid, port, mode, msg_size, count).map(Some),
        PeerRole::Ops {
            domid,
            port,
            ring_min,
            msg_size,
            count,
        } => ops(backend, domid, port, ring_min, msg_size, count).map(Some),
        PeerRole::Loopback {
            domid,
            port,
            ring_min,
            mode,
            msg_size,
            count,
        } => thread::scope(|s| {
            let server = s.spawn(|| serve(backend, domid, port, ring_min, mode, msg_size, count));
            let line = connect(backend, domid, port, mode, msg_size, count);
            let served = server
                .join()
                .unwrap_or_else(|_| Err("the server thread panicked".into()));
            let line = line?;
            served.map(|()| Some(line))
        }),
    }
}

/// Both ends in this thread, non-blocking: `count` rounds of a write and the reads that drain it
/// (as the C peer's `ops`, for an instruction count of the calls themselves).
fn ops<B: Backend>(
    backend: &B,
    domid: DomId,
    port: u32,
    ring_min: usize,
    msg_size: usize,
    count: u64,
) -> Result<String, String> {
    check_msg(msg_size)?;
    let sizes = RingSizes {
        server_read: ring_min,
        server_write: ring_min,
    };
    let server = Vchan::server(backend, domid, &Address::Port(port), sizes)
        .map_err(|e| format!("cannot serve: {}", describe(&e)))?;
    let client = Vchan::client(backend, domid, &Address::Port(port), Some(CONNECT_WAIT))
        .map_err(|e| format!("cannot connect: {}", describe(&e)))?;
    server.set_nonblocking(true);
    client.set_nonblocking(true);
    let sent = pattern(msg_size);
    let mut back = vec![0u8; msg_size];
    let mut calls = 0u64;
    for _ in 0..count {
        let mut done = 0;
        while done < msg_size {
            let n = server.write(&sent[done..]).map_err(|e| describe(&e))?;
            let m = client.read(&mut back).map_err(|e| describe(&e))?;
            calls += 2;
            if n == 0 || m != n || back[..n] != sent[done..done + n] {
                return Err("a round lost or changed bytes".into());
            }
            done += n;
        }
    }
    client.close().map_err(|e| describe(&e))?;
    server.close().map_err(|e| describe(&e))?;
    Ok(format!("ops {calls}"))
}

/// The server's side: serve `client_domid` at `port`, wait for it, then send the stream or echo.
fn serve<B: Backend>(
    backend: &B,
    client_domid: DomId,
    port: u32,
    ring_min: usize,
    mode: Mode,
    msg_size: usize,
    count: u64,
) -> Result<(), String> {
    check_msg(msg_size)?;
    let sizes = RingSizes {
        server_read: ring_min,
        server_write: ring_min,
    };
    let vchan = Vchan::server(backend, client_domid, &Address::Port(port), sizes)
        .map_err(|e| format!("cannot serve domain {client_domid}: {}", describe(&e)))?;
    match vchan.wait_connected(Some(SERVER_WAIT)) {
        Ok(State::Connected) => {}
        Ok(State::PeerClosed) => return Err("the client closed at once".into()),
        Ok(State::WaitingForPeer) | Err(VchanError::TimedOut) => {
            return Err(format!(
                "domain {client_domid} did not connect within {SERVER_WAIT:?}"
            ))
        }
        Err(e) => return Err(format!("waiting for the client: {}", describe(&e))),
    }
    match mode {
        Mode::Stream => send_stream(|b| (&vchan).write_all(b), msg_size, count)?,
        Mode::Pingpong => pong(
            |b| vchan.recv(b).map_err(io::Error::from),
            |b| vchan.send(b).map_err(io::Error::from),
            msg_size,
            count,
        )?,
    }
    vchan
        .close()
        .map_err(|e| format!("cannot close: {}", describe(&e)))
}

/// The client's side: connect, receive the stream or ping, and say what was measured.
fn connect<B: Backend>(
    backend: &B,
    server_domid: DomId,
    port: u32,
    mode: Mode,
    msg_size: usize,
    count: u64,
) -> Result<String, String> {
    check_msg(msg_size)?;
    let vchan = Vchan::client(
        backend,
        server_domid,
        &Address::Port(port),
        Some(CONNECT_WAIT),
    )
    .map_err(|e| {
        format!(
            "cannot connect to domain {server_domid} port {port}: {}",
            describe(&e)
        )
    })?;
    let line = match mode {
        Mode::Stream => {
            let t = receive_stream(|b| Ok(vchan.read(b)?), msg_size, count)?;
            format!("stream {} {}", t.bytes, t.nanos)
        }
        Mode::Pingpong => {
            if count == 0 {
                return Err("a ping-pong needs at least one round".into());
            }
            let l = ping(
                |b| vchan.send(b).map_err(io::Error::from),
                |b| vchan.recv(b).map_err(io::Error::from),
                msg_size,
                count,
            )?;
            format!("pingpong {} {} {}", l.rounds, l.p50, l.p99)
        }
    };
    vchan
        .close()
        .map_err(|e| format!("cannot close: {}", describe(&e)))?;
    Ok(line)
}

fn check_msg(msg: usize) -> Result<(), String> {
    if msg == 0 || msg > 1 << 30 {
        return Err(format!("MSG_SIZE {msg} is not within 1..=1073741824"));
    }
    Ok(())
}

fn run_peer(role: &PeerRole) -> Result<(), String> {
    let line = match Xen::from_env().map_err(|e| e.to_string())? {
        Xen::Xensim(backend) => peer(&backend, role)?,
        Xen::Real(backend) => peer(&backend, role)?,
        // Never from the environment: the in-process simulation is made in code.
        Xen::Sim(backend) => peer(&backend, role)?,
    };
    if let Some(line) = line {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write standard output: {e}"))?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Figures: what was measured, as lines and as the best per cell.

/// What a figure measures: a vchan implementation or an in-process baseline. The order is the
/// order of the columns.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Series {
    C,
    Dropin,
    Ours,
    CThreads,
    OursThreads,
    Socketpair,
    Pipe,
    Tcp,
    Memcpy,
}

impl Series {
    const ALL: [Series; 9] = [
        Series::C,
        Series::Dropin,
        Series::Ours,
        Series::CThreads,
        Series::OursThreads,
        Series::Socketpair,
        Series::Pipe,
        Series::Tcp,
        Series::Memcpy,
    ];

    /// The name in measurement lines.
    fn token(self) -> &'static str {
        match self {
            Series::C => "c",
            Series::Dropin => "dropin",
            Series::Ours => "ours",
            Series::CThreads => "c-threads",
            Series::OursThreads => "ours-threads",
            Series::Socketpair => "socketpair",
            Series::Pipe => "pipe",
            Series::Tcp => "tcp",
            Series::Memcpy => "memcpy",
        }
    }

    /// The column heading.
    fn label(self) -> &'static str {
        match self {
            Series::C => "C",
            Series::Dropin => "drop-in",
            Series::Ours => "ours",
            Series::CThreads => "C thr",
            Series::OursThreads => "ours thr",
            Series::Socketpair => "socketpair",
            Series::Pipe => "pipe",
            Series::Tcp => "TCP",
            Series::Memcpy => "memcpy/2",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Series::C => "#4e79a7",
            Series::Dropin => "#f28e2b",
            Series::Ours => "#e15759",
            Series::CThreads => "#a0cbe8",
            Series::OursThreads => "#ff9d9a",
            Series::Socketpair => "#76b7b2",
            Series::Pipe => "#59a14f",
            Series::Tcp => "#edc948",
            Series::Memcpy => "#b07aa1",
        }
    }

    fn from_token(token: &str) -> Option<Series> {
        Series::ALL.into_iter().find(|s| s.token() == token)
    }

    /// The C library's series that ours is compared with (in the same placement).
    fn versus(self) -> Option<Series> {
        match self {
            Series::Dropin | Series::Ours => Some(Series::C),
            Series::OursThreads => Some(Series::CThreads),
            _ => None,
        }
    }

    /// The heading of the column that divides this series by [`versus`](Series::versus).
    fn ratio_label(self) -> &'static str {
        match self {
            Series::Dropin => "drop-in/C",
            _ => "ours/C",
        }
    }

    /// Whether both peers run in one process (threads), rather than one per domain.
    fn threads(self) -> bool {
        matches!(self, Series::CThreads | Series::OursThreads)
    }

    /// Whether the series is measured by vchan peers (rather than in process).
    fn is_vchan(self) -> bool {
        matches!(
            self,
            Series::C | Series::Dropin | Series::Ours | Series::CThreads | Series::OursThreads
        )
    }

    /// Whether the C peer measures it (on Debian's library or on the drop-in).
    fn is_c(self) -> bool {
        matches!(self, Series::C | Series::Dropin | Series::CThreads)
    }
}

/// One measurement.
#[derive(Clone, Copy)]
enum Figure {
    Stream(Timed),
    Pingpong(Latency),
}

/// One measurement line: `IMPL RING_MIN MSG_SIZE stream BYTES NANOS` or
/// `IMPL RING_MIN MSG_SIZE pingpong ROUNDS P50 P99`.
struct Record {
    series: Series,
    ring: usize,
    msg: usize,
    figure: Figure,
}

impl Record {
    fn parse(line: &str) -> Result<Record, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let series = words
            .first()
            .and_then(|w| Series::from_token(w))
            .ok_or_else(|| {
                "it does not start with ours, c, dropin, socketpair, pipe, tcp or memcpy".to_owned()
            })?;
        let num = |i: usize| -> Result<u64, String> {
            let w = words.get(i).ok_or("it is too short")?;
            w.parse::<u64>()
                .map_err(|_| format!("{w:?} is not a non-negative integer"))
        };
        let (ring, msg) = (num(1)? as usize, num(2)? as usize);
        let figure = match (words.get(3).copied(), words.len()) {
            (Some("stream"), 6) => Figure::Stream(Timed {
                bytes: num(4)?,
                nanos: num(5)?,
            }),
            (Some("pingpong"), 7) => Figure::Pingpong(Latency {
                rounds: num(4)?,
                p50: num(5)?,
                p99: num(6)?,
            }),
            _ => {
                return Err("expected IMPL RING_MIN MSG_SIZE stream BYTES NANOS or \
                     IMPL RING_MIN MSG_SIZE pingpong ROUNDS P50 P99"
                    .into())
            }
        };
        Ok(Record {
            series,
            ring,
            msg,
            figure,
        })
    }
}

/// The best figure per cell: a cell is (ring minimum, message size).
#[derive(Default)]
struct Results {
    /// Throughput in GB/s, the highest of the runs.
    stream: BTreeMap<(usize, usize), BTreeMap<Series, f64>>,
    /// Round trip (p50, p99) in ns, from the run with the lowest p50.
    pingpong: BTreeMap<(usize, usize), BTreeMap<Series, (u64, u64)>>,
}

impl Results {
    fn add(&mut self, r: &Record) {
        let cell = (r.ring, r.msg);
        match r.figure {
            Figure::Stream(t) => {
                if t.bytes == 0 || t.nanos == 0 {
                    return;
                }
                let gbs = t.bytes as f64 / t.nanos as f64;
                let best = self.stream.entry(cell).or_default();
                let entry = best.entry(r.series).or_insert(gbs);
                *entry = entry.max(gbs);
            }
            Figure::Pingpong(l) => {
                let best = self.pingpong.entry(cell).or_default();
                let entry = best.entry(r.series).or_insert((l.p50, l.p99));
                if l.p50 < entry.0 {
                    *entry = (l.p50, l.p99);
                }
            }
        }
    }

    /// The series that have any figure, in column order.
    fn series(&self) -> Vec<Series> {
        Series::ALL
            .into_iter()
            .filter(|s| {
                self.stream.values().any(|m| m.contains_key(s))
                    || self.pingpong.values().any(|m| m.contains_key(s))
            })
            .collect()
    }
}

// ------------------------------------------------------------------------------------------------
// The text table.

/// `in-page`, `64 KiB`, `1 MiB`, `4096 B`.
fn size_label(bytes: usize) -> String {
    match bytes {
        0 => "in-page".into(),
        b if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Three significant figures or so.
fn number(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v if v >= 0.1 => format!("{v:.3}"),
        v => format!("{v:.4}"),
    }
}

/// Rows of cells as an aligned table with pipes; the first `left` columns align left.
fn render(head: &[String], rows: &[Vec<String>], left: usize) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i < left {
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            } else {
                let _ = write!(s, " {}{c} |", " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(head);
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        let rule = "-".repeat(*w);
        out.push_str(&if i < left {
            format!("-{rule}-|")
        } else {
            format!("-{rule}:|")
        });
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// The throughput table and the ping-pong table for the given columns ("n/a" where a figure is
/// missing).
fn tables(results: &Results, columns: &[Series]) -> String {
    let mut out = String::new();
    if !results.stream.is_empty() {
        // A ratio column after each of ours whose C counterpart is shown.
        let ratio = |s: &Series| s.versus().filter(|c| columns.contains(c));
        let mut head = vec!["ring".to_owned(), "write".to_owned()];
        for s in columns {
            head.push(s.label().to_owned());
            if ratio(s).is_some() {
                head.push(s.ratio_label().to_owned());
            }
        }
        let mut rows = Vec::new();
        for (&(ring, msg), best) in &results.stream {
            let mut row = vec![size_label(ring), size_label(msg)];
            for s in columns {
                row.push(best.get(s).map_or("n/a".into(), |v| number(*v)));
                if let Some(c) = ratio(s) {
                    row.push(match (best.get(s), best.get(&c)) {
                        (Some(o), Some(c)) => number(o / c),
                        _ => "n/a".into(),
                    });
                }
            }
            rows.push(row);
        }
        out.push_str("Stream throughput, GB/s (10^9 bytes/s), server to client:\n\n");
        out.push_str(&render(&head, &rows, 2));
    }
    if !results.pingpong.is_empty() {
        // A copy has no round trip.
        let columns: Vec<Series> = columns
            .iter()
            .copied()
            .filter(|s| *s != Series::Memcpy)
            .collect();
        let mut head = vec!["ring".to_owned(), "message".to_owned()];
        head.extend(columns.iter().map(|s| s.label().to_owned()));
        let mut rows = Vec::new();
        for (&(ring, msg), best) in &results.pingpong {
            let mut row = vec![size_label(ring), size_label(msg)];
            for s in &columns {
                row.push(best.get(s).map_or("n/a".into(), |&(p50, p99)| {
                    format!(
                        "{} / {}",
                        number(p50 as f64 / 1e3),
                        number(p99 as f64 / 1e3)
                    )
                }));
            }
            rows.push(row);
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("Ping-pong round trip, µs, p50 / p99:\n\n");
        out.push_str(&render(&head, &rows, 2));
    }
    out
}

/// What each column means, for the columns shown.
fn legend(columns: &[Series]) -> String {
    let mut out = String::from("Columns:\n");
    for s in columns {
        let text = match s {
            Series::C => {
                "Debian's libxenvchan at both ends (tests/c/vchan-perf.c): a server process in \
                 dom0, a client process in domain 1"
            }
            Series::Dropin => {
                "the same C program on our drop-in libxenvchan.so.4.17 (libxenvchan/) at both \
                 ends, placed as C"
            }
            Series::Ours => "vchan-rs at both ends (vchan-perf peer), placed as C",
            Series::CThreads => {
                "Debian's libxenvchan, both ends as two threads of one process in dom0 (loopback)"
            }
            Series::OursThreads => "vchan-rs, placed as C thr",
            Series::Socketpair => "a Unix socketpair (SOCK_STREAM), two threads of one process",
            Series::Pipe => "a pipe, two threads of one process",
            Series::Tcp => "TCP over 127.0.0.1 with TCP_NODELAY, two threads of one process",
            Series::Memcpy => {
                "the memory-copy limit: one thread copying the writes into a buffer the size \
                 of the ring, GB/s halved (a ring copies every byte twice)"
            }
        };
        let _ = writeln!(out, "  {:<10}  {text}", s.label());
        if let Some(c) = s.versus().filter(|c| columns.contains(c)) {
            let _ = writeln!(
                out,
                "  {:<10}  {} divided by {}",
                s.ratio_label(),
                s.label(),
                c.label()
            );
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// The SVG chart.

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A logarithmic vertical axis over whole decades.
struct LogAxis {
    lo: f64,
    hi: f64,
    bottom: f64,
    height: f64,
}

impl LogAxis {
    fn new(values: impl Iterator<Item = f64>, bottom: f64, height: f64) -> LogAxis {
        let (mut min, mut max) = (f64::INFINITY, 0f64);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            min = min.min(v);
            max = max.max(v);
        }
        if max == 0.0 {
            (min, max) = (1.0, 10.0);
        }
        let lo = 10f64.powf(min.log10().floor());
        let mut hi = 10f64.powf(max.log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        LogAxis {
            lo,
            hi,
            bottom,
            height,
        }
    }

    fn y(&self, v: f64) -> f64 {
        let f = (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10());
        self.bottom - self.height * f
    }

    /// Grid lines and labels at every decade, fainter lines at 2 and 5.
    fn draw(&self, svg: &mut String, left: f64, right: f64, label: &str) {
        let mut decade = self.lo;
        while decade <= self.hi * 1.0001 {
            for (k, major) in [(1.0, true), (2.0, false), (5.0, false)] {
                let v = decade * k;
                if v > self.hi * 1.0001 {
                    break;
                }
                let y = self.y(v);
                let stroke = if major { "#bbb" } else { "#e6e6e6" };
                let _ = writeln!(
                    svg,
                    r#"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="{stroke}"/>"#
                );
                if major {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"#,
                        left - 6.0,
                        y + 4.0,
                        trim_number(v)
                    );
                }
            }
            decade *= 10.0;
        }
        let mid = self.bottom - self.height / 2.0;
        let _ = writeln!(
            svg,
            r#"<text transform="translate({:.1},{mid:.1}) rotate(-90)" text-anchor="middle" font-size="12">{}</text>"#,
            left - 48.0,
            escape(label)
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{:.1}" x2="{right}" y2="{:.1}" stroke="#333"/>"##,
            self.bottom, self.bottom
        );
    }
}

/// `0.01`, `1`, `100`: decade labels without trailing zeros.
fn trim_number(v: f64) -> String {
    let text = format!("{v:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One bar with its value written above it (rotated); a missing value is marked n/a.
fn bar(svg: &mut String, axis: &LogAxis, x: f64, w: f64, v: Option<f64>, fill: (&str, f64)) {
    let text = v.map(number).unwrap_or_default();
    let (color, opacity) = fill;
    match v.filter(|v| *v > 0.0) {
        Some(v) => {
            let y = axis.y(v);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{color}" fill-opacity="{opacity}"><title>{}</title></rect>"#,
                (axis.bottom - y).max(0.5),
                escape(&text)
            );
            let _ = writeln!(
                svg,
                r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="10">{}</text>"#,
                x + w / 2.0 + 3.5,
                y - 3.0,
                escape(&text)
            );
        }
        None => {
            let _ = writeln!(
                svg,
                r##"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="10" fill="#999">n/a</text>"##,
                x + w / 2.0 + 3.5,
                axis.bottom - 3.0
            );
        }
    }
}

/// The figures as a self-contained SVG: grouped bars per cell on log scales, one panel for
/// throughput and one for ping-pong latency.
fn svg(results: &Results, columns: &[Series], title: &str, subtitle: &str) -> String {
    const BAR: f64 = 16.0;
    const GAP: f64 = 36.0;
    const LEFT: f64 = 80.0;
    let stream_groups = results.stream.len();
    // Each group is wide enough for its two-line label.
    let stream_group = (columns.len() as f64 * BAR).max(104.0);
    let stream_w = stream_groups as f64 * (stream_group + GAP);
    let ping_columns: Vec<Series> = columns
        .iter()
        .copied()
        .filter(|s| *s != Series::Memcpy)
        .collect();
    let ping_group = (ping_columns.len() as f64 * (2.0 * BAR + 2.0)).max(150.0);
    let ping_w = results.pingpong.len() as f64 * (ping_group + GAP);
    let width = (LEFT + stream_w.max(ping_w) + 30.0).max(640.0);
    let right = width - 30.0;
    let stream_top = 110.0;
    let stream_h = if stream_groups > 0 { 300.0 } else { 0.0 };
    let ping_top = stream_top + stream_h + if stream_groups > 0 { 110.0 } else { 0.0 };
    let ping_h = if results.pingpong.is_empty() {
        0.0
    } else {
        220.0
    };
    let height = ping_top + ping_h + 70.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="26" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="44" font-size="11" fill="#555">{}</text>"##,
        escape(subtitle)
    );
    // The legend.
    let mut x = LEFT;
    for c in columns {
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="58" width="12" height="12" fill="{}"/><text x="{:.1}" y="69" font-size="12">{}</text>"#,
            c.color(),
            x + 16.0,
            escape(c.label())
        );
        x += 28.0 + 7.0 * c.label().len() as f64;
    }
    if stream_groups > 0 {
        let bottom = stream_top + stream_h;
        let axis = LogAxis::new(
            results.stream.values().flat_map(|m| m.values().copied()),
            bottom,
            stream_h - 20.0,
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{:.0}" font-size="13" font-weight="bold">Stream throughput, server to client (higher is better)</text>"#,
            stream_top - 14.0
        );
        axis.draw(&mut s, LEFT, right, "GB/s (10^9 bytes/s), log scale");
        let mut x = LEFT + GAP / 2.0;
        for (&(ring, msg), best) in &results.stream {
            let group_x = x;
            x += (stream_group - columns.len() as f64 * BAR) / 2.0;
            for c in columns {
                bar(
                    &mut s,
                    &axis,
                    x,
                    BAR - 2.0,
                    best.get(c).copied(),
                    (c.color(), 1.0),
                );
                x += BAR;
            }
            let mid = group_x + stream_group / 2.0;
            x = group_x + stream_group;
            let _ = writeln!(
                s,
                r#"<text x="{mid:.1}" y="{:.1}" text-anchor="middle" font-size="11">{} ring</text><text x="{mid:.1}" y="{:.1}" text-anchor="middle" font-size="11">{} writes</text>"#,
                bottom + 16.0,
                size_label(ring),
                bottom + 30.0,
                size_label(msg)
            );
            x += GAP;
        }
    }
    if !results.pingpong.is_empty() {
        let bottom = ping_top + ping_h;
        let axis = LogAxis::new(
            results.pingpong.values().flat_map(|m| {
                m.values()
                    .flat_map(|&(a, b)| [a as f64 / 1e3, b as f64 / 1e3])
            }),
            bottom,
            ping_h - 20.0,
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{:.0}" font-size="13" font-weight="bold">Ping-pong round trip: p50 (solid) and p99 (pale) (lower is better)</text>"#,
            ping_top - 14.0
        );
        axis.draw(&mut s, LEFT, right, "µs, log scale");
        let mut x = LEFT + GAP / 2.0;
        for (&(ring, msg), best) in &results.pingpong {
            let group_x = x;
            x += (ping_group - ping_columns.len() as f64 * (2.0 * BAR + 2.0)) / 2.0;
            for c in &ping_columns {
                let v = best.get(c).copied();
                let us = |ns: u64| ns as f64 / 1e3;
                let p50 = v.map(|(a, _)| us(a));
                let p99 = v.map(|(_, b)| us(b));
                bar(&mut s, &axis, x, BAR - 1.0, p50, (c.color(), 1.0));
                bar(
                    &mut s,
                    &axis,
                    x + BAR - 1.0,
                    BAR - 1.0,
                    p99,
                    (c.color(), 0.45),
                );
                x += 2.0 * BAR + 2.0;
            }
            let mid = group_x + ping_group / 2.0;
            x = group_x + ping_group;
            let _ = writeln!(
                s,
                r#"<text x="{mid:.1}" y="{:.1}" text-anchor="middle" font-size="11">{} messages, {} ring</text>"#,
                bottom + 16.0,
                size_label(msg),
                size_label(ring)
            );
            x += GAP;
        }
    }
    s.push_str("</svg>\n");
    s
}

// ------------------------------------------------------------------------------------------------
// `table`: the simulated host's peers and the in-process baselines.

/// A running peer whose output is collected by two threads; killed if dropped while running.
struct Peer {
    what: &'static str,
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Peer {
    fn spawn(what: &'static str, mut command: Command) -> Result<Peer, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the {what}: {e}"))?;
        let collect = |mut pipe: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = child.stdout.take().map(|p| collect(Box::new(p)));
        let stderr = child.stderr.take().map(|p| collect(Box::new(p)));
        Ok(Peer {
            what,
            child,
            stdout,
            stderr,
        })
    }

    /// Wait until `deadline`; then kill it. Returns stdout, or what went wrong.
    fn finish(mut self, deadline: Instant) -> Result<String, String> {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
                Ok(None) => break None,
                Err(e) => return Err(format!("cannot wait for the {}: {e}", self.what)),
            }
        };
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let stdout = self.stdout.take().and_then(|h| h.join().ok());
        let stderr = self.stderr.take().and_then(|h| h.join().ok());
        let said = stderr
            .as_deref()
            .and_then(|e| e.lines().rfind(|l| !l.trim().is_empty()))
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        match status {
            None => Err(format!(
                "the {} was still running after {RUN_LIMIT:?}{said}",
                self.what
            )),
            Some(s) if !s.success() => Err(format!("the {} failed ({}){said}", self.what, exit(s))),
            Some(_) => Ok(stdout.unwrap_or_default()),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn exit(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("{status}"),
    }
}

/// How long each run should take, and how many to keep.
struct Plan {
    runs: usize,
    quick: bool,
    /// The duration each run aims at, in seconds.
    target: f64,
    /// Log every run on stderr.
    verbose: bool,
}

impl Plan {
    /// Measure with `count` rescaled until a run lasts at least half the target (at most three
    /// shorter runs are thrown away; `--quick` keeps the first run), then keep `runs` runs.
    /// `measure` returns the figure and how long its timed part took, in seconds.
    fn calibrated<T>(
        &self,
        what: &str,
        mut count: u64,
        (min, max, step): (u64, u64, u64),
        mut measure: impl FnMut(u64) -> Result<(T, f64), String>,
    ) -> Result<Vec<T>, String> {
        let mut kept = Vec::new();
        let mut thrown = 0;
        while kept.len() < self.runs {
            let (figure, secs) = measure(count).map_err(|e| format!("{what}: {e}"))?;
            let short = secs < self.target / 2.0;
            let keep = self.quick || !short || thrown >= 3;
            if self.verbose {
                let verdict = if keep { "kept" } else { "too short, rescaled" };
                progress(&format!("{what}: count {count}: {secs:.3} s, {verdict}"));
            }
            if keep {
                kept.push(figure);
            } else {
                thrown += 1;
            }
            if short || secs > self.target * 3.0 {
                let scaled = count as f64 * self.target / secs.max(1e-6);
                count = (scaled as u64).clamp(min, max).div_ceil(step) * step;
            }
        }
        Ok(kept)
    }
}

/// Starts pairs of peers on the simulated host: servers in dom0, clients in dom1.
struct Runner {
    dir: PathBuf,
    ours: PathBuf,
    c: Option<PathBuf>,
    /// The directory of the drop-in `libxenvchan.so.4.17`, put first on the C peer's library
    /// path for [`Series::Dropin`].
    dropin: Option<PathBuf>,
    next_port: u32,
}

impl Runner {
    fn command(&self, series: Series, domid: u16, args: &[String]) -> Command {
        let mut command = match (series.is_c(), &self.c) {
            (true, Some(c)) => Command::new(c),
            _ => {
                let mut command = Command::new(&self.ours);
                command.arg("peer");
                command
            }
        };
        command.args(args);
        let first = match series {
            Series::Dropin => self.dropin.as_deref(),
            _ => None,
        };
        self.in_domain(command, domid, first)
    }

    /// `command` as `xensim run --domid DOMID` would run it: the domain, its xenstore socket,
    /// the stand-in libraries first on the library path (after `first`, if given).
    fn in_domain(&self, mut command: Command, domid: u16, first: Option<&Path>) -> Command {
        let lib = self.dir.join("lib");
        let mut library_path = OsString::new();
        if let Some(first) = first {
            library_path.push(first);
            library_path.push(":");
        }
        library_path.push(&lib);
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
            if std::env::split_paths(&old).next().as_deref() == Some(lib.as_path()) {
                library_path.clear();
                if let Some(first) = first {
                    library_path.push(first);
                    library_path.push(":");
                }
                library_path.push(old);
            } else {
                library_path.push(":");
                library_path.push(old);
            }
        }
        command
            .env(xensim::ENV_DIR, &self.dir)
            .env(xensim::ENV_DOMID, domid.to_string())
            .env(
                "XENSTORED_PATH",
                xenstore::daemon::socket_path(&self.dir, DomId(domid)),
            )
            .env("LD_LIBRARY_PATH", library_path);
        command
    }

    /// One run of a pair: the server in dom0, the client in dom1; the client's line.
    fn pair(
        &mut self,
        series: Series,
        ring: usize,
        mode: Mode,
        msg: usize,
        count: u64,
    ) -> Result<Figure, String> {
        let port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1);
        let strings = |v: &[&dyn fmt::Display]| v.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        if series.threads() {
            // Both ends in one process in dom0, serving itself.
            let args = strings(&[&"loopback", &0, &port, &ring, &mode, &msg, &count]);
            let both = Peer::spawn("loopback", self.command(series, 0, &args))?;
            let line = both.finish(Instant::now() + RUN_LIMIT)?;
            return Record::parse(&format!("{} {ring} {msg} {}", series.token(), line.trim()))
                .map(|r| r.figure)
                .map_err(|e| format!("the loopback peer printed {:?}: {e}", line.trim()));
        }
        let server_args = strings(&[&"server", &1, &port, &ring, &mode, &msg, &count]);
        let client_args = strings(&[&"client", &0, &port, &mode, &msg, &count]);
        let server = Peer::spawn("server", self.command(series, 0, &server_args))?;
        let client = Peer::spawn("client", self.command(series, 1, &client_args))?;
        let deadline = Instant::now() + RUN_LIMIT;
        let line = match client.finish(deadline) {
            Ok(line) => line,
            // The server may wait for ever for a client that never came: give it a moment.
            Err(e) => {
                let _ = server.finish(Instant::now() + Duration::from_secs(1));
                return Err(e);
            }
        };
        server.finish(deadline)?;
        let record = Record::parse(&format!("{} {ring} {msg} {}", series.token(), line.trim()))
            .map_err(|e| format!("the client printed {:?}: {e}", line.trim()))?;
        Ok(record.figure)
    }
}

/// The in-process stream baselines: a writer thread and this thread reading.
fn local_stream<R, W>(reader: R, writer: W, msg: usize, count: u64) -> Result<Timed, String>
where
    R: Read,
    W: Write + Send,
{
    let (mut reader, mut writer) = (reader, writer);
    thread::scope(|scope| {
        let sender = scope.spawn(move || send_stream(|b| writer.write_all(b), msg, count));
        let received = receive_stream(|b| reader.read(b), msg, count);
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err("the sending thread panicked".into()));
        sent.and(received)
    })
}

/// The in-process ping-pong baselines: an echo thread and this thread timing.
fn local_pingpong<R1, W1, R2, W2>(
    (mut ping_in, mut ping_out): (R1, W1),
    (mut pong_in, mut pong_out): (R2, W2),
    msg: usize,
    rounds: u64,
) -> Result<Latency, String>
where
    R1: Read,
    W1: Write,
    R2: Read + Send,
    W2: Write + Send,
{
    thread::scope(|scope| {
        let echo = scope.spawn(move || {
            pong(
                |b| pong_in.read_exact(b),
                |b| pong_out.write_all(b),
                msg,
                rounds,
            )
        });
        let timed = ping(
            |b| ping_out.write_all(b),
            |b| ping_in.read_exact(b),
            msg,
            rounds,
        );
        let echoed = echo
            .join()
            .unwrap_or_else(|_| Err("the echo thread panicked".into()));
        echoed.and(timed)
    })
}

fn tcp_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

fn stream_baseline(series: Series, ring: usize, msg: usize, count: u64) -> Result<Timed, String> {
    let io = |e: io::Error| format!("cannot set up the {}: {e}", series.label());
    match series {
        Series::Socketpair => {
            let (a, b) = UnixStream::pair().map_err(io)?;
            local_stream(a, b, msg, count)
        }
        Series::Pipe => {
            let (r, w) = io::pipe().map_err(io)?;
            local_stream(r, w, msg, count)
        }
        Series::Tcp => {
            let (a, b) = tcp_pair().map_err(io)?;
            local_stream(a, b, msg, count)
        }
        Series::Memcpy => Ok(memcpy_limit(ring, msg, count)),
        _ => unreachable!("vchan series are measured by their peers"),
    }
}

/// Copy `count` bytes in `msg`-byte pieces into a ring-sized buffer, wrapping, in one thread;
/// the rate is halved in the table (a ring copies every byte in and out).
fn memcpy_limit(ring: usize, msg: usize, count: u64) -> Timed {
    let capacity = Layout::for_min_sizes(ring, ring).map_or(ring.max(1), |l| l.size(Side::Right));
    let source = pattern(msg);
    let mut buffer = vec![0u8; capacity];
    let mut at = 0usize;
    let mut left = count;
    let start = Instant::now();
    while left > 0 {
        let mut piece = &source[..usize::try_from(left).map_or(msg, |l| l.min(msg))];
        left -= piece.len() as u64;
        while !piece.is_empty() {
            let n = piece.len().min(capacity - at);
            buffer[at..at + n].copy_from_slice(&piece[..n]);
            piece = &piece[n..];
            at = (at + n) % capacity;
        }
        std::hint::black_box(&mut buffer);
    }
    let nanos = start.elapsed().as_nanos() as u64;
    // Halved: report twice the time.
    Timed {
        bytes: count,
        nanos: nanos.saturating_mul(2).max(1),
    }
}

fn pingpong_baseline(series: Series, msg: usize, rounds: u64) -> Result<Latency, String> {
    let io = |e: io::Error| format!("cannot set up the {}: {e}", series.label());
    match series {
        Series::Socketpair => {
            let (a, b) = UnixStream::pair().map_err(io)?;
            local_pingpong((&a, &a), (&b, &b), msg, rounds)
        }
        Series::Pipe => {
            let (there_r, there_w) = io::pipe().map_err(io)?;
            let (back_r, back_w) = io::pipe().map_err(io)?;
            local_pingpong((back_r, there_w), (there_r, back_w), msg, rounds)
        }
        Series::Tcp => {
            let (a, b) = tcp_pair().map_err(io)?;
            local_pingpong((&a, &a), (&b, &b), msg, rounds)
        }
        _ => unreachable!("no ping-pong for {series:?}"),
    }
}

/// Stream sizes of a first run, by ring: in-page rings are slow, big rings fast.
fn first_count(series: Series, ring: usize, quick: bool) -> u64 {
    let mb = match (series, ring) {
        (Series::Memcpy, _) => 1024,
        (s, 0) if s.is_vchan() => 8,
        (s, r) if s.is_vchan() && r < 1 << 20 => 128,
        _ => 256,
    };
    let bytes = mb << 20;
    if quick {
        bytes / 16
    } else {
        bytes
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The current time as `YYYY-MM-DD HH:MM UTC` (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn machine() -> String {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs (nproc), {}", cpu_model())
}

fn progress(text: &str) {
    let _ = writeln!(io::stderr(), "vchan-perf: {text}");
}

/// Every cell of the table: the vchan pairs, then the baselines.
fn measure_all(plan: &Plan, runner: &mut Runner) -> Result<Results, String> {
    let mut results = Results::default();
    let vchans: Vec<Series> = Series::ALL
        .into_iter()
        .filter(|s| s.is_vchan() && (!s.is_c() || runner.c.is_some()))
        .filter(|s| *s != Series::Dropin || runner.dropin.is_some())
        .collect();
    let bytes_limits = |msg: usize| (16 * msg as u64, 1 << 38, msg as u64);
    let mut add = |series, (ring, msg), figure| {
        results.add(&Record {
            series,
            ring,
            msg,
            figure,
        })
    };
    let gbs = |t: &Timed| number(t.bytes as f64 / t.nanos.max(1) as f64);
    let best_stream = |kept: &[Timed]| {
        kept.iter()
            .max_by(|a, b| {
                let rate = |t: &Timed| t.bytes as f64 / t.nanos.max(1) as f64;
                rate(a).total_cmp(&rate(b))
            })
            .map_or_else(String::new, gbs)
    };

    // The vchan cells: one pair of processes per run.
    for ring in RINGS {
        for msg in WRITES {
            for &series in &vchans {
                let what = format!(
                    "{} stream, {} ring, {} writes",
                    series.label(),
                    size_label(ring),
                    size_label(msg)
                );
                let first = first_count(series, ring, plan.quick);
                let kept =
                    plan.calibrated(&what, first, bytes_limits(msg), |count| {
                        match runner.pair(series, ring, Mode::Stream, msg, count)? {
                            Figure::Stream(t) => Ok((t, t.nanos as f64 / 1e9)),
                            Figure::Pingpong(_) => {
                                Err("the client printed a ping-pong line".into())
                            }
                        }
                    })?;
                progress(&format!("{what}: {} GB/s", best_stream(&kept)));
                for t in kept {
                    add(series, (ring, msg), Figure::Stream(t));
                }
            }
        }
    }
    // Sockets and pipes have no ring: measured once per write size, shown in every row.
    for msg in WRITES {
        for series in [
            Series::Socketpair,
            Series::Pipe,
            Series::Tcp,
            Series::Memcpy,
        ] {
            let rings: &[usize] = if series == Series::Memcpy {
                &RINGS
            } else {
                &[0]
            };
            for &ring in rings {
                let mut what = format!("{} stream, {} writes", series.label(), size_label(msg));
                if series == Series::Memcpy {
                    what = format!("{what}, {} ring", size_label(ring));
                }
                let first = first_count(series, ring, plan.quick);
                let kept = plan.calibrated(&what, first, bytes_limits(msg), |count| {
                    let t = stream_baseline(series, ring, msg, count)?;
                    // The copy's time is doubled (its rate halved); it aims at the real time.
                    let scale = if series == Series::Memcpy { 2e9 } else { 1e9 };
                    Ok((t, t.nanos as f64 / scale))
                })?;
                progress(&format!("{what}: {} GB/s", best_stream(&kept)));
                for t in kept {
                    if series == Series::Memcpy {
                        add(series, (ring, msg), Figure::Stream(t));
                    } else {
                        for ring in RINGS {
                            add(series, (ring, msg), Figure::Stream(t));
                        }
                    }
                }
            }
        }
    }
    // Ping-pong.
    let (ring, msg) = PINGPONG;
    let first_rounds = if plan.quick { 300 } else { 5000 };
    let rounds_limits = (100, 2_000_000, 100);
    let secs = |l: &Latency| l.rounds as f64 * l.p50 as f64 / 1e9;
    for series in [
        Series::C,
        Series::Dropin,
        Series::Ours,
        Series::CThreads,
        Series::OursThreads,
        Series::Socketpair,
        Series::Pipe,
        Series::Tcp,
    ] {
        if series.is_vchan() && !vchans.contains(&series) {
            continue;
        }
        let what = format!(
            "{} ping-pong, {} messages, {} ring",
            series.label(),
            size_label(msg),
            size_label(ring)
        );
        let kept = plan.calibrated(&what, first_rounds, rounds_limits, |rounds| {
            let l = match series {
                s if s.is_vchan() => {
                    match runner.pair(series, ring, Mode::Pingpong, msg, rounds)? {
                        Figure::Pingpong(l) => l,
                        Figure::Stream(_) => return Err("the client printed a stream line".into()),
                    }
                }
                _ => pingpong_baseline(series, msg, rounds)?,
            };
            Ok((l, secs(&l)))
        })?;
        if let Some(best) = kept.iter().min_by_key(|l| l.p50) {
            progress(&format!(
                "{what}: p50 {} µs, p99 {} µs",
                number(best.p50 as f64 / 1e3),
                number(best.p99 as f64 / 1e3)
            ));
        }
        for l in kept {
            add(series, PINGPONG, Figure::Pingpong(l));
        }
    }
    Ok(results)
}

fn table(args: &TableArgs) -> Result<(), String> {
    let dir =
        match Xen::from_env() {
            Ok(Xen::Xensim(host)) => host.dir().to_owned(),
            _ => return Err(
                "`table` runs on the simulated host: start it as `xensim run --dir DIR --domid 0 \
                 -- vchan-perf table` with domain 1 created (scripts/bench does all of this)"
                    .to_owned(),
            ),
        };
    if !xenstore::daemon::socket_path(&dir, DomId(1)).exists() {
        return Err(format!(
            "domain 1 does not exist on the simulated host in {}: create it with \
             `xensim create --dir {} --domid 1`",
            dir.display(),
            dir.display()
        ));
    }
    let ours = match &args.peer_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?,
    };
    for path in [Some(&ours), args.c_peer.as_ref()].into_iter().flatten() {
        if !path.is_file() {
            return Err(format!("{} does not exist", path.display()));
        }
    }
    if let Some(dir) = &args.dropin {
        if args.c_peer.is_none() {
            return Err("--dropin runs the C peer on the drop-in: give --c-peer too".to_owned());
        }
        if !dir.join("libxenvchan.so.4.17").is_file() {
            return Err(format!(
                "{} holds no libxenvchan.so.4.17 (scripts/libxenvchan prints the directory)",
                dir.display()
            ));
        }
    }
    let mut runner = Runner {
        dir,
        ours,
        c: args.c_peer.clone(),
        dropin: args.dropin.clone(),
        next_port: std::process::id().wrapping_mul(1000),
    };
    let plan = Plan {
        runs: if args.quick { 1 } else { args.runs as usize },
        quick: args.quick,
        target: if args.quick { 0.05 } else { 0.5 },
        verbose: args.verbose,
    };
    let started = Instant::now();
    let results = match args.proxy_only {
        true => Results::default(),
        false => measure_all(&plan, &mut runner)?,
    };
    let proxy_bin = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => runner.ours.with_file_name("vchan-proxy"),
    };
    let c_proxy = args.c_proxy.clone().or_else(|| {
        let debian = PathBuf::from("/usr/lib/xen-4.17/bin/vchan-socket-proxy");
        debian.is_file().then_some(debian)
    });
    let proxies = measure_proxies(&plan, &mut runner, &proxy_bin, c_proxy.as_deref())?;
    progress(&format!(
        "measured in {:.0} s",
        started.elapsed().as_secs_f64()
    ));

    let columns = Series::ALL.to_vec();
    let runs = if plan.quick {
        "--quick: one short run per cell".to_owned()
    } else {
        format!("best of {} runs per cell, each ~0.3-1 s", plan.runs)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vchan-perf: vchan-rs and Debian's libxenvchan on the simulated Xen host (xensim), with \
         local baselines\n\
         Machine: {}; {}\n\
         Runs: {runs}. Timing is reported, never judged.\n\
         vchan cells: a server process in dom0 writes to a client process in dom1, which times from\n\
         its first read to the last byte. Baselines: the same writes between two threads of one\n\
         process; socketpair, pipe and TCP use the kernel's default buffers and are measured once\n\
         per write size (no ring applies), the memory copy once per ring.",
        machine(),
        utc_now()
    );
    if runner.c.is_none() {
        let _ = writeln!(
            out,
            "No C peer was given (--c-peer): the C columns say n/a."
        );
    } else if runner.dropin.is_none() {
        let _ = writeln!(
            out,
            "No drop-in library was given (--dropin): its columns say n/a."
        );
    }
    out.push('\n');
    if !args.proxy_only {
        out.push_str(&legend(&columns));
        out.push('\n');
        out.push_str(&tables(&results, &columns));
        out.push('\n');
    }
    out.push_str(&proxy_table(&proxies));
    if !args.quick && !args.proxy_only {
        progress("idle connected pair");
        let (idle, cpu) = idle_cpu()?;
        let _ = writeln!(
            out,
            "\nIdle: a connected pair (both ends in this process) whose reader was blocked for \
             {} s used {} ms of CPU time.",
            idle.as_secs(),
            number(cpu.as_secs_f64() * 1e3)
        );
    }
    io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("cannot write standard output: {e}"))?;
    if let Some(path) = args.svg.as_ref().filter(|_| !args.proxy_only) {
        let title = "vchan-perf: vchan-rs and libxenvchan on the simulated Xen host";
        let subtitle = format!("{}; {}; {runs}", machine(), utc_now());
        write_svg(path, &svg(&results, &columns, title, &subtitle))?;
    }
    Ok(())
}

/// The proxy row's write size.
const PROXY_WRITE: usize = 64 << 10;

/// The proxy rows: the best throughput of each carrier (GB/s), `None` where it could not run.
fn measure_proxies(
    plan: &Plan,
    runner: &mut Runner,
    proxy_bin: &Path,
    c_proxy: Option<&Path>,
) -> Result<Vec<(Carrier, Option<f64>)>, String> {
    if !proxy_bin.is_file() {
        return Err(format!(
            "{} does not exist: build it (cargo build --release -p tools) or give --proxy-bin",
            proxy_bin.display()
        ));
    }
    let mut rows = Vec::new();
    for carrier in [
        Carrier::Direct,
        Carrier::Ours,
        Carrier::OursBigRings,
        Carrier::Xen,
    ] {
        if carrier == Carrier::Xen && c_proxy.is_none() {
            rows.push((carrier, None));
            continue;
        }
        let what = format!("proxy row: {}", carrier.label());
        let rig =
            Rig::start(runner, carrier, proxy_bin, c_proxy).map_err(|e| format!("{what}: {e}"))?;
        let mb: u64 = match carrier {
            Carrier::Direct => 512,
            Carrier::Ours => 128,
            Carrier::OursBigRings => 512,
            Carrier::Xen => 4,
        };
        let first = if plan.quick {
            (mb << 20) / 16
        } else {
            mb << 20
        };
        let limits = (16 * PROXY_WRITE as u64, 1 << 36, PROXY_WRITE as u64);
        let kept = plan.calibrated(&what, first, limits, |count| {
            let t = rig.run(PROXY_WRITE, count)?;
            Ok((t, t.nanos as f64 / 1e9))
        })?;
        let best = kept
            .iter()
            .map(|t| t.bytes as f64 / t.nanos.max(1) as f64)
            .fold(None, |best: Option<f64>, v| {
                Some(best.map_or(v, |b| b.max(v)))
            });
        if let Some(gbs) = best {
            progress(&format!("{what}: {} GB/s", number(gbs)));
        }
        rows.push((carrier, best));
    }
    Ok(rows)
}

/// The proxy rows as a table, with each carrier next to the direct socket, and ours next to
/// Xen's.
fn proxy_table(rows: &[(Carrier, Option<f64>)]) -> String {
    let get = |c: Carrier| rows.iter().find(|(k, _)| *k == c).and_then(|(_, v)| *v);
    let direct = get(Carrier::Direct);
    let head = [
        "through".to_owned(),
        "GB/s".to_owned(),
        "vs direct".to_owned(),
    ];
    let ratio = |v: Option<f64>, of: Option<f64>| match (v, of) {
        (Some(v), Some(of)) if of > 0.0 => number(v / of),
        _ => "n/a".into(),
    };
    let mut table: Vec<Vec<String>> = rows
        .iter()
        .map(|(c, v)| {
            vec![
                c.label().to_owned(),
                v.map_or("n/a".into(), number),
                ratio(*v, direct),
            ]
        })
        .collect();
    table.push(vec![
        "ours divided by Xen's".to_owned(),
        ratio(get(Carrier::Ours), get(Carrier::Xen)),
        String::new(),
    ]);
    let mut out = format!(
        "A stream through a proxy pair, {} writes: a Unix socket -> the carrier -> a Unix socket\n\
         (the server side's rings: ours 64 KiB by default, vchan-socket-proxy's the in-page\n\
         1024/2048 it asks for; a ring's worth moves per wake-up, so bigger rings carry more):\n\n",
        size_label(PROXY_WRITE)
    );
    out.push_str(&render(&head, &table, 1));
    out
}

/// CPU time used so far by every thread of this process, from the scheduler's own accounting
/// (`/proc/self/task/*/schedstat`, nanoseconds on a CPU).
fn process_cpu_time() -> Result<Duration, String> {
    let unreadable = |e: io::Error| format!("cannot read this process's CPU time: {e}");
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").map_err(unreadable)? {
        let path = task.map_err(unreadable)?.path().join("schedstat");
        // A thread that ended meanwhile has no file any more: it is not running either.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .ok_or_else(|| format!("{} holds {text:?}", path.display()))?;
    }
    Ok(Duration::from_nanos(total))
}

/// Connect a pair on the simulated host (dom0 serving domain 1, both in this process), block a
/// reader for a while and measure the CPU time the process used meanwhile: a waiting endpoint
/// spins only for its short budget, then sleeps in the kernel.
fn idle_cpu() -> Result<(Duration, Duration), String> {
    const IDLE: Duration = Duration::from_secs(2);
    let server_dom = XensimDomain::from_env().map_err(|e| format!("idle pair: {e}"))?;
    let client_dom = XensimDomain::new(server_dom.dir(), DomId(1));
    let address = Address::Port(9999);
    let server = Vchan::server(&server_dom, DomId(1), &address, RingSizes::default())
        .map_err(|e| format!("idle pair: {}", describe(&e)))?;
    let client = Vchan::client(
        &client_dom,
        DomId::DOM0,
        &address,
        Some(Duration::from_secs(5)),
    )
    .map_err(|e| format!("idle pair: {}", describe(&e)))?;
    thread::scope(|s| {
        let reader = s.spawn(|| client.read(&mut [0u8; 1]));
        // Past the reader's spin budget before the measurement starts.
        thread::sleep(Duration::from_millis(100));
        let before = process_cpu_time()?;
        thread::sleep(IDLE);
        let used = process_cpu_time()?.saturating_sub(before);
        server
            .write(b"x")
            .map_err(|e| format!("idle pair: {}", describe(&e)))?;
        match reader.join() {
            Ok(Ok(1)) => Ok((IDLE, used)),
            Ok(Ok(n)) => Err(format!("idle pair: the reader woke with {n} bytes")),
            Ok(Err(e)) => Err(format!("idle pair: {}", describe(&e))),
            Err(_) => Err("idle pair: the reader panicked".to_owned()),
        }
    })
}

fn write_svg(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn report(file: &Path, svg_path: Option<&Path>) -> Result<(), String> {
    let input: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        Box::new(io::BufReader::new(f))
    };
    let mut results = Results::default();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let text = line.split('#').next().unwrap_or("").trim();
        if text.is_empty() {
            continue;
        }
        let record = Record::parse(text)
            .map_err(|e| format!("{} line {}: {e}: {text:?}", file.display(), i + 1))?;
        results.add(&record);
    }
    let columns = results.series();
    if columns.is_empty() {
        return Err(format!("{} holds no measurement lines", file.display()));
    }
    let mut out = format!("vchan-perf: figures from {}\n\n", file.display());
    out.push_str(&legend(&columns));
    out.push('\n');
    out.push_str(&tables(&results, &columns));
    io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("cannot write standard output: {e}"))?;
    if let Some(path) = svg_path {
        let title = format!("vchan-perf: figures from {}", file.display());
        write_svg(path, &svg(&results, &columns, &title, &utc_now()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = match tools::parse_cli(tools::cli::clap_words) {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    let outcome = match &cli.command {
        Cmd::Peer(role) => run_peer(role),
        Cmd::Table(args) => table(args),
        Cmd::Report { file, svg } => report(file, svg.as_deref()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(io::stderr(), "vchan-perf: {message}");
            ExitCode::FAILURE
        }
    }
}
