//! Process death on the cross-process simulated host: when one side of a vchan is killed with
//! SIGKILL mid-transfer, the host carries out its unmap notification (live byte cleared, event
//! sent) with no help from the dead process, the other side learns within a second, and nothing
//! is left behind in the host or its directory.

#[path = "xensim_support.rs"]
mod support;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{artifacts, killed, random_bytes, wait_for, Host};

/// The bound that fails the test (the target is 1 s; the measured time is printed).
const BOUND: Duration = Duration::from_secs(5);

fn spawn(host: &Host, domid: u16, args: &[&str]) -> Child {
    host.run_as(domid, &artifacts().vchan_cat, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vchan-cat")
}

/// Start a transfer from `sender` to `receiver` that cannot finish on its own (the sender's input
/// never ends), wait until bytes flow, then SIGKILL `victim` and time how long the survivor takes
/// to notice and exit.
fn kill_mid_transfer(tag: &str, kill_sender: bool, server_sends: bool) {
    let host = Host::start(tag, &[1]);
    let mut server = spawn(
        &host,
        0,
        &["-l", "1", "3", "--read-min", "64k", "--write-min", "64k"],
    );
    let mut client = spawn(&host, 1, &["--wait", "10", "0", "3"]);
    let (sender, receiver) = if server_sends {
        (&mut server, &mut client)
    } else {
        (&mut client, &mut server)
    };
    let mut input = sender.stdin.take().expect("stdin");
    let mut output = receiver.stdout.take().expect("stdout");
    // Feed the sender for ever (until it dies) from a thread.
    let feeder = std::thread::spawn(move || {
        let chunk = random_bytes(1 << 20, 7);
        while input.write_all(&chunk).is_ok() {}
    });
    // Drain the receiver on a thread; note when the first bytes arrive.
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let drainer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match output.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => {
                    if total == 0 {
                        let _ = first_tx.send(());
                    }
                    total += n;
                }
            }
        }
    });
    first_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("data never started to flow");
    std::thread::sleep(Duration::from_millis(200));
    let (victim, survivor) = if kill_sender {
        (sender, receiver)
    } else {
        (receiver, sender)
    };
    victim.kill().expect("SIGKILL the victim");
    let killed_at = Instant::now();
    let victim_status = victim.wait().expect("reap the victim");
    assert!(
        killed(&victim_status),
        "the victim was not killed: {victim_status}"
    );
    let status = wait_for(survivor, Duration::from_secs(30), "the surviving side");
    let noticed = killed_at.elapsed();
    let mut err = String::new();
    if let Some(mut e) = survivor.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let role = |sends: bool| {
        if sends == server_sends {
            "server"
        } else {
            "client"
        }
    };
    println!(
        "{tag}: killed the {} ({}), the {} noticed in {:.3} s (exit {status}, stderr {:?})",
        if kill_sender { "sender" } else { "receiver" },
        role(kill_sender),
        role(!kill_sender),
        noticed.as_secs_f64(),
        err.trim()
    );
    assert!(
        noticed < BOUND,
        "the survivor took {noticed:?} to notice the peer's death"
    );
    if kill_sender {
        // A receiver sees the death as the end of the stream, after every byte that arrived.
        assert!(
            status.success(),
            "the receiver should end cleanly: {status}, {err}"
        );
    } else {
        // A sender with data left reports that the peer is gone.
        assert!(
            !status.success(),
            "the sender should fail: the peer took not everything"
        );
        assert!(
            err.contains("peer closed the channel"),
            "unexpected message: {err}"
        );
    }
    let received = drainer.join().expect("drainer");
    assert!(received > 0);
    drop(feeder); // blocked writers end with the dead or exited process's pipe
    host.assert_clean();
}

#[test]
fn client_killed_while_sending_the_server_sees_eof_within_a_second() {
    kill_mid_transfer("kill-client-sender", true, false);
}

#[test]
fn server_killed_while_sending_the_client_sees_eof_within_a_second() {
    kill_mid_transfer("kill-server-sender", true, true);
}

#[test]
fn client_killed_while_receiving_the_server_reports_the_peer_gone_within_a_second() {
    kill_mid_transfer("kill-client-receiver", false, true);
}

#[test]
fn server_killed_while_receiving_the_client_reports_the_peer_gone_within_a_second() {
    kill_mid_transfer("kill-server-receiver", false, false);
}

/// `xensim destroy` of a domain whose process is mid-transfer: the process dies with its domain,
/// its notifications fire, and the peer in dom0 learns at once.
#[test]
fn destroying_a_domain_mid_transfer_frees_everything_and_the_peer_learns() {
    let host = Host::start("destroy", &[1]);
    let mut server = spawn(&host, 0, &["-l", "1", "4"]);
    let mut client = spawn(&host, 1, &["--wait", "10", "0", "4"]);
    let mut input = client.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let chunk = random_bytes(1 << 16, 9);
        while input.write_all(&chunk).is_ok() {}
    });
    let mut output = server.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    output.read_exact(&mut first).expect("data flows");
    let drainer = std::thread::spawn(move || std::io::copy(&mut output, &mut std::io::sink()));
    let started = Instant::now();
    host.xensim(&["destroy", "--domid", "1"]);
    let status = wait_for(&mut server, Duration::from_secs(30), "the server");
    let noticed = started.elapsed();
    println!(
        "destroy: dom0's server noticed in {:.3} s",
        noticed.as_secs_f64()
    );
    assert!(noticed < BOUND);
    assert!(
        status.success(),
        "the server sees the end of the stream: {status}"
    );
    let client_status = wait_for(
        &mut client,
        Duration::from_secs(10),
        "the destroyed domain's process",
    );
    assert!(
        !client_status.success(),
        "the destroyed domain's process should have been killed"
    );
    let _ = drainer.join();
    drop(feeder);
    host.assert_clean();
    assert!(
        !host.dir.join("dom1.sock").exists(),
        "the destroyed domain's xenstore socket remains"
    );
}
