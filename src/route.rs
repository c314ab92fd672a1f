//! Request path, step 6 (see `ARCHITECTURE.md`).
//!
//! `(method, path) -> Route`, a pure function.
//!
//! Only the four Image v1.0 routes exist; anything else is `404`, so the gateway
//! can never be used as an open proxy. The upstream path is rebuilt from the
//! parsed parts, never copied from the request, and the query string is dropped.

use http::Method;

use crate::error::GatewayError;

/// Longest accepted target ID.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Receipt,
    ExpenseEntry,
    Invoice,
    Report,
}

impl RouteKind {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Receipt => "receipt",
            RouteKind::ExpenseEntry => "expenseentry",
            RouteKind::Invoice => "invoice",
            RouteKind::Report => "report",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub kind: RouteKind,
    /// The target entry, invoice or report ID (`None` for receipts).
    pub id: Option<String>,
    /// The path to request from Concur.
    pub upstream_path: String,
}

/// Parses the request line. Order: an unknown path is `404` whatever the method;
/// a known path with another method is `405`; then the ID is checked (`400`).
pub fn parse(method: &Method, path: &str) -> Result<Route, GatewayError> {
    let (kind, version, id) = locate(path)?;
    if method != Method::POST {
        return Err(GatewayError::MethodNotAllowed);
    }
    if let Some(id) = id
        && !valid_id(id)
    {
        return Err(GatewayError::InvalidId);
    }
    let upstream_path = match id {
        None => format!("/api/image/{version}/{}", kind.as_str()),
        Some(id) => format!("/api/image/{version}/{}/{id}", kind.as_str()),
    };
    Ok(Route {
        kind,
        id: id.map(str::to_owned),
        upstream_path,
    })
}

/// The route a path names, whatever the method and the ID: for metrics and
/// spans of a request refused with `405` or `400 invalid_id`.
pub fn kind(path: &str) -> Option<RouteKind> {
    locate(path).ok().map(|(kind, _, _)| kind)
}

/// The route's kind, version and raw ID (`404` for any other path).
fn locate(path: &str) -> Result<(RouteKind, &str, Option<&str>), GatewayError> {
    let rest = path
        .strip_prefix("/api/image/")
        .ok_or(GatewayError::NotFound)?;
    let (version, rest) = rest.split_once('/').ok_or(GatewayError::NotFound)?;
    let (kind, id) = match rest.split_once('/') {
        None if rest == "receipt" => (RouteKind::Receipt, None),
        Some((resource, id)) => {
            let kind = match resource {
                "expenseentry" => RouteKind::ExpenseEntry,
                "invoice" => RouteKind::Invoice,
                "report" => RouteKind::Report,
                _ => return Err(GatewayError::NotFound),
            };
            // An extra segment is another path, not a strange ID.
            if id.contains('/') {
                return Err(GatewayError::NotFound);
            }
            (kind, Some(id))
        }
        None => return Err(GatewayError::NotFound),
    };
    let version_ok = match kind {
        RouteKind::Invoice => version == "v1.0" || version == "v1.1",
        _ => version == "v1.0",
    };
    if !version_ok {
        return Err(GatewayError::NotFound);
    }
    Ok((kind, version, id))
}

/// IDs: 1 to 128 characters of `A-Z a-z 0-9 $ _ -`. Checked on the raw path, so
/// percent-encoded input (`%2F`) is refused rather than decoded.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'$' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str) -> Result<Route, GatewayError> {
        parse(&Method::POST, path)
    }

    #[test]
    fn the_four_routes_parse() {
        let r = post("/api/image/v1.0/receipt").unwrap();
        assert_eq!((r.kind, r.id.as_deref()), (RouteKind::Receipt, None));
        assert_eq!(r.upstream_path, "/api/image/v1.0/receipt");
        let r = post("/api/image/v1.0/expenseentry/gWq$-_9").unwrap();
        assert_eq!(
            (r.kind, r.id.as_deref()),
            (RouteKind::ExpenseEntry, Some("gWq$-_9"))
        );
        let r = post("/api/image/v1.1/invoice/ABC").unwrap();
        assert_eq!(r.kind, RouteKind::Invoice);
        assert_eq!(r.upstream_path, "/api/image/v1.1/invoice/ABC");
        let r = post("/api/image/v1.0/report/R1").unwrap();
        assert_eq!(r.upstream_path, "/api/image/v1.0/report/R1");
    }

    #[test]
    fn bad_ids_are_invalid_id() {
        let long = "a".repeat(129);
        for id in [
            "",
            "..",
            ".",
            "a%2Fb",
            "%00",
            "a.b",
            "a b",
            "é",
            "a\tb",
            long.as_str(),
        ] {
            let e = post(&format!("/api/image/v1.0/expenseentry/{id}")).unwrap_err();
            assert!(matches!(e, GatewayError::InvalidId), "{id:?}: {e:?}");
        }
        assert!(post(&format!("/api/image/v1.0/report/{}", "Z".repeat(128))).is_ok());
    }

    #[test]
    fn other_paths_are_not_found() {
        for p in [
            "/",
            "/api/image/v1.0/receipt/",
            "/api/image/v1.0/receipt/x",
            "/api/image/v1.1/receipt",
            "/api/image/v1.1/report/A",
            "/api/image/v2.0/invoice/A",
            "/api/image/v1.0/expenseentry/a/b",
            "/api/image/v1.0/expenseentry/../receipt",
            "/api/image/v1.0/other/A",
            "/api/image/v1.0",
            "/API/image/v1.0/receipt",
            "/oauth2/v0/token",
        ] {
            assert!(matches!(post(p), Err(GatewayError::NotFound)), "{p}");
        }
    }

    #[test]
    fn other_methods_are_405_and_unknown_paths_stay_404() {
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            assert!(matches!(
                parse(&m, "/api/image/v1.0/receipt"),
                Err(GatewayError::MethodNotAllowed)
            ));
            assert!(matches!(parse(&m, "/nope"), Err(GatewayError::NotFound)));
        }
    }
}
