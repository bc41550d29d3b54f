//! Pages for the edge's own answers: each site's `error_pages` (a status
//! the edge answers itself, or `maintenance`) and the maintenance page,
//! read from their files when the snapshot is built, so a request never
//! touches the disk for them. A page is only ever written instead of the
//! edge's own text: never for a status the app sent.

use crate::lane::client::{Failure, Page};
use routes::config::{Config, PageKey};
use routes::{Diagnostic, Diagnostics, KeyPath, Problem};
use std::path::Path;

/// Largest page file accepted (it is held in memory by every snapshot).
pub const MAX_PAGE: u64 = 1 << 20;

/// The built-in maintenance page, when neither the site nor
/// `[maintenance] page` names one.
pub const MAINTENANCE_HTML: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n\
<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>Down for maintenance</title>\n\
<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;\
color:#222;line-height:1.5}h1{font-size:1.6rem}</style>\n</head>\n<body>\n\
<h1>Down for maintenance</h1>\n\
<p>This site is being updated and will be back shortly. Please try again in a few minutes.</p>\n\
</body>\n</html>\n";

/// Every site's pages, by site index, and the maintenance answer's
/// `Retry-After`.
#[derive(Debug, Default)]
pub struct Pages {
    sites: Vec<SitePages>,
    retry_after: u64,
}

/// One site's pages.
#[derive(Debug)]
struct SitePages {
    /// By status.
    statuses: Vec<(u16, Page)>,
    /// The site's maintenance page, else the default or built-in one.
    maintenance: Page,
}

impl Pages {
    /// Reads every page `config` names. A file that cannot be read (or
    /// is over [`MAX_PAGE`]) is a diagnostic naming its key.
    pub fn build(config: &Config) -> Result<Pages, Diagnostics> {
        let mut errors = Vec::new();
        let mut read = |at: KeyPath, path: &Path| match read_page(path) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(Diagnostic {
                    file: String::new(),
                    line: 0,
                    key: at.to_string(),
                    message: e,
                });
                None
            }
        };
        let m = &config.maintenance;
        let default = match &m.page {
            Some(p) => read(KeyPath::root("maintenance").key("page"), p),
            None => None,
        }
        .unwrap_or_else(built_in_maintenance);
        let mut sites = Vec::new();
        for (i, site) in config.sites.iter().enumerate() {
            let mut pages = SitePages {
                statuses: Vec::new(),
                maintenance: default.clone(),
            };
            for (key, path) in &site.error_pages {
                let at = KeyPath::root("sites")
                    .index(i)
                    .key("error_pages")
                    .key(&key.to_string());
                let Some(page) = read(at, path) else {
                    continue;
                };
                match key {
                    PageKey::Status(s) => pages.statuses.push((*s, page)),
                    PageKey::Maintenance => pages.maintenance = page,
                }
            }
            sites.push(pages);
        }
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        Ok(Pages {
            sites,
            retry_after: m.retry_after.as_secs(),
        })
    }

    /// Site `site`'s page for `status`, if it has one.
    pub fn page(&self, site: Option<usize>, status: u16) -> Option<&Page> {
        let site = self.sites.get(site?)?;
        site.statuses
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, p)| p)
    }

    /// The edge's own `status` answer for a request of `site` (when
    /// known): the site's page for it, else the status's text.
    pub fn failure(&self, site: Option<usize>, status: u16) -> Failure<'_> {
        Failure {
            status,
            retry_after: None,
            page: self.page(site, status),
        }
    }

    /// The maintenance answer of `site`: 503, its maintenance page, and
    /// `Retry-After` (`[maintenance] retry_after`).
    pub fn maintenance(&self, site: usize) -> Failure<'_> {
        Failure {
            status: 503,
            retry_after: Some(self.retry_after),
            page: self.sites.get(site).map(|s| &s.maintenance),
        }
    }
}

/// Writes `page` over a static route's 404 `reply` (no body for HEAD);
/// any other reply is left as it is.
pub fn over_not_found(reply: &mut files::Reply, page: &Page, head_method: bool) {
    if reply.status != http::StatusCode::NOT_FOUND {
        return;
    }
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&page.content_type) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    headers.insert(http::header::CONTENT_LENGTH, page.body.len().into());
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    reply.headers = headers;
    reply.body = if head_method {
        files::Body::Empty
    } else {
        files::Body::Bytes(page.body.clone())
    };
}

fn built_in_maintenance() -> Page {
    Page {
        body: bytes::Bytes::from_static(MAINTENANCE_HTML.as_bytes()),
        content_type: "text/html; charset=utf-8".to_string(),
    }
}

/// The content type of a page file: by its extension, HTML when unknown
/// or absent, `charset=utf-8` for text.
pub fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path)
        .first()
        .unwrap_or(mime_guess::mime::TEXT_HTML);
    if mime.type_() == mime_guess::mime::TEXT && mime.get_param("charset").is_none() {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.to_string()
    }
}

fn read_page(path: &Path) -> Result<Page, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    if meta.len() > MAX_PAGE {
        return Err(format!(
            "{shown} is {} bytes; a page is at most {MAX_PAGE} bytes",
            meta.len()
        ));
    }
    let body = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    Ok(Page {
        body: body.into(),
        content_type: content_type(path),
    })
}

/// Config checks that need the file system: every page file can be read.
pub fn io_checks(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(p) = &config.maintenance.page {
        if let Err(e) = read_page(p) {
            out.push((KeyPath::root("maintenance").key("page"), e));
        }
    }
    for (i, site) in config.sites.iter().enumerate() {
        for (key, path) in &site.error_pages {
            if let Err(e) = read_page(path) {
                let at = KeyPath::root("sites")
                    .index(i)
                    .key("error_pages")
                    .key(&key.to_string());
                out.push((at, e));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_extension_with_html_by_default() {
        assert_eq!(
            content_type(Path::new("/e/404.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("/e/502.txt")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("/e/503.json")), "application/json");
        assert_eq!(
            content_type(Path::new("/e/maintenance")),
            "text/html; charset=utf-8"
        );
    }

    #[test]
    fn pages_are_read_per_site_and_unreadable_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("404.html");
        std::fs::write(&page, "<h1>gone</h1>").unwrap();
        let text = format!(
            "[server]\nhttp = \"127.0.0.1:8080\"\n[maintenance]\nretry_after = \"60s\"\n\
             [[sites]]\nhosts = [\"a.test\"]\nerror_pages = {{ 404 = \"{}\" }}\n\
             [[sites]]\nhosts = [\"b.test\"]\n",
            page.display()
        );
        let config = routes::load("t.toml", &text, |_| None).unwrap();
        assert!(io_checks(&config).is_empty());
        let pages = Pages::build(&config).unwrap();
        let p = pages.page(Some(0), 404).unwrap();
        assert_eq!(&p.body[..], b"<h1>gone</h1>");
        assert_eq!(p.content_type, "text/html; charset=utf-8");
        assert!(pages.page(Some(1), 404).is_none());
        assert!(pages.page(None, 404).is_none());
        assert!(pages.page(Some(0), 502).is_none());
        let m = pages.maintenance(1);
        assert_eq!((m.status, m.retry_after), (503, Some(60)));
        assert_eq!(m.body().0, MAINTENANCE_HTML.as_bytes());

        std::fs::remove_file(&page).unwrap();
        let problems = io_checks(&config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0.to_string(), "sites[0].error_pages.404");
        let Err(d) = Pages::build(&config) else {
            panic!("a missing page fails the build");
        };
        assert_eq!(d.0[0].key, "sites[0].error_pages.404");
    }
}
