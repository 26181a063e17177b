//! tonic over vchan on the in-process simulation: the server through
//! `Server::serve_with_incoming(listener.incoming())`, the client through
//! `Endpoint::connect_with_connector` and the hyper connector. No protoc: the messages are
//! written by hand with prost's derive, and the service with tonic's generic `Grpc` client and
//! server, as its code generator would write them.
// tonic's API returns `Result<_, Status>`, and `Status` is large.
#![allow(clippy::result_large_err)]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use conduit_vchan::{AsyncListener, Endpoint, HyperConnector, Peer};
use support::{runtime, Sim, CLIENT};
use tonic::body::Body;
use tonic::codec::ProstCodec;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// `message EchoRequest { string text = 1; uint32 count = 2; bytes padding = 3; }`
#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    count: u32,
    #[prost(bytes = "vec", tag = "3")]
    padding: Vec<u8>,
}

/// `message EchoReply { string text = 1; uint32 index = 2; string caller = 3; bytes padding = 4; }`
#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    index: u32,
    #[prost(string, tag = "3")]
    caller: String,
    #[prost(bytes = "vec", tag = "4")]
    padding: Vec<u8>,
}

/// `service Echo { rpc Unary(EchoRequest) returns (EchoReply);
///                 rpc Stream(EchoRequest) returns (stream EchoReply); }`
#[derive(Clone)]
struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "conduit.test.Echo";
}

fn caller<T>(request: &Request<T>) -> String {
    // tonic puts the connection's `Connected::ConnectInfo` into the request's extensions.
    request
        .extensions()
        .get::<Peer>()
        .map_or("unknown".into(), Peer::to_string)
}

struct Unary;

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = Pin<Box<dyn Future<Output = Result<Response<EchoReply>, Status>> + Send>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let caller = caller(&request);
        let request = request.into_inner();
        Box::pin(async move {
            Ok(Response::new(EchoReply {
                text: request.text,
                index: 0,
                caller,
                padding: request.padding,
            }))
        })
    }
}

struct Streaming;

type ReplyStream =
    Pin<Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

impl tonic::server::ServerStreamingService<EchoRequest> for Streaming {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ReplyStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let caller = caller(&request);
        let request = request.into_inner();
        Box::pin(async move {
            let replies = (0..request.count).map(move |index| {
                Ok(EchoReply {
                    text: format!("{} #{index}", request.text),
                    index,
                    caller: caller.clone(),
                    padding: request.padding.clone(),
                })
            });
            let stream: ReplyStream = Box::pin(tonic::codegen::tokio_stream::iter(replies));
            Ok(Response::new(stream))
        })
    }
}

impl tower_service::Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match request.uri().path() {
            "/conduit.test.Echo/Unary" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(Unary, request).await)
            }),
            "/conduit.test.Echo/Stream" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(Streaming, request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The client half, as tonic's code generator would write it.
struct EchoClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    async fn unary(&mut self, request: EchoRequest) -> Result<Response<EchoReply>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/conduit.test.Echo/Unary");
        self.grpc
            .unary(Request::new(request), path, ProstCodec::default())
            .await
    }

    async fn stream(
        &mut self,
        request: EchoRequest,
    ) -> Result<Response<tonic::Streaming<EchoReply>>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/conduit.test.Echo/Stream");
        self.grpc
            .server_streaming(Request::new(request), path, ProstCodec::default())
            .await
    }
}

fn parse(name: &str) -> Endpoint {
    name.parse().unwrap()
}

#[test]
fn grpc_unary_and_server_streaming_calls_over_a_vchan_service() {
    let sim = Sim::new();
    runtime().block_on(async {
        let listener = AsyncListener::bind_with(&parse("vchan://*/grpc"), sim.listen_options())
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(EchoServer)
                .serve_with_incoming_shutdown(listener.incoming(), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let work = async {
            let channel = tonic::transport::Endpoint::from_static("http://guest.invalid")
                .connect_with_connector(HyperConnector::new(
                    sim.connector(),
                    parse("vchan://5/grpc"),
                ))
                .await
                .unwrap();
            let mut client = EchoClient {
                grpc: tonic::client::Grpc::new(channel),
            };

            // Unary, with a message far larger than a ring.
            let padding = support::pattern(1 << 20, 5);
            let reply = client
                .unary(EchoRequest {
                    text: "hello".into(),
                    count: 0,
                    padding: padding.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(reply.text, "hello");
            assert_eq!(reply.caller, format!("domain {CLIENT}"));
            assert!(reply.padding == padding);

            // Server streaming: many replies, in order.
            let mut replies = client
                .stream(EchoRequest {
                    text: "tick".into(),
                    count: 200,
                    padding: vec![7; 10_000],
                })
                .await
                .unwrap()
                .into_inner();
            let mut index = 0;
            while let Some(reply) = replies.message().await.unwrap() {
                assert_eq!(reply.index, index);
                assert_eq!(reply.text, format!("tick #{index}"));
                assert_eq!(reply.caller, format!("domain {CLIENT}"));
                assert_eq!(reply.padding.len(), 10_000);
                index += 1;
            }
            assert_eq!(index, 200);

            // Several calls at once over the one HTTP/2 connection.
            let mut calls = Vec::new();
            for i in 0..10 {
                let mut client = EchoClient {
                    grpc: client.grpc.clone(),
                };
                calls.push(tokio::spawn(async move {
                    let text = format!("call {i}");
                    let reply = client
                        .unary(EchoRequest {
                            text: text.clone(),
                            count: 0,
                            padding: vec![i as u8; 100_000],
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(reply.text, text);
                }));
            }
            for call in calls {
                call.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(120), work)
            .await
            .expect("gRPC over vchan hung");
        stop.send(()).unwrap();
        server.await.unwrap();
    });
    sim.wait_clean();
}
