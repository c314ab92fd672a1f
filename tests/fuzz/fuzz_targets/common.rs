//! Shared by the scanner fuzz targets: one body, two chunkings, one verdict.
//!
//! The first 8 input bytes seed the chunking; the rest is the body. Any
//! chunking must give the verdict of one-shot feeding (DESIGN.md principle 1),
//! and no input may panic.

use concur_gateway::inspect::{Inspector, Limits, MediaType, inspect_all};

pub fn check(media: MediaType, data: &[u8]) {
    let Some((seed, body)) = data.split_first_chunk::<8>() else {
        return;
    };
    let mut seed = u64::from_le_bytes(*seed) | 1;
    let limits = Limits {
        max_pixels: 1 << 24,
        max_inflate_bytes: 1 << 20,
        max_inflate_total: 4 << 20,
        ..Limits::default()
    };
    let expected = inspect_all(media, &limits, body, 0);
    let mut inspector = Inspector::new(media, &limits);
    let mut rest = body;
    let mut got = Ok(());
    while !rest.is_empty() && got.is_ok() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (head, tail) = rest.split_at(((seed % 64) as usize + 1).min(rest.len()));
        got = inspector.feed(head);
        rest = tail;
    }
    let got = got.and_then(|()| inspector.finish());
    assert_eq!(got, expected);
    let fixed = (seed % 4096) as usize + 1;
    assert_eq!(inspect_all(media, &limits, body, fixed), expected);
}
