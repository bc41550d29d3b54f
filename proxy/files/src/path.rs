//! Request-path decoding and safe resolution under the root.
//!
//! Decoding is strict (percent-decode exactly once, reject anything that could
//! name a different file than it appears to); resolution canonicalizes and
//! requires the result to stay under the canonical root.

use std::fs::{File, Metadata};
use std::io;
use std::path::{Component, Path, PathBuf};

use http::StatusCode;

/// A request path split into decoded, validated segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelPath {
    /// Decoded segments; never empty strings, `.` or `..`.
    pub segments: Vec<String>,
    /// The raw (still encoded) last non-empty segment, for directory redirects.
    pub last_raw: Option<String>,
    /// Whether the request path ended with `/`.
    pub trailing_slash: bool,
}

/// Decodes `rel` (percent-encoded, without query). Any ambiguity is an error
/// (the caller answers 400): invalid percent sequences, invalid UTF-8, NUL,
/// backslashes (raw or encoded), decoded `/`, `..` segments, or a segment the
/// platform would not treat as one plain file name.
pub(crate) fn decode(rel: &str) -> Result<RelPath, ()> {
    let mut segments = Vec::new();
    let mut last_raw = None;
    let mut trailing_slash = rel.ends_with('/');
    for raw in rel.split('/') {
        if raw.is_empty() {
            continue; // `a//b` is `a/b` (nginx merge_slashes)
        }
        if raw.contains('\\') || !valid_percent(raw) {
            return Err(());
        }
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        let seg = String::from_utf8(bytes).map_err(|_| ())?;
        if seg.contains(['\0', '/', '\\']) || seg == ".." {
            return Err(());
        }
        if seg == "." {
            trailing_slash = true; // `dir/.` names the directory itself
            continue;
        }
        trailing_slash = rel.ends_with('/');
        last_raw = Some(raw.to_owned());
        let mut comps = Path::new(&seg).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(c)), None) if c == seg.as_str() => {}
            _ => return Err(()),
        }
        segments.push(seg);
    }
    Ok(RelPath {
        segments,
        last_raw,
        trailing_slash,
    })
}

/// Every `%` must start a two-hex-digit escape.
fn valid_percent(raw: &str) -> bool {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return false;
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// Why resolution failed, as the HTTP status to answer with.
pub(crate) type Refusal = StatusCode;

/// What a resolved request path names.
#[derive(Debug)]
pub(crate) enum Target {
    /// A regular file under the root: its canonical path and the name it was
    /// requested by (drives Content-Type and the immutable-hash check).
    File { path: PathBuf, name: String },
    /// A directory requested without trailing slash: redirect to `location`.
    Redirect(String),
}

/// Resolves `rel` under `root` (which must already be canonical).
///
/// With `follow_symlinks == false`, any symlink component is refused (404);
/// otherwise symlinks are followed but the target must stay under `root`.
/// Directories resolve to `index` when set, else 404.
pub(crate) fn resolve(
    root: &Path,
    rel: &RelPath,
    index: Option<&str>,
    follow_symlinks: bool,
) -> Result<Target, Refusal> {
    let mut joined = root.to_path_buf();
    joined.extend(&rel.segments);
    let canon = contained(root, &joined, follow_symlinks)?;
    let meta = std::fs::metadata(&canon).map_err(|e| io_status(&e))?;
    if meta.is_file() {
        return if rel.trailing_slash {
            Err(StatusCode::NOT_FOUND)
        } else {
            let name = rel.segments.last().cloned().unwrap_or_default();
            Ok(Target::File { path: canon, name })
        };
    }
    if !meta.is_dir() {
        return Err(StatusCode::NOT_FOUND);
    }
    let Some(index) = index else {
        return Err(StatusCode::NOT_FOUND);
    };
    if !rel.trailing_slash {
        if let Some(last) = &rel.last_raw {
            // `./` keeps a segment like `a:b` from reading as a URI scheme.
            return Ok(Target::Redirect(format!("./{last}/")));
        }
    }
    let canon = contained(root, &canon.join(index), follow_symlinks)?;
    let meta = std::fs::metadata(&canon).map_err(|e| io_status(&e))?;
    if meta.is_file() {
        Ok(Target::File {
            path: canon,
            name: index.to_owned(),
        })
    } else {
        Err(StatusCode::NOT_FOUND)
    }
}

/// Canonicalizes `path` and checks it stays under `root`; without
/// `follow_symlinks` the canonical form must equal `path` itself (the path has
/// no `.`/`..`/empty segments, so any difference means a symlink).
pub(crate) fn contained(
    root: &Path,
    path: &Path,
    follow_symlinks: bool,
) -> Result<PathBuf, Refusal> {
    let canon = std::fs::canonicalize(path).map_err(|e| io_status(&e))?;
    if !canon.starts_with(root) || (!follow_symlinks && canon != path) {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(canon)
}

/// Opens a canonical path for reading; only regular files are accepted.
///
/// On Unix the open uses `O_NOFOLLOW` (the last component was just
/// canonicalized, so a symlink there means it was swapped in meanwhile) and
/// `O_NONBLOCK` (so a FIFO swapped in cannot block the thread); the type is
/// then checked on the open handle.
pub(crate) fn open_regular(path: &Path) -> Result<(File, Metadata), Refusal> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(|e| io_status(&e))?;
    let meta = file.metadata().map_err(|e| io_status(&e))?;
    if !meta.is_file() {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok((file, meta))
}

/// Maps a filesystem error to a status: missing-ish → 404, permission → 403.
pub(crate) fn io_status(e: &io::Error) -> StatusCode {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => StatusCode::NOT_FOUND,
        io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        _ => {
            #[cfg(unix)]
            if matches!(
                e.raw_os_error(),
                Some(libc::ELOOP | libc::ENAMETOOLONG | libc::ENOTDIR | libc::ENOENT | libc::ENXIO)
            ) {
                return StatusCode::NOT_FOUND;
            }
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(rel: &str) -> Vec<String> {
        decode(rel).expect("valid").segments
    }

    #[test]
    fn decodes_plain_and_encoded() {
        assert_eq!(segs("a/b%20c.txt"), ["a", "b c.txt"]);
        assert_eq!(segs("/a//./b/"), ["a", "b"]);
        assert_eq!(segs("caf%C3%A9"), ["café"]);
        assert_eq!(segs(""), Vec::<String>::new());
        assert!(decode("a/").expect("valid").trailing_slash);
        assert!(decode("a/.").expect("valid").trailing_slash);
        assert!(!decode("a/./b").expect("valid").trailing_slash);
        assert_eq!(
            decode("a/b%20c").expect("valid").last_raw.as_deref(),
            Some("b%20c")
        );
        // decoded exactly once: %252e stays the literal "%2e"
        assert_eq!(segs("%252e%252e"), ["%2e%2e"]);
    }

    #[test]
    fn rejects_ambiguous() {
        for bad in [
            "..", "a/../b", "%2e%2e", "%2E%2E/x", "..%2f", "a%2fb", "%2F", "a\\b", "%5c", "%5C..",
            "a%00b", "%", "%4", "%zz", "%ff", "a/%c3", "..\\x",
        ] {
            assert!(decode(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn percent_validation() {
        assert!(valid_percent("abc"));
        assert!(valid_percent("%41%42"));
        assert!(!valid_percent("%4"));
        assert!(!valid_percent("a%"));
        assert!(!valid_percent("%g1"));
    }
}
