//! hyper-util's client over vchan on the in-process simulation, through [`HyperConnector`]:
//! HTTP/1 and HTTP/2 (prior knowledge), many requests at once, bodies far larger than a ring,
//! a resolver that names the endpoint from the URI, and (with `tls`) HTTP/2 agreed by ALPN.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conduit_vchan::describe;
use conduit_vchan::{AsyncListener, ConduitError, Endpoint, HyperConnector, Peer};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{pattern, runtime, Sim, SERVER};

/// Far larger than the 64 KiB rings a listener makes by default.
const BIG: usize = 1 << 20;

fn parse(name: &str) -> Endpoint {
    name.parse().unwrap()
}

/// `GET /bytes/LEN/SEED` answers `pattern(LEN, SEED)`; `POST /echo` answers its body; every
/// answer says who asked (`x-peer`) and in which HTTP version.
async fn handle(
    request: Request<Incoming>,
    peer: Peer,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = format!("{:?}", request.version());
    let path = request.uri().path().to_owned();
    let body = if let Some(rest) = path.strip_prefix("/bytes/") {
        let (len, seed) = rest.split_once('/').unwrap();
        pattern(len.parse().unwrap(), seed.parse().unwrap())
    } else {
        request
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    };
    Ok(Response::builder()
        .header("x-peer", peer.to_string())
        .header("x-version", version)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

/// Serve HTTP/1 and HTTP/2 (hyper-util's auto builder tells them apart) on `listener`,
/// counting connections, until the task is aborted.
fn serve(listener: AsyncListener, connections: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (conn, peer) = listener.accept().await.unwrap();
            connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| handle(r, peer.clone()));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(conn), service).await;
            });
        }
    })
}

/// `count` requests at once, each `GET /bytes/BIG/i` and `POST /echo` of BIG bytes.
async fn many_big_requests(
    client: &Client<HyperConnector, Full<Bytes>>,
    count: u64,
    version: &'static str,
) {
    let base = "http://guest";
    let mut tasks = Vec::new();
    for i in 0..count {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let got = client
                .get(format!("{base}/bytes/{BIG}/{i}").parse().unwrap())
                .await
                .unwrap();
            assert_eq!(got.status(), 200);
            assert_eq!(got.headers()["x-peer"], "domain 0");
            // hyper-util hands the connection's Peer to every response.
            assert_eq!(got.extensions().get::<Peer>(), Some(&Peer::Vchan(SERVER)));
            assert_eq!(got.headers()["x-version"], version);
            let body = got.into_body().collect().await.unwrap().to_bytes();
            assert!(body == pattern(BIG, i), "GET {i}: the body differs");

            let sent = pattern(BIG + 7, 1000 + i);
            let request = Request::post(format!("{base}/echo"))
                .body(Full::new(Bytes::from(sent.clone())))
                .unwrap();
            let got = client.request(request).await.unwrap();
            assert_eq!(got.status(), 200);
            let body = got.into_body().collect().await.unwrap().to_bytes();
            assert!(body == sent, "POST {i}: the echo differs");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn http1_requests_at_once_over_a_vchan_service_carry_bodies_larger_than_a_ring() {
    let sim = Sim::new();
    let connections = Arc::new(AtomicUsize::new(0));
    runtime().block_on(async {
        let listener = AsyncListener::bind_with(&parse("vchan://*/http"), sim.listen_options())
            .await
            .unwrap();
        let server = serve(listener, Arc::clone(&connections));
        let client = Client::builder(TokioExecutor::new()).build(HyperConnector::new(
            sim.connector(),
            parse("vchan://5/http"),
        ));
        tokio::time::timeout(
            Duration::from_secs(120),
            many_big_requests(&client, 8, "HTTP/1.1"),
        )
        .await
        .expect("HTTP/1 over vchan hung");
        // HTTP/1 runs one request at a time per connection: at once means several.
        assert!(connections.load(Ordering::Relaxed) > 1);
        drop(client);
        server.abort();
        let _ = server.await;
    });
    sim.wait_clean();
}

#[test]
fn http2_prior_knowledge_multiplexes_requests_over_one_vchan() {
    let sim = Sim::new();
    let connections = Arc::new(AtomicUsize::new(0));
    runtime().block_on(async {
        let listener = AsyncListener::bind_with(&parse("vchan://*/h2"), sim.listen_options())
            .await
            .unwrap();
        let server = serve(listener, Arc::clone(&connections));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(HyperConnector::new(sim.connector(), parse("vchan://5/h2")));
        // One request first, so that the pool holds one HTTP/2 connection the others share.
        many_big_requests(&client, 1, "HTTP/2.0").await;
        tokio::time::timeout(
            Duration::from_secs(120),
            many_big_requests(&client, 16, "HTTP/2.0"),
        )
        .await
        .expect("HTTP/2 over vchan hung");
        assert_eq!(connections.load(Ordering::Relaxed), 1);
        drop(client);
        server.abort();
        let _ = server.await;
    });
    sim.wait_clean();
}

#[test]
fn a_resolver_names_the_endpoint_from_the_uri_and_its_error_fails_the_request() {
    let sim = Sim::new();
    runtime().block_on(async {
        let listener = AsyncListener::bind_with(&parse("vchan://*/http"), sim.listen_options())
            .await
            .unwrap();
        let server = serve(listener, Arc::new(AtomicUsize::new(0)));
        // ocaml-conduit's convention: http://NAME.xen/ is the vchan service `http` of NAME.
        let quick = sim.connector().timeout(Duration::from_millis(500));
        let connector = HyperConnector::with_resolver(quick, |uri| {
            let host = uri.host().unwrap_or_default();
            match host.strip_suffix(".xen") {
                Some(domain) => Ok(format!("vchan://{domain}/{}", uri.scheme_str().unwrap())
                    .parse()
                    .unwrap()),
                None => Err(ConduitError::Unsupported {
                    endpoint: uri.to_string(),
                    reason: "only NAME.xen hosts here",
                }),
            }
        });
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let got = client
            .get("http://5.xen/bytes/10/1".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        let body = got.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, pattern(10, 1));

        let err = client
            .get("http://example.org/".parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            describe(&err).contains("only NAME.xen hosts here"),
            "{}",
            describe(&err)
        );
        // A domain that serves nothing: the connect's own error, within the connector's timeout.
        let err = client
            .get("http://7.xen/".parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            describe(&err).contains("vchan://7/http"),
            "{}",
            describe(&err)
        );
        drop(client);
        server.abort();
        let _ = server.await;
    });
    sim.wait_clean();
}

#[cfg(feature = "tls")]
#[test]
fn https_over_vchan_agrees_http2_through_alpn() {
    use support::pki::{server_name, Pki};
    let sim = Sim::new();
    let pki = Pki::new("h2");
    runtime().block_on(async {
        let listener = AsyncListener::bind_with(
            &parse("tls+vchan://*/https"),
            sim.listen_options()
                .tls(pki.server(&["api.invalid"], &[b"h2", b"http/1.1"])),
        )
        .await
        .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let server = serve(listener, Arc::clone(&connections));
        let connector = HyperConnector::new(
            sim.connector().tls(
                pki.client(&[b"h2", b"http/1.1"]),
                server_name("api.invalid"),
            ),
            parse("tls+vchan://5/https"),
        );
        // No http2_only: the client learns HTTP/2 from ALPN.
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let got = client
            .get("https://api.invalid/bytes/100000/3".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(got.headers()["x-version"], "HTTP/2.0");
        let body = got.into_body().collect().await.unwrap().to_bytes();
        assert!(body == pattern(100_000, 3));
        drop(client);
        server.abort();
        let _ = server.await;
    });
    sim.wait_clean();
}
