//! `vchan-proxy`: socat for vchan. Accepts connections on one conduit endpoint and connects each
//! to another, copying both ways (with half-close) until both directions are done, so that a
//! TCP or Unix-socket program in one domain can be reached from another with no change to it.
//!
//! One tokio runtime carries every connection. The listener stops accepting while
//! `--max-connections` are open. SIGINT and SIGTERM withdraw the listener, close every
//! connection (each logs its close) and exit 0, so no grant, port or xenstore key is left.
#![forbid(unsafe_code)]

use std::fs;
use std::future::Future;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::Parser;
use conduit_vchan::{
    AsyncConnection, AsyncListener, ConduitError, Connector, Domain, Endpoint, ListenOptions, Peer,
    Transport, VchanPort, Xen,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tools::{describe, parse_size};
use xen_types::DomId;

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
#[command(color = clap::ColorChoice::Never)]
struct Cli {
    /// Where to accept connections (an endpoint name).
    #[arg(value_name = "LISTEN")]
    listen: Endpoint,
    /// Where to connect each accepted connection (an endpoint name).
    #[arg(value_name = "TARGET")]
    target: Endpoint,
    /// The most connections open at once; further clients wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_connections: u32,
    /// Only these domains may connect to a vchan://*/SERVICE LISTEN (default: any domain).
    /// A list separated by commas, or the option repeated.
    #[arg(long, value_name = "DOMID", value_delimiter = ',')]
    allow: Vec<DomId>,
    /// The size of each ring of a vchan connection LISTEN serves, both directions (4096, 64k,
    /// 1M; default 64k).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    ring_size: Option<usize>,
    /// How long connecting to a vchan TARGET waits for its server or service to answer.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_timeout)]
    connect_timeout: Duration,
    /// Do not check TARGET at start. The check connects once and closes at once (for an
    /// integer vchan port it only looks for the server's keys); without it, a TARGET that is
    /// not there yet is found out by the first client.
    #[arg(long)]
    no_check: bool,
    /// Our certificate chain (PEM): shown to the clients of a tls+ LISTEN, and to a tls+
    /// TARGET that asks for a client certificate.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Certificate authorities (PEM): a tls+ TARGET must prove itself with a certificate one
    /// of them signed; given with a tls+ LISTEN, its clients must too.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// The name a tls+ TARGET's certificate must carry (default: the host of a tcp:// TARGET;
    /// required for other transports, which have no host name).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Log errors only: no line per connection.
    #[arg(short, long)]
    quiet: bool,
}

/// A connect timeout: some seconds, more than none.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match tools::parse_seconds(text)? {
        none if none.is_zero() => Err(format!("{text:?}: a timeout must be above 0 seconds")),
        timeout => Ok(timeout),
    }
}

/// Why the proxy cannot start: a usage error (exit 2) or a failure at start (exit 1).
enum Refusal {
    Usage(String),
    Start(String),
}

/// Everything the accept loop needs, checked and built from the command line.
struct Proxy {
    listen: Endpoint,
    target: Arc<Endpoint>,
    connector: Arc<Connector>,
    options: ListenOptions,
    max_connections: usize,
    check: bool,
    log: Log,
}

fn is_vchan(endpoint: &Endpoint) -> bool {
    matches!(endpoint.transport, Transport::Vchan { .. })
}

impl Proxy {
    fn new(cli: Cli) -> Result<Proxy, Refusal> {
        let usage = |text: &str| Err(Refusal::Usage(text.to_owned()));
        let (listen, target) = (&cli.listen, &cli.target);
        if let Transport::Vchan {
            domain: Domain::Any,
            ..
        } = target.transport
        {
            return usage(
                "TARGET cannot be vchan://*/...: * names any domain, which only LISTEN can use",
            );
        }
        let any_service = matches!(
            &listen.transport,
            Transport::Vchan {
                domain: Domain::Any,
                port: VchanPort::Service(_)
            }
        );
        if !cli.allow.is_empty() && !any_service {
            return usage("--allow is for a LISTEN of the form vchan://*/SERVICE");
        }
        if cli.ring_size.is_some() && !is_vchan(listen) {
            return usage("--ring-size is for a vchan LISTEN (the rings are the server's to size)");
        }
        if !listen.tls
            && !target.tls
            && (cli.cert.is_some() || cli.ca.is_some() || cli.server_name.is_some())
        {
            return usage("--cert, --key, --ca and --server-name are for tls+ endpoints");
        }
        if listen.tls && cli.cert.is_none() {
            return usage("a tls+ LISTEN needs --cert and --key");
        }
        if cli.server_name.is_some() && !target.tls {
            return usage("--server-name is for a tls+ TARGET");
        }
        let server_name = match (&target.transport, &cli.server_name) {
            _ if !target.tls => None,
            (_, Some(name)) => Some(name.clone()),
            (Transport::Tcp { host, .. }, None) => Some(host.clone()),
            (_, None) => {
                return usage(
                    "a tls+ TARGET other than tcp:// needs --server-name (the name its \
                     certificate carries)",
                )
            }
        };
        if target.tls && cli.ca.is_none() {
            return usage(
                "a tls+ TARGET needs --ca (the authorities its certificate must chain to)",
            );
        }

        let start = |text: String| Refusal::Start(text);
        let log = Log { quiet: cli.quiet };
        let mut connector = Connector::new().timeout(cli.connect_timeout);
        // What the listener met and recovered from (a service directory another domain
        // removed, published again): one line each, even with -q.
        let mut options =
            ListenOptions::new().on_recovered(move |e| log.error(format_args!("{}", describe(e))));
        if is_vchan(listen) || is_vchan(target) {
            let xen = Xen::from_env().map_err(|e| start(describe(&e)))?;
            connector = connector.xen(xen.clone());
            options = options.xen(xen);
        }
        if !cli.allow.is_empty() {
            options = options.allow(cli.allow.clone());
        }
        if let Some(size) = cli.ring_size {
            options = options.ring_sizes(vchan::RingSizes {
                server_read: size,
                server_write: size,
            });
        }
        let identity = match (&cli.cert, &cli.key) {
            (Some(cert), Some(key)) => Some(tls::identity(cert, key).map_err(start)?),
            _ => None,
        };
        let authorities = match &cli.ca {
            Some(ca) => Some(tls::authorities(ca).map_err(start)?),
            None => None,
        };
        if listen.tls {
            let config =
                tls::server_config(identity.clone(), authorities.clone()).map_err(start)?;
            options = options.tls(config);
        }
        if let (Some(name), Some(roots)) = (server_name, authorities) {
            let name = ServerName::try_from(name.clone()).map_err(|_| {
                Refusal::Usage(format!("{name:?} is not a DNS name or an IP address"))
            })?;
            let config = tls::client_config(identity, roots).map_err(start)?;
            connector = connector.tls(config, name);
        }
        Ok(Proxy {
            listen: cli.listen,
            target: Arc::new(cli.target),
            connector: Arc::new(connector),
            options,
            max_connections: cli.max_connections as usize,
            check: !cli.no_check,
            log,
        })
    }

    /// Check the target, listen, relay until a signal (or the listener fails), then close
    /// everything.
    async fn run(self) -> Result<(), String> {
        let Proxy {
            listen,
            target,
            connector,
            options,
            max_connections,
            check,
            log,
        } = self;
        // The handlers go in first: from here on a signal is an orderly stop, never a kill.
        let signals =
            shutdown_signal().map_err(|e| format!("cannot handle SIGINT and SIGTERM: {e}"))?;
        let mut shutdown = pin!(signals);
        if check {
            let (checker, checked_target) = (Arc::clone(&connector), Arc::clone(&target));
            let checked = tokio::task::spawn_blocking(move || checker.check(&checked_target));
            tokio::select! {
                signal = &mut shutdown => {
                    log.info(format_args!("{signal} while checking the target: stopped"));
                    return Ok(());
                }
                checked = checked => checked
                    .map_err(|e| format!("the check of {target} failed: {e}"))?
                    .map_err(|e| format!("{} (checked at start; --no-check starts without it)", describe(&e)))?,
            }
        }
        let listener = AsyncListener::bind_with(&listen, options)
            .await
            .map_err(|e| describe(&e))?;
        log.info(format_args!(
            "listening on {}, forwarding to {target} (at most {max_connections} connections at once)",
            listener.local_endpoint()
        ));
        let slots = Arc::new(Semaphore::new(max_connections));
        let (stop, stopping) = watch::channel(false);
        let mut relays = JoinSet::new();
        let mut opened = 0u64;
        let ended = loop {
            // Reap the relays that are done, so the set holds only the open ones.
            while relays.try_join_next().is_some() {}
            let slot = tokio::select! {
                signal = &mut shutdown => break Ok(signal),
                slot = Arc::clone(&slots).acquire_owned() => {
                    slot.expect("the semaphore is never closed")
                }
            };
            let accepted = tokio::select! {
                signal = &mut shutdown => break Ok(signal),
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((incoming, peer)) => {
                    opened += 1;
                    relays.spawn(relay(Relay {
                        id: opened,
                        incoming,
                        peer,
                        incoming_ends_by_closing: ends_by_closing(&listen),
                        connector: Arc::clone(&connector),
                        target: Arc::clone(&target),
                        stopping: stopping.clone(),
                        log,
                        _slot: slot,
                    }));
                }
                Err(e @ ConduitError::ListenerStopped { .. }) => break Err(describe(&e)),
                Err(e) => {
                    // One client's failure (it went away during its handshake, say); the
                    // pause keeps a persistent one (out of descriptors) from spinning.
                    log.error(format_args!("{}", describe(&e)));
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        };
        while relays.try_join_next().is_some() {}
        match &ended {
            Ok(signal) => log.info(format_args!(
                "{signal}: closing {} connection(s) and the listener",
                relays.len()
            )),
            // The error itself is the program's last line.
            Err(_) => log.info(format_args!(
                "the listener failed: closing {} connection(s)",
                relays.len()
            )),
        }
        // Withdraw the listener first, so that no client waits on a service nobody answers.
        listener.close().await;
        let _ = stop.send(true);
        while relays.join_next().await.is_some() {}
        log.info(format_args!("stopped"));
        ended.map(drop)
    }
}

/// How long the accept loop pauses after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The copy buffer of each direction of a connection.
const COPY_BUFFER: usize = 64 * 1024;

/// A future that resolves to the name of the first SIGINT or SIGTERM.
fn shutdown_signal() -> io::Result<impl Future<Output = &'static str>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

/// Lines on standard error, `vchan-proxy: ...`; `-q` keeps only the errors.
#[derive(Clone, Copy)]
struct Log {
    quiet: bool,
}

impl Log {
    fn info(self, line: std::fmt::Arguments<'_>) {
        if !self.quiet {
            self.error(line);
        }
    }

    fn error(self, line: std::fmt::Arguments<'_>) {
        // A closed standard error must not stop the proxy.
        let _ = writeln!(io::stderr().lock(), "vchan-proxy: {line}");
    }
}

/// One accepted connection and what it needs to reach the target.
struct Relay {
    id: u64,
    incoming: AsyncConnection,
    peer: Peer,
    /// The listener is an integer vchan port (see [`ends_by_closing`]).
    incoming_ends_by_closing: bool,
    connector: Arc<Connector>,
    target: Arc<Endpoint>,
    stopping: watch::Receiver<bool>,
    log: Log,
    /// Frees a place under --max-connections when the relay ends.
    _slot: OwnedSemaphorePermit,
}

/// Connect to the target and copy both ways until done, failed, or told to stop; log the open
/// and the close.
async fn relay(relay: Relay) {
    let Relay {
        id,
        incoming,
        peer,
        incoming_ends_by_closing,
        connector,
        target,
        mut stopping,
        log,
        _slot,
    } = relay;
    let started = Instant::now();
    log.info(format_args!("#{id} open: {peer} -> {target}"));
    let (mut to_target, mut to_client) = (0, 0);
    let outcome = tokio::select! {
        outcome = forward(
            incoming,
            &peer,
            incoming_ends_by_closing,
            &connector,
            &target,
            (&mut to_target, &mut to_client),
        ) => outcome,
        _ = stopping.wait_for(|stop| *stop) => Err("closed by the shutdown".to_owned()),
    };
    let summary = format!(
        "#{id} close after {:.2} s, {to_target} bytes to the target and {to_client} back",
        started.elapsed().as_secs_f64(),
    );
    match outcome {
        Ok(()) => log.info(format_args!("{summary}")),
        Err(why) => log.info(format_args!("{summary}: {why}")),
    }
}

/// Whether an endpoint is an integer vchan port: libxenvchan's convention, whose peers know no
/// half-close and see the end of a stream only when the channel closes.
fn ends_by_closing(endpoint: &Endpoint) -> bool {
    matches!(
        endpoint.transport,
        Transport::Vchan {
            port: VchanPort::Number(_),
            ..
        }
    )
}

/// Connect to the target, then copy both ways. The end of a direction is passed on as a
/// half-close, and the relay is done when both directions are; but a direction into an integer
/// vchan port, whose peer sees an end only at the close, ends the whole relay once the peer has
/// read everything (so a libxenvchan peer such as Xen's vchan-socket-proxy learns of it).
async fn forward(
    mut incoming: AsyncConnection,
    peer: &Peer,
    down_closes: bool,
    connector: &Connector,
    target: &Endpoint,
    (to_target, to_client): (&mut u64, &mut u64),
) -> Result<(), String> {
    let mut outgoing = connector
        .connect_async(target)
        .await
        .map_err(|e| describe(&e))?;
    let (client, target_name) = (peer.to_string(), target.to_string());
    let mut up = Pump::new(&client, &target_name, to_target);
    let mut down = Pump::new(&target_name, &client, to_client);
    let up_closes = ends_by_closing(target);
    std::future::poll_fn(|cx| {
        let up_done = up.poll(cx, &mut incoming, &mut outgoing)?.is_ready();
        let down_done = down.poll(cx, &mut outgoing, &mut incoming)?.is_ready();
        let drained = |conn: &AsyncConnection, cx: &mut Context<'_>, name: &str| {
            conn.poll_drained(cx)
                .map_err(|e| format!("cannot close {name}: {}", describe(&e)))
        };
        if up_done && up_closes {
            return drained(&outgoing, cx, &target_name);
        }
        if down_done && down_closes {
            return drained(&incoming, cx, &client);
        }
        if up_done && down_done {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    })
    .await
}

/// One direction of a relay: read into a buffer, write it all out, and at the end of the
/// input shut down the output's writing side.
struct Pump<'a> {
    buf: Box<[u8]>,
    /// The part of `buf` read and not yet written.
    pending: std::ops::Range<usize>,
    /// The input has ended.
    ended: bool,
    /// The end has been passed on: this direction is done.
    done: bool,
    copied: &'a mut u64,
    from: &'a str,
    to: &'a str,
}

/// How many buffers one direction moves in one poll before it lets the other direction (and
/// other tasks) run: a vchan with data always answers at once, without tokio's budget.
const BUFFERS_PER_POLL: usize = 16;

impl<'a> Pump<'a> {
    fn new(from: &'a str, to: &'a str, copied: &'a mut u64) -> Pump<'a> {
        Pump {
            buf: vec![0u8; COPY_BUFFER].into_boxed_slice(),
            pending: 0..0,
            ended: false,
            done: false,
            copied,
            from,
            to,
        }
    }

    /// Move what can be moved now; ready once the end has been passed on.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut AsyncConnection,
        to: &mut AsyncConnection,
    ) -> Poll<Result<(), String>> {
        let write_failed = |e: io::Error| format!("cannot write to {}: {}", self.to, describe(&e));
        for _ in 0..BUFFERS_PER_POLL {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pending.is_empty() && !self.ended {
                let mut buf = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *from).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(format!(
                            "cannot read from {}: {}",
                            self.from,
                            describe(&e)
                        )))
                    }
                    Poll::Pending => return Poll::Pending,
                }
                let n = buf.filled().len();
                self.ended = n == 0;
                self.pending = 0..n;
            }
            while !self.pending.is_empty() {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.pending.clone()]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(write_failed(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pending.start += n;
                        *self.copied += n as u64;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(write_failed(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // A TLS writer may hold a record back until flushed.
            match Pin::new(&mut *to).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_failed(e))),
                Poll::Pending => return Poll::Pending,
            }
            if self.ended {
                match Pin::new(&mut *to).poll_shutdown(cx) {
                    // The other side has gone already: there is nobody left to tell.
                    Poll::Ready(Err(e))
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::NotConnected | io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        return Poll::Ready(Err(write_failed(e)))
                    }
                    Poll::Ready(_) => self.done = true,
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        // Not finished, but others' turn: come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Certificates, keys and rustls configurations from PEM files.
mod tls {
    use super::*;

    /// A certificate chain and its private key.
    pub type Identity = (Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>);

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn certificates(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, String> {
        let cannot = |e: &dyn std::fmt::Display| format!("{option} {}: {e}", path.display());
        // Read first, for the system's error (not found, permission) rather than the parser's.
        fs::metadata(path).map_err(|e| cannot(&e))?;
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| cannot(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cannot(&e))?;
        if certs.is_empty() {
            return Err(cannot(&"no PEM certificate in it"));
        }
        Ok(certs)
    }

    /// `--cert` and `--key`.
    pub fn identity(cert: &Path, key: &Path) -> Result<Identity, String> {
        let chain = certificates(cert, "--cert")?;
        fs::metadata(key).map_err(|e| format!("--key {}: {e}", key.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("--key {}: {e}", key.display()))?;
        Ok((chain, Arc::new(key)))
    }

    /// `--ca`.
    pub fn authorities(path: &Path) -> Result<Arc<rustls::RootCertStore>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(path, "--ca")? {
            roots
                .add(cert)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
        }
        Ok(Arc::new(roots))
    }

    /// For a tls+ LISTEN: our identity; clients checked against `authorities` if given.
    pub fn server_config(
        identity: Option<Identity>,
        authorities: Option<Arc<rustls::RootCertStore>>,
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        let (chain, key) = identity.ok_or("a tls+ LISTEN needs --cert and --key")?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match authorities {
            Some(roots) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| format!("--ca: {e}"))?,
            ),
            None => builder.with_no_client_auth(),
        };
        builder
            .with_single_cert(chain, key.clone_key())
            .map(Arc::new)
            .map_err(|e| format!("--cert and --key do not go together: {e}"))
    }

    /// For a tls+ TARGET: its certificate checked against `authorities`; ours shown if given.
    pub fn client_config(
        identity: Option<Identity>,
        authorities: Arc<rustls::RootCertStore>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(authorities);
        match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key.clone_key())
                .map_err(|e| format!("--cert and --key do not go together: {e}")),
            None => Ok(builder.with_no_client_auth()),
        }
        .map(Arc::new)
    }
}

fn main() -> ExitCode {
    let cli: Cli = match tools::parse_cli("vchan-proxy") {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    let fail = |text: &str, status: u8| {
        let _ = writeln!(io::stderr(), "vchan-proxy: {text}");
        ExitCode::from(status)
    };
    let proxy = match Proxy::new(cli) {
        Ok(proxy) => proxy,
        Err(Refusal::Usage(text)) => return fail(&format!("{text} (see 'vchan-proxy --help')"), 2),
        Err(Refusal::Start(text)) => return fail(&text, 1),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}"), 1),
    };
    let outcome = runtime.block_on(proxy.run());
    // Nothing is left running but, after a signal during the check, the check itself.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(text) => fail(&text, 1),
    }
}
