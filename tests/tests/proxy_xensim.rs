//! vchan-proxy on the simulated host: a web server that never linked this project (Python's
//! http.server) in domain 5, reached from dom0 through two proxies; half-closes carried through;
//! a proxy killed mid-transfer; an orderly stop that leaves nothing on the host; Xen's own
//! vchan-socket-proxy at the other end of an integer port. And vchan-cat's endpoint names.

#[path = "xensim_support.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{artifacts, digest, random_bytes, require, wait_for, Host, SOCKET_PROXY};
use vchan::xensim::XensimDomain;
use vchan::Backend;
use xen_types::DomId;
use xenstore::{TxId, XenStore};

const MIB: usize = 1 << 20;
/// How long any one step may take before the test calls it a hang.
const LIMIT: Duration = Duration::from_secs(60);
/// The guest that serves.
const GUEST: u16 = 5;

/// Python's http.server on an ephemeral port of 127.0.0.1, serving one directory.
struct WebServer {
    child: Child,
    port: u16,
}

impl WebServer {
    fn start(dir: &Path) -> WebServer {
        require("/usr/bin/python3", "python3");
        let mut child = std::process::Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3 -m http.server");
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read http.server's banner");
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in http.server's banner {line:?}"));
        WebServer { child, port }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running vchan-proxy, its standard error collected line by line as it comes.
struct Proxy {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(host: &Host, domid: u16, args: &[&str]) -> Proxy {
        let mut child = host
            .run_as(domid, &artifacts().vchan_proxy, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vchan-proxy");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Proxy {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Wait until a line of its log satisfies `matches`; return it.
    fn wait_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader take the last lines before reporting them.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                    return line;
                }
                panic!(
                    "vchan-proxy exited ({status}) before {what}: {:#?}",
                    self.lines()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} from vchan-proxy: {:#?}",
                self.lines()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The endpoint it listens on, from its first line.
    fn listening(&mut self) -> String {
        let line = self.wait_line("listening line", |l| l.contains("listening on "));
        let rest = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
        rest.split(',').next().unwrap().to_owned()
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Wait for it to exit; its status and every line it wrote.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let status = wait_for(&mut self.child, LIMIT, "vchan-proxy");
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.lines())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of a log that report a connection opening, and closing.
fn opens(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.contains(" open: ")).count()
}
fn closes(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains(" close after "))
        .collect()
}
/// A close line with nothing after the byte counts: both directions ended normally.
fn clean_close(line: &str) -> bool {
    line.ends_with(" back")
}

/// A web server in the guest, a proxy in front of it in the guest (`vchan://*/web`), and a
/// proxy in dom0 that makes it a local TCP port (`tcp://127.0.0.1:0` -> `vchan://5/web`).
/// Fields drop in order: the proxies before the host.
struct Rig {
    dom0_proxy: Proxy,
    guest_proxy: Proxy,
    _web: WebServer,
    host: Host,
    /// `127.0.0.1:PORT` of the dom0 proxy.
    front: String,
    /// What the web server serves at /file.
    file: Vec<u8>,
    _www: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Rig {
    fn start(tag: &str, file_len: usize) -> Rig {
        let host = Host::start(tag, &[GUEST]);
        let www = TempDir(std::env::temp_dir().join(format!("{tag}-www-{}", std::process::id())));
        std::fs::create_dir_all(&www.0).expect("create the web root");
        let file = random_bytes(file_len, file_len as u64);
        std::fs::write(www.0.join("file"), &file).expect("write the served file");
        let web = WebServer::start(&www.0);
        let backend = format!("tcp://127.0.0.1:{}", web.port);
        let mut guest_proxy = Proxy::start(&host, GUEST, &["vchan://*/web", &backend]);
        guest_proxy.listening();
        let mut dom0_proxy = Proxy::start(&host, 0, &["tcp://127.0.0.1:0", "vchan://5/web"]);
        let front = dom0_proxy
            .listening()
            .strip_prefix("tcp://")
            .expect("a TCP endpoint")
            .to_owned();
        Rig {
            dom0_proxy,
            guest_proxy,
            _web: web,
            host,
            front,
            file,
            _www: www,
        }
    }

    /// SIGTERM both proxies: each exits 0, the guest's service is withdrawn, and the host holds
    /// nothing. Returns both logs (dom0's, the guest's).
    fn stop(self) -> (Vec<String>, Vec<String>) {
        let Rig {
            dom0_proxy,
            guest_proxy,
            _web,
            host,
            ..
        } = self;
        dom0_proxy.signal("TERM");
        guest_proxy.signal("TERM");
        let (dom0_status, dom0_log) = dom0_proxy.finish();
        let (guest_status, guest_log) = guest_proxy.finish();
        assert!(
            dom0_status.success(),
            "dom0's proxy: {dom0_status}: {dom0_log:#?}"
        );
        assert!(
            guest_status.success(),
            "the guest's proxy: {guest_status}: {guest_log:#?}"
        );
        for log in [&dom0_log, &guest_log] {
            assert_eq!(
                log.last().map(String::as_str),
                Some("vchan-proxy: stopped"),
                "{log:#?}"
            );
        }
        assert_withdrawn(&host);
        host.assert_clean();
        (dom0_log, guest_log)
    }
}

/// The guest's service directory is gone from xenstore.
fn assert_withdrawn(host: &Host) {
    let store = XensimDomain::new(&host.dir, DomId(0))
        .open_store()
        .expect("open xenstore as dom0");
    let service = format!("/local/domain/{GUEST}/data/conduit/web");
    assert!(
        store.read(TxId::NONE, &service).is_err(),
        "{service} is still in xenstore"
    );
}

/// `GET path` over HTTP/1.0 (the server closes after the reply); with `half_close`, the
/// request is followed by a half-close. Returns the status line and the body, checked against
/// Content-Length.
fn http_get(front: &str, path: &str, half_close: bool) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(front).expect("connect to the dom0 proxy");
    stream
        .set_read_timeout(Some(LIMIT))
        .expect("socket timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n").expect("send the request");
    if half_close {
        stream.shutdown(Shutdown::Write).expect("half-close");
    }
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read the reply");
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in a {}-byte reply", reply.len()));
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let body = reply[split + 4..].to_vec();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    assert_eq!(
        body.len(),
        length,
        "the body is not as long as the header says"
    );
    (head.lines().next().unwrap_or_default().to_owned(), body)
}

#[test]
fn fifty_clients_fetch_a_file_through_two_proxies_byte_identical() {
    let rig = Rig::start("proxy-fifty", 3 * MIB);
    let replies: Vec<(String, Vec<u8>)> = thread::scope(|s| {
        let clients: Vec<_> = (0..50)
            .map(|_| s.spawn(|| http_get(&rig.front, "/file", false)))
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("a client panicked"))
            .collect()
    });
    let want = digest(&rig.file);
    for (i, (status, body)) in replies.iter().enumerate() {
        assert!(status.contains(" 200 "), "client {i}: {status}");
        assert_eq!(body.len(), rig.file.len(), "client {i}: length");
        assert_eq!(digest(body), want, "client {i}: the body differs");
    }
    let (dom0_log, guest_log) = rig.stop();
    // dom0's proxy relayed the 50; the guest's also saw dom0's check at start (one empty
    // connection). Every one opened, closed, and closed without an error.
    assert_eq!(opens(&dom0_log), 50, "{dom0_log:#?}");
    assert_eq!(opens(&guest_log), 51, "{guest_log:#?}");
    for log in [&dom0_log, &guest_log] {
        let closed = closes(log);
        assert_eq!(closed.len(), opens(log), "{log:#?}");
        assert!(closed.iter().all(|l| clean_close(l)), "{log:#?}");
    }
}

/// Issue 20's scenario: a web server in dom0 behind `vchan-proxy 'vchan://*/http'
/// tcp://...`, and `vchan-proxy tcp://127.0.0.1:0 vchan://0/http` in domain 5; 60 clients in
/// the guest fetch at once. Every connect of the guest's proxy is a request from a guest,
/// bound by xenstore's quotas for guests (10 transactions, 128 watches at once); 13 to 27 of
/// 50 failed with `ENOSPC` before connects waited out the quotas. All succeed, bodies intact,
/// and both proxies stop cleanly.
#[test]
fn sixty_clients_in_a_guest_reach_a_dom0_service_at_once() {
    const CLIENTS: usize = 60;
    let host = Host::start("proxy-guest-burst", &[GUEST]);
    let www = TempDir(std::env::temp_dir().join(format!("guest-burst-www-{}", std::process::id())));
    std::fs::create_dir_all(&www.0).expect("create the web root");
    let file = random_bytes(256 * 1024, 7);
    std::fs::write(www.0.join("file"), &file).expect("write the served file");
    let web = WebServer::start(&www.0);
    let backend = format!("tcp://127.0.0.1:{}", web.port);
    let mut dom0_proxy = Proxy::start(&host, 0, &["vchan://*/http", &backend]);
    dom0_proxy.listening();
    // --connect-timeout: a bound against a hang only (a loaded machine may take longer than the
    // default 10 s to get 60 connects through).
    let mut guest_proxy = Proxy::start(
        &host,
        GUEST,
        &[
            "tcp://127.0.0.1:0",
            "vchan://0/http",
            "--connect-timeout",
            "120",
        ],
    );
    let front = guest_proxy
        .listening()
        .strip_prefix("tcp://")
        .expect("a TCP endpoint")
        .to_owned();
    let started = Instant::now();
    // Each fetch checks its reply (a failed one panics in its thread): count the good ones.
    let good = thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| s.spawn(|| http_get(&front, "/file", false)))
            .collect();
        clients
            .into_iter()
            .filter_map(|c| c.join().ok())
            .filter(|(status, body)| status.contains(" 200 ") && digest(body) == digest(&file))
            .count()
    });
    eprintln!(
        "{good} of {CLIENTS} fetches at once from domain {GUEST} through two proxies succeeded \
         in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(good, CLIENTS, "guest's proxy: {:#?}", guest_proxy.lines());
    for proxy in [&guest_proxy, &dom0_proxy] {
        proxy.signal("TERM");
    }
    let (guest_status, guest_log) = guest_proxy.finish();
    let (dom0_status, dom0_log) = dom0_proxy.finish();
    assert!(guest_status.success(), "{guest_status}: {guest_log:#?}");
    assert!(dom0_status.success(), "{dom0_status}: {dom0_log:#?}");
    // The guest's proxy relayed the 60; dom0's also saw the guest's check at start.
    assert_eq!(opens(&guest_log), CLIENTS, "{guest_log:#?}");
    assert_eq!(opens(&dom0_log), CLIENTS + 1, "{dom0_log:#?}");
    for log in [&guest_log, &dom0_log] {
        let closed = closes(log);
        assert_eq!(closed.len(), opens(log), "{log:#?}");
        assert!(closed.iter().all(|l| clean_close(l)), "{log:#?}");
    }
    drop(web);
    host.assert_clean();
}

#[test]
fn a_client_that_half_closes_gets_the_whole_reply_and_a_stop_closes_open_connections() {
    let mut rig = Rig::start("proxy-half", 2 * MIB);
    let (status, body) = http_get(&rig.front, "/file", true);
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(digest(&body), digest(&rig.file), "the body differs");
    // A connection left open (idle, both directions) when the proxies are told to stop.
    let mut idle = TcpStream::connect(&rig.front).expect("connect to the dom0 proxy");
    rig.dom0_proxy.wait_line("the idle connection's open", |l| {
        l.starts_with("vchan-proxy: #2 open")
    });
    rig.guest_proxy
        .wait_line("the idle connection's open", |l| {
            l.starts_with("vchan-proxy: #3 open")
        });
    let (dom0_log, _) = rig.stop();
    assert!(
        dom0_log.iter().any(
            |l| l.starts_with("vchan-proxy: #2 close") && l.ends_with("closed by the shutdown")
        ),
        "{dom0_log:#?}"
    );
    // The client of the closed connection sees its end.
    idle.set_read_timeout(Some(LIMIT)).expect("socket timeout");
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the idle connection got {} bytes",
        rest.len()
    );
}

/// Fetch a file far larger than everything the path can buffer, read the first megabyte, kill
/// one proxy with SIGKILL, and check the client's transfer ends short (never hangs), the other
/// proxy logs the connection's failure, and the host is clean once the survivor has stopped.
fn kill_mid_transfer(tag: &str, kill_guest: bool) {
    let rig = Rig::start(tag, 64 * MIB);
    let mut stream = TcpStream::connect(&rig.front).expect("connect to the dom0 proxy");
    stream
        .set_read_timeout(Some(LIMIT))
        .expect("socket timeout");
    write!(stream, "GET /file HTTP/1.0\r\n\r\n").expect("send the request");
    let mut first = vec![0u8; MIB];
    stream.read_exact(&mut first).expect("the first megabyte");
    let Rig {
        dom0_proxy,
        guest_proxy,
        _web,
        host,
        file,
        ..
    } = rig;
    let (mut victim, mut survivor) = match kill_guest {
        true => (guest_proxy, dom0_proxy),
        false => (dom0_proxy, guest_proxy),
    };
    victim.signal("KILL");
    let status = wait_for(&mut victim.child, LIMIT, "the killed proxy");
    assert!(support::killed(&status), "{status}");
    // The client's transfer ends (EOF or a reset), short of the file: the survivor passed the
    // end on (a killed peer's channel closes, as far as the other end can tell, like a closed
    // one: the host clears its live byte, as Xen's unmap notification does).
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        first.len() + rest.len() < file.len(),
        "the whole file arrived although a proxy was killed"
    );
    // Once the client has gone too, the survivor closes the connection.
    drop(stream);
    survivor.wait_line("the connection's close", |l| {
        l.contains(" close after ") && !l.contains(" 0 back")
    });
    survivor.signal("TERM");
    let (status, log) = survivor.finish();
    assert!(status.success(), "the surviving proxy: {status}: {log:#?}");
    drop(victim);
    host.assert_clean();
}

#[test]
fn killing_the_guests_proxy_mid_transfer_is_seen_and_leaves_the_host_clean() {
    kill_mid_transfer("proxy-kill-guest", true);
}

#[test]
fn killing_dom0s_proxy_mid_transfer_is_seen_and_leaves_the_host_clean() {
    kill_mid_transfer("proxy-kill-dom0", false);
}

/// How a test backend ends each connection.
#[derive(Clone, Copy)]
enum BackendEnd {
    /// It closes once it has read and sent everything.
    Closes,
    /// It waits for the other side's end first. (Xen's vchan-socket-proxy in server mode
    /// connects to its backend again at once when the backend closes while the vchan client is
    /// still there, and sends what comes from that connection to the same client.)
    WaitsForTheEnd,
}

/// A Unix-socket backend that, for each of `connections` connections that send anything, reads
/// `expect` bytes while it sends `reply`, checks what it read, and ends as `end` says. (An empty
/// connection, such as a proxy's check at start, is skipped.)
fn backend(
    listener: UnixListener,
    expect: Vec<u8>,
    reply: Vec<u8>,
    connections: usize,
    end: BackendEnd,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut served = 0;
        while served < connections {
            let (mut conn, _) = listener.accept().expect("accept on the backend socket");
            conn.set_read_timeout(Some(LIMIT)).expect("socket timeout");
            let mut got = Vec::new();
            thread::scope(|s| {
                let mut writer = conn.try_clone().expect("clone the backend socket");
                let reply = &reply;
                let sent = s.spawn(move || writer.write_all(reply));
                let _ = (&mut conn).take(expect.len() as u64).read_to_end(&mut got);
                if !got.is_empty() {
                    sent.join()
                        .expect("backend writer")
                        .expect("the backend's reply");
                }
            });
            if got.is_empty() {
                continue;
            }
            assert_eq!(digest(&got), digest(&expect), "the backend got other bytes");
            if let BackendEnd::WaitsForTheEnd = end {
                let mut rest = Vec::new();
                let _ = conn.read_to_end(&mut rest);
                assert!(rest.is_empty(), "{} bytes after the request", rest.len());
            }
            served += 1;
        }
    })
}

/// Send `data` through the Unix socket at `front` while reading `expect` bytes back, both at
/// once; then (with `to_eof`) wait for the end of the stream.
fn exchange(front: &Path, data: &[u8], expect: &[u8], to_eof: bool) {
    let mut conn = connect_unix(front);
    conn.set_read_timeout(Some(LIMIT)).expect("socket timeout");
    let mut got = vec![0u8; expect.len()];
    thread::scope(|s| {
        let mut writer = conn.try_clone().expect("clone the socket");
        let sent = s.spawn(move || writer.write_all(data));
        conn.read_exact(&mut got).expect("read the backend's reply");
        sent.join()
            .expect("writer")
            .expect("send through the proxies");
    });
    assert_eq!(digest(&got), digest(expect), "the reply differs");
    if to_eof {
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).expect("read to the end");
        assert!(rest.is_empty(), "{} bytes after the reply", rest.len());
    }
}

/// Connect to a Unix socket a proxy creates (it may not be there yet).
fn connect_unix(path: &Path) -> UnixStream {
    let deadline = Instant::now() + LIMIT;
    loop {
        match UnixStream::connect(path) {
            Ok(conn) => return conn,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot connect to {}: {e}", path.display()),
        }
    }
}

/// Feed `input` to a child's standard input while reading its standard output to the end;
/// wait for it. Its status, its output and its standard error.
fn feed_and_collect(mut child: Child, input: Vec<u8>) -> (ExitStatus, Vec<u8>, String) {
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = thread::spawn(move || stdin.write_all(&input));
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read the child's output");
    let _ = feeder.join();
    let status = wait_for(&mut child, LIMIT, "a child");
    let err = support::stderr_of(&mut child);
    (status, out, err)
}

/// Xen's vchan-socket-proxy serves integer port 7 of domain 1 (its server mode: a Unix-socket
/// backend behind it); our proxy in dom0 makes that a Unix socket, the example
/// `vchan-proxy unix:///run/qmp.sock vchan://5/7`. Two connections in turn, data both ways.
/// vchan-socket-proxy never passes its backend's end on (its server mode keeps the channel
/// open), so each client closes once it has its reply; our proxy then closes the channel, once
/// the C side has read everything, and the C side is ready for the next client.
#[test]
fn our_proxy_reaches_xens_vchan_socket_proxy_at_an_integer_port() {
    require(SOCKET_PROXY, "xen-utils-4.17");
    let host = Host::start("proxy-c-server", &[1]);
    let (to_backend, to_client) = (random_bytes(4 * MIB, 21), random_bytes(4 * MIB, 22));
    let backend_path = host.dir.join("backend.sock");
    let served = backend(
        UnixListener::bind(&backend_path).expect("bind the backend"),
        to_backend.clone(),
        to_client.clone(),
        2,
        BackendEnd::WaitsForTheEnd,
    );
    let mut c_proxy = host
        .run_as(
            1,
            Path::new(SOCKET_PROXY),
            &["-m", "server", "0", "data/vchan/0/7"],
        )
        .arg(&backend_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vchan-socket-proxy");
    let front = host.dir.join("front.sock");
    let front_name = format!("unix://{}", front.display());
    let mut ours = Proxy::start(&host, 0, &[&front_name, "vchan://1/7"]);
    ours.listening();
    for n in 1..=2 {
        exchange(&front, &to_backend, &to_client, false);
        ours.wait_line("the connection's close", |l| {
            l.starts_with(&format!("vchan-proxy: #{n} close"))
        });
    }
    served.join().expect("the backend");
    ours.signal("TERM");
    let (status, log) = ours.finish();
    let _ = c_proxy.kill();
    let _ = c_proxy.wait();
    assert!(status.success(), "{status}: {log:#?}");
    assert_eq!(opens(&log), 2, "{log:#?}");
    assert!(closes(&log).iter().all(|l| clean_close(l)), "{log:#?}");
    assert!(!front.exists(), "our proxy left its socket behind");
    std::fs::remove_file(&backend_path).expect("remove the backend's socket");
    host.assert_clean();
}

/// The other way round: our proxy serves integer port 8 in domain 1 (a libxenvchan-compatible
/// server, a Unix-socket backend behind it) and Debian's libxenvchan connects to it (the C
/// netcat), twice, data both ways. The backend's end reaches the C client as the close, once it
/// has read everything: the only end a libxenvchan peer knows.
#[test]
fn a_libxenvchan_client_reaches_our_proxy_at_an_integer_port() {
    let a = artifacts();
    let host = Host::start("proxy-c-client", &[1]);
    let (to_backend, to_client) = (random_bytes(4 * MIB, 31), random_bytes(4 * MIB, 32));
    let backend_path = host.dir.join("backend.sock");
    let served = backend(
        UnixListener::bind(&backend_path).expect("bind the backend"),
        to_backend.clone(),
        to_client.clone(),
        2,
        BackendEnd::Closes,
    );
    let backend_name = format!("unix://{}", backend_path.display());
    let mut ours = Proxy::start(&host, 1, &["vchan://0/8", &backend_name]);
    ours.listening();
    for n in 1..=2 {
        // The C client fails at once if the server is not published (yet, or again).
        wait_published(&host, "/local/domain/1/data/vchan/0/8");
        let client = host
            .run_as(0, &a.c_peer, &["1", "/local/domain/1/data/vchan/0/8"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the C client");
        let (status, got, err) = feed_and_collect(client, to_backend.clone());
        assert!(status.success(), "{status}: {err}");
        assert_eq!(
            digest(&got),
            digest(&to_client),
            "the C client got other bytes"
        );
        ours.wait_line("the connection's close", |l| {
            l.starts_with(&format!("vchan-proxy: #{n} close"))
        });
    }
    served.join().expect("the backend");
    ours.signal("TERM");
    let (status, log) = ours.finish();
    assert!(status.success(), "{status}: {log:#?}");
    assert_eq!(opens(&log), 2, "{log:#?}");
    assert!(closes(&log).iter().all(|l| clean_close(l)), "{log:#?}");
    std::fs::remove_file(&backend_path).expect("remove the backend's socket");
    host.assert_clean();
}

/// Wait until a vchan server has published its keys at `path`.
fn wait_published(host: &Host, path: &str) {
    let store = XensimDomain::new(&host.dir, DomId(0))
        .open_store()
        .expect("open xenstore as dom0");
    let deadline = Instant::now() + LIMIT;
    while store
        .read(TxId::NONE, &format!("{path}/event-channel"))
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing published at {path}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// vchan-cat takes endpoint names: a service answered with `-l 'vchan://*/svc'`, called with
/// `vchan://5/svc`, data both ways with half-closes; and an integer port named
/// `vchan://0/7` meeting a server of the `DOMID PORT` form.
#[test]
fn vchan_cat_takes_endpoint_names() {
    let a = artifacts();
    let host = Host::start("cat-endpoints", &[GUEST]);
    let (from_guest, from_dom0) = (random_bytes(MIB, 41), random_bytes(MIB, 42));
    let spawn = |domid: u16, args: &[&str]| {
        host.run_as(domid, &a.vchan_cat, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vchan-cat")
    };
    let run_pair = |server: Child, client: Child, to_server: &[u8], to_client: &[u8]| {
        let (server_input, client_input) = (to_client.to_vec(), to_server.to_vec());
        let server = thread::spawn(move || feed_and_collect(server, server_input));
        let client = thread::spawn(move || feed_and_collect(client, client_input));
        let (s_status, s_out, s_err) = server.join().expect("server");
        let (c_status, c_out, c_err) = client.join().expect("client");
        assert!(s_status.success(), "server: {s_status}: {s_err}");
        assert!(c_status.success(), "client: {c_status}: {c_err}");
        assert_eq!(
            digest(&s_out),
            digest(to_server),
            "the server got other bytes"
        );
        assert_eq!(
            digest(&c_out),
            digest(to_client),
            "the client got other bytes"
        );
    };
    // A service: both ends half-close at the end of their input and read the other's to EOF.
    let server = spawn(GUEST, &["-N", "-l", "vchan://*/svc"]);
    let client = spawn(0, &["-N", "--wait", "30", "vchan://5/svc"]);
    run_pair(server, client, &from_dom0, &from_guest);
    // An integer port: dom0 serves domain 5 the old way and closes once its input is sent; the
    // guest names it vchan://0/7 and sends nothing.
    let server = spawn(0, &["-N", "-l", "5", "7"]);
    let client = spawn(GUEST, &["--wait", "30", "vchan://0/7"]);
    run_pair(server, client, &[], &from_dom0);
    host.assert_clean();
}
