//! Interop on the cross-process simulated host: our `vchan-cat` against Debian's unmodified
//! libxenvchan (a small C netcat, `tests/c/vchan-nc.c`, through the stand-in libxengnttab and
//! libxenevtchn) in both roles and both directions, at every ring placement, and against Xen's own
//! `vchan-socket-proxy`.

#[path = "xensim_support.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{artifacts, digest, random_bytes, require, wait_for, Host, SOCKET_PROXY};

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// Who runs which end.
#[derive(Clone, Copy, Debug)]
enum Pair {
    /// Our server (dom0) with the C client (dom1).
    OurServerCClient,
    /// The C server (dom0) with our client (dom1).
    CServerOurClient,
}

/// Send `data` one way over a fresh channel: the sender closes once its input is all written
/// (`-N`), and the receiver must see that close as EOF after every byte.
fn transfer(
    host: &Host,
    pair: Pair,
    server_sends: bool,
    sizes: (&str, &str),
    port: u32,
    data: &[u8],
) {
    let a = artifacts();
    let port_text = port.to_string();
    let path = format!("data/vchan/1/{port}");
    let absolute = format!("/local/domain/0/{path}");
    let (server_prog, mut server_args, client_prog, mut client_args) = match pair {
        Pair::OurServerCClient => (
            &a.vchan_cat,
            vec![
                "-l",
                "1",
                &port_text,
                "--read-min",
                sizes.0,
                "--write-min",
                sizes.1,
            ],
            &a.c_peer,
            vec!["0", &absolute],
        ),
        Pair::CServerOurClient => (
            &a.c_peer,
            vec!["-l", "1", &path, sizes.0, sizes.1],
            &a.vchan_cat,
            vec!["--wait", "10", "0", &port_text],
        ),
    };
    // The sender closes the channel once its input is all written.
    if server_sends {
        server_args.insert(0, "-N");
    } else {
        client_args.insert(0, "-N");
    }
    let spawn = |domid: u16, prog: &std::path::Path, args: &[&str]| {
        host.run_as(domid, prog, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a peer")
    };
    let mut server = spawn(0, server_prog, &server_args);
    // The C client fails at once if the server is not published yet; our client waits (--wait).
    if matches!(pair, Pair::OurServerCClient) {
        wait_published(host, port);
    }
    let mut client = spawn(1, client_prog, &client_args);
    let (sender, receiver) = if server_sends {
        (&mut server, &mut client)
    } else {
        (&mut client, &mut server)
    };
    drop(receiver.stdin.take()); // the receiver's input is empty
    let mut input = sender.stdin.take().expect("piped stdin");
    let mut output = receiver.stdout.take().expect("piped stdout");
    let started = Instant::now();
    let (received, ()) = std::thread::scope(|s| {
        let feeder = s.spawn(move || {
            // A write error means the sender died: its exit status tells the story.
            let _ = input.write_all(data);
        });
        let mut received = Vec::with_capacity(data.len());
        output
            .read_to_end(&mut received)
            .expect("read the receiver's output");
        feeder.join().expect("feeder thread");
        (received, ())
    });
    let elapsed = started.elapsed();
    let server_status = wait_for(&mut server, LIMIT, "the server");
    let client_status = wait_for(&mut client, LIMIT, "the client");
    let errors = format!(
        "server stderr: {}\nclient stderr: {}",
        support::stderr_of(&mut server),
        support::stderr_of(&mut client)
    );
    assert!(
        server_status.success(),
        "{pair:?} server exited with {server_status}\n{errors}"
    );
    assert!(
        client_status.success(),
        "{pair:?} client exited with {client_status}\n{errors}"
    );
    assert_eq!(
        received.len(),
        data.len(),
        "{pair:?} byte count, sizes {sizes:?}\n{errors}"
    );
    assert_eq!(
        digest(&received),
        digest(data),
        "{pair:?} data differs, sizes {sizes:?}"
    );
    let direction = if server_sends {
        "server->client"
    } else {
        "client->server"
    };
    println!(
        "{pair:?} {direction} rings {sizes:?}: {} MiB in {:.3} s ({:.0} MB/s)",
        data.len() / MIB,
        elapsed.as_secs_f64(),
        data.len() as f64 / 1e6 / elapsed.as_secs_f64()
    );
}

/// Wait for dom0's server keys to appear at `port` (the C client does not wait by itself).
fn wait_published(host: &Host, port: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let key = format!("/local/domain/0/data/vchan/1/{port}/event-channel");
    loop {
        if read_key(host, &key).is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server never published {key}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_key(host: &Host, key: &str) -> Option<Vec<u8>> {
    use xenstore::{TxId, XenStore};
    let client = xenstore::client::Client::open_path(&host.dir.join("dom0.sock")).ok()?;
    client.read(TxId::NONE, key).ok()
}

/// Every direction and role at one ring placement, on a host of its own.
fn placement(tag: &str, sizes: (&str, &str), megabytes: usize) {
    let host = Host::start(tag, &[1]);
    let data = random_bytes(megabytes * MIB, 0x5eed ^ megabytes as u64);
    let back = random_bytes(megabytes * MIB, 0xfeed ^ megabytes as u64);
    let mut port = 100;
    for pair in [Pair::OurServerCClient, Pair::CServerOurClient] {
        for (server_sends, payload) in [(true, &data), (false, &back)] {
            transfer(&host, pair, server_sends, sizes, port, payload);
            port += 1;
        }
    }
    host.assert_clean();
}

#[test]
fn rings_1024_and_2048_in_the_control_page_interoperate_with_libxenvchan() {
    placement("inpage-a", ("0", "0"), 16);
}

#[test]
fn rings_2048_in_page_and_1024_in_page_swapped_interoperate_with_libxenvchan() {
    placement("inpage-b", ("2048", "1024"), 4);
}

#[test]
fn one_page_rings_interoperate_with_libxenvchan() {
    placement("4k", ("4096", "4096"), 16);
}

#[test]
fn in_page_and_64k_rings_mixed_interoperate_with_libxenvchan() {
    placement("mixed", ("2048", "65536"), 4);
}

#[test]
fn rings_of_64k_interoperate_with_libxenvchan() {
    placement("64k", ("65536", "65536"), 16);
}

#[test]
fn rings_of_1m_interoperate_with_libxenvchan() {
    placement("1m", ("1048576", "1048576"), 16);
}

/// Xen's `vchan-socket-proxy` in server mode (it connects a Unix socket to each vchan client)
/// with our `vchan-cat` as the client: data flows both ways through the proxy at once.
#[test]
fn xens_vchan_socket_proxy_serves_our_client_both_ways() {
    require(SOCKET_PROXY, "xen-utils-4.17");
    let a = artifacts();
    let host = Host::start("proxy", &[1]);
    let socket = host.dir.join("proxy-backend.sock");
    let listener = UnixListener::bind(&socket).expect("bind the proxy's backend socket");
    let to_client = random_bytes(16 * MIB, 11);
    let to_proxy = random_bytes(16 * MIB, 12);
    let mut proxy = host
        .run_as(
            0,
            std::path::Path::new(SOCKET_PROXY),
            &["-m", "server", "1", "data/vchan/1/7"],
        )
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vchan-socket-proxy");
    // -N: vchan-cat closes the channel once its input ends; the proxy then ends the socket.
    let mut client = host
        .run_as(1, &a.vchan_cat, &["-N", "--wait", "10", "0", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vchan-cat");
    let started = Instant::now();
    let (mut conn, _) = listener
        .accept()
        .expect("the proxy connects when the client arrives");
    let client_in = client.stdin.take().expect("stdin");
    let mut client_out = client.stdout.take().expect("stdout");
    let (to_client_ref, to_proxy_ref) = (&to_client, &to_proxy);
    let (from_client, at_client, client_in) = std::thread::scope(|s| {
        let mut conn_writer = conn.try_clone().expect("clone the socket");
        let backend_writer = s.spawn(move || {
            conn_writer
                .write_all(to_client_ref)
                .expect("write to the proxy")
        });
        let client_feeder = s.spawn(move || {
            let mut client_in = client_in;
            client_in
                .write_all(to_proxy_ref)
                .expect("write to vchan-cat");
            client_in
        });
        let client_reader = s.spawn(|| {
            let mut got = vec![0u8; to_client_ref.len()];
            client_out
                .read_exact(&mut got)
                .expect("read vchan-cat's output");
            got
        });
        let mut from_client = vec![0u8; to_proxy_ref.len()];
        conn.read_exact(&mut from_client)
            .expect("read what the client sent through the proxy");
        backend_writer.join().expect("backend writer");
        let client_in = client_feeder.join().expect("client feeder");
        let at_client = client_reader.join().expect("client reader");
        (from_client, at_client, client_in)
    });
    let elapsed = started.elapsed();
    // Everything crossed both ways: end vchan-cat's input, so it closes the channel.
    drop(client_in);
    let status = wait_for(&mut client, LIMIT, "vchan-cat");
    let mut rest = Vec::new();
    client_out
        .read_to_end(&mut rest)
        .expect("read the end of vchan-cat's output");
    // The proxy sees the close and ends the backend connection: EOF there.
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("socket timeout");
    let mut after = Vec::new();
    let eof = conn.read_to_end(&mut after);
    let _ = proxy.kill();
    let _ = proxy.wait();
    let proxy_err = support::stderr_of(&mut proxy);
    assert!(
        status.success(),
        "vchan-cat exited with {status}: {}\nproxy: {proxy_err}",
        support::stderr_of(&mut client)
    );
    assert!(
        eof.is_ok() && after.is_empty(),
        "the proxy did not end the socket after the close: {eof:?}, {} bytes",
        after.len()
    );
    assert!(
        rest.is_empty(),
        "vchan-cat printed {} bytes too many",
        rest.len()
    );
    assert_eq!(
        digest(&from_client),
        digest(&to_proxy),
        "client -> proxy data differs"
    );
    assert_eq!(
        digest(&at_client),
        digest(&to_client),
        "proxy -> client data differs"
    );
    println!(
        "vchan-socket-proxy <-> vchan-cat: 2 x 16 MiB in {:.3} s",
        elapsed.as_secs_f64()
    );
}

/// Our half-close (`shutdown_write`, a flag libxenvchan does not know) is invisible to a C peer:
/// it keeps reading (and may keep writing) until the channel closes, then sees the end.
#[test]
fn a_half_close_is_invisible_to_libxenvchan_until_the_channel_closes() {
    use vchan::xensim::XensimDomain;
    use vchan::{Address, RingSizes, Vchan};
    use xen_types::DomId;

    let host = Host::start("halfclose", &[1]);
    let a = artifacts();
    let port = 61;
    let server = Vchan::server(
        &XensimDomain::new(&host.dir, DomId(0)),
        DomId(1),
        &Address::Port(port),
        RingSizes::default(),
    )
    .unwrap();
    let path = format!("/local/domain/0/data/vchan/1/{port}");
    let mut client = host
        .run_as(1, &a.c_peer, &["0", &path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the C client");
    server.wait_connected(Some(LIMIT)).unwrap();
    let data = random_bytes(100_000, 61);
    let mut output = client.stdout.take().unwrap();
    // Read while writing: the C peer stops reading the ring when its stdout pipe is full.
    let (received, output) = std::thread::scope(|s| {
        let len = data.len();
        let reading = s.spawn(move || {
            let mut received = vec![0u8; len];
            output.read_exact(&mut received).unwrap();
            (received, output)
        });
        (&server).write_all(&data).unwrap();
        server.shutdown_write().unwrap();
        reading.join().unwrap()
    });
    let mut output = output;
    assert_eq!(digest(&received), digest(&data));
    // The C peer saw no end: it is still running, and can still write to us.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        client.try_wait().unwrap().is_none(),
        "the C peer ended on a half-close it cannot know"
    );
    let mut input = client.stdin.take().unwrap();
    input.write_all(b"still here").unwrap();
    let mut reply = [0u8; 10];
    (&server).read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"still here");
    // The close is what it sees.
    drop(input);
    drop(server);
    let mut rest = Vec::new();
    output.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let status = wait_for(&mut client, LIMIT, "the C client");
    assert!(
        status.success(),
        "C client: {status}: {}",
        support::stderr_of(&mut client)
    );
    host.assert_clean();
}
