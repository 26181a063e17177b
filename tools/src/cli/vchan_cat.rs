//! `vchan-cat`'s command line.

use std::time::Duration;

use clap::Parser;

use crate::{parse_seconds, parse_size};

const USAGE: &str = "\
vchan-cat [OPTIONS] -l DOMID PORT|PATH   serve client domain DOMID
       vchan-cat [OPTIONS] DOMID PORT|PATH      connect to server domain DOMID
       vchan-cat [OPTIONS] -l ENDPOINT          accept one connection on an endpoint name
       vchan-cat [OPTIONS] ENDPOINT             connect to an endpoint name";

const EXAMPLES: &str = "\
Examples:
  vchan-cat -l 5 7 < file          serve domain 5 at integer port 7, send it a file
  vchan-cat --wait 10 0 7 > copy   in domain 5: fetch it
  vchan-cat -l 'vchan://*/svc'     answer one connection to the service svc
  vchan-cat -N vchan://0/svc       in another domain: call it
  vchan-cat tcp://127.0.0.1:8080   a TCP connection, as netcat would make
  xensim run --dir /tmp/xen --domid 1 -- vchan-cat --wait 10 0 7   on the simulated host

The simulated host is used when XENSIM_DIR is set (see `xensim run`), else real Xen.";

/// netcat for vchan: standard input to the peer, the peer to standard output.
///
/// Copies standard input to the peer and the peer to standard output; exits 0 once the peer has
/// closed and everything it sent is written. With DOMID and PORT|PATH it is a libxenvchan
/// endpoint: the server (-l) serves client domain DOMID, the client connects to server domain
/// DOMID; an integer PORT means data/vchan/CLIENT/PORT under the server's home, any other
/// PATH is the xenstore path itself. With one ENDPOINT it is a conduit-vchan endpoint name:
/// vchan://DOMAIN/PORT, vchan://DOMAIN/SERVICE, vchan://*/SERVICE (-l only), tcp://HOST:PORT,
/// unix:///ABS/PATH or unix:REL (vchan-proxy speaks TLS; this tool does not).
#[derive(Parser)]
#[command(name = "vchan-cat", version, override_usage = USAGE, after_help = EXAMPLES)]
pub struct Cli {
    /// Serve domain DOMID, or accept one connection on ENDPOINT, instead of connecting.
    #[arg(short, long)]
    pub listen: bool,
    /// At the end of standard input: with DOMID, close the channel (all of the input is
    /// delivered); with an ENDPOINT, half-close it (the peer reads the end and may still
    /// answer; a libxenvchan peer sees the end only at the close).
    #[arg(short = 'N')]
    pub close_on_eof: bool,
    /// Server: the bytes it can receive without the client waiting (4096, 64k, 1M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub read_min: Option<usize>,
    /// Server: the bytes it can send without waiting (4096, 64k, 1M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub write_min: Option<usize>,
    /// Client: wait this long for the server to appear (default: with DOMID, fail at once; with
    /// an ENDPOINT, 10 s, as a service answers through xenstore).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub wait: Option<Duration>,
    /// DOMID and PORT|PATH (a domain, and an integer port or a xenstore path), or one ENDPOINT.
    #[arg(value_name = "PEER")]
    pub peer: Vec<String>,
}
