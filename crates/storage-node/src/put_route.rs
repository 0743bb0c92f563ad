//! The node's gRPC routes: `ChunkStore/Put` is served straight from the HTTP/2 body, its chunk
//! data never copied on the way to the engine (see `node_client::put_wire`); every other method
//! goes to the tonic-generated service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_proto::chunk::v1 as pb;
use cairn_proto::chunk::v1::chunk_store_server::ChunkStoreServer;
use http_body_util::{BodyExt, StreamBody};
use node_client::put_wire::{PUT_PATH, PutDecoder, encode_message};
use tonic::Status;
use tonic::body::BoxBody;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;

use crate::service::{ChunkService, PutAssembly};

/// The `cairn.chunk.v1.ChunkStore` service with its Put route taken over.
#[derive(Clone)]
pub struct ChunkStoreRoutes {
    grpc: ChunkStoreServer<ChunkService>,
    service: ChunkService,
    max_message: usize,
}

impl ChunkStoreRoutes {
    /// Routes for `service`; no message may exceed `max_message` bytes.
    pub fn new(service: ChunkService, max_message: usize) -> Self {
        let grpc = ChunkStoreServer::new(service.clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        ChunkStoreRoutes { grpc, service, max_message }
    }
}

impl NamedService for ChunkStoreRoutes {
    const NAME: &'static str = <ChunkStoreServer<ChunkService> as NamedService>::NAME;
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<BoxBody>, Infallible>> + Send>>;

impl Service<http::Request<BoxBody>> for ChunkStoreRoutes {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> ResponseFuture {
        if req.uri().path() != PUT_PATH {
            return self.grpc.call(req);
        }
        let (service, max) = (self.service.clone(), self.max_message);
        Box::pin(async move {
            let res = service.put_assembled(|limit| receive(req.into_body(), max, limit)).await;
            Ok(match res {
                Ok(answer) => ok_response(&answer),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Reads the put stream from `body`, message by message, into an assembly of received slices.
async fn receive(mut body: BoxBody, max_message: usize, max_chunk: u32) -> Result<PutAssembly, Status> {
    let mut decoder = PutDecoder::default();
    let mut assembly: Option<PutAssembly> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue }; // trailers: none expected, ignored
        decoder.push(data);
        while let Some(m) = decoder.next(max_message)? {
            let a = match &mut assembly {
                Some(a) => a,
                None => assembly.insert(PutAssembly::start(&m.hash, m.length, max_chunk)?),
            };
            for piece in m.data {
                a.add(piece)?;
            }
        }
    }
    if !decoder.is_empty() {
        return Err(Status::invalid_argument("put stream ended inside a message"));
    }
    assembly.ok_or_else(|| Status::invalid_argument("put stream carried no message"))
}

/// A gRPC answer: one message, then `grpc-status: 0` in the trailers.
fn ok_response(answer: &pb::PutResponse) -> http::Response<BoxBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames =
        [Ok::<_, Status>(http_body::Frame::data(encode_message(answer))), Ok(http_body::Frame::trailers(trailers))];
    let body = StreamBody::new(futures::stream::iter(frames));
    let mut resp = http::Response::new(tonic::body::boxed(body));
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    resp
}
