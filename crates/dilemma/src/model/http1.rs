//! A lean HTTP/1.1 client for plain-HTTP endpoints: local inference servers (vLLM, SGLang,
//! llama.cpp, Ollama, LM Studio) and the mock. HTTPS endpoints, and plain-HTTP ones that a
//! proxy set in the environment would apply to, go through reqwest (see `model::http`).
//!
//! Why by hand, next to reqwest: hyper (under reqwest) gives every open connection its own
//! task, a dispatch channel and two 8 KB buffers, about 30 KB per connection, and hands each
//! request to that task and the reply back (two task wake-ups per call). A run with 1,000
//! trials in flight holds 1,000 connections: that was 30 MB of its 105 MB peak and a quarter
//! of its CPU (W1 in BENCHMARKS.md). Here an idle connection is only its socket; the calling
//! task writes the request and reads the reply itself, and the reply's buffer lives only
//! while the reply is read. `httparse` (hyper's own parser) reads the status line, the
//! headers and chunk sizes; this module frames bodies (`Content-Length`, chunked, or until
//! the server closes) and keeps connections alive.
//!
//! What it does not do, because API calls to an inference server never need it: redirects,
//! compression, `Expect: 100-continue`, proxies, HTTP/2, streaming bodies.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Buf;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long an unused connection is kept. Servers close theirs sooner (uvicorn and llama.cpp
/// after 5 s); a connection the server has closed is noticed when it is taken from the pool.
const KEEP_IDLE: Duration = Duration::from_secs(60);

/// The longest status line plus headers accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The most header lines accepted in one reply.
const MAX_HEADERS: usize = 64;

/// How much room each read asks for.
const READ_CHUNK: usize = 8 * 1024;

/// A reply as it came: status, the `Retry-After` header, and the body with its framing removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// Why no complete reply came back.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("cannot connect: timed out after {} s", .0.as_secs())]
    ConnectTimeout(Duration),
    #[error("the connection failed while sending the request: {0}")]
    Send(#[source] io::Error),
    #[error("the connection failed while reading the reply: {0}")]
    Receive(#[source] io::Error),
    #[error("the reply was cut off: the server closed the connection before it was complete")]
    CutOff,
    #[error("the reply is not valid HTTP/1.1: {0}")]
    Malformed(String),
}

/// One server's connections: a pool of idle sockets, most recently used first.
#[derive(Debug)]
pub struct Http1Client {
    host: String,
    port: u16,
    /// The `Host` header: the host as the URL spells it, with the port when the URL has one.
    authority: String,
    user_agent: String,
    connect_timeout: Duration,
    idle: Mutex<VecDeque<(TcpStream, Instant)>>,
}

impl Http1Client {
    /// A client for the server of `url` (an `http://` URL); `None` for any other scheme.
    pub fn for_url(url: &url::Url, user_agent: &str, connect_timeout: Duration) -> Option<Http1Client> {
        if url.scheme() != "http" {
            return None;
        }
        let host = match url.host()? {
            url::Host::Domain(domain) => domain.to_owned(),
            url::Host::Ipv4(address) => address.to_string(),
            url::Host::Ipv6(address) => address.to_string(),
        };
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str()?),
            None => url.host_str()?.to_owned(),
        };
        Some(Http1Client {
            host,
            port: url.port_or_known_default()?,
            authority,
            user_agent: user_agent.to_owned(),
            connect_timeout,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// POSTs `body` to `target` (the path and query) with `headers` (names in lower case,
    /// values already checked by the caller) and reads the whole reply. The body is dropped
    /// once written: hundreds of calls wait for their replies at once, and only the wait
    /// itself should cost memory.
    pub async fn post(&self, target: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Reply, Http1Error> {
        let head = self.request_head(target, headers, body.len());
        let mut stream = loop {
            let (mut stream, reused) = match self.take_idle() {
                Some(stream) => (stream, true),
                None => (self.connect().await?, false),
            };
            match stream.write_all_buf(&mut Buf::chain(head.as_slice(), body.as_slice())).await {
                Ok(()) => break stream,
                // A kept connection that the server closed just as it was taken: the request
                // did not get through, so it goes again on a new connection instead of
                // failing a call that never reached the server. (Once a request is written
                // it is never sent again here: the server may be working on it.)
                Err(_) if reused => continue,
                Err(error) => return Err(Http1Error::Send(error)),
            }
        };
        drop((head, body));
        let (reply, reusable) = read_reply(&mut stream).await?;
        if reusable {
            self.put_idle(stream);
        }
        Ok(reply)
    }

    /// Connections open and idle, for tests.
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    fn request_head(&self, target: &str, headers: &[(&str, &str)], length: usize) -> Vec<u8> {
        let mut head = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "POST {target} HTTP/1.1\r\nhost: {}\r\nuser-agent: {}\r\naccept: */*\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n",
            self.authority, self.user_agent
        );
        for (name, value) in headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }

    async fn connect(&self) -> Result<TcpStream, Http1Error> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| Http1Error::ConnectTimeout(self.connect_timeout))?
            .map_err(Http1Error::Connect)?;
        // A request goes out in one write and a reply is awaited: Nagle's delay would only
        // hold back the tail of a request larger than a segment.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut closed = Vec::new();
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let found = loop {
            let Some((stream, since)) = idle.pop_back() else { break None };
            if since.elapsed() > KEEP_IDLE {
                // The newest is too old, so are all the others.
                closed.push(stream);
                closed.extend(idle.drain(..).map(|(stream, _)| stream));
                break None;
            }
            // An idle connection has nothing to read: end of stream means the server closed
            // it, and bytes nobody asked for mean it cannot be trusted.
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Some(stream),
                _ => closed.push(stream),
            }
        };
        drop(idle);
        drop(closed);
        found
    }

    fn put_idle(&self, stream: TcpStream) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while idle.front().is_some_and(|(_, since)| now.duration_since(*since) > KEEP_IDLE) {
            expired.extend(idle.pop_front().map(|(stream, _)| stream));
        }
        idle.push_back((stream, now));
        drop(idle);
        drop(expired);
    }
}

/// How the body of a reply is delimited.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// What the head of a reply says, copied out of the parse (which borrows the buffer).
struct Head {
    length: usize,
    status: u16,
    retry_after: Option<String>,
    framing: Framing,
    keep_alive: bool,
}

/// Reads one reply; says whether the connection may be used again.
async fn read_reply(stream: &mut TcpStream) -> Result<(Reply, bool), Http1Error> {
    let mut buffer: Vec<u8> = Vec::new();
    let reply_head = loop {
        match parse_head(&buffer)? {
            Some(parsed) if (100..200).contains(&parsed.status) => {
                // An interim reply (`100 Continue`, `103 Early Hints`): the real one follows.
                buffer.drain(..parsed.length);
            }
            Some(parsed) => break parsed,
            None if buffer.len() > MAX_HEAD_BYTES => {
                return Err(Http1Error::Malformed(format!("its head is longer than {MAX_HEAD_BYTES} bytes")));
            }
            None => fill(stream, &mut buffer).await?,
        }
    };
    let (body, reusable) = match reply_head.framing {
        Framing::Length(length) => {
            let end = reply_head.length + length;
            while buffer.len() < end {
                fill(stream, &mut buffer).await?;
            }
            // Bytes beyond the body were not asked for: do not reuse the connection.
            let reusable = reply_head.keep_alive && buffer.len() == end;
            buffer.truncate(end);
            buffer.drain(..reply_head.length);
            (buffer, reusable)
        }
        Framing::Chunked => {
            let (body, end) = read_chunked(stream, &mut buffer, reply_head.length).await?;
            (body, reply_head.keep_alive && buffer.len() == end)
        }
        Framing::UntilClose => {
            loop {
                match read_more(stream, &mut buffer).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) => return Err(Http1Error::Receive(error)),
                }
            }
            buffer.drain(..reply_head.length);
            (buffer, false)
        }
    };
    let mut body = body;
    body.shrink_to_fit();
    Ok((Reply { status: reply_head.status, retry_after: reply_head.retry_after, body }, reusable))
}

/// The reply's head once all of it is in `buffer`; `None` while it is incomplete.
fn parse_head(buffer: &[u8]) -> Result<Option<Head>, Http1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(Http1Error::Malformed(error.to_string())),
    };
    let status = response.code.unwrap_or_default();
    let mut retry_after = None;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = response.version != Some(1);
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value
                .parse::<usize>()
                .map_err(|_| Http1Error::Malformed(format!("its Content-Length is {value:?}")))?;
            if content_length.is_some_and(|earlier| earlier != parsed) {
                return Err(Http1Error::Malformed("it has two different Content-Length headers".to_owned()));
            }
            content_length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Chunked is the last coding when it is there at all.
            chunked = value.rsplit(',').next().is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && response.version == Some(0) {
                    close = false;
                }
            }
        } else if header.name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value.to_owned());
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if transfer_encoding {
        // Any other transfer coding runs until the server closes (RFC 9112, 6.3).
        Framing::UntilClose
    } else {
        content_length.map_or(Framing::UntilClose, Framing::Length)
    };
    Ok(Some(Head { length, status, retry_after, framing, keep_alive: !close }))
}

/// Decodes a chunked body that starts at `start` in `buffer`, reading as needed; returns the
/// body and where the reply ended in `buffer`.
async fn read_chunked(stream: &mut TcpStream, buffer: &mut Vec<u8>, start: usize) -> Result<(Vec<u8>, usize), Http1Error> {
    let mut body = Vec::new();
    let mut position = start;
    loop {
        let (size_line, size) = match httparse::parse_chunk_size(&buffer[position..]) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => {
                fill(stream, buffer).await?;
                continue;
            }
            Err(_) => return Err(Http1Error::Malformed("a chunk size is not hexadecimal".to_owned())),
        };
        if size == 0 {
            // The last chunk; trailer lines (ignored) end with an empty line.
            let trailers = position + size_line;
            loop {
                if buffer[trailers..].starts_with(b"\r\n") {
                    return Ok((body, trailers + 2));
                }
                if let Some(end) = buffer[trailers..].windows(4).position(|window| window == b"\r\n\r\n") {
                    return Ok((body, trailers + end + 4));
                }
                if buffer.len() - trailers > MAX_HEAD_BYTES {
                    return Err(Http1Error::Malformed("its trailers never end".to_owned()));
                }
                fill(stream, buffer).await?;
            }
        }
        let size = usize::try_from(size).map_err(|_| Http1Error::Malformed("a chunk is too large".to_owned()))?;
        let data = position + size_line;
        let end = data.checked_add(size).and_then(|end| end.checked_add(2));
        let end = end.ok_or_else(|| Http1Error::Malformed("a chunk is too large".to_owned()))?;
        while buffer.len() < end {
            fill(stream, buffer).await?;
        }
        if &buffer[end - 2..end] != b"\r\n" {
            return Err(Http1Error::Malformed("a chunk does not end where its size says".to_owned()));
        }
        body.extend_from_slice(&buffer[data..end - 2]);
        position = end;
    }
}

/// Reads more of a reply whose head has come; the end of the stream is a cut-off reply.
async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), Http1Error> {
    match read_more(stream, buffer).await {
        Ok(0) => Err(Http1Error::CutOff),
        Ok(_) => Ok(()),
        Err(error) => Err(Http1Error::Receive(error)),
    }
}

/// Waits until the socket has something, then reads it: the buffer grows only when there is
/// something to put in it, not while the server is still thinking.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        buffer.reserve(READ_CHUNK);
        match stream.try_read_buf(buffer) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            read => return read,
        }
    }
}
