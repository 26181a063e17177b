//! `vchan-cat`: netcat for vchan.
//!
//! `vchan-cat -l DOMID PORT|PATH` serves client domain DOMID; `vchan-cat DOMID PORT|PATH` connects
//! to server domain DOMID. An integer PORT means the conventional path
//! `/local/domain/<server>/data/vchan/<client>/<port>`. Standard input goes to the peer and what
//! the peer sends goes to standard output; the program exits 0 once the peer has closed and
//! everything it sent is on standard output.
//!
//! One argument is an endpoint name of conduit-vchan instead (`vchan://0/5`, `vchan://*/svc`,
//! `tcp://host:port`, `unix:///path`): `-l` accepts one connection on it, else it is connected to.
//!
//! The platform is chosen at run time: the simulated host when `XENSIM_DIR` is set (as under
//! `xensim run`), else real Xen when its devices can be opened.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use conduit_vchan::{Connection, Connector, Endpoint, ListenOptions, Listener, Transport, Xen};
use tools::cli::parse_domid;
use tools::cli::vchan_cat::Cli;
use tools::describe;
use vchan::{Address, Backend, RingSizes, Vchan};
use xen_types::DomId;

/// How often a thread that may have to stop looks up from a wait.
const POLL: Duration = Duration::from_millis(50);
const CHUNK: usize = 64 * 1024;

struct Options {
    listen: bool,
    close_on_eof: bool,
    sizes: RingSizes,
    sizes_given: bool,
    wait: Option<Duration>,
    peer: Peer,
}

/// Who is on the other end: a domain at a port or path, or an endpoint name.
enum Peer {
    Domain { domid: DomId, address: Address },
    Endpoint(Endpoint),
}

/// The options, checked against each other and the form of the peer (a usage mistake is the
/// `Err`).
fn options(cli: Cli) -> Result<Options, String> {
    let sizes_given = cli.read_min.is_some() || cli.write_min.is_some();
    let defaults = RingSizes::default();
    let sizes = RingSizes {
        server_read: cli.read_min.unwrap_or(defaults.server_read),
        server_write: cli.write_min.unwrap_or(defaults.server_write),
    };
    let peer = match <[String; 2]>::try_from(cli.peer) {
        Ok([domid, address]) => {
            let domid = parse_domid(&domid)?;
            if address.is_empty() {
                return Err("the PORT|PATH argument is empty".into());
            }
            let address: Address = match address.parse() {
                Ok(a) => a,
                Err(never) => match never {},
            };
            Peer::Domain { domid, address }
        }
        Err(positional) if positional.len() == 1 => {
            let endpoint: Endpoint = positional[0].parse().map_err(|e| format!("{e}"))?;
            if endpoint.tls {
                return Err(
                    "tls+ endpoints need certificates, which this tool takes no options for: use vchan-proxy".into(),
                );
            }
            if sizes_given && !matches!(endpoint.transport, Transport::Vchan { .. }) {
                return Err("--read-min and --write-min are for vchan endpoints".into());
            }
            Peer::Endpoint(endpoint)
        }
        Err(positional) => {
            return Err(format!(
                "expected DOMID and PORT|PATH, or one ENDPOINT, got {} arguments",
                positional.len()
            ))
        }
    };
    if !cli.listen && sizes_given {
        return Err(
            "--read-min and --write-min are for the server (-l): the server sizes the rings".into(),
        );
    }
    if cli.listen && cli.wait.is_some() {
        return Err("--wait is for the client: a server waits for its client anyway".into());
    }
    Ok(Options {
        listen: cli.listen,
        close_on_eof: cli.close_on_eof,
        sizes,
        sizes_given,
        wait: cli.wait,
        peer,
    })
}

/// What the stdin reader hands the sending thread.
enum Input {
    Data(Vec<u8>),
    Eof,
    Failed(io::Error),
}

/// Read standard input on a detached thread (it may block for ever), in chunks.
fn spawn_stdin_reader() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::sync_channel(4);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut buf = vec![0u8; CHUNK];
            let message = match stdin.read(&mut buf) {
                Ok(0) => Input::Eof,
                Ok(n) => {
                    buf.truncate(n);
                    Input::Data(buf)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Input::Failed(e),
            };
            let last = !matches!(message, Input::Data(_));
            if tx.send(message).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// How the sending side ended.
enum Sent {
    /// Standard input reached EOF; everything was written to the ring.
    Eof,
    /// Told to stop (the peer closed) with nothing left to send.
    Stopped,
}

fn pump(
    mut channel: impl Write,
    input: &mpsc::Receiver<Input>,
    stop: &AtomicBool,
) -> Result<Sent, String> {
    loop {
        match input.recv_timeout(POLL) {
            Ok(Input::Data(data)) => {
                match channel.write_all(&data) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(
                        "the peer closed the channel before it took everything from standard input"
                            .into(),
                    ),
                    Err(e) => return Err(format!("cannot send: {}", describe(&e))),
                }
            }
            Ok(Input::Eof) | Err(RecvTimeoutError::Disconnected) => return Ok(Sent::Eof),
            Ok(Input::Failed(e)) => return Err(format!("cannot read standard input: {e}")),
            Err(RecvTimeoutError::Timeout) => {
                // ORDERING: Acquire pairs with the Release store of the receiving side.
                if stop.load(Ordering::Acquire) {
                    return Ok(Sent::Stopped);
                }
            }
        }
    }
}

/// Copy the peer to standard output until it closes (or, with `stop`, until told to: the
/// channel's reads then time out regularly so that this loop can look).
fn receive(mut channel: impl Read, stop: Option<&AtomicBool>) -> Result<(), String> {
    let mut stdout = io::stdout().lock();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match channel.read(&mut buf) {
            Ok(0) => break,
            // Flushed at once: stdout is line-buffered, and a netcat must not sit on a partial line.
            Ok(n) => stdout
                .write_all(&buf[..n])
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("cannot write standard output: {e}"))?,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                // ORDERING: Acquire pairs with the Release store of the sending side.
                if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot receive: {}", describe(&e))),
        }
    }
    stdout
        .flush()
        .map_err(|e| format!("cannot write standard output: {e}"))
}

/// Copy standard input to `channel` and `channel` to standard output, at once, until the peer
/// closes. At the end of the input `input_ended` runs; with `stop_receiving`, it also stops the
/// receiving side (whose reads must then time out regularly).
fn session<S: Sync>(
    channel: &S,
    stop_receiving: bool,
    input_ended: impl FnOnce() -> Result<(), String> + Send,
) -> Result<(), String>
where
    for<'a> &'a S: Read + Write,
{
    let input = spawn_stdin_reader();
    let input_done = AtomicBool::new(false);
    let peer_done = AtomicBool::new(false);
    let (sent, received) = std::thread::scope(|scope| {
        let (input_done, peer_done) = (&input_done, &peer_done);
        let sender = scope.spawn(move || {
            let outcome = pump(channel, &input, peer_done);
            match outcome {
                Ok(Sent::Eof) => {
                    let ended = input_ended();
                    // ORDERING: Release pairs with the Acquire load in `receive`.
                    input_done.store(true, Ordering::Release);
                    ended.map(|()| Sent::Eof)
                }
                other => other,
            }
        });
        let stop = stop_receiving.then_some(input_done);
        let received = receive(channel, stop);
        // ORDERING: Release pairs with the Acquire load in `pump`.
        peer_done.store(true, Ordering::Release);
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err("the sending thread panicked".into()));
        (sent, received)
    });
    received?;
    sent.map(drop)
}

fn run<B: Backend>(
    backend: &B,
    opts: &Options,
    peer: DomId,
    address: &Address,
) -> Result<(), String>
where
    Vchan<B>: Sync,
{
    let vchan = if opts.listen {
        let server = Vchan::server(backend, peer, address, opts.sizes)
            .map_err(|e| format!("cannot serve domain {peer} at {address}: {}", describe(&e)))?;
        // Without a timeout this returns once the client has connected (or come and gone).
        match server.wait_connected(None) {
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "waiting for domain {peer} to connect: {}",
                    describe(&e)
                ))
            }
        }
        server
    } else {
        Vchan::client(backend, peer, address, opts.wait).map_err(|e| {
            format!(
                "cannot connect to domain {peer} at {address}: {}",
                describe(&e)
            )
        })?
    };
    if opts.close_on_eof {
        // Let the receiving loop look up regularly, to stop once standard input is all sent.
        vchan.set_read_timeout(Some(POLL));
    }
    let outcome = session(&vchan, opts.close_on_eof, || Ok(()));
    let closed = vchan
        .close()
        .map_err(|e| format!("cannot close the channel: {}", describe(&e)));
    outcome?;
    closed
}

/// The ENDPOINT form: one connection accepted on, or made to, an endpoint name.
fn run_endpoint(opts: &Options, endpoint: &Endpoint) -> Result<(), String> {
    let connection: Connection = if opts.listen {
        let mut options = ListenOptions::new();
        if opts.sizes_given {
            options = options.ring_sizes(opts.sizes);
        }
        let listener = Listener::bind_with(endpoint, options).map_err(|e| describe(&e))?;
        let (connection, _peer) = listener.accept().map_err(|e| describe(&e))?;
        // One connection, as netcat -l: the listener (and a service it published) goes now.
        drop(listener);
        connection
    } else {
        let mut connector = Connector::new();
        if let Some(wait) = opts.wait {
            connector = connector.timeout(wait);
        }
        connector.connect(endpoint).map_err(|e| describe(&e))?
    };
    session(&connection, false, || {
        if !opts.close_on_eof {
            return Ok(());
        }
        connection
            .shutdown_write()
            .map_err(|e| format!("cannot half-close {endpoint}: {}", describe(&e)))
    })
}

fn main() -> ExitCode {
    let cli: Cli = match tools::parse_cli(tools::cli::plain_words) {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    let outcome = options(cli)
        .map_err(|e| (format!("{e} (see 'vchan-cat --help')"), 2))
        .and_then(|opts| {
            let outcome = match &opts.peer {
                Peer::Endpoint(endpoint) => run_endpoint(&opts, endpoint),
                Peer::Domain { domid, address } => {
                    match Xen::from_env().map_err(|e| (e.to_string(), 1))? {
                        Xen::Xensim(backend) => run(&backend, &opts, *domid, address),
                        Xen::Real(backend) => run(&backend, &opts, *domid, address),
                        // Never from the environment: the in-process simulation is made in code.
                        Xen::Sim(backend) => run(&backend, &opts, *domid, address),
                    }
                }
            };
            outcome.map_err(|e| (e, 1))
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, status)) => {
            let _ = writeln!(std::io::stderr(), "vchan-cat: {message}");
            ExitCode::from(status)
        }
    }
}
