//! HTTP clients for tests: a keep-alive client, admin calls and raw bytes.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response with its body read.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A keep-alive HTTP/1.1 client (or HTTP/2 prior knowledge with [`Http::h2`]).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    /// HTTP/1.1 with a keep-alive pool.
    pub fn new() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
        }
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends a request with headers and body; 10 s limit.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Resp> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into()))?;
        let resp =
            tokio::time::timeout(Duration::from_secs(10), self.client.request(req)).await??;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await??
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// GET.
    pub async fn get(&self, url: &str) -> anyhow::Result<Resp> {
        self.send("GET", url, &[], Bytes::new()).await
    }

    /// GET with headers.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Resp> {
        self.send("GET", url, headers, Bytes::new()).await
    }
}

/// Status of a GET on a fresh connection.
pub async fn get_status(url: &str) -> anyhow::Result<u16> {
    Ok(Http::new().get(url).await?.status)
}

/// Calls the admin API with an optional bearer token and JSON body.
pub async fn admin(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<Resp> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    Http::new()
        .send(
            method,
            url,
            &headers,
            Bytes::from(body.unwrap_or("").to_string()),
        )
        .await
}

/// Writes raw bytes to `addr` and reads until the peer closes or `limit`
/// passes; returns what was read.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
