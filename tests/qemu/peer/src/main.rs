//! `qemu-peer`: the Rust side of the QEMU integration tier, run inside real Xen domains.
//!
//! ```text
//! qemu-peer probe
//! qemu-peer xenstore dom0|guest
//! qemu-peer server CLIENT_DOMID PORT READ_MIN WRITE_MIN MODE [ARGS] [--caps READ WRITE]
//! qemu-peer client SERVER_DOMID PORT MODE [ARGS] [--caps READ WRITE]
//! ```
//! Modes: `echo` (send back everything until the peer closes), `echo-check FILE` (send the file while
//! reading it back, compare), `flood MARKER` (write for ever; create MARKER once data flows),
//! `drain-measure` (read until the peer goes; fail unless that was noticed within 1 s of the last
//! data), `destroy-measure MARKER` (the same while the peer's whole domain is destroyed: within
//! 1 s of `xl destroy` returning, MARKER's creation). `--caps` checks the ring capacities this end sees. Exit status 0 means the check held;
//! diagnostics go to stderr.
//!
//! `qemu-peer devices` exercises the `/dev/xen` backends directly, in dom0 against itself.
//!
//! `qemu-peer guest-selftest GUEST` is dom0's half of the unikernel guest's platform self-test
//! (its `selftest 0` job): grants and event channels both ways, through xenstore.
//!
//! `qemu-peer pattern BYTES` writes the unikernel guest's stream to stdout: BYTES bytes, byte i
//! being `i % 251` (what its `send` job and `http` job's `/bytes/N` produce).
//!
//! ```text
//! qemu-peer conduit-serve ENDPOINT COUNT EXPECTED_PEER
//! qemu-peer conduit-call ENDPOINT FILE COUNT
//! ```
//! conduit-vchan on real Xen: the server accepts COUNT connections at once on ENDPOINT (for
//! example `vchan://*/echo`), checks that each came from domain EXPECTED_PEER as the rendezvous
//! established it (the owner xenstored gave the request), and echoes each until the client's
//! half-close; the caller makes COUNT connections at once, sends FILE on each, half-closes and
//! compares the echo.
//!
//! ```text
//! qemu-peer conduit-burst-serve ENDPOINT COUNT EXPECTED_PEER
//! qemu-peer conduit-burst-call ENDPOINT COUNT
//! ```
//! A burst of connects from a guest, bound by xenstored's quotas for guests (10 transactions,
//! 128 watches at once): the caller starts COUNT connects at once, each sends its number and
//! half-closes; the server answers each connection as it comes with that number's body
//! ([`burst_body`]) and the caller compares. The server's rings sit in the control page (one
//! grant per connection: gntalloc's default limit is 1024), and bodies are small (emulation).
#![forbid(unsafe_code)]

mod devices;
mod guest;

use std::error::Error;
use std::fs;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vchan::xen::{self, XenDomain};
use vchan::{Address, RingSizes, State, Vchan};
use xen_types::DomId;
use xenstore::client::Client;
use xenstore::{Access, Errno, Perm, TxId, XenStore, XenstoreError};

type Chan = Vchan<XenDomain>;
type Res<T = ()> = Result<T, Box<dyn Error>>;

/// How long a client waits for its server to publish itself.
const CONNECT_WAIT: Duration = Duration::from_secs(90);
/// The promise under test: a dead peer is noticed within this long.
const DEATH_NOTICED_WITHIN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("qemu-peer: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn arg<'a>(args: &'a [String], i: usize, what: &str) -> Res<&'a str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing {what}").into())
}

fn run(args: &[String]) -> Res {
    let (args, caps) = split_caps(args)?;
    match arg(&args, 0, "a command")? {
        "probe" => {
            if xen::available() {
                println!("xen devices usable");
                Ok(())
            } else {
                Err(XenDomain::new()
                    .probe()
                    .err()
                    .map_or_else(|| "xen devices unusable".into(), Into::into))
            }
        }
        "devices" => devices::check(),
        "guest-selftest" => guest::selftest(arg(&args, 1, "guest domid")?.parse()?),
        "pattern" => guest::pattern(arg(&args, 1, "byte count")?.parse()?),
        "xenstore" => xenstore_check(arg(&args, 1, "dom0|guest")? == "guest"),
        "server" => {
            let client: DomId = arg(&args, 1, "client domid")?.parse()?;
            let port: u32 = arg(&args, 2, "port")?.parse()?;
            let sizes = RingSizes {
                server_read: arg(&args, 3, "read size")?.parse()?,
                server_write: arg(&args, 4, "write size")?.parse()?,
            };
            let chan = Vchan::server(&XenDomain::new(), client, &Address::Port(port), sizes)?;
            eprintln!(
                "server for {client} on port {port}: read ring {}, write ring {}",
                chan.read_capacity(),
                chan.write_capacity()
            );
            check_caps(&chan, caps)?;
            mode(chan, &args[5..])
        }
        "client" => {
            let server: DomId = arg(&args, 1, "server domid")?.parse()?;
            let port: u32 = arg(&args, 2, "port")?.parse()?;
            let chan = Vchan::client(
                &XenDomain::new(),
                server,
                &Address::Port(port),
                Some(CONNECT_WAIT),
            )?;
            eprintln!(
                "client of {server} on port {port}: read ring {}, write ring {}",
                chan.read_capacity(),
                chan.write_capacity()
            );
            check_caps(&chan, caps)?;
            mode(chan, &args[3..])
        }
        "conduit-serve" => {
            let endpoint: conduit_vchan::Endpoint = arg(&args, 1, "endpoint")?.parse()?;
            let count: usize = arg(&args, 2, "count")?.parse()?;
            let expected: DomId = arg(&args, 3, "expected peer")?.parse()?;
            conduit_serve(&endpoint, count, expected)
        }
        "conduit-call" => {
            let endpoint: conduit_vchan::Endpoint = arg(&args, 1, "endpoint")?.parse()?;
            let data = fs::read(arg(&args, 2, "file")?)?;
            let count: usize = arg(&args, 3, "count")?.parse()?;
            conduit_call(&endpoint, &data, count)
        }
        "conduit-burst-serve" => {
            let endpoint: conduit_vchan::Endpoint = arg(&args, 1, "endpoint")?.parse()?;
            let count: usize = arg(&args, 2, "count")?.parse()?;
            let expected: DomId = arg(&args, 3, "expected peer")?.parse()?;
            conduit_burst_serve(&endpoint, count, expected)
        }
        "conduit-burst-call" => {
            let endpoint: conduit_vchan::Endpoint = arg(&args, 1, "endpoint")?.parse()?;
            let count: usize = arg(&args, 2, "count")?.parse()?;
            conduit_burst_call(&endpoint, count)
        }
        other => Err(format!("unknown command {other:?}").into()),
    }
}

/// Accept `count` connections (all open at once), check who each is from, echo each.
fn conduit_serve(endpoint: &conduit_vchan::Endpoint, count: usize, expected: DomId) -> Res {
    let options = conduit_vchan::ListenOptions::new()
        .request_timeout(CONNECT_WAIT)
        .xen(conduit_vchan::Xen::Real(XenDomain::new()));
    let listener = conduit_vchan::Listener::bind_with(endpoint, options)?;
    eprintln!("conduit: listening on {endpoint}");
    let mut conns = Vec::new();
    for _ in 0..count {
        let (conn, peer) = listener.accept()?;
        if peer != conduit_vchan::Peer::Vchan(expected) {
            return Err(format!("a connection from {peer}, expected domain {expected}").into());
        }
        conns.push(conn);
    }
    eprintln!("conduit: {count} connections from domain {expected}, all open");
    let echoed: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let echoes: Vec<_> = conns
            .into_iter()
            .map(|mut conn| {
                s.spawn(move || -> Result<usize, String> {
                    let mut request = Vec::new();
                    conn.read_to_end(&mut request).map_err(|e| e.to_string())?;
                    conn.write_all(&request).map_err(|e| e.to_string())?;
                    conn.shutdown_write().map_err(|e| e.to_string())?;
                    Ok(request.len())
                })
            })
            .collect();
        echoes
            .into_iter()
            .map(|e| {
                e.join()
                    .unwrap_or_else(|_| Err("an echo thread panicked".into()))
            })
            .collect()
    });
    for n in echoed {
        eprintln!("conduit: echoed {} bytes", n?);
    }
    Ok(())
}

/// Make `count` connections at once, send `data` on each, half-close, compare the echoes.
fn conduit_call(endpoint: &conduit_vchan::Endpoint, data: &[u8], count: usize) -> Res {
    let connector = conduit_vchan::Connector::new()
        .xen(conduit_vchan::Xen::Real(XenDomain::new()))
        .timeout(CONNECT_WAIT);
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..count)
            .map(|i| {
                let connector = &connector;
                s.spawn(move || call_once(connector, endpoint, data, i))
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap_or_else(|_| Err("a caller panicked".into())))
            .collect()
    });
    for outcome in outcomes {
        outcome?;
    }
    eprintln!("conduit: {count} calls to {endpoint}, every echo identical");
    Ok(())
}

fn call_once(
    connector: &conduit_vchan::Connector,
    endpoint: &conduit_vchan::Endpoint,
    data: &[u8],
    i: usize,
) -> Result<(), String> {
    let conn = connector
        .connect(endpoint)
        .map_err(|e| format!("connection {i}: {e}"))?;
    std::thread::scope(|t| {
        let sending = t.spawn(|| -> std::io::Result<()> {
            (&conn).write_all(data)?;
            conn.shutdown_write()
        });
        let mut echo = Vec::new();
        (&conn)
            .read_to_end(&mut echo)
            .map_err(|e| format!("connection {i}: read: {e}"))?;
        sending
            .join()
            .map_err(|_| "a sender panicked".to_owned())?
            .map_err(|e| format!("connection {i}: write: {e}"))?;
        if echo != data {
            return Err(format!(
                "connection {i}: {} bytes echoed of {}, or different",
                echo.len(),
                data.len()
            ));
        }
        Ok(())
    })
}

/// The body the burst's server answers connection number `n` with: 16 KiB that differ for
/// every `n` (a byte pattern seeded by it).
fn burst_body(n: u64) -> Vec<u8> {
    let mut state = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..16 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Accept `count` connections, each from `expected`, answering each on a thread of its own as
/// it comes: read the number it sends, answer with its body.
fn conduit_burst_serve(endpoint: &conduit_vchan::Endpoint, count: usize, expected: DomId) -> Res {
    let options = conduit_vchan::ListenOptions::new()
        .request_timeout(CONNECT_WAIT)
        .ring_sizes(RingSizes {
            server_read: 1024,
            server_write: 2048,
        })
        .xen(conduit_vchan::Xen::Real(XenDomain::new()));
    let listener = conduit_vchan::Listener::bind_with(endpoint, options)?;
    eprintln!("conduit-burst: listening on {endpoint}");
    let answered: Vec<Result<(), String>> = std::thread::scope(|s| {
        let mut answering = Vec::new();
        for _ in 0..count {
            let (mut conn, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) => return vec![Err(format!("accept: {e}"))],
            };
            if peer != conduit_vchan::Peer::Vchan(expected) {
                return vec![Err(format!(
                    "a connection from {peer}, expected domain {expected}"
                ))];
            }
            answering.push(s.spawn(move || -> Result<(), String> {
                let mut request = String::new();
                conn.read_to_string(&mut request)
                    .map_err(|e| format!("read: {e}"))?;
                let n: u64 = request
                    .parse()
                    .map_err(|_| format!("a request {request:?} that is no number"))?;
                conn.write_all(&burst_body(n))
                    .map_err(|e| format!("answer {n}: {e}"))?;
                conn.shutdown_write()
                    .map_err(|e| format!("answer {n}: {e}"))
            }));
        }
        answering
            .into_iter()
            .map(|a| {
                a.join()
                    .unwrap_or_else(|_| Err("an answer panicked".into()))
            })
            .collect()
    });
    for outcome in answered {
        outcome?;
    }
    eprintln!("conduit-burst: answered {count} connections from domain {expected}");
    Ok(())
}

/// Start `count` connects to `endpoint` at once; each sends its number, half-closes and checks
/// the body it gets back. Fails unless all succeed; says how many did, and how long it took.
fn conduit_burst_call(endpoint: &conduit_vchan::Endpoint, count: usize) -> Res {
    let connector = conduit_vchan::Connector::new()
        .xen(conduit_vchan::Xen::Real(XenDomain::new()))
        .timeout(CONNECT_WAIT);
    let started = Instant::now();
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..count as u64)
            .map(|n| {
                let connector = &connector;
                s.spawn(move || -> Result<(), String> {
                    let mut conn = connector
                        .connect(endpoint)
                        .map_err(|e| format!("connect {n}: {}", conduit_vchan::describe(&e)))?;
                    conn.write_all(n.to_string().as_bytes())
                        .and_then(|()| conn.shutdown_write())
                        .map_err(|e| format!("connection {n}: write: {e}"))?;
                    let mut body = Vec::new();
                    conn.read_to_end(&mut body)
                        .map_err(|e| format!("connection {n}: read: {e}"))?;
                    match body == burst_body(n) {
                        true => Ok(()),
                        false => Err(format!(
                            "connection {n}: {} bytes, not its body",
                            body.len()
                        )),
                    }
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap_or_else(|_| Err("a caller panicked".into())))
            .collect()
    });
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    eprintln!(
        "conduit-burst: {} of {count} connects at once to {endpoint} succeeded, bodies checked, in \
         {:.1} s",
        count - failed.len(),
        started.elapsed().as_secs_f64()
    );
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(format!("{} failed, the first: {first}", failed.len()).into()),
    }
}

/// Expected (read, write) ring capacities.
type Caps = Option<(usize, usize)>;

fn split_caps(args: &[String]) -> Res<(Vec<String>, Caps)> {
    match args.iter().position(|a| a == "--caps") {
        None => Ok((args.to_vec(), None)),
        Some(i) => {
            let read = arg(args, i + 1, "read capacity")?.parse()?;
            let write = arg(args, i + 2, "write capacity")?.parse()?;
            let mut rest = args[..i].to_vec();
            rest.extend_from_slice(&args[(i + 3).min(args.len())..]);
            Ok((rest, Some((read, write))))
        }
    }
}

fn check_caps(chan: &Chan, caps: Caps) -> Res {
    if let Some((read, write)) = caps {
        let got = (chan.read_capacity(), chan.write_capacity());
        if got != (read, write) {
            return Err(format!("ring capacities {got:?}, expected {:?}", (read, write)).into());
        }
    }
    Ok(())
}

fn mode(chan: Chan, args: &[String]) -> Res {
    match arg(args, 0, "a mode")? {
        "echo" => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            loop {
                let n = chan.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                (&chan).write_all(&buf[..n])?;
                total += n;
            }
            eprintln!("echoed {total} bytes");
            chan.close()?;
            Ok(())
        }
        "echo-check" => {
            let data = fs::read(arg(args, 1, "file")?)?;
            echo_check(&chan, &data)?;
            chan.close()?;
            Ok(())
        }
        "flood" => flood(&chan, arg(args, 1, "marker file")?),
        "drain-measure" => drain_measure(&chan),
        "destroy-measure" => destroy_measure(chan, arg(args, 1, "marker file")?),
        other => Err(format!("unknown mode {other:?}").into()),
    }
}

/// Write `data` from one thread while reading it back on this one; compare.
fn echo_check(chan: &Chan, data: &[u8]) -> Res {
    let mut back = vec![0u8; data.len()];
    std::thread::scope(|scope| -> Res {
        let writer = scope.spawn(|| {
            let mut w = chan;
            w.write_all(data)
        });
        let mut r = chan;
        let read = r.read_exact(&mut back);
        let written = writer
            .join()
            .map_err(|_| "the writer thread panicked".to_string())?;
        written?;
        read?;
        Ok(())
    })?;
    match data.iter().zip(&back).position(|(a, b)| a != b) {
        None => {
            eprintln!("{} bytes came back intact", data.len());
            Ok(())
        }
        Some(i) => Err(format!("byte {i} came back wrong").into()),
    }
}

/// Write a counting pattern for ever; once data is flowing, create `marker` so the test script
/// knows it may kill this process mid-transfer.
fn flood(chan: &Chan, marker: &str) -> Res {
    let mut block = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    let mut marked = false;
    loop {
        for (i, b) in block.iter_mut().enumerate() {
            *b = (total as usize + i) as u8;
        }
        (&*chan).write_all(&block)?;
        total += block.len() as u64;
        if !marked && total >= 256 * 1024 {
            fs::write(marker, total.to_string())?;
            marked = true;
        }
    }
}

/// Read until the peer is gone; the peer was killed mid-transfer, so the last data arrived no
/// earlier than its death: the gap from then to noticing bounds how late we noticed.
fn drain_measure(chan: &Chan) -> Res {
    chan.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut last_data = Instant::now();
    let ended = loop {
        match chan.read(&mut buf) {
            Ok(0) => break "end of stream",
            Ok(n) => {
                total += n as u64;
                last_data = Instant::now();
            }
            Err(vchan::VchanError::PeerClosed) => break "peer closed",
            Err(e) => return Err(e.into()),
        }
    };
    let gap = last_data.elapsed();
    let state = chan.state()?;
    eprintln!("{ended} after {total} bytes, {gap:?} after the last data; state {state:?}");
    if total == 0 {
        return Err("no data arrived before the peer went away".into());
    }
    if state != State::PeerClosed {
        return Err(format!("state {state:?} after the peer died").into());
    }
    if gap > DEATH_NOTICED_WITHIN {
        return Err(format!("the peer's death was noticed {gap:?} after its last data").into());
    }
    Ok(())
}

/// Read until the peer goes, while the test script destroys the peer's whole domain (`xl
/// destroy`: no unmap notification runs there, no event comes) and then creates `marker`. Fail
/// unless the end was noticed within 1 s of `xl destroy` returning, and unless the close then
/// releases everything (reported by the close; the script checks that no zombie domain is left,
/// which a mapping of the dead domain's pages would keep).
fn destroy_measure(chan: Chan, marker: &str) -> Res {
    chan.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let ended = loop {
        match chan.read(&mut buf) {
            Ok(0) => break "end of stream",
            Ok(n) => total += n as u64,
            Err(vchan::VchanError::PeerClosed) => break "peer closed",
            Err(e) => return Err(e.into()),
        }
    };
    let noticed = Instant::now();
    let state = chan.state()?;
    // The script creates the marker as soon as `xl destroy` returns.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::path::Path::new(marker).exists() {
        if Instant::now() > deadline {
            return Err(format!("no {marker}: the domain was not destroyed").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let destroyed = Instant::now();
    let late = noticed.saturating_duration_since(destroyed);
    eprintln!(
        "{ended} after {total} bytes; noticed {late:?} after xl destroy returned (or before it); \
         state {state:?}"
    );
    chan.close()?;
    if total == 0 {
        return Err("no data arrived before the domain was destroyed".into());
    }
    if state != State::PeerClosed {
        return Err(format!("state {state:?} after the domain was destroyed").into());
    }
    if late > DEATH_NOTICED_WITHIN {
        return Err(format!("the destroyed domain was noticed {late:?} after xl destroy").into());
    }
    Ok(())
}

fn expect_errno<T: std::fmt::Debug>(result: xenstore::Result<T>, errno: Errno, what: &str) -> Res {
    match result {
        Err(XenstoreError::Errno(e)) if e == errno => Ok(()),
        other => Err(format!("{what}: expected {errno}, got {other:?}").into()),
    }
}

fn ensure(cond: bool, what: &str) -> Res {
    if cond {
        Ok(())
    } else {
        Err(what.to_owned().into())
    }
}

/// Our xenstore client against the real daemon: read, write, permissions, transactions, watches.
fn xenstore_check(guest: bool) -> Res {
    let xs = Client::open()?;
    let none = TxId::NONE;
    let me: DomId = String::from_utf8(xs.read(none, "domid")?)?.trim().parse()?;
    ensure(
        guest == (me != DomId::DOM0),
        "domid does not match the domain kind",
    )?;
    let home = xs.get_domain_path(me)?;
    ensure(home == format!("/local/domain/{me}"), "get_domain_path")?;
    let base = format!("{home}/data/qemu-xs-test");
    eprintln!("xenstore: I am domain {me}, testing under {base}");

    // Read and write, absolute and relative.
    xs.write(none, &format!("{base}/a"), b"hello")?;
    ensure(
        xs.read(none, "data/qemu-xs-test/a")? == b"hello",
        "read back",
    )?;
    xs.write(none, &format!("{base}/b"), b"")?;
    let mut names = xs.directory(none, &base)?;
    names.sort();
    ensure(names == ["a", "b"], "directory listing")?;
    expect_errno(
        xs.read(none, &format!("{base}/missing")),
        Errno::ENOENT,
        "missing node",
    )?;

    // Permissions: set, read back; and what a guest may not touch.
    let perms = [
        Perm::new(me, Access::None),
        Perm::new(DomId(0), Access::Read),
    ];
    xs.set_perms(none, &format!("{base}/a"), &perms)?;
    ensure(
        xs.get_perms(none, &format!("{base}/a"))? == perms,
        "get_perms",
    )?;
    if guest {
        expect_errno(
            xs.write(none, "/local/domain/0/qemu-xs-test", b"x"),
            Errno::EACCES,
            "a guest writing into dom0's home",
        )?;
        expect_errno(
            xs.read(none, "/local/domain/0/name"),
            Errno::EACCES,
            "a guest reading dom0's name",
        )?;
    } else {
        // The privileged connection may read every domain's nodes.
        xs.read(none, "/local/domain/0/name")?;
    }

    // Transactions: commit, abort, and a conflict reported as EAGAIN.
    let tx = xs.transaction_start()?;
    xs.write(tx, &format!("{base}/t1"), b"one")?;
    xs.write(tx, &format!("{base}/t2"), b"two")?;
    expect_errno(
        xs.read(none, &format!("{base}/t1")),
        Errno::ENOENT,
        "uncommitted write visible",
    )?;
    xs.transaction_end(tx, true)?;
    ensure(
        xs.read(none, &format!("{base}/t2"))? == b"two",
        "committed write",
    )?;
    let tx = xs.transaction_start()?;
    xs.write(tx, &format!("{base}/t3"), b"gone")?;
    xs.transaction_end(tx, false)?;
    expect_errno(
        xs.read(none, &format!("{base}/t3")),
        Errno::ENOENT,
        "aborted write",
    )?;
    let tx = xs.transaction_start()?;
    xs.read(tx, &format!("{base}/t1"))?;
    xs.write(none, &format!("{base}/t1"), b"changed outside")?;
    xs.write(tx, &format!("{base}/t1"), b"changed inside")?;
    expect_errno(
        xs.transaction_end(tx, true),
        Errno::EAGAIN,
        "conflicting commit",
    )?;
    let value = xs.transaction(|tx| {
        let v = xs.read(tx, &format!("{base}/t1"))?;
        xs.write(tx, &format!("{base}/t4"), &v)?;
        Ok(v)
    })?;
    ensure(value == b"changed outside", "transaction helper")?;

    // Watches: fires once at once, then on a change below.
    let wpath = format!("{base}/w");
    xs.write(none, &wpath, b"")?;
    xs.watch(&wpath, "tok")?;
    let first = xs
        .next_watch_event(Some(Duration::from_secs(10)))?
        .ok_or("no initial watch event")?;
    ensure(
        first.path == wpath && first.token == "tok",
        "initial watch event",
    )?;
    xs.write(none, &format!("{wpath}/x"), b"1")?;
    let event = loop {
        let e = xs
            .next_watch_event(Some(Duration::from_secs(10)))?
            .ok_or("no watch event for the change")?;
        if e.path != wpath {
            break e;
        }
    };
    ensure(
        event.path == format!("{wpath}/x") && event.token == "tok",
        "change event",
    )?;
    xs.unwatch(&wpath, "tok")?;

    xs.rm(none, &base)?;
    expect_errno(xs.read(none, &base), Errno::ENOENT, "removed tree")?;
    eprintln!("xenstore: all checks held");
    Ok(())
}
