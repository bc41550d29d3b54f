//! A raw HTTP/2 client with prior knowledge (h2c), for tests that need
//! exact control over `:path`, methods, headers and DATA frames.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

/// An h2c client connection to `addr`; the connection task runs in the
/// background until the returned handle and its clones are dropped.
pub async fn connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One request to `http://app.test{path}` (`body`: sent as DATA when not
/// empty); waits up to 20 s. Returns status, headers and the whole body.
pub async fn call(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let (status, headers, body) = call_cut(send, method, path, headers, body).await;
    (status, headers, body.expect("body"))
}

/// Like [`call`], but a stream the proxy resets after the response head
/// (a body cut short) returns that error instead of a body.
pub async fn call_cut(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Result<Vec<u8>, h2::Error>) {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://app.test{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(()).expect("request");
    let mut send = send.clone().ready().await.expect("stream slot");
    let (resp, mut stream) = send
        .send_request(req, body.is_empty())
        .expect("send request");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .expect("send body");
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("response in time")
        .expect("response");
    let (parts, mut recv) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return (parts.status.as_u16(), parts.headers, Err(e)),
        };
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (parts.status.as_u16(), parts.headers, Ok(out))
}
