//! The admin API as the tests use it: a call with the admin token, a
//! service's view (`GET /v1/services/NAME`) and polling it until a
//! condition holds, the common writes (flip, weights, maintenance), and
//! the `duotone` CLI pointed at a proxy's admin API.

use crate::client::Resp;
use crate::proxy::Proxy;
use serde_json::Value;
use std::time::Duration;

/// `METHOD path` on `p`'s admin listener with `token`; panics if the call
/// cannot be made (the status is the caller's to check).
pub async fn call(p: &Proxy, token: &str, method: &str, path: &str, body: Option<&str>) -> Resp {
    crate::client::admin(method, &p.admin_url(path), Some(token), body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

/// The view of service `name`; panics unless it answers 200.
pub async fn service(p: &Proxy, token: &str, name: &str) -> Value {
    let r = call(p, token, "GET", &format!("/v1/services/{name}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Polls the view of service `name` until `f` holds (for up to `limit`)
/// and returns it; panics with `what` and the last view if it never does.
pub async fn wait_service(
    p: &Proxy,
    token: &str,
    name: &str,
    what: &str,
    limit: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let got = crate::eventually(limit, || async {
        let v = service(p, token, name).await;
        let ok = f(&v);
        *last.lock().unwrap_or_else(|e| e.into_inner()) = v.clone();
        ok.then_some(v)
    })
    .await;
    got.unwrap_or_else(|| {
        let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
        panic!("timed out waiting for {what}; last state: {last:#}")
    })
}

/// Runs `duotone ARGS…` against `p`'s admin API (`DUOTONE_ADMIN` and
/// `DUOTONE_ADMIN_TOKEN` set) off the async runtime, so that the proxy's
/// own tasks in this test keep running; returns (exit code, stdout, stderr).
pub async fn cli(p: &Proxy, token: &str, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = [
        ("DUOTONE_ADMIN", p.admin_url("")),
        ("DUOTONE_ADMIN_TOKEN", token.to_string()),
    ];
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::proxy::run_cli(&args, &env)
    })
    .await
    .expect("duotone CLI")
}

/// [`call`], asserting a 200 answer; returns its JSON body.
pub async fn call_ok(
    p: &Proxy,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Value {
    let r = call(p, token, method, path, body).await;
    assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    r.json()
}

/// Flips service `name` to `color` (no force, no drain); returns the
/// service's view after the flip.
pub async fn flip(p: &Proxy, token: &str, name: &str, color: &str) -> Value {
    let body = format!(r#"{{"to":"{color}"}}"#);
    call_ok(
        p,
        token,
        "POST",
        &format!("/v1/services/{name}/flip"),
        Some(&body),
    )
    .await
}

/// Sets the weights of service `name` to `weights` (a JSON object of
/// color → weight); returns the service's view.
pub async fn set_weights(p: &Proxy, token: &str, name: &str, weights: &str) -> Value {
    call_ok(
        p,
        token,
        "PUT",
        &format!("/v1/services/{name}/weights"),
        Some(weights),
    )
    .await
}

/// Turns maintenance mode of service `name` on or off; returns the
/// service's view.
pub async fn maintenance(p: &Proxy, token: &str, name: &str, on: bool) -> Value {
    let body = format!(r#"{{"on":{on}}}"#);
    call_ok(
        p,
        token,
        "POST",
        &format!("/v1/services/{name}/maintenance"),
        Some(&body),
    )
    .await
}
