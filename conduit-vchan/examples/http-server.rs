//! An HTTP server (axum) on any endpoint: the same program over TCP, a Unix socket or vchan.
//!
//! ```text
//! http-server ENDPOINT [--file PATH]
//!
//!   GET /      a line of text: this server's endpoint and who is asking
//!   GET /file  the bytes of PATH (404 without --file)
//! ```
//!
//! For example `http-server tcp://127.0.0.1:8080 --file big.iso`,
//! `http-server unix:///run/http.sock`, or, in a Xen guest (or under `xensim run`),
//! `http-server 'vchan://*/http' --file big.iso`. The Xen platform comes from the environment
//! (`Xen::from_env`: the simulated host when `XENSIM_DIR` is set, else real Xen).
//!
//! It prints one line to stderr once it listens (`http-server: listening on ENDPOINT`, with the
//! port a `tcp://...:0` endpoint was given) and runs until SIGINT or SIGTERM, then withdraws
//! what it published and exits 0. Errors: one line on stderr, exit status 1.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use conduit_vchan::{describe, AsyncListener, Endpoint, Peer};

const USAGE: &str = "usage: http-server ENDPOINT [--file PATH]";

struct Args {
    endpoint: Endpoint,
    file: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut endpoint = None;
    let mut file = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--file" => file = Some(args.next().ok_or("--file needs a PATH")?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            name if endpoint.is_none() => {
                endpoint = Some(name.parse::<Endpoint>().map_err(|e| e.to_string())?)
            }
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    Ok(Args {
        endpoint: endpoint.ok_or("no ENDPOINT given")?,
        file,
    })
}

struct Served {
    endpoint: String,
    file: Option<Bytes>,
}

async fn get_index(
    State(served): State<Arc<Served>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> String {
    format!(
        "conduit-vchan http-server on {}; you are {peer}\n",
        served.endpoint
    )
}

async fn get_file(State(served): State<Arc<Served>>) -> axum::response::Response {
    match &served.file {
        // Shared, not copied: every response sends the same buffer.
        Some(bytes) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no --file given to this server\n").into_response(),
    }
}

/// Resolves at SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        // Without signal handlers, run until killed.
        _ => std::future::pending().await,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let file = match &args.file {
        Some(path) => Some(Bytes::from(
            std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?,
        )),
        None => None,
    };
    let listener = AsyncListener::bind(&args.endpoint)
        .await
        .map_err(|e| describe(&e))?;
    let endpoint = listener.local_endpoint().to_string();
    let closed = listener.closed();
    let app = Router::new()
        .route("/", get(get_index))
        .route("/file", get(get_file))
        .with_state(Arc::new(Served {
            endpoint: endpoint.clone(),
            file,
        }));
    eprintln!("http-server: listening on {endpoint}");
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(stop_signal())
        .await
        .map_err(|e| format!("serving {endpoint}: {e}"))?;
    // Withdraw a vchan service before the process ends.
    closed.await;
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("http-server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("http-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(args));
    // An integer vchan port's accept waits on the blocking pool: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http-server: {e}");
            ExitCode::FAILURE
        }
    }
}
