//! Running one end-to-end test on both of Duotone's request paths: the lane
//! (its own HTTP/1.1 and HTTP/2 path, on by default, which hands what it
//! does not serve to Pingora's path) and Pingora's path alone
//! (`DUOTONE_LANE=off` in the proxy's environment).
//!
//! A test written as `async fn name(t: Transport)` that starts its proxy
//! with [`Proxy::start_on`](crate::proxy::Proxy::start_on) becomes two
//! tests, `name::lane` and `name::pingora`, with
//! [`on_both_transports!`](crate::on_both_transports):
//!
//! ```ignore
//! e2e::on_both_transports!(#[tokio::test] routes_by_host);
//! async fn routes_by_host(t: Transport) {
//!     let p = Proxy::start_on(t, &config).await;
//!     // …
//! }
//! ```
//!
//! The test's own name and the failing variant's name say which path
//! failed; the two run in parallel like any other tests.

/// Which request path the proxy under test serves requests with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The default: the lane for the requests it serves, Pingora's path for
    /// the rest.
    Lane,
    /// Pingora's path for every request (`DUOTONE_LANE=off`).
    Pingora,
}

impl Transport {
    /// The proxy's environment for this transport. `DUOTONE_LANE` is set
    /// either way, so a `DUOTONE_LANE` of the test run's own does not decide.
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Transport::Lane => &[("DUOTONE_LANE", "on")],
            Transport::Pingora => &[("DUOTONE_LANE", "off")],
        }
    }

    /// `lane` or `pingora`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Lane => "lane",
            Transport::Pingora => "pingora",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Makes each named `async fn NAME(t: Transport)` of the calling module two
/// tests, `NAME::lane` and `NAME::pingora`, each with the test attribute
/// written before the name (`#[tokio::test]`, or with a flavor).
#[macro_export]
macro_rules! on_both_transports {
    ($( #[$attr:meta] $name:ident ),+ $(,)?) => {
        $(
            mod $name {
                #[$attr]
                async fn lane() {
                    super::$name($crate::transport::Transport::Lane).await
                }
                #[$attr]
                async fn pingora() {
                    super::$name($crate::transport::Transport::Pingora).await
                }
            }
        )+
    };
}
