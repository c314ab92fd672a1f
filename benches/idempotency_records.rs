#![allow(clippy::print_stdout)] // a bench reports on stdout
//! What one `Idempotency-Key` record costs the memory backend: a process's
//! resident memory before and after `idempotency.max_records` (default
//! 100,000) final records of the size Concur's `<Image>` answer gives
//! (keys of a UUID, the sandbox's XML body, a `Repr-Digest`), divided by
//! the records. Resident memory, not allocated bytes: what a pod's memory
//! limit sees, malloc's overhead and the map's spare capacity included.
//!
//! `cargo bench --bench idempotency_records` (Linux: reads `/proc/self/statm`;
//! `RECORDS` to change the count)

use std::time::{Duration, Instant};

use concur_gateway::idempotency::{Begun, MemoryRecords, Record};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm's resident field");
    pages * 4096
}

fn main() {
    let n: usize = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let records = MemoryRecords::new(n, Duration::from_secs(86_400));
    let lease = Duration::from_secs(30);
    let before = rss_bytes();
    let started = Instant::now();
    for i in 0..n {
        // As `Store::begin_key` builds it: company, user, the caller's key.
        let key = format!(
            "acme\0user-{:04}@example.com\0{:032x}",
            i % 1000,
            i as u128 * 0x9E37_79B9_7F4A_7C15
        );
        let owner = format!("inflight:{i:026}");
        assert_eq!(records.begin(&key, &owner, lease), Begun::Started);
        let id = format!("{:040X}", i as u128 * 0xD1B5_4A32_D192_ED03);
        records.finish(
            &key,
            &owner,
            Record {
                fingerprint: format!("{:064x}", i as u128 * 0x2545_F491_4F6C_DD1D),
                status: 201,
                content_type: Some("application/xml; charset=utf-8".into()),
                body: format!(
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?><Image xmlns=\"http://www.concursolutions.com/api/image/2011/02\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><Id>{id}</Id><Url i:nil=\"true\" /></Image>"
                ),
                repr_digest: Some(format!("sha-256=:{:043}=:", i)),
                location: None,
                retry_after: None,
                invalid: None,
            },
        );
    }
    let elapsed = started.elapsed();
    let after = rss_bytes();
    assert_eq!(records.len(), n);
    println!(
        "idempotency_records: {n} final records: resident {:.1} MiB -> {:.1} MiB, {:.0} bytes per record; {:.2} µs per begin + finish",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / n as f64,
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
}
