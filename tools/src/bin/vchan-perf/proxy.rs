//! The proxy row: a stream through a pair of proxies on the simulated host. A writer in this
//! process sends through a Unix socket to `vchan-proxy` in dom0, which carries it over a vchan to
//! the server side in domain 1 (our `vchan-proxy`, or Xen's `vchan-socket-proxy -m server`: its
//! client mode needs libxenctrl), which writes it to a Unix socket that a reader in this process
//! times; next to the same socket fed directly. Each side runs as `xensim run` would run it.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{Runner, Timed, RUN_LIMIT};

/// What carries the bytes from the writer to the reader.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Carrier {
    /// The reader's socket, fed directly.
    Direct,
    /// Our vchan-proxy at both ends, with its default rings (64 KiB).
    Ours,
    /// Our vchan-proxy at both ends, the server side asking for 1 MiB rings (`--ring-size 1M`).
    OursBigRings,
    /// Our vchan-proxy in dom0, Xen's vchan-socket-proxy in domain 1.
    Xen,
}

impl Carrier {
    pub(super) fn label(self) -> &'static str {
        match self {
            Carrier::Direct => "the Unix socket, fed directly",
            Carrier::Ours => "vchan-proxy in dom0 -> vchan -> vchan-proxy in domain 1",
            Carrier::OursBigRings => "the same, the rings 1 MiB (--ring-size 1M)",
            Carrier::Xen => "vchan-proxy in dom0 -> vchan -> Xen's vchan-socket-proxy in domain 1",
        }
    }
}

/// A running proxy pair (or none, for `Direct`), its sockets, and the reader's listener.
pub(super) struct Rig {
    carrier: Carrier,
    sink: UnixListener,
    front: PathBuf,
    procs: Vec<Child>,
    files: Vec<PathBuf>,
}

impl Rig {
    /// Start the carrier: the sink first, then the server side in domain 1, then dom0's proxy,
    /// which is ready once it says it listens.
    pub(super) fn start(
        runner: &mut Runner,
        carrier: Carrier,
        proxy: &Path,
        c_proxy: Option<&Path>,
    ) -> Result<Rig, String> {
        let port = runner.next_port;
        runner.next_port = runner.next_port.wrapping_add(1);
        let sink_path = runner.dir.join(format!("bench-sink-{port}.sock"));
        let front = runner.dir.join(format!("bench-front-{port}.sock"));
        let _ = std::fs::remove_file(&sink_path);
        let sink = UnixListener::bind(&sink_path)
            .map_err(|e| format!("cannot listen on {}: {e}", sink_path.display()))?;
        let mut rig = Rig {
            carrier,
            sink,
            front: if carrier == Carrier::Direct {
                sink_path.clone()
            } else {
                front.clone()
            },
            procs: Vec::new(),
            files: vec![sink_path.clone()],
        };
        if carrier == Carrier::Direct {
            return Ok(rig);
        }
        let server_side = match (carrier, c_proxy) {
            (Carrier::Xen, Some(c)) => {
                let mut command = Command::new(c);
                command
                    .args(["-m", "server", "0", &format!("data/vchan/0/{port}")])
                    .arg(&sink_path);
                command
            }
            (Carrier::Xen, None) => return Err("no vchan-socket-proxy".into()),
            _ => {
                let mut command = Command::new(proxy);
                command.args(["-q", "--no-check"]);
                if carrier == Carrier::OursBigRings {
                    command.args(["--ring-size", "1M"]);
                }
                command.args([
                    &format!("vchan://0/{port}"),
                    &format!("unix://{}", sink_path.display()),
                ]);
                command
            }
        };
        rig.procs.push(spawn(runner, server_side, 1)?);
        let mut dom0 = Command::new(proxy);
        dom0.args([
            &format!("unix://{}", front.display()),
            &format!("vchan://1/{port}"),
        ]);
        rig.files.push(front.clone());
        let mut dom0 = runner.in_domain(dom0, 0, None);
        let mut child = dom0
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", proxy.display()))?;
        let mut stderr = child.stderr.take().ok_or("no standard error")?;
        rig.procs.push(child);
        // Ready once it listens; the rest of what it says is drained and dropped.
        let (ready, listening) = mpsc::channel();
        thread::spawn(move || {
            let mut seen = Vec::new();
            let mut byte = [0u8; 1];
            let mut said = false;
            while let Ok(1) = stderr.read(&mut byte) {
                if !said {
                    seen.push(byte[0]);
                    if byte[0] == b'\n' {
                        let line = String::from_utf8_lossy(&seen).into_owned();
                        if line.contains("listening on") {
                            said = true;
                            let _ = ready.send(Ok(()));
                        }
                        seen.clear();
                    }
                }
            }
            if !said {
                let _ = ready.send(Err(String::from_utf8_lossy(&seen).trim().to_owned()));
            }
        });
        match listening.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(rig),
            Ok(Err(said)) => Err(format!("dom0's vchan-proxy did not start: {said}")),
            Err(_) => Err("dom0's vchan-proxy did not listen within 30 s".into()),
        }
    }

    /// One run: `count` bytes in `msg`-byte writes through the carrier; the reader times from
    /// the first byte to the last, checking each against the pattern.
    pub(super) fn run(&self, msg: usize, count: u64) -> Result<Timed, String> {
        let front = self.front.clone();
        let writer = thread::spawn(move || -> Result<(), String> {
            let mut socket = UnixStream::connect(&front)
                .map_err(|e| format!("cannot connect to {}: {e}", front.display()))?;
            super::send_stream(|b| socket.write_all(b), msg, count)?;
            let _ = socket.shutdown(Shutdown::Write);
            Ok(())
        });
        let deadline = Instant::now() + RUN_LIMIT;
        self.sink
            .set_nonblocking(false)
            .map_err(|e| format!("the sink: {e}"))?;
        let timed = loop {
            let (mut socket, _) = self
                .sink
                .accept()
                .map_err(|e| format!("the sink cannot accept: {e}"))?;
            socket
                .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))
                .map_err(|e| format!("the sink: {e}"))?;
            // A connection that ends with nothing in it (a check) is not the stream.
            let mut first = [0u8; 1];
            match socket.read(&mut first) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) => return Err(format!("the sink cannot read: {e}")),
            }
            let mut chained = (&first[..]).chain(socket);
            break super::receive_stream(|b| chained.read(b), msg, count)?;
        };
        writer
            .join()
            .unwrap_or_else(|_| Err("the writer panicked".into()))?;
        let _ = self.carrier;
        Ok(timed)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for child in &mut self.procs {
            // SIGTERM: an orderly stop withdraws what the proxies published.
            let _ = Command::new("kill")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        for child in &mut self.procs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn spawn(runner: &Runner, command: Command, domid: u16) -> Result<Child, String> {
    let program = command.get_program().to_owned();
    runner
        .in_domain(command, domid, None)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", Path::new(&program).display()))
}
