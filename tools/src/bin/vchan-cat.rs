//! `vchan-cat`: netcat for vchan.
//!
//! `vchan-cat -l DOMID PORT|PATH` serves client domain DOMID; `vchan-cat DOMID PORT|PATH` connects
//! to server domain DOMID. An integer PORT means the conventional path
//! `/local/domain/<server>/data/vchan/<client>/<port>`. Standard input goes to the peer and what
//! the peer sends goes to standard output; the program exits 0 once the peer has closed and
//! everything it sent is on standard output.
//!
//! The platform is chosen at run time: the simulated host when `XENSIM_DIR` is set (as under
//! `xensim run`), else real Xen when its devices can be opened.

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use tools::{describe, parse_size, platform, Platform};
use vchan::{Address, Backend, RingSizes, Vchan, VchanError};
use xen_types::DomId;

const USAGE: &str = "\
usage: vchan-cat [OPTIONS] -l DOMID PORT|PATH   serve client domain DOMID
       vchan-cat [OPTIONS] DOMID PORT|PATH      connect to server domain DOMID
Copies standard input to the peer and the peer to standard output; exits 0 once the peer has
closed and everything it sent is written. An integer PORT means data/vchan/<client>/<PORT> under
the server's home.
options:
  -N               close the channel once standard input is at EOF (all of it is delivered)
  --read-min SIZE  server: bytes it can receive without the client waiting (k/M suffixes)
  --write-min SIZE server: bytes it can send without waiting (k/M suffixes)
  --wait SECS      client: wait this long for the server to appear (default: fail at once)
The simulated host is used when XENSIM_DIR is set (see `xensim run`), else real Xen.";

/// How often a thread that may have to stop looks up from a wait.
const POLL: Duration = Duration::from_millis(50);
const CHUNK: usize = 64 * 1024;

struct Options {
    listen: bool,
    close_on_eof: bool,
    sizes: RingSizes,
    wait: Option<Duration>,
    peer: DomId,
    address: Address,
}

fn parse(args: Vec<String>) -> Result<Options, String> {
    let mut listen = false;
    let mut close_on_eof = false;
    let mut sizes = RingSizes::default();
    let mut sizes_given = false;
    let mut wait = None;
    let mut positional = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-l" | "--listen" => listen = true,
            "-N" => close_on_eof = true,
            "--read-min" => {
                sizes.server_read = parse_size(&value("--read-min")?)?;
                sizes_given = true;
            }
            "--write-min" => {
                sizes.server_write = parse_size(&value("--write-min")?)?;
                sizes_given = true;
            }
            "--wait" => {
                let text = value("--wait")?;
                let secs: f64 = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
                    .ok_or_else(|| format!("--wait {text:?} is not a number of seconds"))?;
                wait = Some(Duration::from_secs_f64(secs));
            }
            "--" => positional.extend(args.by_ref()),
            other if other.starts_with('-') && other.len() > 1 => {
                return Err(format!("unknown option {other:?}"))
            }
            _ => positional.push(arg),
        }
    }
    let [peer, address] = <[String; 2]>::try_from(positional)
        .map_err(|p| format!("expected DOMID and PORT|PATH, got {} arguments", p.len()))?;
    let peer = peer
        .parse::<DomId>()
        .ok()
        .filter(|d| d.is_normal())
        .ok_or_else(|| format!("{peer:?} is not a domain id"))?;
    if address.is_empty() {
        return Err("the PORT|PATH argument is empty".into());
    }
    let address: Address = match address.parse() {
        Ok(a) => a,
        Err(never) => match never {},
    };
    if !listen && sizes_given {
        return Err(
            "--read-min and --write-min are for the server (-l): the server sizes the rings".into(),
        );
    }
    if listen && wait.is_some() {
        return Err("--wait is for the client: a server waits for its client anyway".into());
    }
    Ok(Options {
        listen,
        close_on_eof,
        sizes,
        wait,
        peer,
        address,
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

fn pump<B: Backend>(
    vchan: &Vchan<B>,
    input: &mpsc::Receiver<Input>,
    stop: &AtomicBool,
) -> Result<Sent, String> {
    loop {
        match input.recv_timeout(POLL) {
            Ok(Input::Data(data)) => {
                match (&*vchan).write_all(&data) {
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

/// Copy the peer to standard output until it closes (or, with `stop`, until told to).
fn receive<B: Backend>(vchan: &Vchan<B>, stop: Option<&AtomicBool>) -> Result<(), String> {
    let mut stdout = io::stdout().lock();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match vchan.read(&mut buf) {
            Ok(0) => break,
            // Flushed at once: stdout is line-buffered, and a netcat must not sit on a partial line.
            Ok(n) => stdout
                .write_all(&buf[..n])
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("cannot write standard output: {e}"))?,
            // ORDERING: Acquire pairs with the Release store of the sending side.
            Err(VchanError::TimedOut) if stop.is_some_and(|s| s.load(Ordering::Acquire)) => break,
            Err(VchanError::TimedOut) => {}
            Err(e) => return Err(format!("cannot receive: {}", describe(&e))),
        }
    }
    stdout
        .flush()
        .map_err(|e| format!("cannot write standard output: {e}"))
}

fn run<B: Backend>(backend: &B, opts: &Options) -> Result<(), String>
where
    Vchan<B>: Sync,
{
    let vchan = if opts.listen {
        let server = Vchan::server(backend, opts.peer, &opts.address, opts.sizes).map_err(|e| {
            format!(
                "cannot serve domain {} at {}: {}",
                opts.peer,
                opts.address,
                describe(&e)
            )
        })?;
        // Without a timeout this returns once the client has connected (or come and gone).
        match server.wait_connected(None) {
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "waiting for domain {} to connect: {}",
                    opts.peer,
                    describe(&e)
                ))
            }
        }
        server
    } else {
        Vchan::client(backend, opts.peer, &opts.address, opts.wait).map_err(|e| {
            format!(
                "cannot connect to domain {} at {}: {}",
                opts.peer,
                opts.address,
                describe(&e)
            )
        })?
    };
    if opts.close_on_eof {
        // Let the receiving loop look up regularly, to stop once standard input is all sent.
        vchan.set_read_timeout(Some(POLL));
    }
    let input = spawn_stdin_reader();
    let input_done = AtomicBool::new(false);
    let peer_done = AtomicBool::new(false);
    let (sent, received) = std::thread::scope(|scope| {
        let (vchan, input_done, peer_done) = (&vchan, &input_done, &peer_done);
        let sender = scope.spawn(move || {
            let outcome = pump(vchan, &input, peer_done);
            if matches!(outcome, Ok(Sent::Eof)) {
                // ORDERING: Release pairs with the Acquire load in `receive`.
                input_done.store(true, Ordering::Release);
            }
            outcome
        });
        let stop = opts.close_on_eof.then_some(input_done);
        let received = receive(vchan, stop);
        // ORDERING: Release pairs with the Acquire load in `pump`.
        peer_done.store(true, Ordering::Release);
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err("the sending thread panicked".into()));
        (sent, received)
    });
    let closed = vchan
        .close()
        .map_err(|e| format!("cannot close the channel: {}", describe(&e)));
    received?;
    sent?;
    closed
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        let _ = writeln!(std::io::stdout(), "{USAGE}");
        return ExitCode::SUCCESS;
    }
    let outcome = parse(args)
        .map_err(|e| (format!("{e} (see 'vchan-cat --help')"), 2))
        .and_then(|opts| {
            let outcome = match platform().map_err(|e| (e, 1))? {
                Platform::Xensim(backend) => run(&backend, &opts),
                Platform::Xen(backend) => run(&backend, &opts),
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
