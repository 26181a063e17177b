//! An HTTP client (hyper) for any endpoint: the same program over TCP, a Unix socket or vchan.
//!
//! ```text
//! http-client ENDPOINT [PATH] [--parallel N]
//! ```
//!
//! Sends N (default 1) `GET PATH` (default `/`) requests at once to ENDPOINT, checks that every
//! answer is `200 OK` and that all N bodies are identical, writes one body to stdout and one
//! summary line to stderr. For example `http-client tcp://127.0.0.1:8080 /file --parallel 8`,
//! `http-client unix:///run/http.sock`, or, in another Xen domain (or under `xensim run`),
//! `http-client vchan://5/http /file --parallel 8`. The Xen platform comes from the environment
//! (`Xen::from_env`). Errors: one line on stderr, exit status 1.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use conduit_vchan::{describe, Connector, Endpoint, HyperConnector};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const USAGE: &str = "usage: http-client ENDPOINT [PATH] [--parallel N]";

struct Args {
    endpoint: Endpoint,
    path: String,
    parallel: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut endpoint, mut path, mut parallel) = (None, None, 1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--parallel" => {
                let n = args.next().ok_or("--parallel needs a number")?;
                parallel = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--parallel takes a number above 0, not {n:?}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            name if endpoint.is_none() => {
                endpoint = Some(name.parse::<Endpoint>().map_err(|e| e.to_string())?)
            }
            p if path.is_none() => {
                if !p.starts_with('/') {
                    return Err(format!("PATH starts with /, unlike {p:?}"));
                }
                path = Some(p.to_owned());
            }
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    Ok(Args {
        endpoint: endpoint.ok_or("no ENDPOINT given")?,
        path: path.unwrap_or_else(|| "/".to_owned()),
        parallel,
    })
}

async fn run(args: &Args) -> Result<String, String> {
    let connector = HyperConnector::new(Connector::new(), args.endpoint.clone());
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    // The URI's host is not used to connect (the endpoint is), only sent as the Host header.
    let uri: hyper::Uri = format!("http://localhost{}", args.path)
        .parse()
        .map_err(|e| format!("bad PATH {:?}: {e}", args.path))?;
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..args.parallel {
        let (client, uri) = (client.clone(), uri.clone());
        requests.spawn(async move {
            let response = client.get(uri).await.map_err(|e| describe(&e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| describe(&e))?
                .to_bytes();
            if status != hyper::StatusCode::OK {
                let text = String::from_utf8_lossy(&body);
                return Err(match text.trim() {
                    "" => format!("the server answered {status}"),
                    text => format!("the server answered {status}: {text}"),
                });
            }
            Ok(body)
        });
    }
    let mut bodies = Vec::new();
    while let Some(done) = requests.join_next().await {
        bodies.push(done.map_err(|e| format!("a request task failed: {e}"))??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let first = bodies.first().cloned().unwrap_or_default();
    if let Some(n) = bodies.iter().position(|b| *b != first) {
        return Err(format!(
            "the bodies differ: one has {} bytes, another {} bytes",
            first.len(),
            bodies[n].len()
        ));
    }
    std::io::stdout()
        .write_all(&first)
        .and_then(|()| std::io::stdout().flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    let total = (first.len() * bodies.len()) as f64;
    Ok(format!(
        "{} x GET {} from {}: 200 OK, {} bytes each, identical; {:.3} s, {:.1} MB/s",
        bodies.len(),
        args.path,
        args.endpoint,
        first.len(),
        seconds,
        total / seconds.max(1e-9) / 1e6
    ))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("http-client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("http-client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(&args));
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(summary) => {
            eprintln!("http-client: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("http-client: GET {} from {}: {e}", args.path, args.endpoint);
            ExitCode::FAILURE
        }
    }
}
