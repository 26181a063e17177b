//! vchan-bench: move data between two domains of the embedded simulated Xen and report how much
//! and how fast. No set-up, no hypervisor, no root.
//!
//! ```text
//! vchan-bench [--bytes SIZE] [--ring SIZE] [--chunk SIZE] [--duplex]
//! ```
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use tools::cli::vchan_bench::Cli;
use vchan::sim::SimXen;
use vchan::{Address, RingSizes, Vchan};
use xen_types::DomId;

/// The stream's period: byte `i` is `i % PERIOD` (a prime, so it never lines up with a ring's or a
/// chunk's power-of-two size). A lost or doubled byte changes every byte after it, and the
/// reader also needs the exact count before the writer closes.
const PERIOD: usize = 251;

/// The stream, precomputed: `PERIOD` bytes more than a chunk, so that the `len` bytes from any
/// position are one slice of it, copied or compared at memory speed (the check must not be what
/// the figure measures).
struct Pattern(Vec<u8>);

impl Pattern {
    fn new(chunk: usize) -> Pattern {
        Pattern((0..chunk + PERIOD).map(|i| (i % PERIOD) as u8).collect())
    }

    /// The `len` bytes of the stream from position `at`.
    fn at(&self, at: usize, len: usize) -> &[u8] {
        &self.0[at % PERIOD..][..len]
    }
}

fn send_all(mut out: impl Write, total: usize, chunk: usize) -> std::io::Result<()> {
    let pattern = Pattern::new(chunk);
    let mut sent = 0usize;
    while sent < total {
        let n = chunk.min(total - sent);
        out.write_all(pattern.at(sent, n))?;
        sent += n;
    }
    Ok(())
}

fn receive_all(mut input: impl Read, total: usize, chunk: usize) -> Result<(), String> {
    let pattern = Pattern::new(chunk);
    let mut buf = vec![0u8; chunk];
    let mut got = 0usize;
    while got < total {
        let n = input
            .read(&mut buf)
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err(format!("the peer closed after {got} of {total} bytes"));
        }
        if buf[..n] != *pattern.at(got, n) {
            return Err(format!("corrupted data within bytes {got}..{}", got + n));
        }
        got += n;
    }
    Ok(())
}

fn rate(bytes: usize, elapsed: Duration) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    format!(
        "{mib:.0} MiB in {:.3} s: {:.0} MiB/s",
        elapsed.as_secs_f64(),
        mib / elapsed.as_secs_f64()
    )
}

fn run(options: &Cli) -> Result<(), String> {
    let xen = SimXen::new();
    let dom0 = xen.domain(DomId::DOM0);
    let guest = xen
        .create_domain(DomId(1))
        .map_err(|e| format!("cannot create domain 1: {e}"))?;
    let sizes = RingSizes {
        server_read: options.ring,
        server_write: options.ring,
    };
    let address = Address::Port(1);
    let server =
        Vchan::server(&dom0, DomId(1), &address, sizes).map_err(|e| format!("server: {e}"))?;
    let client =
        Vchan::client(&guest, DomId::DOM0, &address, None).map_err(|e| format!("client: {e}"))?;
    println!(
        "simulated Xen: dom0 serves domain 1; rings {} B (client to server) and {} B (server to client)",
        server.read_capacity(),
        server.write_capacity()
    );
    let started = Instant::now();
    let (bytes, outcome) = thread::scope(|s| {
        let upload = s.spawn(|| send_all(&client, options.bytes, options.chunk));
        let download = options
            .duplex
            .then(|| s.spawn(|| send_all(&server, options.bytes, options.chunk)));
        let mut outcome = receive_all(&server, options.bytes, options.chunk);
        if options.duplex {
            outcome = outcome.and(receive_all(&client, options.bytes, options.chunk));
        }
        let joined = |r: thread::Result<std::io::Result<()>>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("a sender thread panicked".to_owned()),
        };
        outcome = outcome.and(joined(upload.join()));
        if let Some(download) = download {
            outcome = outcome.and(joined(download.join()));
        }
        let bytes = if options.duplex {
            2 * options.bytes
        } else {
            options.bytes
        };
        (bytes, outcome)
    });
    let elapsed = started.elapsed();
    outcome?;
    let direction = if options.duplex {
        "both ways at once"
    } else {
        "client to server"
    };
    println!(
        "moved {} ({direction}), every byte checked",
        rate(bytes, elapsed)
    );
    client.close().map_err(|e| format!("client close: {e}"))?;
    server.close().map_err(|e| format!("server close: {e}"))?;
    xen.check_leaks()
        .map_err(|leaks| format!("leak check failed: {leaks}"))?;
    println!("closed cleanly: no grant, mapping, port or xenstore key left behind");
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = match tools::parse_cli(tools::cli::plain_words) {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vchan-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
