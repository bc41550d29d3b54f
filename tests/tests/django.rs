//! The README's Django example, run as written in front of a real Django app
//! (`DEBUG = False`, so `ALLOWED_HOSTS` is enforced) under gunicorn: blue on
//! a unix socket, green on TCP. The config is the TOML block between the
//! `django-example` markers of README.md with only listeners, paths, the
//! green member and the ACME directory replaced (each replacement must match
//! exactly once, so the README and this test cannot drift apart).
//!
//! Django and gunicorn come from a venv whose python `DUOTONE_TEST_PYTHON`
//! names (`./dev test` makes it). Without it the test prints a loud SKIPPED
//! notice, unless `DUOTONE_REQUIRE_DJANGO=1` makes that a failure.

use e2e::client::{admin, Http};
use e2e::proxy::{run_cli, Proxy};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "django-test-token-0123456789";
const HOST: &str = "app.example.com";
const CSS: &str = "body { color: #333; }\n";

/// The python of a venv with Django and gunicorn, or `None` (skip).
fn python_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DUOTONE_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let msg = format!(
        "SKIPPED {test}: DUOTONE_TEST_PYTHON is not set (the python of a venv with django and \
         gunicorn; `./dev test` makes one in target/py-venv)"
    );
    if std::env::var("DUOTONE_REQUIRE_DJANGO").as_deref() == Ok("1") {
        panic!("{msg}, and DUOTONE_REQUIRE_DJANGO=1");
    }
    // Written to the real stderr so libtest's output capture cannot hide it.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!!!! {msg} !!!!!\n");
    None
}

/// The README's Django example (the block between the markers).
fn readme_example() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("read README.md");
    let start = text
        .find("<!-- django-example:begin")
        .expect("django-example:begin marker in README.md");
    let rest = &text[start..];
    let end = rest
        .find("<!-- django-example:end -->")
        .expect("django-example:end marker in README.md");
    let block = &rest[..end];
    let open = block.find("```toml\n").expect("a ```toml block") + "```toml\n".len();
    let close = block.rfind("```").expect("the block's closing fence");
    block[open..close].to_string()
}

/// Replaces each `from` (which must occur exactly once) with `to`.
fn substitute(mut text: String, subs: &[(&str, String)]) -> String {
    for (from, to) in subs {
        assert_eq!(
            text.matches(from).count(),
            1,
            "README's Django example should contain {from:?} exactly once:\n{text}"
        );
        text = text.replace(from, to);
    }
    text
}

/// The tiny Django project: settings, urls with views, a static file.
fn write_project(dir: &Path) {
    let pkg = dir.join("djapp");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("assets/app.css"), CSS).unwrap();
    std::fs::write(pkg.join("__init__.py"), "").unwrap();
    std::fs::write(
        pkg.join("settings.py"),
        format!(
            r#"import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "duotone-test-only"
DEBUG = False
ALLOWED_HOSTS = ["{HOST}"]
ROOT_URLCONF = "djapp.urls"
INSTALLED_APPS = ["django.contrib.staticfiles"]
# As `startproject` makes it: CommonMiddleware checks Host against ALLOWED_HOSTS.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
DATABASES = {{}}
STATIC_URL = "/static/"
STATIC_ROOT = os.environ["STATIC_ROOT"]
STATICFILES_DIRS = [BASE_DIR / "assets"]
STORAGES = {{
    "staticfiles": {{
        "BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
    }}
}}
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
USE_X_FORWARDED_HOST = True
"#
        ),
    )
    .unwrap();
    std::fs::write(
        pkg.join("urls.py"),
        r#"import os
from django.http import HttpResponse
from django.templatetags.static import static
from django.urls import path


def index(request):
    return HttpResponse(
        f"color={os.environ['COLOR']} scheme={request.scheme} host={request.get_host()} "
        f"css={static('app.css')}\n"
    )


def healthz(request):
    return HttpResponse("ok")


urlpatterns = [path("", index), path("healthz/", healthz)]
"#,
    )
    .unwrap();
    std::fs::write(
        pkg.join("wsgi.py"),
        "from django.core.wsgi import get_wsgi_application\n\napplication = get_wsgi_application()\n",
    )
    .unwrap();
}

/// A gunicorn master in its own process group; the group is killed on drop.
struct Gunicorn(Child);

impl Gunicorn {
    fn start(python: &Path, project: &Path, static_root: &Path, color: &str, bind: &str) -> Self {
        let log = std::fs::File::create(project.join(format!("gunicorn-{color}.log"))).unwrap();
        let child = Command::new(python)
            .args(["-m", "gunicorn", "--workers", "1", "--bind", bind])
            .args(["--chdir", &project.display().to_string(), "djapp.wsgi"])
            .env("DJANGO_SETTINGS_MODULE", "djapp.settings")
            .env("STATIC_ROOT", static_root)
            .env("COLOR", color)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .expect("start gunicorn");
        Gunicorn(child)
    }
}

impl Drop for Gunicorn {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

use std::os::unix::process::CommandExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_django_example_serves_a_real_django_app() {
    let Some(python) = python_or_skip("readme_django_example_serves_a_real_django_app") else {
        return;
    };
    let app = tempfile::tempdir().unwrap();
    let project = app.path();
    let static_root = project.join("static");
    let media_root = project.join("media");
    std::fs::create_dir_all(&media_root).unwrap();
    write_project(project);
    let collect = Command::new(&python)
        .args(["-m", "django", "collectstatic", "--noinput"])
        .current_dir(project)
        .env("PYTHONPATH", project)
        .env("DJANGO_SETTINGS_MODULE", "djapp.settings")
        .env("STATIC_ROOT", &static_root)
        .output()
        .expect("run collectstatic");
    assert!(
        collect.status.success(),
        "collectstatic failed (is Django installed in {}?): {}",
        python.display(),
        String::from_utf8_lossy(&collect.stderr)
    );

    let blue_sock = project.join("blue.sock");
    let green_port = e2e::free_port();
    let _blue = Gunicorn::start(
        &python,
        project,
        &static_root,
        "blue",
        &format!("unix:{}", blue_sock.display()),
    );
    let _green = Gunicorn::start(
        &python,
        project,
        &static_root,
        "green",
        &format!("127.0.0.1:{green_port}"),
    );

    // Nothing listens there: ACME fails in the background and the site is
    // served with the self-signed fallback, as before a first certificate.
    let no_ca = format!("https://127.0.0.1:{}/dir", e2e::free_port());
    let config = substitute(
        readme_example(),
        &[
            ("\"0.0.0.0:80\"", "\"{http}\"".into()),
            ("\"0.0.0.0:443\"", "\"{https}\"".into()),
            ("\"127.0.0.1:9090\"", "\"{admin}\"".into()),
            ("\"/var/lib/duotone\"", "\"{state}\"".into()),
            (
                "email = \"ops@example.com\"",
                format!("email = \"ops@example.com\"\ndirectory = \"{no_ca}\""),
            ),
            ("\"/srv/app/static\"", format!("{:?}", static_root)),
            ("\"/srv/app/media\"", format!("{:?}", media_root)),
            (
                "\"unix:/run/app/blue.sock\"",
                format!("\"unix:{}\"", blue_sock.display()),
            ),
            (
                "\"unix:/run/app/green.sock\"",
                format!("\"127.0.0.1:{green_port}\""),
            ),
        ],
    );
    let p = Proxy::start_with_env(&config, &[("DUOTONE_ADMIN_TOKEN", TOKEN)]).await;

    // Both colors pass their checks (sent with Host: app.example.com).
    let service = || async {
        admin(
            "GET",
            &p.admin_url("/v1/services/django"),
            Some(TOKEN),
            None,
        )
        .await
        .ok()
        .map(|r| r.json())
    };
    let healthy = e2e::eventually(Duration::from_secs(60), || async {
        let v = service().await?;
        (v["colors"]["blue"]["healthy"] == true && v["colors"]["green"]["healthy"] == true)
            .then_some(v)
    })
    .await;
    let gunicorn_logs = || {
        ["blue", "green"]
            .iter()
            .map(|c| std::fs::read_to_string(project.join(format!("gunicorn-{c}.log"))))
            .map(Result::unwrap_or_default)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        healthy.is_some(),
        "django never became healthy: {:#}\nduotone log:\n{}\ngunicorn logs:\n{}",
        service().await.unwrap_or_default(),
        p.log(),
        gunicorn_logs()
    );

    // A page from blue, over https, with the scheme and host Django sees.
    let https = p.ports.https;
    let (_, page) = e2e::tls::get_any_cert(https, HOST, "/").await.unwrap();
    assert_eq!(page.status, 200, "{}", page.text());
    let body = page.text();
    assert!(
        body.starts_with(&format!("color=blue scheme=https host={HOST} ")),
        "{body}"
    );

    // The hashed stylesheet the page links is served by the edge (Django
    // with DEBUG = False serves no static files).
    let css = body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("css="))
        .expect("css= in the page")
        .to_string();
    assert!(
        css.starts_with("/static/app.") && css.ends_with(".css") && css.len() > 20,
        "{css}"
    );
    let (_, r) = e2e::tls::get_any_cert(https, HOST, &css).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, CSS));
    assert!(
        r.header("cache-control").contains("immutable"),
        "{:?}",
        r.headers
    );

    // Plain http redirects to https.
    let r = Http::new()
        .get_with(&p.url("/"), &[("host", HOST)])
        .await
        .unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        format!("https://{HOST}:{}/", https.port())
    );

    // Flip to green with the CLI; the next page comes from green (on TCP).
    let admin_url = p.admin_url("");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &["flip", "django", "green"],
            &[
                ("DUOTONE_ADMIN", admin_url.as_str()),
                ("DUOTONE_ADMIN_TOKEN", TOKEN),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (_, page) = e2e::tls::get_any_cert(https, HOST, "/").await.unwrap();
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().starts_with("color=green scheme=https "),
        "{}",
        page.text()
    );
}
