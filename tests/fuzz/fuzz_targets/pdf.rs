#![no_main]
//! PDF: the shared chunking check through `Inspector` (policy and limits from the
//! control block), plus the bare scanner (`scan_pdf`, which has no sniffing
//! wrapper) across chunk sizes, under both active-content policies.
use concur_gateway::inspect::pdf::scan_pdf;
use concur_gateway::inspect::{
    ActiveContentPolicy, Limits, MediaType, RejectCode, inspect_all, sniff,
};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::check(MediaType::Pdf, data);
    let Some((seed, limits, body)) = common::setup(data) else {
        return;
    };
    let one = scan_pdf(&limits, body, body.len());
    // The Inspector adds only the sniff: unless the body starts like a JPEG or
    // a PNG (content_mismatch), it must agree with the bare scanner.
    if sniff(&body[..body.len().min(8)]).is_none_or(|t| t == MediaType::Pdf) {
        assert_eq!(
            inspect_all(MediaType::Pdf, &limits, body, 0),
            one,
            "Inspector and scan_pdf differ"
        );
    }
    for n in [1, 7, (seed >> 32) as usize % 512 + 1, 16 * 1024] {
        if n == 1 && body.len() > 2048 {
            continue;
        }
        assert_eq!(
            scan_pdf(&limits, body, n),
            one,
            "scan_pdf in {n}-byte chunks"
        );
    }
    // The other policy: `Allow` only drops the active-content verdict, so the
    // two policies agree unless `Reject` said `pdf_active_content`.
    let other = Limits {
        pdf_active_content: match limits.pdf_active_content {
            ActiveContentPolicy::Reject => ActiveContentPolicy::Allow,
            ActiveContentPolicy::Allow => ActiveContentPolicy::Reject,
        },
        ..limits.clone()
    };
    let two = scan_pdf(&other, body, body.len());
    let (reject, allow) = match limits.pdf_active_content {
        ActiveContentPolicy::Reject => (&one, &two),
        ActiveContentPolicy::Allow => (&two, &one),
    };
    if let Err(e) = allow {
        assert_ne!(
            e.code,
            RejectCode::PdfActiveContent,
            "Allow gave pdf_active_content"
        );
    }
    match reject {
        Err(e) if e.code == RejectCode::PdfActiveContent => {}
        _ => assert_eq!(
            reject, allow,
            "the policies disagree on a file without active content"
        ),
    }
});
