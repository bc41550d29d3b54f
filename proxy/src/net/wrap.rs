//! The trait plumbing of a client stream wrapper that holds a connection
//! count: a struct with an `inner` stream and a `counted` token, released
//! as the close begins (a shutdown starts), before the socket closes, so a
//! client that has seen its connection close is never counted against it.
//! Both wrappers of the accepted stream use it: the accept loop's
//! ([`crate::accept`], spreading over workers) and the head deadline's
//! ([`super::stream::HeadDeadline`], `max_connections` and the gauges).

/// Implements `AsyncWrite` (releasing `counted` in `poll_shutdown`),
/// Pingora's `Shutdown` (the same), and `UniqueID` and the timing, proxy
/// and socket digests by delegating to `inner`. Reading, `Ssl` and `Peek`
/// stay the wrapper's own.
/// With `wrote: FIELD`, each write that sends something also sets the
/// wrapper's `bool` FIELD.
macro_rules! counted_stream {
    ($wrapper:ty) => {
        $crate::net::wrap::counted_stream!($wrapper, |_this, _n| {});
    };
    ($wrapper:ty, wrote: $field:ident) => {
        $crate::net::wrap::counted_stream!($wrapper, |this, n| {
            if n > 0 {
                this.$field = true;
            }
        });
    };
    ($wrapper:ty, |$this:ident, $n:ident| $on_write:block) => {
        impl ::tokio::io::AsyncWrite for $wrapper {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                #[allow(unused_imports)]
                use ::tokio::io::AsyncWrite as _;
                let res = ::std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
                if let ::std::task::Poll::Ready(Ok($n)) = &res {
                    let ($this, $n) = (&mut *self, *$n);
                    $on_write
                }
                res
            }
            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                #[allow(unused_imports)]
                use ::tokio::io::AsyncWrite as _;
                ::std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                // The close begins: the connection no longer counts.
                self.counted = None;
                #[allow(unused_imports)]
                use ::tokio::io::AsyncWrite as _;
                ::std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                #[allow(unused_imports)]
                use ::tokio::io::AsyncWrite as _;
                let res = ::std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
                if let ::std::task::Poll::Ready(Ok($n)) = &res {
                    let ($this, $n) = (&mut *self, *$n);
                    $on_write
                }
                res
            }
            fn is_write_vectored(&self) -> bool {
                #[allow(unused_imports)]
                use ::tokio::io::AsyncWrite as _;
                self.inner.is_write_vectored()
            }
        }

        #[::async_trait::async_trait]
        impl ::pingora::protocols::Shutdown for $wrapper {
            async fn shutdown(&mut self) {
                self.counted = None;
                #[allow(unused_imports)]
                use ::pingora::protocols::Shutdown as _;
                self.inner.shutdown().await
            }
        }

        impl ::pingora::protocols::UniqueID for $wrapper {
            fn id(&self) -> ::pingora::protocols::UniqueIDType {
                #[allow(unused_imports)]
                use ::pingora::protocols::UniqueID as _;
                self.inner.id()
            }
        }

        impl ::pingora::protocols::GetTimingDigest for $wrapper {
            fn get_timing_digest(&self) -> Vec<Option<::pingora::protocols::TimingDigest>> {
                #[allow(unused_imports)]
                use ::pingora::protocols::GetTimingDigest as _;
                self.inner.get_timing_digest()
            }
            fn get_read_pending_time(&self) -> ::std::time::Duration {
                #[allow(unused_imports)]
                use ::pingora::protocols::GetTimingDigest as _;
                self.inner.get_read_pending_time()
            }
            fn get_write_pending_time(&self) -> ::std::time::Duration {
                #[allow(unused_imports)]
                use ::pingora::protocols::GetTimingDigest as _;
                self.inner.get_write_pending_time()
            }
        }

        impl ::pingora::protocols::GetProxyDigest for $wrapper {
            fn get_proxy_digest(
                &self,
            ) -> Option<::std::sync::Arc<::pingora::protocols::raw_connect::ProxyDigest>> {
                #[allow(unused_imports)]
                use ::pingora::protocols::GetProxyDigest as _;
                self.inner.get_proxy_digest()
            }
            fn set_proxy_digest(&mut self, digest: ::pingora::protocols::raw_connect::ProxyDigest) {
                #[allow(unused_imports)]
                use ::pingora::protocols::GetProxyDigest as _;
                self.inner.set_proxy_digest(digest)
            }
        }

        impl ::pingora::protocols::GetSocketDigest for $wrapper {
            fn get_socket_digest(
                &self,
            ) -> Option<::std::sync::Arc<::pingora::protocols::SocketDigest>> {
                #[allow(unused_imports)]
                use ::pingora::protocols::GetSocketDigest as _;
                self.inner.get_socket_digest()
            }
            fn set_socket_digest(&mut self, digest: ::pingora::protocols::SocketDigest) {
                #[allow(unused_imports)]
                use ::pingora::protocols::GetSocketDigest as _;
                self.inner.set_socket_digest(digest)
            }
        }
    };
}

pub(crate) use counted_stream;
