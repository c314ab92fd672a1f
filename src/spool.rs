//! Request path, step 8 (see `ARCHITECTURE.md`).
//!
//! Spooling of chunked request bodies.
//!
//! Concur refuses chunked uploads, so a body sent without `Content-Length` is
//! collected first, through the same [`InspectBody`] checks (size limit,
//! inspection, digest), in memory up to `server.spool_memory_bytes` and then in
//! an unnamed temporary file (deleted by the OS when closed). Only an accepted
//! body is ever turned into an upstream body, now with a known length.
//!
//! Every spooled byte is reserved from one [`SpoolBudget`] shared by all
//! uploads (`server.spool_max_bytes`) until the upstream body that carries it
//! is dropped: many slow chunked uploads cannot fill the temp volume (or the
//! memory). Past the budget the upload is `503 overloaded`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use prometheus_client::metrics::gauge::Gauge;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::body::InspectBody;
use crate::error::{BoxError, GatewayError};
use crate::upstream::UpstreamBody;

const READ_CHUNK: usize = 64 * 1024;

/// How long a client refused for a full spool is asked to wait.
const FULL_RETRY_AFTER_S: u64 = 5;

/// The bytes all spooled uploads may hold at once.
#[derive(Debug)]
pub struct SpoolBudget {
    used: AtomicU64,
    max: u64,
    gauge: Gauge,
}

impl SpoolBudget {
    pub fn new(max: u64, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            max,
            gauge,
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Adds `n` bytes to `held`, or refuses when the budget would overflow.
    fn grow(&self, held: &mut Reservation, n: u64) -> bool {
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok();
        if reserved {
            held.bytes += n;
            self.gauge.inc_by(n as i64);
        }
        reserved
    }
}

/// Bytes of one upload's spool, given back when dropped.
#[derive(Debug)]
struct Reservation {
    budget: Arc<SpoolBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.gauge.dec_by(self.bytes as i64);
    }
}

#[derive(Debug)]
pub struct Spool {
    len: u64,
    memory: Vec<Bytes>,
    file: Option<tokio::fs::File>,
    reservation: Reservation,
}

impl Spool {
    /// Drives `body` to its end, keeping what it releases.
    pub async fn collect<B>(
        body: &mut InspectBody<B>,
        memory_limit: usize,
        budget: &Arc<SpoolBudget>,
    ) -> Result<Spool, GatewayError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut spool = Spool {
            len: 0,
            memory: Vec::new(),
            file: None,
            reservation: Reservation {
                budget: budget.clone(),
                bytes: 0,
            },
        };
        let mut in_memory = 0usize;
        let io = |e: std::io::Error| GatewayError::Internal(format!("spool: {e}"));
        while let Some(chunk) = body.next_cleared().await? {
            if !budget.grow(&mut spool.reservation, chunk.len() as u64) {
                tracing::warn!(
                    spooled = budget.used(),
                    limit = budget.max,
                    "spool budget exhausted (server.spool_max_bytes): upload refused"
                );
                return Err(GatewayError::Overloaded {
                    retry_after_s: FULL_RETRY_AFTER_S,
                });
            }
            spool.len += chunk.len() as u64;
            if spool.file.is_none() && in_memory + chunk.len() <= memory_limit {
                in_memory += chunk.len();
                spool.memory.push(chunk);
                continue;
            }
            if spool.file.is_none() {
                let mut file = tokio::fs::File::from_std(tempfile::tempfile().map_err(io)?);
                for piece in spool.memory.drain(..) {
                    file.write_all(&piece).await.map_err(io)?;
                }
                spool.file = Some(file);
            }
            let file = spool.file.as_mut().expect("just created");
            file.write_all(&chunk).await.map_err(io)?;
        }
        Ok(spool)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The spooled bytes as a body of exactly `len()` bytes.
    pub async fn into_body(self) -> Result<UpstreamBody, GatewayError> {
        match self.file {
            None => {
                let frames = self.memory;
                Ok(MemoryBody {
                    remaining: self.len,
                    chunks: frames.into_iter(),
                    _reservation: self.reservation,
                }
                .boxed_unsync())
            }
            Some(mut file) => {
                let io = |e: std::io::Error| GatewayError::Internal(format!("spool: {e}"));
                file.flush().await.map_err(io)?;
                file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
                Ok(FileBody {
                    file,
                    remaining: self.len,
                    buf: BytesMut::new(),
                    _reservation: self.reservation,
                }
                .boxed_unsync())
            }
        }
    }
}

struct MemoryBody {
    remaining: u64,
    chunks: std::vec::IntoIter<Bytes>,
    _reservation: Reservation,
}

impl Body for MemoryBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.chunks.next().map(|c| {
            self.remaining -= c.len() as u64;
            Ok(Frame::data(c))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: BytesMut,
    _reservation: Reservation,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        this.buf.reserve(READ_CHUNK);
        match tokio_util::io::poll_read_buf(Pin::new(&mut this.file), cx, &mut this.buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Ok(0)) => Poll::Ready(Some(Err("spool file ended early".into()))),
            Poll::Ready(Ok(_)) => {
                let take = (this.buf.len() as u64).min(this.remaining) as usize;
                let chunk = this.buf.split_to(take).freeze();
                this.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
