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
use tools::describe;
use xen_types::DomId;
use xensim::toolstack::{self, ToolstackError};
use xensim::{Host, HostControl};
use xenstore::client::Client;
use xenstore::daemon::{self, Daemon};
use xenstore::local::LocalStore;

const USAGE: &str = "\
usage: xensim serve   --dir DIR
       xensim create  --dir DIR --domid N [--name NAME]
       xensim destroy --dir DIR --domid N
       xensim run     --dir DIR --domid N -- CMD [ARGS...]
       xensim stats   --dir DIR
serve    run the simulated host in the foreground (until SIGINT or SIGTERM); dom0 exists
create   create domain N (xenstore: introduced, /local/domain/N/{domid,name})
destroy  destroy domain N: its processes are killed, their unmap notifications fire and their
         grants, ports and xenstore home are reclaimed
run      run CMD as domain N (XENSIM_DIR, XENSIM_DOMID, XENSTORED_PATH and LD_LIBRARY_PATH set)
stats    print what the host holds (domains, handles, ports, grants, mappings)
The stand-in C libraries are taken from the directory of this executable, or $XENSIM_LIB_DIR.";

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

#[derive(Default)]
struct Options {
    dir: Option<PathBuf>,
    domid: Option<DomId>,
    name: Option<String>,
    command: Vec<OsString>,
}

fn parse(args: Vec<OsString>, allow: &[&str], wants_command: bool) -> Result<Options, Failure> {
    let mut opts = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        if text == "--" && wants_command {
            opts.command = args.collect();
            break;
        }
        let (flag, inline) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(OsString::from(value)))
            }
            _ => (text.clone(), None),
        };
        if !allow.contains(&flag.as_str()) {
            return Err(usage(format!("unexpected argument {text:?}")));
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => return Err(usage(format!("{flag} needs a value"))),
        };
        match flag.as_str() {
            "--dir" => opts.dir = Some(PathBuf::from(value)),
            "--domid" => {
                let text = value.to_string_lossy();
                let domid = text
                    .parse::<DomId>()
                    .ok()
                    .filter(|d| d.is_normal())
                    .ok_or_else(|| {
                        usage(format!("--domid {text:?} is not a domain id (0 to 32751)"))
                    })?;
                opts.domid = Some(domid);
            }
            "--name" => opts.name = Some(value.to_string_lossy().into_owned()),
            _ => return Err(usage(format!("unexpected argument {text:?}"))),
        }
    }
    if wants_command && opts.command.is_empty() {
        return Err(usage("run needs a command after --"));
    }
    Ok(opts)
}

fn need_dir(opts: &Options) -> Result<PathBuf, Failure> {
    let dir = opts.dir.clone().ok_or_else(|| usage("--dir is required"))?;
    // Absolute, so the paths handed to programs keep working from any working directory.
    if dir.is_absolute() {
        Ok(dir)
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&dir))
            .map_err(|e| runtime(format!("cannot resolve {}: {e}", dir.display())))
    }
}

fn need_domid(opts: &Options) -> Result<DomId, Failure> {
    opts.domid.ok_or_else(|| usage("--domid is required"))
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

/// `/local/domain/N/{domid,name}`, owned by N, as a toolstack writes them.
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

fn serve(opts: &Options) -> Result<(), Failure> {
    let dir = need_dir(opts)?;
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

fn create(opts: &Options) -> Result<(), Failure> {
    let dir = need_dir(opts)?;
    let domid = need_domid(opts)?;
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("domain-{domid}"));
    let host = control(&dir)?;
    let store = dom0_store(&dir)?;
    toolstack::create_domain(&host, &store, domid, &name).map_err(toolstack_failure)
}

fn destroy(opts: &Options) -> Result<(), Failure> {
    let dir = need_dir(opts)?;
    let domid = need_domid(opts)?;
    if domid == DomId::DOM0 {
        return Err(usage("dom0 cannot be destroyed"));
    }
    let host = control(&dir)?;
    let store = dom0_store(&dir)?;
    toolstack::destroy_domain(&host, &store, domid).map_err(toolstack_failure)
}

fn run(opts: Options) -> Result<(), Failure> {
    let dir = need_dir(&opts)?;
    let domid = need_domid(&opts)?;
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
    let mut words = opts.command.into_iter();
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

fn stats(opts: &Options) -> Result<(), Failure> {
    let dir = need_dir(opts)?;
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
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "xensim: missing command: serve, create, destroy, run or stats (see 'xensim --help')"
        );
        return ExitCode::from(2);
    }
    let command = args.remove(0).to_string_lossy().into_owned();
    let outcome = match command.as_str() {
        "-h" | "--help" | "help" => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            Ok(())
        }
        "serve" => parse(args, &["--dir"], false).and_then(|o| serve(&o)),
        "create" => parse(args, &["--dir", "--domid", "--name"], false).and_then(|o| create(&o)),
        "destroy" => parse(args, &["--dir", "--domid"], false).and_then(|o| destroy(&o)),
        "run" => parse(args, &["--dir", "--domid"], true).and_then(run),
        "stats" => parse(args, &["--dir"], false).and_then(|o| stats(&o)),
        other => Err(usage(format!("unknown command {other:?}"))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let _ = writeln!(std::io::stderr(), "xensim: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}
