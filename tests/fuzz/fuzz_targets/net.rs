//! Shared by the `h1` and `h2` targets: a connection polled by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

/// Calls `step` (which polls the connection and whatever runs with it, and
/// says whether the connection ended) until it ends, or until a step wakes
/// nothing: the server waits for bytes the client has not sent. Returns
/// whether the connection ended.
pub fn until_quiet(mut step: impl FnMut(&mut Context<'_>) -> bool) -> bool {
    struct Woken(AtomicBool);
    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        woken.0.store(false, Ordering::Relaxed);
        if step(&mut cx) {
            return true;
        }
        if !woken.0.load(Ordering::Relaxed) {
            return false;
        }
    }
}

/// A client that takes whatever the server writes and drops it.
macro_rules! drop_writes {
    ($client:ty) => {
        impl tokio::io::AsyncWrite for $client {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::task::Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
    };
}
pub(crate) use drop_writes;
