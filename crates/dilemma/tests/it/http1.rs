//! The lean plain-HTTP client (`model::http1`) against a real server on loopback that plays
//! scripted raw replies: framing, keep-alive, servers that hang up, and broken replies.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dilemma::model::http1::{Http1Client, Http1Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does with one request.
struct Step {
    reply: &'static [u8],
    /// Hang up after the reply, whatever it says.
    hang_up: bool,
}

fn reply(reply: &'static [u8]) -> Step {
    Step { reply, hang_up: false }
}

fn reply_and_hang_up(reply: &'static [u8]) -> Step {
    Step { reply, hang_up: true }
}

/// Every request the server read, with the number of the connection it came on.
type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// A server on 127.0.0.1 that answers the n-th request with the n-th step, on any connection.
async fn server(steps: Vec<Step>) -> (url::Url, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let steps = Arc::new(Mutex::new(VecDeque::from(steps)));
    let seen: Seen = Arc::default();
    let seen_by_server = seen.clone();
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let (steps, seen) = (steps.clone(), seen_by_server.clone());
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let Some(request) = read_request(&mut stream, &mut buffer).await else { return };
                    seen.lock().unwrap().push((connection, request));
                    let Some(step) = steps.lock().unwrap().pop_front() else { return };
                    if stream.write_all(step.reply).await.is_err() || step.hang_up {
                        return;
                    }
                }
            });
        }
    });
    (url::Url::parse(&format!("http://127.0.0.1:{port}/v1")).unwrap(), seen)
}

/// One whole request (head and `Content-Length` body) from the stream, or `None` at its end.
async fn read_request(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map_or(0, |value| value.parse().unwrap());
            if buffer.len() >= end + 4 + length {
                let request = String::from_utf8_lossy(&buffer[..end + 4 + length]).to_string();
                buffer.drain(..end + 4 + length);
                return Some(request);
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

fn client(url: &url::Url) -> Http1Client {
    Http1Client::for_url(url, "dilemma/test", Duration::from_secs(5)).unwrap()
}

async fn post(client: &Http1Client, body: &str) -> Result<(u16, String), Http1Error> {
    let reply = client.post("/v1/chat/completions", &[], body.as_bytes().to_vec()).await?;
    Ok((reply.status, String::from_utf8(reply.body).unwrap()))
}

fn connections(seen: &Seen) -> Vec<usize> {
    seen.lock().unwrap().iter().map(|(connection, _)| *connection).collect()
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n\"hello\"";

#[tokio::test]
async fn the_request_is_written_as_a_server_expects_it() {
    let (url, seen) = server(vec![reply(OK_HELLO)]).await;
    let client = client(&url);
    let body = r#"{"model":"m"}"#;
    let reply = client.post("/v1/chat/completions?a=1", &[("authorization", "Bearer k-1")], body.as_bytes().to_vec()).await.unwrap();
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"\"hello\""[..]));
    let request = seen.lock().unwrap()[0].1.clone();
    let port = url.port().unwrap();
    assert_eq!(
        request,
        format!(
            "POST /v1/chat/completions?a=1 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: dilemma/test\r\naccept: */*\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nauthorization: Bearer k-1\r\n\r\n{body}",
            body.len()
        )
    );
}

#[tokio::test]
async fn a_connection_is_kept_for_the_next_request() {
    let (url, seen) = server(vec![reply(OK_HELLO), reply(OK_HELLO), reply(OK_HELLO)]).await;
    let client = client(&url);
    for _ in 0..3 {
        assert_eq!(post(&client, "{}").await.unwrap(), (200, "\"hello\"".to_owned()));
    }
    assert_eq!(connections(&seen), vec![0, 0, 0], "one connection served all three");
    assert_eq!(client.idle_connections(), 1);
}

#[tokio::test]
async fn chunked_replies_are_decoded_and_the_connection_kept() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;note=x\r\n{\"a\"\r\nb\r\n:\"chunked\"}\r\n0\r\nx-trailer: 1\r\n\r\n";
    let (url, seen) = server(vec![reply(chunked), reply(OK_HELLO)]).await;
    let client = client(&url);
    assert_eq!(post(&client, "{}").await.unwrap(), (200, r#"{"a":"chunked"}"#.to_owned()));
    assert_eq!(post(&client, "{}").await.unwrap().1, "\"hello\"");
    assert_eq!(connections(&seen), vec![0, 0]);
}

#[tokio::test]
async fn a_reply_without_a_length_runs_until_the_server_closes() {
    let (url, seen) = server(vec![reply_and_hang_up(b"HTTP/1.1 200 OK\r\n\r\n{\"until\":\"close\"}"), reply(OK_HELLO)]).await;
    let client = client(&url);
    assert_eq!(post(&client, "{}").await.unwrap().1, r#"{"until":"close"}"#);
    assert_eq!(client.idle_connections(), 0, "a connection whose end marked the reply's is not kept");
    assert_eq!(post(&client, "{}").await.unwrap().1, "\"hello\"");
    assert_eq!(connections(&seen), vec![0, 1]);
}

#[tokio::test]
async fn connection_close_and_http_1_0_are_not_reused() {
    let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}";
    let old = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}";
    let (url, seen) = server(vec![reply(close), reply(old), reply(OK_HELLO)]).await;
    let client = client(&url);
    for _ in 0..3 {
        assert_eq!(post(&client, "{}").await.unwrap().0, 200);
    }
    assert_eq!(connections(&seen), vec![0, 1, 2]);
}

#[tokio::test]
async fn a_kept_connection_the_server_closed_is_replaced_without_an_error() {
    // Like uvicorn or llama.cpp after their keep-alive timeout: the reply allows reuse, then
    // the server hangs up while the connection waits in the pool.
    let (url, seen) = server(vec![reply_and_hang_up(OK_HELLO), reply(OK_HELLO)]).await;
    let client = client(&url);
    assert_eq!(post(&client, "{}").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(post(&client, "{}").await.unwrap().0, 200);
    assert_eq!(connections(&seen), vec![0, 1]);
}

#[tokio::test]
async fn interim_replies_are_skipped_and_statuses_and_retry_after_come_through() {
    let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
    let limited = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After:  7 \r\ncontent-length: 9\r\n\r\n{\"e\":429}";
    let (url, _seen) = server(vec![reply(interim), reply(limited)]).await;
    let client = client(&url);
    assert_eq!(post(&client, "{}").await.unwrap(), (200, "{}".to_owned()));
    let reply = client.post("/v1/chat/completions", &[], b"{}".to_vec()).await.unwrap();
    assert_eq!((reply.status, reply.retry_after.as_deref(), reply.body.as_slice()), (429, Some("7"), &b"{\"e\":429}"[..]));
}

async fn error_for(step: Step) -> String {
    let (url, _seen) = server(vec![step]).await;
    post(&client(&url), "{}").await.unwrap_err().to_string()
}

#[tokio::test]
async fn a_reply_cut_short_is_an_error() {
    let message = error_for(reply_and_hang_up(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{\"partial\":")).await;
    assert_eq!(message, "the reply was cut off: the server closed the connection before it was complete");
    let message = error_for(reply_and_hang_up(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc")).await;
    assert_eq!(message, "the reply was cut off: the server closed the connection before it was complete");
    let message = error_for(reply_and_hang_up(b"HTTP/1.1 200 OK\r\ncontent-le")).await;
    assert_eq!(message, "the reply was cut off: the server closed the connection before it was complete");
    let message = error_for(reply_and_hang_up(b"")).await;
    assert_eq!(message, "the reply was cut off: the server closed the connection before it was complete");
}

#[tokio::test]
async fn a_reply_that_is_not_http_is_an_error_that_says_why() {
    let message = error_for(reply(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")).await;
    assert!(message.starts_with("the reply is not valid HTTP/1.1: "), "{message}");
    let message = error_for(reply(b"HTTP/1.1 200 OK\r\ncontent-length: many\r\n\r\n{}")).await;
    assert_eq!(message, "the reply is not valid HTTP/1.1: its Content-Length is \"many\"");
    let message = error_for(reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}")).await;
    assert_eq!(message, "the reply is not valid HTTP/1.1: it has two different Content-Length headers");
    let message = error_for(reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")).await;
    assert_eq!(message, "the reply is not valid HTTP/1.1: a chunk size is not hexadecimal");
    let message = error_for(reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n")).await;
    assert_eq!(message, "the reply is not valid HTTP/1.1: a chunk does not end where its size says");
}

#[tokio::test]
async fn a_server_that_is_not_there_cannot_be_connected_to() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = url::Url::parse(&format!("http://127.0.0.1:{port}/v1")).unwrap();
    let error = post(&client(&url), "{}").await.unwrap_err();
    assert!(matches!(error, Http1Error::Connect(_)), "{error:?}");
    assert!(error.to_string().starts_with("cannot connect: "), "{error}");
}

#[test]
fn only_plain_http_urls_get_a_client() {
    let timeout = Duration::from_secs(1);
    assert!(Http1Client::for_url(&url::Url::parse("https://api.openai.com/v1").unwrap(), "t", timeout).is_none());
    assert!(Http1Client::for_url(&url::Url::parse("http://[::1]:8000/v1").unwrap(), "t", timeout).is_some());
    assert!(Http1Client::for_url(&url::Url::parse("http://gpu-box/v1").unwrap(), "t", timeout).is_some());
}
