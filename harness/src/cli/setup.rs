//! What a run can set up before the policy sees a request, shared by case
//! files and `sidecar policy call`'s flags so the two offer the same set and
//! say the same things about it: the clock, the store, the origins the
//! policy may call (`allow_outbound`) and the stubs those calls reach.
//!
//! | case file                  | `policy call`                 |
//! |----------------------------|-------------------------------|
//! | `start_unix = 1704067200`  | `--now 2024-01-01T00:00:00Z`  |
//! | `kv = { k = "v" }`         | `--kv k=v`                    |
//! | `allow_outbound = [...]`   | `--allow-outbound ORIGIN`     |
//! | `outbound = [{ url = … }]` | `--outbound-stub '{"url":…}'` |
//!
//! A case's `advance_secs` has no flag: one call happens at one moment,
//! which `--now` sets.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;

use crate::{Harness, Origin, Stub};

/// An `outbound` stub: a case file's `outbound = [...]` entry, or the JSON
/// of `--outbound-stub`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StubSpec {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
    /// The call fails with this reason instead.
    fail: Option<String>,
    /// The call times out instead.
    #[serde(default)]
    timeout: bool,
}

fn get() -> String {
    "GET".into()
}

fn ok() -> u16 {
    200
}

impl StubSpec {
    pub(super) fn parse_json(text: &str) -> anyhow::Result<Self> {
        serde_json::from_str(text).context(
            "not a stub like {\"url\":\"https://idp.example/jwks\",\"status\":200,\"headers\":{},\"body\":\"...\"} \
             (or with \"fail\":\"reason\" or \"timeout\":true)",
        )
    }

    fn stub(&self) -> Stub {
        if self.timeout {
            Stub::Timeout
        } else if let Some(reason) = &self.fail {
            Stub::Fail(reason.clone())
        } else {
            Stub::reply(
                self.status,
                self.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                self.body.as_bytes(),
            )
        }
    }
}

/// Loads `wasm`, named after its file, granted `allow_outbound` (origins
/// as in the sidecar's config). A bad origin is an error naming
/// `field(index)`, where it came from.
pub(super) fn load(
    wasm: &Path,
    allow_outbound: &[String],
    field: &dyn Fn(usize) -> String,
) -> anyhow::Result<Harness> {
    let origins: Vec<&str> = allow_outbound.iter().map(String::as_str).collect();
    for (i, origin) in origins.iter().enumerate() {
        origin
            .parse::<Origin>()
            .map_err(|e| anyhow!("{}: {e}", field(i)))?;
    }
    super::use_compile_cache();
    Ok(Harness::load(wasm)?
        .named(super::policy_name(wasm))
        .allow_outbound(&origins))
}

/// Preloads the store and sets the stubs: what a run finds in place.
///
/// # Errors
/// The store refuses an entry (over its size limits), naming the key.
pub(super) fn prepare<'a>(
    harness: &Harness,
    kv: impl IntoIterator<Item = (&'a str, &'a str)>,
    stubs: &[StubSpec],
) -> anyhow::Result<()> {
    for (key, value) in kv {
        harness
            .try_kv_set(key, value.as_bytes(), None)
            .map_err(|e| anyhow!("`{key}`: the store refused it: {e}"))?;
    }
    for stub in stubs {
        harness.stub(&stub.method, &stub.url, stub.stub());
    }
    Ok(())
}

/// `KEY=VALUE` (split at the first `=`; the value may hold more).
pub(super) fn parse_kv(text: &str) -> anyhow::Result<(&str, &str)> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key, value)),
        _ => bail!("`{text}` is not KEY=VALUE (example: --kv 'hits:ann=41')"),
    }
}

/// A moment as microseconds since the Unix epoch, from Unix seconds
/// (`1704067200`) or RFC 3339 (`2024-01-01T00:00:00Z`,
/// `2024-01-01T01:00:00.5+01:00`).
pub(super) fn parse_time(text: &str) -> anyhow::Result<u64> {
    const HINT: &str = "expected RFC 3339 (2024-01-01T00:00:00Z) or Unix seconds (1704067200)";
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .and_then(|s| s.checked_mul(1_000_000))
            .ok_or_else(|| anyhow!("`{text}`: too far in the future"));
    }
    rfc3339_micros(text).ok_or_else(|| anyhow!("`{text}`: {HINT}"))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, at or after 1970.
fn rfc3339_micros(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    // 60: a leap second, read as the next second's start.
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Microseconds: the first six digits, the others dropped.
        let kept = &fraction[..digits.min(6)];
        micros = kept.parse::<i64>().ok()? * 10i64.pow(6 - kept.len() as u32);
        rest = &fraction[digits..];
    }
    let offset_secs = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |c: &u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            let (hours, minutes) = (digit(h1)? * 10 + digit(h2)?, digit(m1)? * 10 + digit(m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = hours * 3600 + minutes * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    u64::try_from(secs * 1_000_000 + micros).ok()
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_unix_seconds() {
        let start = 1_704_067_200_000_000;
        assert_eq!(parse_time("1704067200").unwrap(), start);
        assert_eq!(parse_time("2024-01-01T00:00:00Z").unwrap(), start);
        assert_eq!(parse_time("2024-01-01t00:00:00z").unwrap(), start);
        assert_eq!(parse_time("2024-01-01T01:00:00+01:00").unwrap(), start);
        assert_eq!(parse_time("2023-12-31T23:30:00-00:30").unwrap(), start);
        assert_eq!(
            parse_time("2024-01-01T00:00:00.25Z").unwrap(),
            start + 250_000
        );
        assert_eq!(
            parse_time("2024-01-01T00:00:00.1234567Z").unwrap(),
            start + 123_456
        );
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time("2024-02-29T12:00:00Z").unwrap(),
            1_709_208_000_000_000
        );
        assert_eq!(
            parse_time("2100-03-01T00:00:00Z").unwrap(),
            4_107_542_400_000_000
        );
    }

    #[test]
    fn a_bad_time_says_what_is_expected() {
        for bad in [
            "",
            "yesterday",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+1:00",
            "1969-12-31T23:59:59Z",
            "-5",
        ] {
            let msg = parse_time(bad).unwrap_err().to_string();
            assert!(msg.contains("RFC 3339"), "{bad}: {msg}");
        }
        assert!(parse_time("99999999999999999999").is_err());
    }

    #[test]
    fn kv_pairs_split_at_the_first_equals_sign() {
        assert_eq!(parse_kv("a=b=c").unwrap(), ("a", "b=c"));
        assert_eq!(parse_kv("a=").unwrap(), ("a", ""));
        assert!(parse_kv("=b").is_err());
        assert!(
            parse_kv("ab")
                .unwrap_err()
                .to_string()
                .contains("KEY=VALUE")
        );
    }

    #[test]
    fn stubs_default_to_a_200_get() {
        let spec = StubSpec::parse_json(r#"{"url":"https://a.example/x","body":"hi"}"#).unwrap();
        assert_eq!(spec.method, "GET");
        assert_eq!(spec.stub(), Stub::reply(200, vec![], "hi"));
        let failing =
            StubSpec::parse_json(r#"{"url":"https://a.example/x","fail":"refused"}"#).unwrap();
        assert_eq!(failing.stub(), Stub::Fail("refused".into()));
        let msg = format!(
            "{:#}",
            StubSpec::parse_json(r#"{"uri":"https://a.example"}"#).unwrap_err()
        );
        assert!(msg.contains("not a stub like"), "{msg}");
    }
}
