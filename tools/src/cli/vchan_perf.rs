//! `vchan-perf`'s command line.

use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use xen_types::DomId;

use super::parse_domid;

const EXAMPLES: &str = "\
Examples:
  scripts/bench                                   build everything, print the table (~2 min)
  scripts/bench --quick --svg target/bench.svg    a short run, plus a bar chart
  xensim run --dir /tmp/xen --domid 0 -- vchan-perf table --c-peer ./vchan-perf-c --runs 5
  vchan-perf peer server 5 1 65536 stream 65536 4000000000   # in dom0, serving domain 5
  vchan-perf peer client 0 1 stream 65536 4000000000         # in domain 5: `stream BYTES NS`
  vchan-perf report results.txt --svg results.svg             # lines gathered on real Xen";

/// Measure vchan throughput and latency against libxenvchan and local baselines.
#[derive(Parser)]
#[command(name = "vchan-perf", version, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// vchan-perf's subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// One end of one measurement (the protocol tests/c/vchan-perf.c shares).
    #[command(subcommand)]
    Peer(PeerRole),
    /// Measure every cell on the simulated host and print the comparison table.
    ///
    /// Runs under `xensim run --domid 0` with domain 1 created (scripts/bench does both): each
    /// vchan cell is a server in dom0 writing to a client in dom1.
    Table(TableArgs),
    /// Print the table from measurement lines gathered elsewhere (for example on real Xen).
    ///
    /// Lines: `IMPL RING_MIN MSG_SIZE stream BYTES NANOS` or
    /// `IMPL RING_MIN MSG_SIZE pingpong ROUNDS P50_NS P99_NS`, IMPL being ours or c (or a
    /// baseline: socketpair, pipe, tcp, memcpy). Blank lines and `#` comments are skipped; several
    /// lines for one cell keep the best.
    Report {
        /// The file of measurement lines (`-` for standard input).
        file: PathBuf,
        /// Also write the figures as an SVG bar chart.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
}

/// The two ends of a measurement.
#[derive(Subcommand)]
pub enum PeerRole {
    /// Serve CLIENT_DOMID at data/vchan/CLIENT_DOMID/PORT: send the stream, or echo.
    Server {
        /// The client's domain.
        #[arg(value_parser = parse_domid)]
        client_domid: DomId,
        /// The vchan port (the path data/vchan/CLIENT/PORT under this domain's home).
        port: u32,
        /// Minimum size of both rings in bytes (0: the in-page 1024/2048-byte rings).
        ring_min: usize,
        /// What to measure.
        mode: Mode,
        /// Bytes per write (stream) or per message (pingpong).
        msg_size: usize,
        /// Bytes to send (stream) or timed rounds (pingpong).
        count: u64,
    },
    /// Connect to SERVER_DOMID's vchan; print the measurement on standard output.
    Client {
        /// The server's domain.
        #[arg(value_parser = parse_domid)]
        server_domid: DomId,
        /// The vchan port.
        port: u32,
        /// What to measure.
        mode: Mode,
        /// Bytes per read (stream) or per message (pingpong).
        msg_size: usize,
        /// Bytes to receive (stream) or timed rounds (pingpong).
        count: u64,
    },
    /// The cost of the calls themselves, for an instruction count (scripts/callgrind): one
    /// thread holds both ends (this domain serving itself, non-blocking) and makes COUNT rounds
    /// of one write of MSG_SIZE bytes and the reads that take them; prints `ops CALLS`.
    Ops {
        /// This domain's id.
        #[arg(value_parser = parse_domid)]
        domid: DomId,
        /// The vchan port.
        port: u32,
        /// Minimum size of both rings in bytes (0: the in-page 1024/2048-byte rings).
        ring_min: usize,
        /// Bytes per write.
        msg_size: usize,
        /// Rounds.
        count: u64,
    },
    /// Both ends in this process: serve this domain (DOMID, its own id) at PORT from a second
    /// thread and connect to it; print the measurement as `client` does.
    Loopback {
        /// This domain's id.
        #[arg(value_parser = parse_domid)]
        domid: DomId,
        /// The vchan port.
        port: u32,
        /// Minimum size of both rings in bytes (0: the in-page 1024/2048-byte rings).
        ring_min: usize,
        /// What to measure.
        mode: Mode,
        /// Bytes per write or read (stream) or per message (pingpong).
        msg_size: usize,
        /// Bytes to send (stream) or timed rounds (pingpong).
        count: u64,
    },
}

/// How the two peers of a vchan cell run: as separate processes in two domains (the usual way
/// between a dom0 tool and a guest), or as two threads of one process in one domain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A server process in dom0, a client process in domain 1.
    Processes,
    /// Both in one process in dom0 (loopback), a thread each.
    Threads,
}

/// The two measurements.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Server to client throughput.
    Stream,
    /// Round-trip latency of one message.
    Pingpong,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Stream => "stream",
            Mode::Pingpong => "pingpong",
        })
    }
}

/// Options of `table`.
#[derive(Args)]
pub struct TableArgs {
    /// Runs per cell; the best is shown.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// A much shorter run (one short run per cell): checks that everything works.
    #[arg(long)]
    pub quick: bool,
    /// Also write the figures as an SVG bar chart.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// The C peer (tests/c/vchan-perf.c, compiled); without it the C columns say n/a.
    #[arg(long, value_name = "PATH")]
    pub c_peer: Option<PathBuf>,
    /// The directory of our drop-in libxenvchan.so.4.17 (what scripts/libxenvchan prints): the
    /// C peer also runs on it, in a column of its own; without it, that column says n/a.
    #[arg(long, value_name = "DIR")]
    pub dropin: Option<PathBuf>,
    /// The Rust peer (default: this executable).
    #[arg(long, value_name = "PATH")]
    pub peer_bin: Option<PathBuf>,
    /// Our vchan-proxy, for the proxy row (default: the one next to this executable).
    #[arg(long, value_name = "PATH")]
    pub proxy_bin: Option<PathBuf>,
    /// Xen's vchan-socket-proxy, for the proxy row (default:
    /// /usr/lib/xen-4.17/bin/vchan-socket-proxy when it is there; without it, n/a).
    #[arg(long, value_name = "PATH")]
    pub c_proxy: Option<PathBuf>,
    /// Measure only the proxy row (and the direct socket it is compared with).
    #[arg(long)]
    pub proxy_only: bool,
    /// Log every run (its size and duration) on standard error.
    #[arg(long, short)]
    pub verbose: bool,
}
