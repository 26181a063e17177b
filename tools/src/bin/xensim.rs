//! `xensim`: a simulated Xen host across processes, which unmodified Xen C programs run on.
//!
//! `xensim serve` is the host: the simulated hypervisor (event channels, grant tables, domain life;
//! `xensim::Host` on `DIR/xen.sock`) and a xenstore daemon (`DIR/dom<N>.sock`, one socket
//! per domain). `create`/`destroy` play the toolstack; `run` starts a program as a domain, with the
//! stand-in `libxengnttab.so.1`/`libxenevtchn.so.1` (from `DIR/lib`) ahead on its library path.
//! The host carries out a dead process's unmap notifications and reclaims its grants and ports
//! as soon as its descriptors close, however it died.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::sys::signal::{SigSet, Signal};
use tools::cli::xensim::{Cli, Cmd, HostDir};
use tools::describe;
use xen_types::DomId;
use xensim::toolstack::{self, ToolstackError};
use xensim::{Host, HostControl};
use xenstore::client::Client;
use xenstore::daemon::{self, Daemon};
use xenstore::local::LocalStore;

const SHIMS: [&str; 2] = ["libxengnttab", "libxenevtchn"];

/// One line for stderr and the exit status.
struct Failure {
    message: String,
    status: u8,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        message: format!("{} (see 'xensim --help')", message.into()),
        status: 2,
    }
}

fn runtime(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        status: 1,
    }
}

/// The host's directory, absolute, so that the paths handed to programs keep working from any
/// working directory.
fn host_dir(host: &HostDir) -> Result<PathBuf, Failure> {
    if host.dir.is_absolute() {
        Ok(host.dir.clone())
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&host.dir))
            .map_err(|e| runtime(format!("cannot resolve {}: {e}", host.dir.display())))
    }
}

fn control(dir: &Path) -> Result<HostControl, Failure> {
    HostControl::connect(dir).map_err(|e| runtime(e.to_string()))
}

fn dom0_store(dir: &Path) -> Result<Client, Failure> {
    let path = daemon::socket_path(dir, DomId::DOM0);
    Client::open_path(&path).map_err(|e| {
        runtime(format!(
            "cannot reach xenstore at {}: {}",
            path.display(),
            describe(&e)
        ))
    })
}

/// Where the stand-in libraries were built: `$XENSIM_LIB_DIR`, else next to this executable.
fn shim_dir() -> Result<PathBuf, Failure> {
    let candidates: Vec<PathBuf> = match std::env::var_os("XENSIM_LIB_DIR") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| runtime(format!("cannot find this executable: {e}")))?;
            let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
            vec![dir.clone(), dir.join("..")]
        }
    };
    for dir in &candidates {
        if SHIMS
            .iter()
            .all(|lib| dir.join(format!("{lib}.so")).is_file())
        {
            return Ok(dir.clone());
        }
    }
    Err(runtime(format!(
        "the stand-in libraries (libxengnttab.so, libxenevtchn.so) are not in {}; build them with \
         `cargo build -p shim-xengnttab -p shim-xenevtchn` or set XENSIM_LIB_DIR",
        candidates[0].display()
    )))
}

/// `DIR/lib/libxengnttab.so.1` and `libxenevtchn.so.1`, linked to the built libraries.
fn install_shims(dir: &Path) -> Result<PathBuf, Failure> {
    let source = shim_dir()?;
    let source = source.canonicalize().unwrap_or(source);
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib)
        .map_err(|e| runtime(format!("cannot create {}: {e}", lib.display())))?;
    for name in SHIMS {
        let link = lib.join(format!("{name}.so.1"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(source.join(format!("{name}.so")), &link)
            .map_err(|e| runtime(format!("cannot link {}: {e}", link.display())))?;
    }
    Ok(lib)
}

/// Block the termination signals in every thread (call before spawning any) and return a waiter.
fn block_signals() -> Result<SigSet, Failure> {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set.thread_block()
        .map_err(|e| runtime(format!("cannot block termination signals: {e}")))?;
    Ok(set)
}

fn serve(host: &HostDir) -> Result<(), Failure> {
    let dir = host_dir(host)?;
    let signals = block_signals()?;
    let host = Host::bind(&dir)
        .map_err(|e| runtime(format!("cannot start the host in {}: {e}", dir.display())))?;
    let lib = install_shims(&dir)?;
    let store = LocalStore::new();
    let xenstored = Daemon::bind_with(&dir, store.clone())
        .map_err(|e| runtime(format!("cannot start xenstore in {}: {e}", dir.display())))?
        .into_handle();
    toolstack::write_domain_home(&store.connect(DomId::DOM0), DomId::DOM0, "Domain-0")
        .map_err(|e| runtime(format!("cannot write dom0's keys: {}", describe(&e))))?;
    let runner = host.clone();
    let thread = std::thread::Builder::new()
        .name("xensim-host".into())
        .spawn(move || runner.run())
        .map_err(|e| runtime(format!("cannot start the host thread: {e}")))?;
    let _ = writeln!(
        std::io::stdout(),
        "xensim: serving {} (dom0 xenstore at {})",
        dir.display(),
        xenstored.socket_path(DomId::DOM0).display()
    );
    // Blocked in every thread (the mask is inherited), so only this wait takes them.
    while signals.wait().is_err() {}
    host.stop();
    let _ = thread.join();
    xenstored.stop();
    let _ = std::fs::remove_dir_all(&lib);
    let _ = writeln!(std::io::stderr(), "xensim: stopped");
    Ok(())
}

/// One line for a toolstack failure, naming the side that refused and why.
fn toolstack_failure(e: ToolstackError) -> Failure {
    match &e {
        ToolstackError::Exists(_) | ToolstackError::NoSuchDomain(_) => runtime(e.to_string()),
        ToolstackError::Dom0 => usage(e.to_string()),
        ToolstackError::Hypervisor(domid, source) => runtime(format!(
            "the simulated host refused domain {domid}: {source}"
        )),
        ToolstackError::Store(domid, source) => runtime(format!(
            "xenstore refused domain {domid}'s keys: {}",
            describe(source)
        )),
    }
}

fn create(host: &HostDir, domid: DomId, name: Option<String>) -> Result<(), Failure> {
    let dir = host_dir(host)?;
    let name = name.unwrap_or_else(|| format!("domain-{domid}"));
    let host = control(&dir)?;
    let store = dom0_store(&dir)?;
    toolstack::create_domain(&host, &store, domid, &name).map_err(toolstack_failure)
}

fn destroy(host: &HostDir, domid: DomId) -> Result<(), Failure> {
    let dir = host_dir(host)?;
    if domid == DomId::DOM0 {
        return Err(usage("dom0 cannot be destroyed"));
    }
    let host = control(&dir)?;
    let store = dom0_store(&dir)?;
    toolstack::destroy_domain(&host, &store, domid).map_err(toolstack_failure)
}

fn run(host: &HostDir, domid: DomId, command: Vec<OsString>) -> Result<(), Failure> {
    let dir = host_dir(host)?;
    let exists = control(&dir)?
        .domain_exists(domid)
        .map_err(|e| runtime(e.to_string()))?;
    if !exists {
        return Err(runtime(format!(
            "domain {domid} does not exist (create it with `xensim create`)"
        )));
    }
    let lib = dir.join("lib");
    let mut library_path = OsString::from(&lib);
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
        library_path.push(":");
        library_path.push(old);
    }
    let mut words = command.into_iter();
    let program = words
        .next()
        .ok_or_else(|| usage("run needs a command after --"))?;
    let error = Command::new(&program)
        .args(words)
        .env(xensim::ENV_DIR, &dir)
        .env(xensim::ENV_DOMID, domid.to_string())
        .env("XENSTORED_PATH", daemon::socket_path(&dir, domid))
        .env("LD_LIBRARY_PATH", library_path)
        .exec();
    Err(runtime(format!(
        "cannot run {}: {error}",
        program.to_string_lossy()
    )))
}

fn stats(host: &HostDir) -> Result<(), Failure> {
    let dir = host_dir(host)?;
    let s = control(&dir)?.stats().map_err(|e| runtime(e.to_string()))?;
    // The asking connection is not counted.
    let _ = writeln!(
        std::io::stdout(),
        "domains {} handles {} ports {} grants {} mappings {}",
        s.domains,
        s.handles.saturating_sub(1),
        s.ports,
        s.grants,
        s.mappings
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = match tools::parse_cli(tools::cli::xensim::word) {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    let outcome = match cli.command {
        Cmd::Serve { host } => serve(&host),
        Cmd::Create { host, domid, name } => create(&host, domid, name),
        Cmd::Destroy { host, domid } => destroy(&host, domid),
        Cmd::Run {
            host,
            domid,
            command,
        } => run(&host, domid, command),
        Cmd::Stats { host } => stats(&host),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let _ = writeln!(std::io::stderr(), "xensim: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}
