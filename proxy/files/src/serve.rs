//! Request handling: locate the representation, evaluate conditionals and
//! ranges, build the [`Reply`].

use std::fs::{File, Metadata};
use std::path::PathBuf;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, LOCATION, RANGE, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::body::{Body, FileBody};
use crate::conditional::{self, Outcome, Validators};
use crate::encoding::{self, Coding};
use crate::path::{self, Target};
use crate::range::{self, RangeDecision};
use crate::{cache, content_type, FileOptions, Reply};

/// What the blocking lookup found.
enum Located {
    Redirect(String),
    File {
        file: File,
        meta: Metadata,
        coding: Coding,
        name: String,
    },
}

pub(crate) async fn respond(
    opts: &std::sync::Arc<FileOptions>,
    method: &Method,
    rel: &str,
    headers: &HeaderMap,
) -> Reply {
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        let mut reply = error(StatusCode::METHOD_NOT_ALLOWED, false);
        reply
            .headers
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return reply;
    }
    let Ok(rel) = path::decode(rel) else {
        return error(StatusCode::BAD_REQUEST, head);
    };
    let codings = if opts.precompressed {
        encoding::candidates(headers)
    } else {
        vec![Coding::Identity]
    };
    let task_opts = opts.clone();
    let located = tokio::task::spawn_blocking(move || locate(&task_opts, &rel, &codings)).await;
    match located {
        Ok(Ok(Located::Redirect(location))) => {
            let mut reply = error(StatusCode::MOVED_PERMANENTLY, head);
            match HeaderValue::from_str(&location) {
                Ok(v) => reply.headers.insert(LOCATION, v),
                Err(_) => return error(StatusCode::NOT_FOUND, head),
            };
            reply
        }
        Ok(Ok(Located::File {
            file,
            meta,
            coding,
            name,
        })) => file_reply(opts, head, headers, file, &meta, coding, &name),
        Ok(Err(status)) => error(status, head),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, head),
    }
}

/// Blocking part: resolve the path, then open the best acceptable sidecar or
/// the file itself.
fn locate(
    opts: &FileOptions,
    rel: &path::RelPath,
    codings: &[Coding],
) -> Result<Located, StatusCode> {
    let (canon, name) =
        match path::resolve(&opts.root, rel, opts.index.as_deref(), opts.follow_symlinks)? {
            Target::Redirect(location) => return Ok(Located::Redirect(location)),
            Target::File { path, name } => (path, name),
        };
    for &coding in codings {
        let Some(suffix) = coding.sidecar_suffix() else {
            break;
        };
        let mut sidecar = canon.clone().into_os_string();
        sidecar.push(suffix);
        let sidecar = PathBuf::from(sidecar);
        // Any problem with a sidecar just means "not available".
        if let Ok(p) = path::contained(&opts.root, &sidecar, opts.follow_symlinks) {
            if let Ok((file, meta)) = path::open_regular(&p) {
                return Ok(Located::File {
                    file,
                    meta,
                    coding,
                    name,
                });
            }
        }
    }
    let (file, meta) = path::open_regular(&canon)?;
    Ok(Located::File {
        file,
        meta,
        coding: Coding::Identity,
        name,
    })
}

fn file_reply(
    opts: &FileOptions,
    head: bool,
    req: &HeaderMap,
    file: File,
    meta: &Metadata,
    coding: Coding,
    name: &str,
) -> Reply {
    let v = Validators::new(meta, coding);
    let mut h = HeaderMap::new();
    set(&mut h, ETAG, &v.etag);
    if let Some(lm) = v.last_modified() {
        set(&mut h, LAST_MODIFIED, &lm);
    }
    let cc = cache::cache_control(
        name,
        opts.immutable_hashed,
        opts.max_age,
        opts.immutable_max_age,
    );
    set(&mut h, CACHE_CONTROL, &cc);
    if opts.precompressed {
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));

    let method = if head { Method::HEAD } else { Method::GET };
    match conditional::evaluate(&method, req, &v) {
        Outcome::Proceed => {}
        Outcome::NotModified => {
            return Reply {
                status: StatusCode::NOT_MODIFIED,
                headers: h,
                body: Body::Empty,
            }
        }
        Outcome::PreconditionFailed => {
            let mut reply = error(StatusCode::PRECONDITION_FAILED, head);
            for name in [ETAG, LAST_MODIFIED] {
                if let Some(value) = h.remove(&name) {
                    reply.headers.insert(name, value);
                }
            }
            return reply;
        }
    }

    let len = meta.len();
    let decision = match req.get(RANGE).and_then(|r| r.to_str().ok()) {
        // Range is only defined for GET (RFC 9110 §14.2).
        Some(range) if !head => {
            let if_range = req
                .get(http::header::IF_RANGE)
                .map(|ir| ir.to_str().unwrap_or(""));
            if if_range.is_none_or(|ir| conditional::if_range_holds(ir, &v)) {
                range::decide(range, len)
            } else {
                RangeDecision::Full
            }
        }
        _ => RangeDecision::Full,
    };
    let (status, offset, count) = match decision {
        RangeDecision::Full => (StatusCode::OK, 0, len),
        RangeDecision::Partial { start, end } => {
            set(&mut h, CONTENT_RANGE, &format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeDecision::Unsatisfiable => {
            set(&mut h, CONTENT_RANGE, &format!("bytes */{len}"));
            h.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
            return Reply {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers: h,
                body: Body::Empty,
            };
        }
    };
    set(&mut h, CONTENT_TYPE, &content_type::for_name(name));
    if let Some(token) = coding.token() {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(token));
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(count));
    let body = if head {
        Body::Empty
    } else {
        Body::File(FileBody::new(
            tokio::fs::File::from_std(file),
            offset,
            count,
        ))
    };
    Reply {
        status,
        headers: h,
        body,
    }
}

/// Inserts a header built from our own ASCII strings; invalid values are skipped.
fn set(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// A small plain-text error reply (headers only for HEAD).
pub(crate) fn error(status: StatusCode, head: bool) -> Reply {
    let text = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    let body = if head {
        Body::Empty
    } else {
        Body::Bytes(Bytes::from(text))
    };
    Reply {
        status,
        headers: h,
        body,
    }
}
