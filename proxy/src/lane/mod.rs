//! The lane: Duotone's own HTTP/1.1 loop for the common requests, one routed
//! to a service and proxied over a pooled upstream connection, with no task,
//! channel or header map per request: the head is parsed in place, the
//! upstream head written straight from it, and the response relayed.
//!
//! Static files are answered on the lane too. Everything else (redirects,
//! auth, compression, upgrades, chunked or large uploads,
//! HTTP/1.0, bad or oversized heads, ACME challenges) is handed to
//! Pingora's full path together with the bytes already read; Pingora then
//! serves the rest of the connection, exactly as without the lane. HTTP/2
//! streams are served per stream ([`h2`]).

pub(crate) mod client;
mod field;
mod h1;
pub mod h2;
mod local;
mod pump;
pub(crate) mod relay;
pub mod request;
pub mod response;
mod state;
pub(crate) mod timer;
mod upstream;

pub use state::{End, Lane, Outcome};
pub use upstream::{set_workers, sweep};

#[cfg(test)]
mod sizes {
    //! The sizes of the lane's futures. A connection's future is as large as
    //! the largest state it can be in, and an idle keep-alive connection
    //! holds all of it while it waits: these say where that memory goes
    //! (`cargo test -p duotone --lib lane::sizes -- --nocapture`; release
    //! figures with `--release`).
    #![allow(unreachable_code, clippy::diverging_sub_expression)]

    use super::client::H1;
    use super::upstream::Conn;

    /// The size of what `f` would return, without calling it (the closures
    /// measured here are never called: their `unreachable!()` arguments
    /// only give the future its type).
    pub(super) fn output<F: FnOnce() -> R, R>(_: &F) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn futures() {
        let exchange = || {
            super::relay::exchange::<H1<'_>>(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                0,
                unreachable!(),
                unreachable!(),
                false,
            )
        };
        let buffered = || {
            super::pump::buffered::<H1<'_>>(
                unreachable!(),
                |_: Conn, _: bool| {},
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        };
        let local = || {
            super::local::serve(
                unreachable!(),
                unreachable!(),
                unreachable!(),
                false,
                unreachable!(),
                unreachable!(),
                unreachable!(),
            )
        };
        let fail = || super::client::fail(unreachable!(), false, unreachable!(), unreachable!());
        let connect = || super::timer::within(unreachable!(), Conn::connect(unreachable!()));
        for (name, size) in [
            ("relay::exchange", output(&exchange)),
            ("pump::buffered", output(&buffered)),
            ("local::serve", output(&local)),
            ("client::fail", output(&fail)),
            ("upstream connect", output(&connect)),
        ] {
            println!("{name}: {size} bytes");
        }
    }
}
