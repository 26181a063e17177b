//! `vchan-proxy`'s command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use conduit_vchan::Endpoint;
use xen_types::DomId;

use crate::parse_size;

const EXAMPLES: &str = "\
Examples:
  In the guest (domain 5), serve its local web server to other domains:
    vchan-proxy 'vchan://*/http' tcp://127.0.0.1:8080
  In dom0, reach that web server as a local TCP port:
    vchan-proxy tcp://127.0.0.1:9000 vchan://5/http
  A Unix socket for a libxenvchan server at integer port 7 of domain 5 (Xen's
  vchan-socket-proxy -m server, say, in front of QEMU's QMP):
    vchan-proxy unix:///run/qmp.sock vchan://5/7
  Serve only domains 3 and 4, with 1 MiB rings:
    vchan-proxy 'vchan://*/db' unix:///run/postgresql/.s.PGSQL.5432 --allow 3,4 --ring-size 1M
  Offer TLS to other domains in front of a plain local service, clients checked against a CA:
    vchan-proxy 'tls+vchan://*/api' tcp://127.0.0.1:8080 --cert api.pem --key api.key --ca ca.pem
  Speak TLS to that service from dom0, expecting the name its certificate carries:
    vchan-proxy tcp://127.0.0.1:9443 tls+vchan://5/api --ca ca.pem --server-name api.guest5 \\
        --cert client.pem --key client.key
  On the simulated host (no Xen needed), as domain 5:
    xensim run --dir /tmp/xen --domid 5 -- vchan-proxy 'vchan://*/http' tcp://127.0.0.1:8080

Endpoints: tcp://HOST:PORT, unix:///ABS/PATH, unix:REL, vchan://DOMAIN/PORT (libxenvchan's
integer port: one connection at a time, wire-compatible with any libxenvchan peer),
vchan://DOMAIN/SERVICE (any number of connections at once), vchan://*/SERVICE (listen for any
domain), each optionally after tls+. DOMAIN is a domain id or name.

The simulated host is used when XENSIM_DIR is set (as under `xensim run`), else real Xen.
Each connection logs one line on standard error when it opens and one when it closes.
A client of a tls+ LISTEN that has not completed its handshake within --handshake-timeout
(10 s) is dropped; it never reaches TARGET.
SIGINT or SIGTERM withdraws the listener, closes every connection and exits 0.
On real Xen each vchan connection LISTEN serves holds grants of the gntalloc device (1024 in
all by default; 33 per connection with 64 KiB rings): size --max-connections and --ring-size
to fit.";

/// Accept connections on LISTEN and connect each to TARGET, copying both ways.
///
/// Both are conduit endpoint names. Each accepted connection gets its own connection to
/// TARGET; bytes are copied both ways until both directions have ended, and an end in one
/// direction is passed on as a half-close (the other direction goes on). An integer vchan
/// port, libxenvchan's convention, has no half-close: the end of the direction into it closes
/// the connection, once its peer has read everything.
#[derive(Parser)]
#[command(name = "vchan-proxy", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Where to accept connections (an endpoint name).
    #[arg(value_name = "LISTEN")]
    pub listen: Endpoint,
    /// Where to connect each accepted connection (an endpoint name).
    #[arg(value_name = "TARGET")]
    pub target: Endpoint,
    /// The most connections open at once; further clients wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
    /// Only these domains may connect to a vchan://*/SERVICE LISTEN (default: any domain).
    /// A list separated by commas, or the option repeated.
    #[arg(long, value_name = "DOMID", value_delimiter = ',')]
    pub allow: Vec<DomId>,
    /// The size of each ring of a vchan connection LISTEN serves, both directions (4096, 64k,
    /// 1M; default 64k).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub ring_size: Option<usize>,
    /// How long connecting to a vchan TARGET waits for its server or service to answer.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_timeout)]
    pub connect_timeout: Duration,
    /// Do not check TARGET at start. The check connects once and closes at once (for an
    /// integer vchan port it only looks for the server's keys); without it, a TARGET that is
    /// not there yet is found out by the first client.
    #[arg(long)]
    pub no_check: bool,
    /// Our certificate chain (PEM): shown to the clients of a tls+ LISTEN, and to a tls+
    /// TARGET that asks for a client certificate.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Certificate authorities (PEM): a tls+ TARGET must prove itself with a certificate one
    /// of them signed; given with a tls+ LISTEN, its clients must too.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// The name a tls+ TARGET's certificate must carry (default: the host of a tcp:// TARGET;
    /// required for other transports, which have no host name).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// How long a TLS handshake may take: a client of a tls+ LISTEN that has not completed its
    /// handshake by then is dropped and frees its place under --max-connections; a tls+ TARGET
    /// that has not, fails its connection (default 10).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub handshake_timeout: Option<Duration>,
    /// Log errors only: no line per connection.
    #[arg(short, long)]
    pub quiet: bool,
}

/// A timeout: some seconds, more than none.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match crate::parse_seconds(text)? {
        none if none.is_zero() => Err(format!("{text:?}: a timeout must be above 0 seconds")),
        timeout => Ok(timeout),
    }
}
