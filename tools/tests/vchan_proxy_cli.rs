//! vchan-proxy and vchan-cat as a user meets them without Xen: the help, the errors at start
//! (one line, a status that says which kind), a TCP relay with half-close, a chain of proxies
//! that puts TLS in the middle, and vchan-cat's `tcp://` form. (The vchan side runs on the
//! simulated host in `tests/tests/proxy_xensim.rs`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

const PROXY: &str = env!("CARGO_BIN_EXE_vchan-proxy");
const CAT: &str = env!("CARGO_BIN_EXE_vchan-cat");
const LIMIT: Duration = Duration::from_secs(30);

/// Run a program to its end with no simulated host in its environment.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("XENSIM_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run the program")
}

/// The one line a failed run wrote on standard error.
fn one_line(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
    text.trim_end().to_owned()
}

#[test]
fn help_documents_every_option_with_examples_and_version_answers() {
    let out = run(PROXY, &["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--max-connections",
        "--allow",
        "--ring-size",
        "--connect-timeout",
        "--no-check",
        "--cert",
        "--key",
        "--ca",
        "--server-name",
        "--handshake-timeout",
        "--quiet",
        "--version",
        "Examples:",
        "vchan-proxy 'vchan://*/http' tcp://127.0.0.1:8080",
        "vchan-proxy tcp://127.0.0.1:9000 vchan://5/http",
        "vchan-proxy unix:///run/qmp.sock vchan://5/7",
    ] {
        assert!(help.contains(option), "--help lacks {option:?}:\n{help}");
    }
    let out = run(PROXY, &["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("vchan-proxy "));
}

#[test]
fn bad_arguments_are_one_line_and_status_2() {
    for (args, says) in [
        (
            &["tcp://127.0.0.1:1", "vchan:/5/http"][..],
            "is not an endpoint",
        ),
        (&["tcp://127.0.0.1:1"][..], "TARGET"),
        (
            &["tcp://127.0.0.1:0", "vchan://*/http"][..],
            "TARGET cannot be vchan://*/",
        ),
        (
            &["tcp://127.0.0.1:0", "tcp://127.0.0.1:1", "--allow", "3"][..],
            "--allow",
        ),
        (
            &[
                "tcp://127.0.0.1:0",
                "tcp://127.0.0.1:1",
                "--ring-size",
                "1M",
            ][..],
            "--ring-size",
        ),
        (
            &["tls+tcp://127.0.0.1:0", "tcp://127.0.0.1:1"][..],
            "needs --cert and --key",
        ),
        (
            &["tcp://127.0.0.1:0", "tls+vchan://5/api", "--ca", "x"][..],
            "--server-name",
        ),
        (&["tcp://127.0.0.1:0", "tls+tcp://h:1"][..], "needs --ca"),
        (
            &["tcp://127.0.0.1:0", "tcp://127.0.0.1:1", "--ca", "x"][..],
            "for tls+ endpoints",
        ),
        (
            &[
                "tcp://127.0.0.1:0",
                "tcp://127.0.0.1:1",
                "--handshake-timeout",
                "5",
            ][..],
            "for tls+ endpoints",
        ),
        (
            &[
                "tls+tcp://127.0.0.1:0",
                "tcp://127.0.0.1:1",
                "--cert",
                "c",
                "--key",
                "k",
                "--handshake-timeout",
                "0",
            ][..],
            "above 0 seconds",
        ),
        (
            &[
                "tcp://127.0.0.1:0",
                "tcp://127.0.0.1:1",
                "--max-connections",
                "0",
            ][..],
            "0",
        ),
    ] {
        let out = run(PROXY, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let line = one_line(&out);
        assert!(line.starts_with("vchan-proxy: "), "{args:?}: {line}");
        assert!(line.contains(says), "{args:?}: {line}");
        assert!(
            line.ends_with("(see 'vchan-proxy --help')"),
            "{args:?}: {line}"
        );
    }
}

#[test]
fn an_unreachable_target_or_no_xen_fails_at_start_with_one_line_and_status_1() {
    // A port nobody listens on: bound, then let go.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("tcp://127.0.0.1:{port}");
    let out = run(PROXY, &["tcp://127.0.0.1:0", &target]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out);
    assert!(
        line.starts_with(&format!("vchan-proxy: cannot connect to {target}: ")),
        "{line}"
    );
    assert!(line.contains("--no-check"), "{line}");

    let missing = "unix:///nonexistent/vchan-proxy-test.sock";
    let out = run(PROXY, &["tcp://127.0.0.1:0", missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains(missing));

    // No simulated host and no /dev/xen here.
    let out = run(PROXY, &["tcp://127.0.0.1:0", "vchan://5/http"]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out);
    assert!(line.contains("xensim run"), "{line}");

    // A certificate file that is not there.
    let out = run(
        PROXY,
        &[
            "tls+tcp://127.0.0.1:0",
            &target,
            "--cert",
            "/nonexistent.pem",
            "--key",
            "/nonexistent.key",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line(&out).contains("--cert /nonexistent.pem"));
}

/// A running proxy whose standard error is read line by line.
struct Proxy {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proxy {
    fn start(args: &[&str]) -> Proxy {
        let mut child = Command::new(PROXY)
            .args(args)
            .env_remove("XENSIM_DIR")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vchan-proxy");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proxy { child, lines }
    }

    /// The next line that contains `text`.
    fn line_with(&self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(LIMIT)
                .unwrap_or_else(|_| panic!("no line with {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    /// `HOST:PORT` of its TCP listener, from its first line.
    fn address(&self) -> String {
        let line = self.line_with("listening on ");
        let start = line.find("tcp://").unwrap() + "tcp://".len();
        line[start..].split(',').next().unwrap().to_owned()
    }

    /// SIGTERM, then expect an exit 0 after "stopped".
    fn stop(mut self) {
        let status = Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.line_with("vchan-proxy: stopped");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP server that, per connection, reads to the end (the client's half-close), then answers
/// with what it read reversed and closes.
fn reverse_server() -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            if got.is_empty() {
                continue; // the proxy's check at start
            }
            got.reverse();
            conn.write_all(&got).unwrap();
            return;
        }
    });
    (port, handle)
}

/// Send `data`, half-close, and read the whole answer.
fn ask(address: &str, data: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    conn.write_all(data).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    answer
}

fn payload() -> Vec<u8> {
    (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn a_tcp_relay_carries_the_half_close_and_logs_open_and_close() {
    let (port, server) = reverse_server();
    let proxy = Proxy::start(&["tcp://127.0.0.1:0", &format!("tcp://127.0.0.1:{port}")]);
    let data = payload();
    let answer = ask(&proxy.address(), &data);
    let mut want = data.clone();
    want.reverse();
    assert!(answer == want, "the answer differs");
    server.join().unwrap();
    proxy.line_with("#1 open: tcp://127.0.0.1:");
    let close = proxy.line_with("#1 close after");
    assert!(
        close.ends_with(&format!(
            "{} bytes to the target and {} back",
            data.len(),
            data.len()
        )),
        "{close}"
    );
    proxy.stop();
}

/// A directory removed on drop.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An authority, a server certificate for "api.guest5.invalid" and a client certificate, as
/// PEM files in a directory removed on drop.
struct Pki {
    _dir: TempDir,
    ca: rcgen::Certificate,
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new(test: &str) -> Pki {
        let dir = TempDir(
            std::env::temp_dir().join(format!("vchan-proxy-{test}-{}", std::process::id())),
        );
        std::fs::create_dir_all(&dir.0).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let issue = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let file = |name: &str, text: &str| {
            let path = dir.0.join(name);
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        let ca_pem = file("ca.pem", &ca.pem());
        let (server_cert, server_key) = issue("api.guest5.invalid");
        let (client_cert, client_key) = issue("dom0.invalid");
        Pki {
            ca_pem,
            server_cert: file("s.pem", &server_cert),
            server_key: file("s.key", &server_key),
            client_cert: file("c.pem", &client_cert),
            client_key: file("c.key", &client_key),
            ca,
            _dir: dir,
        }
    }
}

#[test]
fn two_proxies_put_tls_between_plain_programs_with_certificates_from_pem_files() {
    let Pki {
        ca_pem,
        server_cert,
        server_key,
        client_cert,
        client_key,
        ..
    } = &Pki::new("tls");

    let (port, server) = reverse_server();
    // In front of the plain server: TLS, clients checked against the authority.
    let tls_front = Proxy::start(&[
        "tls+tcp://127.0.0.1:0",
        &format!("tcp://127.0.0.1:{port}"),
        "--cert",
        server_cert,
        "--key",
        server_key,
        "--ca",
        ca_pem,
    ]);
    let tls_address = tls_front.address();
    // A plain port that speaks TLS onwards, presenting the client certificate.
    let plain_front = Proxy::start(&[
        "tcp://127.0.0.1:0",
        &format!("tls+tcp://{tls_address}"),
        "--ca",
        ca_pem,
        "--server-name",
        "api.guest5.invalid",
        "--cert",
        client_cert,
        "--key",
        client_key,
    ]);
    let plain_address = plain_front.address();
    // A name the certificate does not carry is refused at start, in one line.
    let out = run(
        PROXY,
        &[
            "tcp://127.0.0.1:0",
            &format!("tls+tcp://{tls_address}"),
            "--ca",
            ca_pem,
            "--server-name",
            "other.invalid",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let line = one_line(&out);
    assert!(line.contains("TLS with tls+tcp://"), "{line}");
    assert!(
        line.contains("other.invalid") || line.contains("NotValidForName"),
        "{line}"
    );

    let data = payload();
    let answer = ask(&plain_address, &data);
    let mut want = data;
    want.reverse();
    assert!(answer == want, "the answer through TLS differs");
    server.join().unwrap();
    plain_front.stop();
    tls_front.stop();
}

/// Regression for a client that connected to a tls+ LISTEN and sent nothing: it held its place
/// under --max-connections for ever, and with `--max-connections 1` nobody else got through.
#[test]
fn a_client_that_never_completes_its_tls_handshake_is_dropped_and_frees_its_place() {
    let pki = Pki::new("silent");
    let (port, server) = reverse_server();
    let proxy = Proxy::start(&[
        "tls+tcp://127.0.0.1:0",
        &format!("tcp://127.0.0.1:{port}"),
        "--cert",
        &pki.server_cert,
        "--key",
        &pki.server_key,
        "--max-connections",
        "1",
        "--handshake-timeout",
        "2",
    ]);
    let address = proxy.address();
    // A client that connects and says nothing takes the one place.
    let mut silent = TcpStream::connect(&address).unwrap();
    silent.set_read_timeout(Some(LIMIT)).unwrap();
    proxy.line_with("#1 open: tcp://127.0.0.1:");

    // An honest client waits in the backlog until the silent one is dropped, then gets through.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = conduit_vchan::Connector::new()
        .tls(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from("api.guest5.invalid").unwrap(),
        )
        .handshake_timeout(LIMIT);
    let target: conduit_vchan::Endpoint = format!("tls+tcp://{address}").parse().unwrap();
    let mut honest = connector.connect(&target).unwrap();
    honest.write_all(b"stressed").unwrap();
    honest.shutdown_write().unwrap();
    let mut answer = Vec::new();
    honest.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"desserts");
    server.join().unwrap();

    // The silent client was closed, without reaching the target; the log says why.
    assert_eq!(silent.read(&mut [0; 16]).unwrap(), 0);
    let close = proxy.line_with("#1 close after");
    assert!(
        close.contains("0 bytes to the target and 0 back: TLS with tcp://127.0.0.1:"),
        "{close}"
    );
    assert!(
        close.ends_with("the handshake did not complete within 2s"),
        "{close}"
    );
    proxy.line_with("#2 open: tcp://127.0.0.1:");
    proxy.stop();
}

#[test]
fn vchan_cat_speaks_to_a_tcp_endpoint() {
    let (port, server) = reverse_server();
    let mut cat = Command::new(CAT)
        .args(["-N", &format!("tcp://127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin.take().unwrap().write_all(b"stressed").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"desserts");
    server.join().unwrap();
}
