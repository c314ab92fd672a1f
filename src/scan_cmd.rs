//! Core of `concur-gateway scan [--json] [--content-type T] FILE…`: runs the
//! same [`Inspector`] as the server over files read in 16 KiB chunks and prints
//! one verdict line per file.
//!
//! Plain lines: `<file>: accept (<type>)` or
//! `<file>: reject <code> (<type or unknown>): <detail>`.
//! JSON lines (`--json`): `{"file":…,"verdict":"accept"|"reject","type":…|null,
//! "code":…|null,"detail":…|null}`.
//!
//! Exit status: 0 when every file was accepted, 1 when any was rejected, 2 on a
//! usage or I/O error (an unreadable file gets an error line on stderr, the other
//! files are still scanned, and the status is 2 at the end).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::inspect::{Inspector, Limits, MediaType, RejectCode, Rejection, sniff};

/// Size of the reads fed to the inspector, as the server's body frames would be.
pub const CHUNK_SIZE: usize = 16 * 1024;

/// The verdict for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVerdict {
    /// The type the file was inspected as (declared or sniffed), if any.
    pub media_type: Option<MediaType>,
    pub result: Result<(), Rejection>,
}

/// Inspects one file. `content_type`: the declared type; `None` sniffs it from the
/// first bytes. `Err` only for I/O errors.
pub fn scan_file(
    path: &Path,
    content_type: Option<&str>,
    limits: &Limits,
) -> io::Result<FileVerdict> {
    let mut file = File::open(path)?;
    let declared = match content_type {
        None => None,
        Some(ct) => match MediaType::from_content_type(ct) {
            Some(t) => Some(t),
            None => {
                return Ok(FileVerdict {
                    media_type: None,
                    result: Err(Rejection::new(
                        RejectCode::UnsupportedMediaType,
                        format!(
                            "content type {ct:?} is not one of image/jpeg, image/png, application/pdf"
                        ),
                    )),
                });
            }
        },
    };
    let mut buf = vec![0u8; CHUNK_SIZE];
    let n = read_full(&mut file, &mut buf)?;
    if n == 0 {
        // What an upload of it gets (`400 empty_body`), whatever its type
        // (`/dev/null` and an empty pipe included).
        return Ok(FileVerdict {
            media_type: declared,
            result: Err(Rejection::new(RejectCode::EmptyBody, "the file is empty")),
        });
    }
    let Some(t) = declared.or_else(|| sniff(&buf[..n])) else {
        return Ok(FileVerdict {
            media_type: None,
            result: Err(Rejection::new(
                RejectCode::UnsupportedMediaType,
                "the file does not start like a JPEG, PNG or PDF",
            )),
        });
    };
    let mut inspector = Inspector::new(t, limits);
    let result = feed_rest(&mut inspector, &mut file, &mut buf, n)?;
    Ok(FileVerdict {
        media_type: Some(t),
        result,
    })
}

/// Feeds `buf[..first]` (already read) and then the rest of `file`.
fn feed_rest(
    inspector: &mut Inspector,
    file: &mut File,
    buf: &mut [u8],
    first: usize,
) -> io::Result<Result<(), Rejection>> {
    if first > 0
        && let Err(e) = inspector.feed(&buf[..first])
    {
        return Ok(Err(e));
    }
    loop {
        let n = read_full(file, buf)?;
        if n == 0 {
            return Ok(inspector.finish());
        }
        if let Err(e) = inspector.feed(&buf[..n]) {
            return Ok(Err(e));
        }
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Formats one verdict line (without the newline).
pub fn format_line(file: &Path, verdict: &FileVerdict, json: bool) -> String {
    let name = file.display().to_string();
    let mime = verdict.media_type.map(MediaType::mime);
    if json {
        let (v, code, detail) = match &verdict.result {
            Ok(()) => ("accept", None, None),
            Err(r) => ("reject", Some(r.code.as_str()), Some(r.detail.as_str())),
        };
        serde_json::json!({
            "file": name,
            "verdict": v,
            "type": mime,
            "code": code,
            "detail": detail,
        })
        .to_string()
    } else {
        match &verdict.result {
            Ok(()) => format!("{name}: accept ({})", mime.unwrap_or("unknown")),
            Err(r) => format!(
                "{name}: reject {} ({}): {}",
                r.code.as_str(),
                mime.unwrap_or("unknown"),
                r.detail
            ),
        }
    }
}

/// Runs the `scan` command over `files`; returns the exit status (0, 1 or 2).
pub fn run_scan(
    files: &[PathBuf],
    content_type: Option<&str>,
    json: bool,
    limits: &Limits,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    if files.is_empty() {
        let _ = writeln!(
            err,
            "concur-gateway scan: no FILE given (usage: concur-gateway scan [--json] [--content-type T] FILE...)"
        );
        return 2;
    }
    let mut io_error = false;
    let mut rejected = false;
    for path in files {
        match scan_file(path, content_type, limits) {
            Ok(verdict) => {
                rejected |= verdict.result.is_err();
                if writeln!(out, "{}", format_line(path, &verdict, json)).is_err() {
                    let _ = writeln!(err, "concur-gateway scan: cannot write the output");
                    return 2;
                }
            }
            Err(e) => {
                io_error = true;
                let _ = writeln!(err, "concur-gateway scan: {}: {e}", path.display());
            }
        }
    }
    if io_error {
        2
    } else if rejected {
        1
    } else {
        0
    }
}
