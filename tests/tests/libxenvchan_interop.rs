//! C programs built against Debian's `<libxenvchan.h>`, run on the drop-in against Debian's
//! library on the other side, in both roles and both directions, at every ring placement, every
//! byte checked: `vchan-nc` (non-blocking, a select() loop, as Xen's vchan-node2 and
//! vchan-socket-proxy drive the library), `vchan-node` (blocking mode set through the struct, as
//! Xen's vchan-node1) in stream and packet mode. Then Xen's own `vchan-socket-proxy` in server
//! mode on the drop-in, serving two clients in turn on one page: our `vchan-cat`, then a C client
//! on Debian's library. Each host ends with the leak check.

#[path = "xensim_support.rs"]
mod support;

#[path = "libxenvchan/support.rs"]
mod dropin;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dropin::{assert_no_server_keys, c_program, run_on, wait_for_key, Lib};
use support::{artifacts, digest, random_bytes, require, wait_for, Host, SOCKET_PROXY};

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(120);

/// The C programs, each as its server and client command lines.
#[derive(Clone, Copy, Debug)]
enum Program {
    /// `vchan-nc`: non-blocking, select() on the event fd.
    Nc,
    /// `vchan-node`: blocking, libxenvchan_read/write in chunks of random sizes.
    Node,
    /// `vchan-node -p`: blocking packets, libxenvchan_send/recv.
    NodePackets,
}

impl Program {
    fn binary(self) -> std::path::PathBuf {
        match self {
            Program::Nc => c_program("vchan-nc"),
            Program::Node | Program::NodePackets => c_program("vchan-node"),
        }
    }

    /// The arguments of one end; `sends` says whether it is the sending end.
    fn args(self, server: bool, sends: bool, path: &str, sizes: (usize, usize)) -> Vec<String> {
        let (rmin, wmin) = (sizes.0.to_string(), sizes.1.to_string());
        let absolute = format!("/local/domain/0/{path}");
        let mut args: Vec<String> = match (self, server) {
            (Program::Nc, true) => vec!["-l".into(), "1".into(), path.into(), rmin, wmin],
            (Program::Nc, false) => vec!["0".into(), absolute],
            (_, true) => vec!["server".into(), "1".into(), path.into(), rmin, wmin],
            (_, false) => vec!["client".into(), "0".into(), absolute],
        };
        match self {
            // The sender closes once its input is all written.
            Program::Nc if sends => args.insert(0, "-N".into()),
            Program::Nc => {}
            Program::Node | Program::NodePackets => {
                args.push(if sends { "write" } else { "read" }.into())
            }
        }
        if let Program::NodePackets = self {
            args.insert(0, "-p".into());
        }
        args
    }
}

fn spawn(host: &Host, domid: u16, lib: Lib, program: &Path, args: &[String]) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_on(host, domid, lib, program, &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a C peer")
}

/// One transfer over a fresh channel: `data` from one end to the other, the sender closing at
/// the end; the receiver must print every byte, in order, and both must exit 0.
#[allow(clippy::too_many_arguments)]
fn transfer(
    host: &Host,
    program: Program,
    server_lib: Lib,
    client_lib: Lib,
    server_sends: bool,
    sizes: (usize, usize),
    port: u32,
    data: &[u8],
) {
    let path = format!("data/vchan/1/{port}");
    let binary = program.binary();
    let what = format!(
        "{program:?}, server on {server_lib:?}, client on {client_lib:?}, {}, rings {sizes:?}",
        if server_sends {
            "server sends"
        } else {
            "client sends"
        }
    );
    let mut server = spawn(
        host,
        0,
        server_lib,
        &binary,
        &program.args(true, server_sends, &path, sizes),
    );
    // A C client fails at once if the server has not published yet.
    wait_for_key(host, &format!("/local/domain/0/{path}/event-channel"));
    let mut client = spawn(
        host,
        1,
        client_lib,
        &binary,
        &program.args(false, !server_sends, &path, sizes),
    );
    let (sender, receiver) = if server_sends {
        (&mut server, &mut client)
    } else {
        (&mut client, &mut server)
    };
    drop(receiver.stdin.take());
    let mut input = sender.stdin.take().expect("piped stdin");
    let mut output = receiver.stdout.take().expect("piped stdout");
    let received = std::thread::scope(|s| {
        s.spawn(move || {
            // A write error means the sender died: its exit status says why.
            let _ = input.write_all(data);
        });
        let mut received = Vec::with_capacity(data.len());
        let _ = output.read_to_end(&mut received);
        received
    });
    let server_status = wait_for(&mut server, LIMIT, "the server");
    let client_status = wait_for(&mut client, LIMIT, "the client");
    let errors = format!(
        "server stderr: {}\nclient stderr: {}",
        support::stderr_of(&mut server),
        support::stderr_of(&mut client)
    );
    assert!(
        server_status.success(),
        "{what}: server {server_status}\n{errors}"
    );
    assert!(
        client_status.success(),
        "{what}: client {client_status}\n{errors}"
    );
    assert_eq!(received.len(), data.len(), "{what}: byte count\n{errors}");
    assert_eq!(digest(&received), digest(data), "{what}: the data differs");
}

/// Every program, both role assignments and both directions at one placement, on a host of its
/// own.
fn placement(tag: &str, sizes: (usize, usize)) {
    let host = Host::start(tag, &[1]);
    let data = random_bytes(3 * MIB, 0xd0 ^ sizes.0 as u64 ^ (sizes.1 as u64) << 20);
    let started = Instant::now();
    let mut port = 100;
    for program in [Program::Nc, Program::Node, Program::NodePackets] {
        for (server_lib, client_lib) in [(Lib::Dropin, Lib::Debian), (Lib::Debian, Lib::Dropin)] {
            for server_sends in [true, false] {
                transfer(
                    &host,
                    program,
                    server_lib,
                    client_lib,
                    server_sends,
                    sizes,
                    port,
                    &data,
                );
                port += 1;
            }
        }
    }
    println!(
        "rings {sizes:?}: 12 transfers of 3 MiB in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    host.assert_clean();
    assert_no_server_keys(&host);
}

#[test]
fn in_page_rings_of_1024_and_2048_carry_c_programs_between_the_two_libraries() {
    placement("dropin-inpage-a", (0, 0));
}

#[test]
fn in_page_rings_of_2048_and_1024_carry_c_programs_between_the_two_libraries() {
    placement("dropin-inpage-b", (2048, 1024));
}

#[test]
fn one_page_rings_carry_c_programs_between_the_two_libraries() {
    placement("dropin-4k", (4096, 4096));
}

#[test]
fn an_in_page_ring_and_a_64k_ring_carry_c_programs_between_the_two_libraries() {
    placement("dropin-mixed-a", (2000, 65536));
}

#[test]
fn a_64k_ring_and_an_in_page_ring_carry_c_programs_between_the_two_libraries() {
    placement("dropin-mixed-b", (65536, 1000));
}

#[test]
fn rings_of_64k_carry_c_programs_between_the_two_libraries() {
    placement("dropin-64k", (65536, 65536));
}

#[test]
fn rings_of_1m_carry_c_programs_between_the_two_libraries() {
    placement("dropin-1m", (1 << 20, 1 << 20));
}

/// One client of the proxy: `to_proxy` goes in, `to_client` comes back from the backend, both at
/// once; then the client's input ends and it closes the channel (both clients run with `-N`).
fn proxied_session(
    listener: &UnixListener,
    mut client: Child,
    to_proxy: &[u8],
    to_client: &[u8],
    who: &str,
) {
    let (mut conn, _) = listener
        .accept()
        .expect("the proxy connects to the backend when its client arrives");
    let client_in = client.stdin.take().expect("stdin");
    let mut client_out = client.stdout.take().expect("stdout");
    let (from_client, at_client, client_in) = std::thread::scope(|s| {
        let mut backend = conn.try_clone().expect("clone the socket");
        s.spawn(move || backend.write_all(to_client).expect("write to the proxy"));
        let feeder = s.spawn(move || {
            let mut client_in = client_in;
            client_in.write_all(to_proxy).expect("write to the client");
            client_in
        });
        let reader = s.spawn(|| {
            let mut got = vec![0u8; to_client.len()];
            client_out
                .read_exact(&mut got)
                .expect("read the client's output");
            got
        });
        let mut from_client = vec![0u8; to_proxy.len()];
        conn.read_exact(&mut from_client)
            .expect("read what the client sent through the proxy");
        (from_client, reader.join().unwrap(), feeder.join().unwrap())
    });
    assert_eq!(
        digest(&from_client),
        digest(to_proxy),
        "{who} -> proxy data differs"
    );
    assert_eq!(
        digest(&at_client),
        digest(to_client),
        "proxy -> {who} data differs"
    );
    // Everything crossed: end the client's input, so it closes the channel; the proxy then
    // ends the backend connection.
    drop(client_in);
    let status = wait_for(&mut client, LIMIT, who);
    assert!(
        status.success(),
        "{who} exited with {status}: {}",
        support::stderr_of(&mut client)
    );
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("socket timeout");
    let mut after = Vec::new();
    let eof = conn.read_to_end(&mut after);
    assert!(
        eof.is_ok() && after.is_empty(),
        "the proxy did not end the backend connection after {who} closed: {eof:?}"
    );
}

/// Xen's `vchan-socket-proxy` (server mode) on the drop-in: it serves our `vchan-cat`, then,
/// on the same page, a C client on Debian's library, 4 MiB each way at once each time.
#[test]
fn xens_vchan_socket_proxy_on_the_dropin_serves_clients_in_turn() {
    require(SOCKET_PROXY, "xen-utils-4.17");
    let a = artifacts();
    let host = Host::start("dropin-proxy", &[1]);
    let socket = host.dir.join("dropin-backend.sock");
    let listener = UnixListener::bind(&socket).expect("bind the backend socket");
    let mut proxy = run_on(
        &host,
        0,
        Lib::Dropin,
        Path::new(SOCKET_PROXY),
        &[
            "-m",
            "server",
            "1",
            "data/vchan/1/7",
            socket.to_str().unwrap(),
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn vchan-socket-proxy");
    wait_for_key(&host, "/local/domain/0/data/vchan/1/7/event-channel");

    let ours = host
        .run_as(1, &a.vchan_cat, &["-N", "--wait", "10", "0", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vchan-cat");
    proxied_session(
        &listener,
        ours,
        &random_bytes(4 * MIB, 71),
        &random_bytes(4 * MIB, 72),
        "vchan-cat",
    );

    let c_client = run_on(
        &host,
        1,
        Lib::Debian,
        &c_program("vchan-nc"),
        &["-N", "0", "/local/domain/0/data/vchan/1/7"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn the C client");
    proxied_session(
        &listener,
        c_client,
        &random_bytes(4 * MIB, 73),
        &random_bytes(4 * MIB, 74),
        "the C client",
    );

    // Stopped as a toolstack stops it (SIGKILL: the host reclaims its grants and port; its keys
    // stay in xenstore, as they would after the C library).
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = std::fs::remove_file(&socket);
    host.assert_clean();
}
