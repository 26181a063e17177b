//! `axum::serve` over `vchan://*/http` on the in-process simulation, called through the hyper
//! connector; the handler sees the calling domain through `ConnectInfo<Peer>`.

mod support;

use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::Router;
use conduit_vchan::{AsyncListener, Endpoint, HyperConnector, Peer};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{pattern, runtime, Sim, CLIENT, SERVER};

fn parse(name: &str) -> Endpoint {
    name.parse().unwrap()
}

fn app() -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|ConnectInfo(peer): ConnectInfo<Peer>| async move { peer.to_string() }),
        )
        .route("/big", get(|| async { pattern(3 << 20, 9) }))
        .route("/echo", post(|body: Bytes| async move { body }))
}

#[test]
fn axum_serves_over_a_vchan_service_and_sees_the_calling_domain() {
    let sim = Sim::new();
    runtime().block_on(async {
        let listener = AsyncListener::bind_with(&parse("vchan://*/http"), sim.listen_options())
            .await
            .unwrap();
        assert_eq!(
            axum::serve::Listener::local_addr(&listener).unwrap(),
            Peer::Vchan(SERVER)
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app().into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let work = async {
            for http2 in [false, true] {
                let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                    .http2_only(http2)
                    .build(HyperConnector::new(
                        sim.connector(),
                        parse("vchan://5/http"),
                    ));
                let got = client
                    .get("http://guest/whoami".parse().unwrap())
                    .await
                    .unwrap();
                assert_eq!(got.status(), 200);
                let body = got.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, format!("domain {CLIENT}"));

                let mut calls = Vec::new();
                for i in 0..6u64 {
                    let client = client.clone();
                    calls.push(tokio::spawn(async move {
                        let got = client
                            .get("http://guest/big".parse().unwrap())
                            .await
                            .unwrap();
                        let body = got.into_body().collect().await.unwrap().to_bytes();
                        assert!(body == pattern(3 << 20, 9), "GET /big {i} differs");
                        let sent = pattern(1 << 20, i);
                        let request = hyper::Request::post("http://guest/echo")
                            .body(Full::new(Bytes::from(sent.clone())))
                            .unwrap();
                        let got = client.request(request).await.unwrap();
                        let body = got.into_body().collect().await.unwrap().to_bytes();
                        assert!(body == sent, "POST /echo {i} differs");
                    }));
                }
                for call in calls {
                    call.await.unwrap();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), work)
            .await
            .expect("axum over vchan hung");
        stop.send(()).unwrap();
        server.await.unwrap();
    });
    sim.wait_clean();
}
