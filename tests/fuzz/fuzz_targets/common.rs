//! Shared by the scanner fuzz targets: one body, several chunkings, one verdict.
//!
//! Input layout: the first 8 bytes are a control block, the rest is the body.
//!
//! * The 8 bytes (little-endian, low bit forced to 1) seed a xorshift PRNG that
//!   draws the random chunking (1–64 bytes per `feed`) and a fixed chunk size
//!   (1–4096).
//! * Bit 0 of byte 0 (free, since the seed forces it to 1) picks the PDF
//!   active-content policy: 0 = `Reject` (the default), 1 = `Allow`.
//! * Bit 1 of byte 1 picks tight limits (few pixels, shallow nesting, small
//!   inflate caps), so that the limit checks are reached with small inputs.
//! * Bit 2 of byte 1: the PNG target fixes every chunk CRC first (`png.rs`).
//!
//! Any chunking must give the verdict of one-shot feeding (ARCHITECTURE.md
//! principle 1), `finish` must be idempotent, and no input may panic.

use concur_gateway::inspect::{
    ActiveContentPolicy, Inspector, Limits, MediaType, Rejection, inspect_all,
};

/// Splits the input into control block and body, and derives the limits.
pub fn setup(data: &[u8]) -> Option<(u64, Limits, &[u8])> {
    let (ctl, body) = data.split_first_chunk::<8>()?;
    let seed = u64::from_le_bytes(*ctl) | 1;
    let policy = if ctl[0] & 1 == 1 {
        ActiveContentPolicy::Allow
    } else {
        ActiveContentPolicy::Reject
    };
    let limits = if ctl[1] & 2 == 2 {
        Limits {
            max_pixels: 4096,
            pdf_active_content: policy,
            max_inflate_bytes: 300,
            max_inflate_total: 1000,
            max_nesting: 4,
        }
    } else {
        Limits {
            max_pixels: 1 << 24,
            pdf_active_content: policy,
            max_inflate_bytes: 1 << 20,
            max_inflate_total: 4 << 20,
            ..Limits::default()
        }
    };
    Some((seed, limits, body))
}

#[path = "rng.rs"]
mod rng;
use rng::next;

/// Feeds `body` through an [`Inspector`] in random 1–64 byte chunks.
fn random_chunks(
    media: MediaType,
    limits: &Limits,
    body: &[u8],
    seed: &mut u64,
) -> Result<(), Rejection> {
    let mut inspector = Inspector::new(media, limits);
    let mut rest = body;
    let mut got = Ok(());
    while !rest.is_empty() && got.is_ok() {
        let (head, tail) = rest.split_at(((next(seed) % 64) as usize + 1).min(rest.len()));
        got = inspector.feed(head);
        rest = tail;
    }
    let got = got.and_then(|()| inspector.finish());
    // Verdicts are sticky and `finish` is idempotent.
    assert_eq!(inspector.finish(), got, "second finish differs");
    got
}

/// Byte-at-a-time feeding is the harshest chunking; keep it to small bodies
/// so that the executions per second stay high.
const BYTEWISE_MAX: usize = 2048;

pub fn check(media: MediaType, data: &[u8]) {
    let Some((mut seed, limits, body)) = setup(data) else {
        return;
    };
    let expected = inspect_all(media, &limits, body, 0);
    let got = random_chunks(media, &limits, body, &mut seed);
    assert_eq!(got, expected, "random chunking differs from one-shot");
    let fixed = (next(&mut seed) % 4096) as usize + 1;
    assert_eq!(
        inspect_all(media, &limits, body, fixed),
        expected,
        "{fixed}-byte chunks differ from one-shot"
    );
    if body.len() <= BYTEWISE_MAX {
        assert_eq!(
            inspect_all(media, &limits, body, 1),
            expected,
            "byte-at-a-time differs from one-shot"
        );
    }
}
