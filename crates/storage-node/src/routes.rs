//! The node's gRPC routes: `ChunkStore/Put` is served straight from the HTTP/2 body and
//! `ChunkStore/Get` answers with slices of what the engine read, chunk data never copied between
//! the engine and the socket (see `node_client::chunk_wire`); every other method goes to the
//! tonic-generated service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use cairn_proto::chunk::v1 as pb;
use cairn_proto::chunk::v1::chunk_store_server::ChunkStoreServer;
use http_body_util::{BodyExt, StreamBody};
use node_client::STREAM_PIECE;
use node_client::chunk_wire::{GET_PATH, PUT_PATH, PutDecoder, decode_unary, encode_get, encode_message};
use tonic::Status;
use tonic::body::BoxBody;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;

use crate::service::{ChunkService, PutAssembly};

/// The `cairn.chunk.v1.ChunkStore` service with its Put and Get routes taken over.
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
        let (service, max) = (self.service.clone(), self.max_message);
        match req.uri().path() {
            PUT_PATH => Box::pin(async move {
                let res = service.put_assembled(|limit| receive(req.into_body(), max, limit)).await;
                Ok(match res {
                    Ok(answer) => ok_response(vec![encode_message(&answer)]),
                    Err(status) => status.into_http(),
                })
            }),
            GET_PATH => Box::pin(async move {
                let res = match read_get_request(req.into_body()).await {
                    Ok(get) => service.get_data(get).await,
                    Err(status) => Err(status),
                };
                Ok(match res {
                    Ok(data) => ok_response(encode_get(&data, STREAM_PIECE)),
                    Err(status) => status.into_http(),
                })
            }),
            _ => self.grpc.call(req),
        }
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
                None => assembly.insert(PutAssembly::start(&m.hash, m.length, m.writer, max_chunk)?),
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

/// The get request in `body`: one small gRPC message.
async fn read_get_request(mut body: BoxBody) -> Result<pb::GetRequest, Status> {
    /// A hash and a flag; anything much longer is not a get request.
    const MAX: usize = 1024;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > MAX {
                return Err(Status::invalid_argument(format!("get request longer than {MAX} bytes")));
            }
            buf.extend_from_slice(&data);
        }
    }
    decode_unary(&buf).ok_or_else(|| Status::invalid_argument("malformed GetRequest"))
}

/// A gRPC answer: the messages' frames as they are, then `grpc-status: 0` in the trailers.
fn ok_response(frames: Vec<Bytes>) -> http::Response<BoxBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = frames
        .into_iter()
        .map(|f| Ok::<_, Status>(http_body::Frame::data(f)))
        .chain(std::iter::once(Ok(http_body::Frame::trailers(trailers))));
    let body = StreamBody::new(futures::stream::iter(frames));
    let mut resp = http::Response::new(tonic::body::boxed(body));
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    resp
}
