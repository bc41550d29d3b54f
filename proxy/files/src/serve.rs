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
use crate::memo::{self, Stamp};
use crate::open_files::Permit;
use crate::path::{self, Target};
use crate::range::{self, RangeDecision};
use crate::{cache, content_type, FileOptions, Inner, Reply};

/// What the blocking lookup found (one per request, moved once: its size
/// does not matter).
#[allow(clippy::large_enum_variant)]
enum Located {
    Redirect(String),
    File {
        /// Canonical path of the representation (the file or its sidecar).
        path: PathBuf,
        file: File,
        meta: Metadata,
        coding: Coding,
        name: String,
        /// The whole content, for small files read consistently.
        content: Option<Bytes>,
    },
}

/// One representation (a file or a sidecar), ready to answer from: its
/// validators, the headers every answer about it carries, and for small
/// files the content itself.
#[derive(Debug)]
pub(crate) struct Repr {
    len: u64,
    validators: Validators,
    /// ETag, Last-Modified, Cache-Control, Vary, Accept-Ranges, nosniff.
    base: HeaderMap,
    content_type: HeaderValue,
    coding: Coding,
    content: Option<Bytes>,
}

impl Repr {
    fn new(opts: &FileOptions, meta: &Metadata, coding: Coding, name: &str) -> Repr {
        let validators = Validators::new(meta, coding);
        let mut base = HeaderMap::with_capacity(8);
        set(&mut base, ETAG, &validators.etag);
        if let Some(lm) = validators.last_modified() {
            set(&mut base, LAST_MODIFIED, &lm);
        }
        let cc = cache::cache_control(
            name,
            opts.immutable_hashed,
            opts.immutable_pattern.as_ref(),
            opts.max_age,
            opts.immutable_max_age,
        );
        set(&mut base, CACHE_CONTROL, &cc);
        if opts.precompressed {
            base.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        base.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        base.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        let content_type = HeaderValue::from_str(&content_type::for_name(name))
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
        Repr {
            len: meta.len(),
            validators,
            base,
            content_type,
            coding,
            content: None,
        }
    }

    /// Approximate heap bytes held by a cached copy.
    pub fn cached_size(&self) -> usize {
        self.content.as_ref().map_or(0, Bytes::len) + 512
    }

    #[cfg(test)]
    pub fn for_test(content: Vec<u8>) -> Repr {
        Repr {
            len: content.len() as u64,
            validators: Validators {
                etag: "\"t\"".into(),
                modified: None,
            },
            base: HeaderMap::new(),
            content_type: HeaderValue::from_static("text/plain"),
            coding: Coding::Identity,
            content: Some(Bytes::from(content)),
        }
    }
}

pub(crate) async fn respond(
    inner: &std::sync::Arc<Inner>,
    method: &Method,
    rel: &str,
    headers: &HeaderMap,
) -> Reply {
    let opts = &inner.opts;
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        let mut reply = error(StatusCode::METHOD_NOT_ALLOWED, false);
        reply
            .headers
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return reply;
    }
    let codings = if opts.precompressed {
        encoding::candidates(headers)
    } else {
        vec![Coding::Identity]
    };
    let key = memo::codings_key(&codings);
    // Only successfully located files are cached, so a hit implies `rel`
    // decodes and resolves.
    if let Some(repr) = inner.memo.lookup(rel, key) {
        return file_reply(head, headers, &repr, None);
    }
    let Ok(decoded) = path::decode(rel) else {
        return error(StatusCode::BAD_REQUEST, head);
    };
    // A bounded server takes its permit before opening anything (a cache
    // hit above opens nothing). The permit travels with the lookup's result,
    // so it is released only once what was opened is closed, even if this
    // future is dropped meanwhile.
    let permit = match &opts.open_files {
        Some(open_files) => match open_files.acquire().await {
            Some(permit) => Some(permit),
            None => return error(StatusCode::SERVICE_UNAVAILABLE, head),
        },
        None => None,
    };
    let task = inner.clone();
    let located =
        tokio::task::spawn_blocking(move || (locate(&task.opts, &decoded, &codings), permit)).await;
    match located {
        Ok((Ok(Located::Redirect(location)), _permit)) => {
            let mut reply = error(StatusCode::MOVED_PERMANENTLY, head);
            match HeaderValue::from_str(&location) {
                Ok(v) => reply.headers.insert(LOCATION, v),
                Err(_) => return error(StatusCode::NOT_FOUND, head),
            };
            reply
        }
        Ok((
            Ok(Located::File {
                path,
                file,
                meta,
                coding,
                name,
                content,
            }),
            permit,
        )) => {
            let mut repr = Repr::new(opts, &meta, coding, &name);
            match content {
                Some(content) => {
                    drop(file);
                    drop(permit);
                    repr.content = Some(content);
                    let repr = std::sync::Arc::new(repr);
                    inner
                        .memo
                        .insert(rel, key, path, Stamp::of(&meta), repr.clone());
                    file_reply(head, headers, &repr, None)
                }
                None => file_reply(head, headers, &repr, Some((file, permit))),
            }
        }
        Ok((Err(status), _permit)) => error(status, head),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, head),
    }
}

/// Blocking part: resolve the path, then open the best acceptable sidecar or
/// the file itself; read it whole when small.
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
                let content = read_small(&file, &meta);
                return Ok(Located::File {
                    path: p,
                    file,
                    meta,
                    coding,
                    name,
                    content,
                });
            }
        }
    }
    let (file, meta) = path::open_regular(&canon)?;
    let content = read_small(&file, &meta);
    Ok(Located::File {
        path: canon,
        file,
        meta,
        coding: Coding::Identity,
        name,
        content,
    })
}

/// The whole content of a file of at most [`memo::SMALL_FILE`] bytes, if it
/// reads back exactly `meta.len()` bytes and did not change meanwhile.
fn read_small(file: &File, meta: &Metadata) -> Option<Bytes> {
    let len = usize::try_from(meta.len()).ok()?;
    if meta.len() > memo::SMALL_FILE {
        return None;
    }
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match crate::body::read_at(file, &mut buf[got..], got as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got += n,
        }
    }
    let after = file.metadata().ok()?;
    (Stamp::of(&after) == Stamp::of(meta)).then(|| Bytes::from(buf))
}

/// The answer about `repr`: 200/206/304/412/416. The body comes from the
/// cached content when there is one, else from `file`, which keeps its
/// permit; answers without a file body close both here.
fn file_reply(
    head: bool,
    req: &HeaderMap,
    repr: &Repr,
    file: Option<(File, Option<Permit>)>,
) -> Reply {
    let v = &repr.validators;
    let mut h = repr.base.clone();

    let method = if head { Method::HEAD } else { Method::GET };
    match conditional::evaluate(&method, req, v) {
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

    let len = repr.len;
    let decision = match req.get(RANGE).and_then(|r| r.to_str().ok()) {
        // Range is only defined for GET (RFC 9110 §14.2).
        Some(range) if !head => {
            let if_range = req
                .get(http::header::IF_RANGE)
                .map(|ir| ir.to_str().unwrap_or(""));
            if if_range.is_none_or(|ir| conditional::if_range_holds(ir, v)) {
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
    h.insert(CONTENT_TYPE, repr.content_type.clone());
    if let Some(token) = repr.coding.token() {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(token));
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(count));
    let body = if head {
        Body::Empty
    } else if let Some(content) = &repr.content {
        // `offset + count <= len == content.len()` (range::decide clamps).
        Body::Bytes(content.slice(offset as usize..(offset + count) as usize))
    } else if let Some((file, permit)) = file {
        Body::File(FileBody::new(file, permit, offset, count))
    } else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, head);
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
