//! The NBD front end: serves one [`BlockBackend`] (a volume, or memory) as one named
//! export over Unix or TCP sockets, speaking the fixed-newstyle NBD protocol
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>): option haggling
//! (`EXPORT_NAME`, `GO`, `INFO`, `LIST`, `ABORT`) and the transmission phase with simple replies
//! (`READ`, `WRITE` with `FUA`, `FLUSH`, `TRIM`, `WRITE_ZEROES`, `DISC`). Requests of one
//! connection run concurrently (up to [`MAX_IN_FLIGHT`]); replies go out as they complete.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::backend::{BlockBackend, BlockError};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const FLAG_C_NO_ZEROES: u32 = 1 << 1;

const FLAG_HAS_FLAGS: u16 = 1 << 0;
const FLAG_READ_ONLY: u16 = 1 << 1;
const FLAG_SEND_FLUSH: u16 = 1 << 2;
const FLAG_SEND_FUA: u16 = 1 << 3;
const FLAG_SEND_TRIM: u16 = 1 << 5;
const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Largest READ or WRITE payload (the advertised maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Requests one connection runs at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// Payload bytes one connection holds at once (reads being answered, writes being applied).
const IN_FLIGHT_BYTES: usize = 64 << 20;
/// Longest option data accepted during the handshake.
const MAX_OPTION: u32 = 64 << 10;
const PREFERRED_BLOCK: u32 = 4096;

/// One export: its name (the default name `""` also selects it), what it serves, and whether
/// clients may write.
pub struct Export<B> {
    name: String,
    backend: Arc<B>,
    read_only: bool,
}

impl<B: BlockBackend> Export<B> {
    /// A read-only export refuses WRITE, TRIM and WRITE_ZEROES with `EPERM`.
    pub fn new(name: impl Into<String>, backend: Arc<B>, read_only: bool) -> Self {
        Self { name: name.into(), backend, read_only }
    }
    fn accepts(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
    fn transmission_flags(&self) -> u16 {
        let flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;
        if self.read_only {
            flags | FLAG_READ_ONLY
        } else {
            flags | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES
        }
    }
}

/// A socket [`serve`] accepts connections on.
pub trait Listener: Send {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next accepted connection (cancel-safe).
    fn next_connection(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn next_connection(&self) -> io::Result<UnixStream> {
        Ok(self.accept().await?.0)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn next_connection(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept().await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Serves `export` to every client of `listener`, each connection on its own task, until
/// `shutdown` completes; then lets every connection finish its requests in flight, closes them,
/// and returns (no backend call runs after that).
pub async fn serve<L: Listener, B: BlockBackend>(listener: L, export: Export<B>, shutdown: impl Future<Output = ()>) {
    let export = Arc::new(export);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.next_connection() => match accepted {
                Ok(stream) => {
                    let (export, stop) = (export.clone(), stop_rx.clone());
                    connections.spawn(async move {
                        if let Err(e) = connection(stream, export, stop).await {
                            debug!(error = %e, "nbd: connection ended");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "nbd: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// Completes once the server stops (never if its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn connection<S, B>(mut stream: S, export: Arc<Export<B>>, mut stop: watch::Receiver<bool>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: BlockBackend,
{
    let size = tokio::select! {
        size = handshake(&mut stream, &export) => size?,
        () = stopped(&mut stop) => None,
    };
    match size {
        Some(size) => transmission(stream, export, size, stop).await,
        None => stream.shutdown().await,
    }
}

/// Option haggling; the export size once the client enters transmission, `None` to close.
async fn handshake<S, B>(s: &mut S, export: &Export<B>) -> io::Result<Option<u64>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: BlockBackend,
{
    let mut hello = BytesMut::with_capacity(18);
    hello.put_u64(NBDMAGIC);
    hello.put_u64(IHAVEOPT);
    hello.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    s.write_all(&hello).await?;
    s.flush().await?;
    let client_flags = s.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        warn!(client_flags, "nbd: unknown client flags, closing");
        return Ok(None);
    }
    loop {
        let magic = s.read_u64().await?;
        if magic != IHAVEOPT {
            warn!("nbd: bad option magic {magic:#x}, closing");
            return Ok(None);
        }
        let (opt, len) = (s.read_u32().await?, s.read_u32().await?);
        if len > MAX_OPTION {
            warn!(opt, len, "nbd: option data too long, closing");
            if opt != OPT_EXPORT_NAME {
                opt_reply(s, opt, REP_ERR_INVALID, b"option data too long").await?;
            }
            return Ok(None);
        }
        let mut data = vec![0; len as usize];
        s.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME if !export.accepts(&data) => {
                warn!(name = %String::from_utf8_lossy(&data), "nbd: unknown export, closing");
                return Ok(None);
            }
            OPT_EXPORT_NAME => {
                let size = export.backend.size().await;
                let mut r = BytesMut::with_capacity(134);
                r.put_u64(size);
                r.put_u16(export.transmission_flags());
                if client_flags & FLAG_C_NO_ZEROES == 0 {
                    r.put_bytes(0, 124);
                }
                s.write_all(&r).await?;
                s.flush().await?;
                return Ok(Some(size));
            }
            OPT_ABORT => {
                opt_reply(s, opt, REP_ACK, &[]).await?;
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => opt_reply(s, opt, REP_ERR_INVALID, b"LIST takes no data").await?,
            OPT_LIST => {
                let mut r = BytesMut::new();
                r.put_u32(export.name.len() as u32);
                r.put_slice(export.name.as_bytes());
                opt_reply(s, opt, REP_SERVER, &r).await?;
                opt_reply(s, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => match info_request_name(&data) {
                None => opt_reply(s, opt, REP_ERR_INVALID, b"malformed request").await?,
                Some(name) if !export.accepts(name) => opt_reply(s, opt, REP_ERR_UNKNOWN, b"no such export").await?,
                Some(_) => {
                    let size = export.backend.size().await;
                    let mut info = BytesMut::new();
                    info.put_u16(INFO_EXPORT);
                    info.put_u64(size);
                    info.put_u16(export.transmission_flags());
                    opt_reply(s, opt, REP_INFO, &info).await?;
                    let mut sizes = BytesMut::new();
                    sizes.put_u16(INFO_BLOCK_SIZE);
                    sizes.put_u32(1);
                    sizes.put_u32(PREFERRED_BLOCK);
                    sizes.put_u32(MAX_PAYLOAD);
                    opt_reply(s, opt, REP_INFO, &sizes).await?;
                    opt_reply(s, opt, REP_ACK, &[]).await?;
                    if opt == OPT_GO {
                        return Ok(Some(size));
                    }
                }
            },
            _ => opt_reply(s, opt, REP_ERR_UNSUP, b"unsupported option").await?,
        }
    }
}

/// The export name of an INFO/GO request, `None` if the data is malformed.
fn info_request_name(data: &[u8]) -> Option<&[u8]> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let name = rest.get(..u32::from_be_bytes(*len) as usize)?;
    let (count, requests) = rest[name.len()..].split_first_chunk::<2>()?;
    (requests.len() == 2 * usize::from(u16::from_be_bytes(*count))).then_some(name)
}

async fn opt_reply<S: AsyncWrite + Unpin>(s: &mut S, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut r = BytesMut::with_capacity(20 + data.len());
    r.put_u64(OPT_REPLY_MAGIC);
    r.put_u32(opt);
    r.put_u32(kind);
    r.put_u32(data.len() as u32);
    r.put_slice(data);
    s.write_all(&r).await?;
    s.flush().await
}

struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

impl Request {
    /// Whether the request may run, given the export's size.
    fn check(&self, size: u64, read_only: bool) -> Result<(), BlockError> {
        let allowed_flags = match self.kind {
            CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            _ => return Err(BlockError::Inval),
        };
        let writes = matches!(self.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if self.flags & !allowed_flags != 0 {
            Err(BlockError::Inval)
        } else if writes && read_only {
            Err(BlockError::Perm)
        } else if matches!(self.kind, CMD_READ | CMD_WRITE) && self.len > MAX_PAYLOAD {
            Err(BlockError::Inval)
        } else if self.offset.checked_add(self.len.into()).is_none_or(|end| end > size) {
            // The spec asks for ENOSPC on writes past the end.
            Err(if matches!(self.kind, CMD_WRITE | CMD_WRITE_ZEROES) { BlockError::NoSpace } else { BlockError::Inval })
        } else {
            Ok(())
        }
    }
}

/// Reads the next request header; `None` (logged) if it is not one.
async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Request>> {
    let mut header = [0u8; 28];
    r.read_exact(&mut header).await?;
    let mut h = &header[..];
    let magic = h.get_u32();
    if magic != REQUEST_MAGIC {
        warn!("nbd: bad request magic {magic:#x}, closing");
        return Ok(None);
    }
    Ok(Some(Request {
        flags: h.get_u16(),
        kind: h.get_u16(),
        cookie: h.get_u64(),
        offset: h.get_u64(),
        len: h.get_u32(),
    }))
}

type Writer<S> = Arc<Mutex<BufWriter<tokio::io::WriteHalf<S>>>>;

/// The transmission phase: reads requests, runs each on its own task, and once the client
/// disconnects (or the server stops) waits for those in flight before closing.
async fn transmission<S, B>(
    stream: S,
    export: Arc<Export<B>>,
    size: u64,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: BlockBackend,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let wr: Writer<S> = Arc::new(Mutex::new(BufWriter::new(wr)));
    let mut in_flight = JoinSet::new();
    let result = requests(&mut rd, &wr, &export, size, &mut stop, &mut in_flight).await;
    while in_flight.join_next().await.is_some() {}
    let closed = wr.lock().await.shutdown().await;
    match result {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => closed,
        other => other.and(closed),
    }
}

async fn requests<R, S, B>(
    rd: &mut R,
    wr: &Writer<S>,
    export: &Export<B>,
    size: u64,
    stop: &mut watch::Receiver<bool>,
    in_flight: &mut JoinSet<()>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    S: AsyncWrite + Send + 'static,
    B: BlockBackend,
{
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES));
    loop {
        while in_flight.try_join_next().is_some() {}
        let req = tokio::select! {
            req = read_request(rd) => req?,
            () = stopped(stop) => return Ok(()),
        };
        let Some(req) = req else { return Ok(()) };
        if req.kind == CMD_DISC {
            return Ok(());
        }
        let check = req.check(size, export.read_only);
        let held = if check.is_ok() && matches!(req.kind, CMD_READ | CMD_WRITE) { req.len } else { 0 };
        let (Ok(slot), Ok(bytes)) =
            (slots.clone().acquire_owned().await, budget.clone().acquire_many_owned(held).await)
        else {
            return Ok(());
        };
        let mut payload = Vec::new();
        if req.kind == CMD_WRITE {
            if check.is_ok() {
                payload.resize(req.len as usize, 0);
                rd.read_exact(&mut payload).await?;
            } else {
                // Refused: the payload is skipped without holding it, so the stream stays in step.
                let skipped = tokio::io::copy(&mut (&mut *rd).take(req.len.into()), &mut tokio::io::sink()).await?;
                if skipped < u64::from(req.len) {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        let (backend, wr) = (export.backend.clone(), wr.clone());
        in_flight.spawn(async move {
            let _permits = (slot, bytes);
            let result = match check {
                Ok(()) => execute(&*backend, &req, &payload).await,
                Err(e) => Err(e),
            };
            if let Err(e) = reply(&wr, req.cookie, result).await {
                debug!(error = %e, "nbd: reply not sent");
            }
        });
    }
}

async fn execute<B: BlockBackend>(backend: &B, req: &Request, payload: &[u8]) -> Result<Vec<u8>, BlockError> {
    match req.kind {
        CMD_READ => {
            let data = backend.read(req.offset, req.len).await?;
            if data.len() != req.len as usize {
                warn!(want = req.len, got = data.len(), "nbd: backend read returned a wrong length");
                return Err(BlockError::Io);
            }
            return Ok(data);
        }
        CMD_WRITE => backend.write(req.offset, payload).await?,
        CMD_TRIM | CMD_WRITE_ZEROES => backend.write_zeroes(req.offset, req.len.into()).await?,
        _ => {}
    }
    if req.kind == CMD_FLUSH || req.flags & CMD_FLAG_FUA != 0 {
        backend.flush().await?;
    }
    Ok(Vec::new())
}

async fn reply<W: AsyncWrite + Unpin>(
    wr: &Mutex<BufWriter<W>>,
    cookie: u64,
    result: Result<Vec<u8>, BlockError>,
) -> io::Result<()> {
    let (error, data) = match &result {
        Ok(data) => (0, data.as_slice()),
        Err(e) => (e.code(), &[][..]),
    };
    let mut header = BytesMut::with_capacity(16);
    header.put_u32(SIMPLE_REPLY_MAGIC);
    header.put_u32(error);
    header.put_u64(cookie);
    let mut w = wr.lock().await;
    w.write_all(&header).await?;
    w.write_all(data).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    /// Either end of a test connection.
    trait Conn: AsyncRead + AsyncWrite + Unpin {}
    impl<T: AsyncRead + AsyncWrite + Unpin> Conn for T {}

    const SIZE: usize = 1 << 20;

    /// Starts a connection served over an in-memory pipe; returns the client end.
    fn start<B: BlockBackend>(export: Export<B>) -> (DuplexStream, JoinHandle<io::Result<()>>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_stop, rx) = watch::channel(false);
        (client, tokio::spawn(connection(server, Arc::new(export), rx)))
    }

    fn mem_export(read_only: bool) -> (Arc<MemBackend>, Export<MemBackend>) {
        let mem = Arc::new(MemBackend::new(SIZE));
        (mem.clone(), Export::new("vol", mem, read_only))
    }

    async fn hello(c: &mut impl Conn, client_flags: u32) {
        assert_eq!(c.read_u64().await.unwrap(), NBDMAGIC);
        assert_eq!(c.read_u64().await.unwrap(), IHAVEOPT);
        assert_eq!(c.read_u16().await.unwrap(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c.write_u32(client_flags).await.unwrap();
    }

    async fn send_opt(c: &mut impl Conn, opt: u32, data: &[u8]) {
        let mut m = BytesMut::new();
        m.put_u64(IHAVEOPT);
        m.put_u32(opt);
        m.put_u32(data.len() as u32);
        m.put_slice(data);
        c.write_all(&m).await.unwrap();
    }

    /// One option reply: (reply type, data); checks magic and option.
    async fn opt_reply_of(c: &mut impl Conn, opt: u32) -> (u32, Vec<u8>) {
        assert_eq!(c.read_u64().await.unwrap(), OPT_REPLY_MAGIC);
        assert_eq!(c.read_u32().await.unwrap(), opt);
        let kind = c.read_u32().await.unwrap();
        let mut data = vec![0; c.read_u32().await.unwrap() as usize];
        c.read_exact(&mut data).await.unwrap();
        (kind, data)
    }

    fn info_data(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut d = BytesMut::new();
        d.put_u32(name.len() as u32);
        d.put_slice(name.as_bytes());
        d.put_u16(requests.len() as u16);
        requests.iter().for_each(|r| d.put_u16(*r));
        d.to_vec()
    }

    /// INFO or GO for `name`: (size, transmission flags) on success, else the error reply type.
    async fn info(c: &mut impl Conn, opt: u32, name: &str) -> Result<(u64, u16), u32> {
        send_opt(c, opt, &info_data(name, &[INFO_BLOCK_SIZE])).await;
        let (mut export, mut sizes) = (None, None);
        loop {
            let (kind, data) = opt_reply_of(c, opt).await;
            let mut d = &data[..];
            match kind {
                REP_INFO => match d.get_u16() {
                    INFO_EXPORT => export = Some((d.get_u64(), d.get_u16())),
                    INFO_BLOCK_SIZE => sizes = Some((d.get_u32(), d.get_u32(), d.get_u32())),
                    other => panic!("unexpected info {other}"),
                },
                REP_ACK => {
                    assert_eq!(sizes, Some((1, 4096, 32 << 20)));
                    return Ok(export.expect("no NBD_INFO_EXPORT before ACK"));
                }
                err => return Err(err),
            }
        }
    }

    /// A client in transmission on the default export via GO.
    async fn go_client<B: BlockBackend>(export: Export<B>) -> (DuplexStream, JoinHandle<io::Result<()>>) {
        let (mut c, server) = start(export);
        hello(&mut c, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        info(&mut c, OPT_GO, "").await.unwrap();
        (c, server)
    }

    async fn send_req(c: &mut impl Conn, flags: u16, kind: u16, cookie: u64, offset: u64, len: u32, data: &[u8]) {
        let mut m = BytesMut::new();
        m.put_u32(REQUEST_MAGIC);
        m.put_u16(flags);
        m.put_u16(kind);
        m.put_u64(cookie);
        m.put_u64(offset);
        m.put_u32(len);
        m.put_slice(data);
        c.write_all(&m).await.unwrap();
    }

    /// A simple reply header: (error, cookie).
    async fn reply_of(c: &mut impl Conn) -> (u32, u64) {
        assert_eq!(c.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
        (c.read_u32().await.unwrap(), c.read_u64().await.unwrap())
    }

    /// Sends one request and waits for its reply: the error and any read data.
    async fn call(c: &mut impl Conn, flags: u16, kind: u16, offset: u64, len: u32, data: &[u8]) -> (u32, Vec<u8>) {
        send_req(c, flags, kind, 7, offset, len, data).await;
        let (error, cookie) = reply_of(c).await;
        assert_eq!(cookie, 7);
        let mut out = vec![0; if kind == CMD_READ && error == 0 { len as usize } else { 0 }];
        c.read_exact(&mut out).await.unwrap();
        (error, out)
    }

    async fn assert_closed(c: &mut impl Conn) {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "unexpected bytes after close: {rest:?}");
    }

    #[tokio::test]
    async fn export_name_with_and_without_zero_padding() {
        for no_zeroes in [false, true] {
            let (mem, export) = mem_export(false);
            mem.with_range(100, 3, |r| r.copy_from_slice(b"abc")).unwrap();
            let (mut c, server) = start(export);
            hello(&mut c, FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 }).await;
            send_opt(&mut c, OPT_EXPORT_NAME, b"vol").await;
            assert_eq!(c.read_u64().await.unwrap(), SIZE as u64);
            let flags = c.read_u16().await.unwrap();
            let all = FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_CAN_MULTI_CONN;
            assert_eq!(flags, FLAG_HAS_FLAGS | all);
            if !no_zeroes {
                let mut zeroes = [1u8; 124];
                c.read_exact(&mut zeroes).await.unwrap();
                assert_eq!(zeroes, [0; 124]);
            }
            // The next bytes are the reply to the first request.
            assert_eq!(call(&mut c, 0, CMD_READ, 100, 3, &[]).await, (0, b"abc".to_vec()));
            send_req(&mut c, 0, CMD_DISC, 0, 0, 0, &[]).await;
            assert_closed(&mut c).await;
            server.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn export_name_unknown_closes() {
        let (_, export) = mem_export(false);
        let (mut c, server) = start(export);
        hello(&mut c, FLAG_C_FIXED_NEWSTYLE).await;
        send_opt(&mut c, OPT_EXPORT_NAME, b"other").await;
        assert_closed(&mut c).await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn list_info_unknown_and_unsupported_options_then_go() {
        let (_, export) = mem_export(false);
        let (mut c, server) = start(export);
        hello(&mut c, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;

        send_opt(&mut c, OPT_LIST, &[]).await;
        assert_eq!(opt_reply_of(&mut c, OPT_LIST).await, (REP_SERVER, b"\0\0\0\x03vol".to_vec()));
        assert_eq!(opt_reply_of(&mut c, OPT_LIST).await, (REP_ACK, vec![]));
        send_opt(&mut c, OPT_LIST, b"x").await;
        assert_eq!(opt_reply_of(&mut c, OPT_LIST).await.0, REP_ERR_INVALID);

        assert_eq!(info(&mut c, OPT_INFO, "nope").await, Err(REP_ERR_UNKNOWN));
        assert_eq!(info(&mut c, OPT_GO, "nope").await, Err(REP_ERR_UNKNOWN));
        let (size, flags) = info(&mut c, OPT_INFO, "vol").await.unwrap();
        assert_eq!(size, SIZE as u64);
        assert_eq!(flags & FLAG_HAS_FLAGS, FLAG_HAS_FLAGS);

        send_opt(&mut c, 8, &[]).await; // NBD_OPT_STRUCTURED_REPLY
        assert_eq!(opt_reply_of(&mut c, 8).await.0, REP_ERR_UNSUP);
        send_opt(&mut c, 0x1234, b"junk").await;
        assert_eq!(opt_reply_of(&mut c, 0x1234).await.0, REP_ERR_UNSUP);
        // Name length beyond the data; request count not matching the data.
        send_opt(&mut c, OPT_GO, b"\0\0\0\x09vol\0\0").await;
        assert_eq!(opt_reply_of(&mut c, OPT_GO).await.0, REP_ERR_INVALID);
        send_opt(&mut c, OPT_GO, b"\0\0\0\x03vol\0\x02\0\x03").await;
        assert_eq!(opt_reply_of(&mut c, OPT_GO).await.0, REP_ERR_INVALID);

        // Still in option haggling after all that: GO by name enters transmission.
        assert_eq!(info(&mut c, OPT_GO, "vol").await, Ok((size, flags)));
        assert_eq!(call(&mut c, 0, CMD_FLUSH, 0, 0, &[]).await, (0, vec![]));
        drop(c);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn abort_and_oversized_option_close() {
        let (_, export) = mem_export(false);
        let (mut c, server) = start(export);
        hello(&mut c, FLAG_C_FIXED_NEWSTYLE).await;
        send_opt(&mut c, OPT_ABORT, &[]).await;
        assert_eq!(opt_reply_of(&mut c, OPT_ABORT).await, (REP_ACK, vec![]));
        assert_closed(&mut c).await;
        server.await.unwrap().unwrap();

        let (_, export) = mem_export(false);
        let (mut c, server) = start(export);
        hello(&mut c, FLAG_C_FIXED_NEWSTYLE).await;
        let mut m = BytesMut::new();
        m.put_u64(IHAVEOPT);
        m.put_u32(OPT_INFO);
        m.put_u32(MAX_OPTION + 1);
        c.write_all(&m).await.unwrap();
        assert_eq!(opt_reply_of(&mut c, OPT_INFO).await.0, REP_ERR_INVALID);
        assert_closed(&mut c).await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn unknown_client_flags_close() {
        let (_, export) = mem_export(false);
        let (mut c, server) = start(export);
        hello(&mut c, FLAG_C_FIXED_NEWSTYLE | 1 << 7).await;
        assert_closed(&mut c).await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn commands_round_trip() {
        let (mem, export) = mem_export(false);
        let (mut c, server) = go_client(export).await;
        let data: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8 + 1).collect();
        assert_eq!(call(&mut c, 0, CMD_WRITE, 4096, data.len() as u32, &data).await, (0, vec![]));
        assert_eq!(call(&mut c, 0, CMD_READ, 4096, data.len() as u32, &[]).await, (0, data.clone()));
        assert_eq!(&mem.contents()[4096..4096 + data.len()], &data[..]);
        assert_eq!(mem.flushes(), 0);

        // Unaligned trim and write-zeroes read back as zeros; the bytes around them stay.
        assert_eq!(call(&mut c, 0, CMD_TRIM, 4096 + 10, 100, &[]).await, (0, vec![]));
        assert_eq!(call(&mut c, CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 8192, 4096, &[]).await, (0, vec![]));
        let mut want = data.clone();
        want[10..110].fill(0);
        want[4096..8192].fill(0);
        assert_eq!(call(&mut c, 0, CMD_READ, 4096, want.len() as u32, &[]).await, (0, want.clone()));
        assert_eq!(&mem.contents()[4096..4096 + want.len()], &want[..]);
        assert_eq!(mem.flushes(), 0);

        assert_eq!(call(&mut c, 0, CMD_FLUSH, 0, 0, &[]).await, (0, vec![]));
        assert_eq!(mem.flushes(), 1);
        assert_eq!(call(&mut c, CMD_FLAG_FUA, CMD_WRITE, 0, 3, b"fua").await, (0, vec![]));
        assert_eq!(mem.flushes(), 2);
        assert_eq!(call(&mut c, CMD_FLAG_FUA, CMD_WRITE_ZEROES, 0, 1, &[]).await, (0, vec![]));
        assert_eq!(mem.flushes(), 3);
        assert_eq!(&mem.contents()[..3], b"\0ua");
        assert_eq!(call(&mut c, 0, CMD_READ, SIZE as u64 - 2, 2, &[]).await, (0, vec![0, 0]));

        send_req(&mut c, 0, CMD_DISC, 0, 0, 0, &[]).await;
        assert_closed(&mut c).await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bad_requests_get_errors_and_the_stream_stays_in_step() {
        let (mem, export) = mem_export(false);
        let (mut c, server) = go_client(export).await;
        let end = SIZE as u64;
        let big = vec![0xee; 4096];
        assert_eq!(call(&mut c, 0, CMD_READ, end - 1, 2, &[]).await, (22, vec![]));
        assert_eq!(call(&mut c, 0, CMD_READ, u64::MAX, 1, &[]).await, (22, vec![]));
        assert_eq!(call(&mut c, 0, CMD_WRITE, end - 4095, 4096, &big).await, (28, vec![]));
        assert_eq!(call(&mut c, 0, CMD_WRITE_ZEROES, end, 1, &[]).await, (28, vec![]));
        assert_eq!(call(&mut c, 0, CMD_TRIM, end - 1, 2, &[]).await, (22, vec![]));
        assert_eq!(call(&mut c, 0, CMD_READ, 0, MAX_PAYLOAD + 1, &[]).await, (22, vec![]));
        assert_eq!(call(&mut c, 0, 99, 0, 0, &[]).await, (22, vec![]));
        assert_eq!(call(&mut c, 1 << 4, CMD_WRITE, 0, 4096, &big).await, (22, vec![]));
        assert_eq!(call(&mut c, CMD_FLAG_NO_HOLE, CMD_TRIM, 0, 1, &[]).await, (22, vec![]));
        // An oversized write's payload is skipped, not held, and the next request is read right.
        let junk = vec![0xaa; MAX_PAYLOAD as usize + 1];
        assert_eq!(call(&mut c, 0, CMD_WRITE, 0, junk.len() as u32, &junk).await, (22, vec![]));
        assert_eq!(call(&mut c, 0, CMD_READ, 0, 4, &[]).await, (0, vec![0; 4]));
        assert!(mem.contents().iter().all(|b| *b == 0));
        send_req(&mut c, 0, CMD_DISC, 0, 0, 0, &[]).await;
        assert_closed(&mut c).await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bad_request_magic_closes() {
        let (_, export) = mem_export(false);
        let (mut c, server) = go_client(export).await;
        c.write_all(&[0x55; 28]).await.unwrap();
        assert_closed(&mut c).await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn read_only_export_refuses_writes() {
        let (mem, export) = mem_export(true);
        mem.with_range(0, 2, |r| r.copy_from_slice(b"ro")).unwrap();
        let (mut c, server) = start(export);
        hello(&mut c, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        let (_, flags) = info(&mut c, OPT_GO, "vol").await.unwrap();
        assert_eq!(flags & (FLAG_READ_ONLY | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), FLAG_READ_ONLY);
        assert_eq!(call(&mut c, 0, CMD_WRITE, 0, 2, b"rw").await, (1, vec![]));
        assert_eq!(call(&mut c, 0, CMD_TRIM, 0, 2, &[]).await, (1, vec![]));
        assert_eq!(call(&mut c, 0, CMD_WRITE_ZEROES, 0, 2, &[]).await, (1, vec![]));
        assert_eq!(call(&mut c, 0, CMD_READ, 0, 2, &[]).await, (0, b"ro".to_vec()));
        assert_eq!(call(&mut c, 0, CMD_FLUSH, 0, 0, &[]).await, (0, vec![]));
        assert_eq!(&mem.contents()[..2], b"ro");
        drop(c);
        server.await.unwrap().unwrap();
    }

    /// Reads wait until the gate opens; a write opens it.
    struct Gate {
        mem: MemBackend,
        open: Semaphore,
    }

    impl Gate {
        fn new() -> Arc<Self> {
            Arc::new(Self { mem: MemBackend::new(SIZE), open: Semaphore::new(0) })
        }
        fn open(&self) {
            self.open.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    impl BlockBackend for Gate {
        fn name(&self) -> String {
            "gate".into()
        }
        async fn size(&self) -> u64 {
            self.mem.size().await
        }
        async fn allocated(&self) -> u64 {
            self.mem.allocated().await
        }
        async fn grow(&self, size: u64) -> Result<(), BlockError> {
            self.mem.grow(size).await
        }
        async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, BlockError> {
            let _pass = self.open.acquire().await.map_err(|_| BlockError::Io)?;
            self.mem.read(offset, len).await
        }
        async fn write(&self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
            self.mem.write(offset, data).await?;
            self.open();
            Ok(())
        }
        async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.mem.write_zeroes(offset, len).await
        }
        async fn flush(&self) -> Result<(), BlockError> {
            self.mem.flush().await
        }
    }

    #[tokio::test]
    async fn pipelined_requests_run_concurrently_and_keep_their_cookies() {
        let gate = Gate::new();
        let (mut c, server) = go_client(Export::new("vol", gate.clone(), false)).await;
        // The read blocks until the write behind it runs: a server taking requests one at a time
        // never answers either.
        send_req(&mut c, 0, CMD_READ, 100, 0, 4, &[]).await;
        send_req(&mut c, 0, CMD_WRITE, 200, 0, 4, b"abcd").await;
        let first = tokio::time::timeout(Duration::from_secs(5), reply_of(&mut c)).await.expect("requests serialized");
        assert_eq!(first, (0, 200));
        assert_eq!(reply_of(&mut c).await, (0, 100));
        let mut data = [0; 4];
        c.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"abcd");

        // More requests than run at once, all sent before any reply is read.
        let n = MAX_IN_FLIGHT as u64 + 8;
        for i in 0..n {
            gate.mem.with_range(i * 512, 512, |r| r.fill(i as u8 + 1)).unwrap();
        }
        for i in 0..n {
            send_req(&mut c, 0, CMD_READ, 1000 + i, i * 512, 512, &[]).await;
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            let (error, cookie) = reply_of(&mut c).await;
            assert_eq!(error, 0);
            let mut data = vec![0; 512];
            c.read_exact(&mut data).await.unwrap();
            let i = cookie.checked_sub(1000).filter(|i| *i < n).expect("unknown cookie");
            assert!(data.iter().all(|b| *b == i as u8 + 1), "cookie {cookie} got another request's data");
            assert!(seen.insert(cookie), "cookie {cookie} answered twice");
        }
        drop(c);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn disconnect_answers_requests_in_flight_first() {
        let gate = Gate::new();
        gate.mem.with_range(0, 2, |r| r.copy_from_slice(b"hi")).unwrap();
        let (mut c, server) = go_client(Export::new("vol", gate.clone(), false)).await;
        send_req(&mut c, 0, CMD_READ, 5, 0, 2, &[]).await;
        send_req(&mut c, 0, CMD_DISC, 6, 0, 0, &[]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "closed with a request in flight");
        gate.open();
        assert_eq!(reply_of(&mut c).await, (0, 5));
        let mut data = [0; 2];
        c.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"hi");
        assert_closed(&mut c).await;
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn serve_tcp_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mem = Arc::new(MemBackend::new(SIZE));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Export::new("vol", mem.clone(), false), async {
            let _ = stopped.await;
        }));
        let mut c = TcpStream::connect(addr).await.unwrap();
        hello(&mut c, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        info(&mut c, OPT_GO, "vol").await.unwrap();
        assert_eq!(call(&mut c, 0, CMD_WRITE, 0, 3, b"tcp").await, (0, vec![]));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        hello(&mut idle, FLAG_C_FIXED_NEWSTYLE).await;

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("serve did not return").unwrap();
        assert_closed(&mut c).await;
        assert_closed(&mut idle).await;
        assert_eq!(&mem.contents()[..3], b"tcp");
    }
}
