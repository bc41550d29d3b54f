//! JSON responses of the admin API.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

/// An admin API response.
pub type Resp = Response<Full<Bytes>>;

/// `body` as pretty-printed JSON with `status`.
pub fn json_resp(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
    bytes.push(b'\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// A JSON error `{"error": reason}`.
pub fn error(status: StatusCode, reason: impl std::fmt::Display) -> Resp {
    json_resp(status, json!({ "error": reason.to_string() }))
}
