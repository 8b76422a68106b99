//! Passive health (an endpoint ejected after failures in a row, for longer
//! each time) and the active health check's probe.

use std::time::{Duration, Instant};

use http::Uri;

use super::{BalanceSettings, HealthCheck, UpstreamClient};
use crate::message::Body;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Health {
    pub(super) consecutive_failures: u32,
    pub(super) ejected_until: Option<Instant>,
    /// Ejections without a success in between: each doubles the next one.
    pub(super) ejections_in_a_row: u32,
}

impl Health {
    pub(super) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Counts one outcome; `Some(length)` if it ejected the endpoint.
    pub(super) fn record(
        &mut self,
        failed: bool,
        now: Instant,
        s: &BalanceSettings,
    ) -> Option<Duration> {
        if !failed {
            // An answer re-admits at once, even during an ejection (panic mode
            // or a request that started before it).
            *self = Self::default();
            return None;
        }
        self.consecutive_failures += 1;
        (self.consecutive_failures >= s.eject_after_failures && !self.is_ejected(now))
            .then(|| self.eject(now, s))
    }

    pub(super) fn eject(&mut self, now: Instant, s: &BalanceSettings) -> Duration {
        let factor = 1u32 << self.ejections_in_a_row.min(20);
        let length = s.eject.saturating_mul(factor).min(s.max_eject);
        self.ejected_until = Some(now + length);
        self.ejections_in_a_row += 1;
        self.consecutive_failures = 0;
        length
    }
}

/// `GET {uri}{path}`: `Ok` on a 2xx within the check's timeout.
pub(super) async fn probe(
    uri: &Uri,
    check: &HealthCheck,
    client: &UpstreamClient,
) -> Result<(), String> {
    let target = Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(uri.authority().map_or("", |a| a.as_str()))
        .path_and_query(check.path.as_str())
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = http::Request::new(Body::empty().into_stream());
    *request.uri_mut() = target;
    request.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("sidecar-health-check"),
    );
    // A health answer has no business being large.
    match client.send(request, check.timeout).await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("status {}", resp.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
}
