//! Shared pieces of the xensim tests (included with `#[path]` by each `xensim_*` test): building
//! and locating the binaries, a simulated host per test in its own directory, the C peers, and
//! checks that Debian's programs are installed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Debian's libxenvchan, which the C peers link against.
pub const LIBXENVCHAN: &str = "/usr/lib/x86_64-linux-gnu/libxenvchan.so.4.17";
/// Xen's own vchan proxy.
pub const SOCKET_PROXY: &str = "/usr/lib/xen-4.17/bin/vchan-socket-proxy";

/// Fail (never skip) when a Debian file the test needs is missing, naming the package.
pub fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} (apt-get install {package})"
    );
}

/// The workspace's target profile directory (where cargo puts the binaries and cdylibs).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf()
}

/// Build (if stale) and locate the binaries and stand-in libraries the tests run.
pub struct Artifacts {
    /// The `xensim` host tool.
    pub xensim: PathBuf,
    /// Our netcat.
    pub vchan_cat: PathBuf,
    /// Our socat.
    pub vchan_proxy: PathBuf,
    /// The C netcat over Debian's libxenvchan.
    pub c_peer: PathBuf,
}

/// Build once per test process, then hand out the paths.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let dir = profile_dir();
        let release = dir.file_name().is_some_and(|n| n == "release");
        // Two builds: `--bin` filters the targets of every selected package, so naming the
        // binaries and the stand-in libraries in one command would skip the libraries.
        let builds: [&[&str]; 2] = [
            &[
                "-p",
                "tools",
                "--bin",
                "xensim",
                "--bin",
                "vchan-cat",
                "--bin",
                "vchan-proxy",
            ],
            &["-p", "shim-xengnttab", "-p", "shim-xenevtchn", "--lib"],
        ];
        for selection in builds {
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args(["build", "--quiet"]).args(selection);
            if release {
                cargo.arg("--release");
            }
            let status = cargo
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build {selection:?} failed");
        }
        for name in [
            "xensim",
            "vchan-cat",
            "vchan-proxy",
            "libxengnttab.so",
            "libxenevtchn.so",
        ] {
            assert!(
                dir.join(name).exists(),
                "{} was not built",
                dir.join(name).display()
            );
        }
        Artifacts {
            xensim: dir.join("xensim"),
            vchan_cat: dir.join("vchan-cat"),
            vchan_proxy: dir.join("vchan-proxy"),
            c_peer: build_c_peer(&dir),
        }
    })
}

/// Compile `tests/c/vchan-nc.c` against Debian's libxenvchan.
fn build_c_peer(profile: &Path) -> PathBuf {
    require(LIBXENVCHAN, "libxenvchan4.17");
    require("/usr/include/libxenvchan.h", "libxen-dev");
    let out_dir = profile.join("xensim-c");
    std::fs::create_dir_all(&out_dir).expect("create the C build directory");
    let out = out_dir.join(format!("vchan-nc-{}", std::process::id()));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/vchan-nc.c");
    let output = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&source)
        .args(["-lxenvchan", "-lxenstore"])
        .output()
        .expect("run cc (install the Debian package gcc)");
    assert!(
        output.status.success(),
        "cc failed to build {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// A simulated host in its own temporary directory, stopped and removed on drop.
pub struct Host {
    /// The host's directory.
    pub dir: PathBuf,
    serve: Child,
}

impl Host {
    /// Start `xensim serve` and create the given domains.
    pub fn start(tag: &str, domains: &[u16]) -> Host {
        let a = artifacts();
        let dir = std::env::temp_dir().join(format!("xensim-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut serve = Command::new(&a.xensim)
            .args(["serve", "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn xensim serve");
        let mut line = String::new();
        BufReader::new(serve.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read xensim's banner");
        assert!(
            line.starts_with("xensim: serving"),
            "xensim serve did not start: {line:?}"
        );
        let host = Host { dir, serve };
        for &d in domains {
            host.xensim(&[
                "create",
                "--domid",
                &d.to_string(),
                "--name",
                &format!("guest{d}"),
            ]);
        }
        host
    }

    /// The process id of `xensim serve` (the hypervisor and the xenstore daemon).
    pub fn serve_pid(&self) -> u32 {
        self.serve.id()
    }

    /// Run an `xensim` subcommand against this host; returns its stdout, panics on failure.
    pub fn xensim(&self, args: &[&str]) -> String {
        let out = Command::new(&artifacts().xensim)
            .arg(args[0])
            .arg("--dir")
            .arg(&self.dir)
            .args(&args[1..])
            .output()
            .expect("run xensim");
        assert!(
            out.status.success(),
            "xensim {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs `program args` as `domid` (through `xensim run`).
    pub fn run_as(&self, domid: u16, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&artifacts().xensim);
        cmd.arg("run")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--domid", &domid.to_string(), "--"]);
        cmd.arg(program).args(args);
        cmd
    }

    /// Wait until the host holds nothing (no handle, port, grant or mapping), up to 5 s.
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stats;
        loop {
            stats = self.xensim(&["stats"]);
            if stats.contains("handles 0 ports 0 grants 0 mappings 0") || Instant::now() > deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            stats.contains("handles 0 ports 0 grants 0 mappings 0"),
            "the host still holds: {stats}"
        );
        let mut entries: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("list the host directory")
            .map(|e| {
                e.expect("directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        entries.sort();
        let mut expected: Vec<String> = vec!["dom0.sock".into(), "lib".into(), "xen.sock".into()];
        expected.extend(stats_domains(&self.dir));
        expected.sort();
        assert_eq!(entries, expected, "unexpected files in the host directory");
    }
}

/// The per-domain sockets present besides dom0's.
fn stats_domains(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("dom") && n.ends_with(".sock") && n != "dom0.sock")
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Host {
    fn drop(&mut self) {
        // SIGTERM lets xensim stop cleanly (sockets and lib links removed).
        let _ = Command::new("kill")
            .arg(self.serve.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.serve.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.serve.kill();
        let _ = self.serve.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be reproduced.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A 64-bit FNV-1a digest: enough to tell whether megabytes arrived intact and in order.
pub fn digest(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Wait for a child up to `limit`; kill it and panic if it is still running.
pub fn wait_for(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Read a child's stderr to a string (after it exited).
pub fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// Whether a status is "killed by SIGKILL".
pub fn killed(status: &ExitStatus) -> bool {
    status.signal() == Some(9)
}
