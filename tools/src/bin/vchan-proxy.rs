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
use std::path::Path;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use conduit_vchan::{
    AsyncConnection, AsyncListener, ConduitError, Connector, Domain, Endpoint, ListenOptions, Peer,
    Pump, PumpError, Transport, VchanPort, Xen,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tools::cli::vchan_proxy::Cli;
use tools::describe;

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
            && (cli.cert.is_some()
                || cli.ca.is_some()
                || cli.server_name.is_some()
                || cli.handshake_timeout.is_some())
        {
            return usage(
                "--cert, --key, --ca, --server-name and --handshake-timeout are for tls+ endpoints",
            );
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
        if let Some(timeout) = cli.handshake_timeout {
            options = options.handshake_timeout(timeout);
            connector = connector.handshake_timeout(timeout);
        }
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

/// Complete a TLS client's handshake (within the handshake timeout), connect to the target, then
/// copy both ways. The end of a direction is passed on as a half-close, and the relay is done
/// when both directions are; but a direction into an integer vchan port, whose peer sees an end
/// only at the close, ends the whole relay once the peer has read everything (so a libxenvchan
/// peer such as Xen's vchan-socket-proxy learns of it).
async fn forward(
    mut incoming: AsyncConnection,
    peer: &Peer,
    down_closes: bool,
    connector: &Connector,
    target: &Endpoint,
    (to_target, to_client): (&mut u64, &mut u64),
) -> Result<(), String> {
    // A client that fails TLS never reaches the target.
    incoming
        .handshake()
        .await
        .map_err(|e| format!("TLS with {peer} failed: {}", describe(&e)))?;
    let mut outgoing = connector
        .connect_async(target)
        .await
        .map_err(|e| describe(&e))?;
    let (client, target_name) = (peer.to_string(), target.to_string());
    let (mut up, mut down) = (Pump::new(), Pump::new());
    let up_closes = ends_by_closing(target);
    // Says which side failed, and how, in the relay's close line.
    let failed = |from: &str, to: &str, e: PumpError| match e {
        PumpError::Read(e) => format!("cannot read from {from}: {}", describe(&e)),
        PumpError::Write(e) => format!("cannot write to {to}: {}", describe(&e)),
    };
    std::future::poll_fn(|cx| {
        let up_step = up.poll(cx, &mut incoming, &mut outgoing);
        *to_target = up.copied();
        let up_done = up_step
            .map_err(|e| failed(&client, &target_name, e))?
            .is_ready();
        let down_step = down.poll(cx, &mut outgoing, &mut incoming);
        *to_client = down.copied();
        let down_done = down_step
            .map_err(|e| failed(&target_name, &client, e))?
            .is_ready();
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
    let cli: Cli = match tools::parse_cli(tools::cli::clap_words) {
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
