#![no_main]
//! PNG: the shared chunking check. A mutated chunk almost never keeps a valid
//! CRC, so without help the fuzzer stops at "CRC mismatch" and never reaches
//! the IHDR, PLTE and ordering rules with new values. When bit 2 of control
//! byte 1 is set, the harness first rewrites every complete chunk's CRC (the
//! CRC check itself is still exercised by the inputs with the bit clear).
use concur_gateway::inspect::MediaType;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Recomputes the CRC of each chunk that fits in `png` (signature skipped).
fn fix_crcs(png: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= png.len() {
        let len = u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= png.len()) else {
            break;
        };
        let crc = crc32(&png[at + 4..end]);
        png[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// Plain CRC-32 (ISO 3309, as in PNG); the fuzz crate has no crc dependency.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 8 && data[1] & 4 == 4 {
        let mut fixed = data.to_vec();
        fix_crcs(&mut fixed[8..]);
        common::check(MediaType::Png, &fixed);
    } else {
        common::check(MediaType::Png, data);
    }
});
