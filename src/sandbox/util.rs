//! Small helpers: random ids, Concur-style timestamps, XML escaping and
//! `application/x-www-form-urlencoded` parsing.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// `n` random bytes from the system CSPRNG.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random number generator failed");
    buf
}

/// Uppercase hex of `bytes`.
pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Lowercase hex of `bytes` (used for SHA-256 digests).
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    hex_upper(bytes).to_ascii_lowercase()
}

/// A fresh 20-character uppercase hex id, the shape of Concur's image and error ids.
pub(crate) fn concur_id() -> String {
    hex_upper(&random_bytes(10))
}

/// A random UUID-v4-shaped string (Concur's refresh tokens look like this).
pub(crate) fn uuid_v4() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex_lower(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A random opaque bearer token (43 characters of base64url).
pub(crate) fn opaque_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32))
}

/// Seconds since the Unix epoch of `t` (0 before the epoch).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC, the shape of Concur's `Server-Time`.
pub(crate) fn server_time(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // Both are in small ranges by construction.
    (y, m as u32, d as u32)
}

/// Escapes the five XML special characters.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Parses an `application/x-www-form-urlencoded` body: `&`-separated `name=value`
/// pairs, `+` as space, `%XX` percent-decoding (invalid escapes are kept literally,
/// invalid UTF-8 is replaced).
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            (form_decode(name), form_decode(value))
        })
        .collect()
}

fn form_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < s.len() => match (hex_val(s[i + 1]), hex_val(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn server_time_formats_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_851_104); // 2026-11-28T07:31:44Z
        assert_eq!(server_time(t), "2026-11-28T07:31:44");
        assert_eq!(server_time(UNIX_EPOCH), "1970-01-01T00:00:00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29T00:00:00Z
        assert_eq!(server_time(leap), "2000-02-29T00:00:00");
    }

    #[test]
    fn ids_have_concur_shape() {
        let id = concur_id();
        assert_eq!(id.len(), 20);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
        );
        assert_ne!(concur_id(), concur_id());
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn xml_escape_escapes_specials() {
        assert_eq!(
            xml_escape(r#"a<b>&"c"'"#),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;"
        );
    }

    #[test]
    fn form_parsing_decodes() {
        let f = parse_form(b"grant_type=refresh_token&client_id=a%2Bb+c&x&empty=&bad=%zz%4");
        assert_eq!(
            f,
            vec![
                ("grant_type".into(), "refresh_token".into()),
                ("client_id".into(), "a+b c".into()),
                ("x".into(), String::new()),
                ("empty".into(), String::new()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
    }
}
