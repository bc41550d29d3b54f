//! `Content-Type` from the file name, with `charset=utf-8` for textual types.

/// The `Content-Type` for `file_name` (the name of the plain file, not of a
/// sidecar): `mime_guess`'s first guess, `application/octet-stream` when unknown.
pub(crate) fn for_name(file_name: &str) -> String {
    let Some(mime) = mime_guess::from_path(file_name).first() else {
        return "application/octet-stream".to_owned();
    };
    if mime.get_param(mime_guess::mime::CHARSET).is_none() && is_textual(&mime) {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.to_string()
    }
}

fn is_textual(mime: &mime_guess::Mime) -> bool {
    let (ty, sub) = (mime.type_().as_str(), mime.subtype().as_str());
    let suffix = mime.suffix().map(|s| s.as_str());
    ty == "text"
        || matches!(suffix, Some("json" | "xml"))
        || (ty == "application" && matches!(sub, "javascript" | "ecmascript" | "json" | "xml"))
        || (ty == "image" && sub == "svg")
}

#[cfg(test)]
mod tests {
    use super::for_name;

    #[test]
    fn charsets() {
        assert_eq!(for_name("a.css"), "text/css; charset=utf-8");
        assert_eq!(for_name("a.html"), "text/html; charset=utf-8");
        assert!(for_name("a.js").ends_with("javascript; charset=utf-8"));
        assert_eq!(for_name("a.json"), "application/json; charset=utf-8");
        assert_eq!(for_name("a.svg"), "image/svg+xml; charset=utf-8");
        assert!(for_name("a.xml").ends_with("xml; charset=utf-8"));
        assert_eq!(for_name("a.png"), "image/png");
        assert_eq!(for_name("a.woff2"), "font/woff2");
        assert_eq!(for_name("noext"), "application/octet-stream");
        assert_eq!(for_name("a.unknownext"), "application/octet-stream");
    }
}
