//! Request path, step 3 (see `ARCHITECTURE.md`).
//!
//! Request framing: the checks of RFC 9112 that hyper leaves to the
//! application, run first on every request (before authentication: a message
//! whose framing cannot be trusted is not a request to authenticate).
//!
//! hyper already refuses malformed request lines and conflicting
//! `Content-Length` headers while parsing (a bare `400`). It would also
//! refuse, with a bare answer, a `Transfer-Encoding` whose last coding is not
//! `chunked` (400, RFC 9112 §6.3) and a head that fills its 64 KiB buffer
//! incomplete or has more than 100 fields (431). The head watch
//! (`head_watch.rs`) keeps those from hyper: it renames such a field for
//! hyper and puts it back in the parsed request, and it cuts such a head
//! short and marks the request [`crate::head_watch::HeadTooLarge`]; so they
//! are judged here. What is left, and checked here:
//!
//! - a head cut short by the head watch (`431 request_head_too_large`);
//! - more than [`MAX_HEADER_FIELDS`] fields (`431 request_head_too_large`);
//! - the head's size (`431 request_head_too_large`): over HTTP/1.1 the bytes
//!   as they came, measured by the head watch ([`crate::head_watch::HeadSize`]);
//!   over HTTP/2, which has no wire form of a head, the size of its HTTP/1.1
//!   form (`name: value` and CRLF per field);
//! - exactly one valid `Host` (RFC 9112 §3.2; `400 invalid_request`); for
//!   HTTP/2 the `:authority` pseudo-header may stand in for it, and when both
//!   are sent they must agree (RFC 9113 §8.3.1);
//! - a `Transfer-Encoding` must be exactly `chunked`: `gzip`, `gzip, chunked`
//!   or `identity, chunked` use codings the gateway does not implement
//!   (`501 not_implemented`, RFC 9112 §6.1), and an empty element (`,
//!   chunked`) is refused the same way;
//! - at most one `Authorization` header (`400 invalid_request`): with two,
//!   which one a component honours is a matter of implementation, the classic
//!   seed of a confused deputy; likewise at most one `Content-Type` (the
//!   type the bytes are checked against).
//!
//! On HTTP/2 (h2c, `server.rs`) the h2 crate under hyper resets the stream
//! (`PROTOCOL_ERROR`) before any of this runs for what RFC 9113 §8.2.2 and
//! §8.1.1 call malformed: connection-specific fields (`Transfer-Encoding`,
//! `Connection`, ...), an unparsable or conflicting `content-length`, and
//! DATA that ends short of or runs past the declared `content-length` (the
//! body then fails mid-stream, so the upload to Concur is aborted). The same
//! checks below then run on every stream.

use http::{HeaderMap, Method, Uri, Version, header};

use crate::error::GatewayError;

/// Largest request head accepted: request line plus header fields.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in one request.
pub const MAX_HEADER_FIELDS: usize = 64;

/// Checks a request head; see the module docs.
pub fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    measured: Option<usize>,
) -> Result<(), GatewayError> {
    check_size(method, uri, headers, measured)?;
    check_host(uri, version, headers)?;
    check_transfer_encoding(headers)?;
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(GatewayError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    // A singleton field (RFC 9110 §8.3): with two, which type the bytes are
    // checked against would depend on who reads the head.
    if headers.get_all(header::CONTENT_TYPE).iter().count() > 1 {
        return Err(GatewayError::InvalidRequest(
            "more than one Content-Type header",
        ));
    }
    Ok(())
}

/// `431 request_head_too_large`: also for a head the head watch cut short
/// (`head_watch.rs`), which hyper would have refused with a bare `431`.
pub fn head_too_large() -> GatewayError {
    GatewayError::HeadTooLarge {
        limit: MAX_HEAD_BYTES,
        max_fields: MAX_HEADER_FIELDS,
    }
}

/// The head's size as it was on the wire, give or take optional white space:
/// `METHOD SP target SP HTTP/1.1 CRLF`, then `name: value CRLF` per field, then
/// the final CRLF.
fn check_size(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    measured: Option<usize>,
) -> Result<(), GatewayError> {
    let too_large = head_too_large();
    if headers.len() > MAX_HEADER_FIELDS {
        return Err(too_large);
    }
    // Measured on the wire (HTTP/1.1): exact, whatever the line ends and
    // the white space around the colons.
    if let Some(size) = measured {
        return if size > MAX_HEAD_BYTES {
            Err(too_large)
        } else {
            Ok(())
        };
    }
    let target = uri
        .path_and_query()
        .map_or(uri.path().len(), |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    let mut size = method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len() + 2;
    for (name, value) in headers {
        size += name.as_str().len() + 2 + value.len() + 2;
        if size > MAX_HEAD_BYTES {
            return Err(too_large);
        }
    }
    if size > MAX_HEAD_BYTES {
        return Err(too_large);
    }
    Ok(())
}

fn check_host(uri: &Uri, version: Version, headers: &HeaderMap) -> Result<(), GatewayError> {
    // An absolute-form target (`POST http://gw/api/…`) names the target
    // too, and RFC 9112 §3.2.2 has it win over Host: the same rules for it
    // (RFC 9110 §4.2.4: user info in an http(s) URI is an error), and no
    // scheme but http and https.
    // (An authority-form target, `CONNECT gw:443`, has no scheme: the
    // method is refused on its own.)
    if version != Version::HTTP_2
        && let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority())
    {
        let scheme_ok = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
        if !scheme_ok || !valid_host(authority.as_str().as_bytes()) {
            return Err(GatewayError::InvalidRequest(
                "invalid absolute-form request target",
            ));
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::InvalidRequest("more than one Host header"));
    }
    let value = match host {
        Some(v) => v.as_bytes(),
        // HTTP/2 carries the authority in `:authority`, which hyper puts in
        // the URI: the same rules (RFC 9113 §8.3.1: no user info either).
        None if version == Version::HTTP_2 && uri.authority().is_some() => {
            let authority = uri.authority().map_or("", |a| a.as_str());
            return if valid_host(authority.as_bytes()) {
                Ok(())
            } else {
                Err(GatewayError::InvalidRequest("invalid :authority"))
            };
        }
        None => return Err(GatewayError::InvalidRequest("no Host header")),
    };
    if !valid_host(value) {
        return Err(GatewayError::InvalidRequest("invalid Host header"));
    }
    // RFC 9113 §8.3.1: two names for the target must agree.
    if version == Version::HTTP_2
        && let Some(authority) = uri.authority()
        && !authority.as_str().as_bytes().eq_ignore_ascii_case(value)
    {
        return Err(GatewayError::InvalidRequest("Host differs from :authority"));
    }
    Ok(())
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2): a reg-name, IPv4 or bracketed IP
/// literal, no user info, no path; an empty port is allowed by the grammar.
fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() || value.contains(&b'@') {
        return false;
    }
    let Ok(authority) = http::uri::Authority::try_from(value) else {
        return false;
    };
    // `Authority` accepts a few forms a Host may not have.
    let host = authority.host();
    let port_ok = match authority.as_str()[host.len()..].strip_prefix(':') {
        None => authority.as_str().len() == host.len(),
        // An empty port is allowed by the grammar; a number is a TCP port.
        Some(port) => {
            port.bytes().all(|b| b.is_ascii_digit())
                && (port.is_empty() || port.parse::<u16>().is_ok())
        }
    };
    port_ok
        && !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)))
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    // An empty element counts as a coding too (`, chunked`, or an empty
    // `Transfer-Encoding` line before a `chunked` one): the head watch
    // refuses a line whose last coding is empty, as hyper would, so a
    // list with an empty element is refused however it is split into lines.
    let Some(first) = codings.next() else {
        return Ok(());
    };
    if first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none() {
        Ok(())
    } else {
        Err(GatewayError::NotImplemented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn run(fields: &[(&str, &str)]) -> Result<(), &'static str> {
        check(
            &Method::POST,
            &Uri::from_static("/api/image/v1.0/receipt"),
            Version::HTTP_11,
            &head(fields),
            None,
        )
        .map_err(|e| e.code())
    }

    #[test]
    fn host_must_be_one_and_valid() {
        assert_eq!(run(&[("host", "gw.local:8080")]), Ok(()));
        assert_eq!(run(&[("host", "[::1]:8080")]), Ok(()));
        assert_eq!(run(&[("host", "127.0.0.1")]), Ok(()));
        assert_eq!(run(&[]), Err("invalid_request"));
        assert_eq!(
            run(&[("host", "a.example"), ("host", "b.example")]),
            Err("invalid_request")
        );
        for bad in [
            "",
            "user@gw.local",
            "gw.local/x",
            "gw local",
            "gw.local:x",
            "gw.local:65536",
            "gw.local:99999",
            "a\"b",
        ] {
            assert_eq!(run(&[("host", bad)]), Err("invalid_request"), "{bad:?}");
        }
        // HTTP/2: `:authority` stands in for Host.
        assert!(
            check(
                &Method::POST,
                &Uri::from_static("http://gw.local/api/image/v1.0/receipt"),
                Version::HTTP_2,
                &HeaderMap::new(),
                None,
            )
            .is_ok()
        );
        let h2 = |host: &str| {
            check(
                &Method::POST,
                &Uri::from_static("http://gw.local/api/image/v1.0/receipt"),
                Version::HTTP_2,
                &head(&[("host", host)]),
                None,
            )
            .map_err(|e| e.code())
        };
        assert_eq!(h2("GW.local"), Ok(()));
        assert_eq!(h2("other.local"), Err("invalid_request"));
        assert_eq!(run(&[("host", "gw.local:65535")]), Ok(()));
        assert_eq!(run(&[("host", "gw.local:")]), Ok(()));
        // An `:authority` alone is held to the rules of a Host.
        for (authority, want) in [
            ("gw.local:8080", Ok(())),
            ("u@gw.local", Err("invalid_request")),
            ("u:p@127.0.0.1:80", Err("invalid_request")),
            ("gw.local:99999", Err("invalid_request")),
        ] {
            let uri = Uri::try_from(format!("http://{authority}/api/image/v1.0/receipt")).unwrap();
            let got = check(
                &Method::POST,
                &uri,
                Version::HTTP_2,
                &HeaderMap::new(),
                None,
            )
            .map_err(|e| e.code());
            assert_eq!(got, want, "{authority}");
        }
    }

    #[test]
    fn only_plain_chunked_is_a_transfer_encoding() {
        let h = ("host", "gw");
        assert_eq!(run(&[h, ("transfer-encoding", "chunked")]), Ok(()));
        assert_eq!(run(&[h, ("transfer-encoding", "Chunked")]), Ok(()));
        for te in [
            "gzip, chunked",
            "identity, chunked",
            "chunked, chunked",
            "gzip",
            ", chunked",
            "chunked,",
            "",
        ] {
            assert_eq!(
                run(&[h, ("transfer-encoding", te)]),
                Err("not_implemented"),
                "{te}"
            );
        }
        assert_eq!(
            run(&[
                h,
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]),
            Err("not_implemented")
        );
        assert_eq!(
            run(&[
                h,
                ("transfer-encoding", ""),
                ("transfer-encoding", "chunked")
            ]),
            Err("not_implemented")
        );
    }

    #[test]
    fn one_authorization_header_at_most() {
        let h = ("host", "gw");
        assert_eq!(run(&[h, ("authorization", "Bearer a")]), Ok(()));
        assert_eq!(
            run(&[
                h,
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ]),
            Err("invalid_request")
        );
    }

    #[test]
    fn one_content_type_header_at_most() {
        let h = ("host", "gw");
        assert_eq!(run(&[h, ("content-type", "image/jpeg")]), Ok(()));
        for second in ["image/png", "image/jpeg"] {
            assert_eq!(
                run(&[h, ("content-type", "image/jpeg"), ("content-type", second)]),
                Err("invalid_request")
            );
        }
    }

    #[test]
    fn the_head_limit_is_exact() {
        // Request line "POST /api/image/v1.0/receipt HTTP/1.1\r\n" is 39 bytes,
        // "host: gw\r\n" 10, the final CRLF 2; "x: " + value + CRLF is 5 + n.
        let fixed = 39 + 10 + 2 + 5;
        let fits = "a".repeat(MAX_HEAD_BYTES - fixed);
        assert_eq!(run(&[("host", "gw"), ("x", &fits)]), Ok(()));
        let over = "a".repeat(MAX_HEAD_BYTES - fixed + 1);
        assert_eq!(
            run(&[("host", "gw"), ("x", &over)]),
            Err("request_head_too_large")
        );
        let many: Vec<(String, String)> = (0..MAX_HEADER_FIELDS)
            .map(|i| (format!("x-{i}"), "v".into()))
            .collect();
        let mut fields: Vec<(&str, &str)> =
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        fields.push(("host", "gw"));
        assert_eq!(run(&fields), Err("request_head_too_large"));
        fields.pop();
        fields[0] = ("host", "gw");
        assert_eq!(run(&fields), Ok(()));
    }
}
