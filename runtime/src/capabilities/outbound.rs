//! The `outbound` capability: HTTP from a policy to the origins its config
//! grants (`allow_outbound`), and nowhere else.
//!
//! The checks are here, the network is not: an [`HttpClient`] sends (the
//! sidecar's own, over its TLS settings; stubs in the plugin harness and in
//! tests), so a policy that calls out is tested without a network. What a
//! call may do is bounded per request (calls), per response (bytes) and in
//! time (its timeout, cut to what is left of the hook's deadline). Successful
//! `GET`s are kept in an [`OutboundCache`] for as long as their
//! `cache-control: max-age` allows, per policy.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use wasmtime::component::{HasData, Linker};

use super::{Caller, Clock};
use crate::bindings::v02::outbound::{self as wit, IncomingResponse, OutgoingRequest};
use crate::bindings::v02::types::Header;

/// Redirects followed for one call.
const MAX_REDIRECTS: usize = 5;
/// Responses kept across all policies; the one expiring first goes beyond it.
const CACHE_ENTRIES: usize = 256;

/// `scheme://host:port`, what `allow_outbound` lists and what a URL must
/// match exactly (the port made explicit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute `http`/`https` URL.
    ///
    /// # Errors
    /// The URL is relative or of another scheme.
    pub fn of(uri: &Uri) -> Result<Self, String> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("scheme `{other}` (only http and https)")),
            None => return Err("not an absolute URL".into()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("no host")?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("user information in the URL".into());
        }
        Ok(Self {
            https,
            host: host.to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }
}

impl FromStr for Origin {
    type Err = String;

    /// `https://idp.example.com` or `http://127.0.0.1:8080`: nothing after
    /// the port but an optional `/`.
    fn from_str(s: &str) -> Result<Self, String> {
        let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        let origin = Self::of(&uri).map_err(|e| format!("`{s}`: {e}"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!(
                "`{s}`: an origin is scheme, host and port, without a path"
            ));
        }
        Ok(origin)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// One request as the host sends it.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why sending failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("timed out")]
    Timeout,
    #[error("the response body is over {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Failed(String),
}

/// What [`HttpClient::send`] returns.
pub type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<OutboundResponse, SendError>> + Send + 'a>>;

/// How a call ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The network answered (any status).
    Sent,
    /// The cache answered.
    Cached,
    Denied,
    Timeout,
    TooLarge,
    Failed,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Cached => "cached",
            Self::Denied => "denied",
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
            Self::Failed => "failed",
        }
    }
}

/// Sends what a policy asked for. Implementations must not follow
/// redirects (the capability does, checking each hop) and must stop reading
/// at `max_bytes`.
pub trait HttpClient: Send + Sync + 'static {
    fn send(&self, request: OutboundRequest, timeout: Duration, max_bytes: usize)
    -> SendFuture<'_>;

    /// Called once per call a policy made, however it ended (`target` is
    /// the origin, or `-` for a URL that has none).
    fn observe(&self, _policy: &str, _target: &str, _outcome: CallOutcome, _elapsed: Duration) {}
}

/// A host without a network: every call fails (the default of
/// [`Services::production`](super::Services::production); the sidecar
/// plugs in its own client).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNetwork;

impl HttpClient for NoNetwork {
    fn send(&self, _: OutboundRequest, _: Duration, _: usize) -> SendFuture<'_> {
        Box::pin(async { Err(SendError::Failed("this host has no network".into())) })
    }
}

/// Successful `GET`s, kept per policy while their `max-age` lasts.
pub struct OutboundCache {
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<(Arc<str>, String), Cached>>,
}

struct Cached {
    response: OutboundResponse,
    /// Clock microseconds.
    expires_at: u64,
}

impl fmt::Debug for OutboundCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundCache").finish_non_exhaustive()
    }
}

impl OutboundCache {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            entries: Mutex::default(),
        }
    }

    fn get(&self, namespace: &Arc<str>, url: &str) -> Option<OutboundResponse> {
        let now = self.clock.now_micros();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.clone(), url.to_owned());
        match entries.get(&key) {
            Some(c) if c.expires_at > now => Some(c.response.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn put(&self, namespace: &Arc<str>, url: &str, response: &OutboundResponse) {
        let Some(fresh) = freshness(&response.headers) else {
            return;
        };
        let now = self.clock.now_micros();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, c| c.expires_at > now);
            if entries.len() >= CACHE_ENTRIES
                && let Some(first) = entries
                    .iter()
                    .min_by_key(|(_, c)| c.expires_at)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&first);
            }
        }
        entries.insert(
            (namespace.clone(), url.to_owned()),
            Cached {
                response: response.clone(),
                expires_at: now.saturating_add(fresh.as_micros() as u64),
            },
        );
    }
}

/// How long a response may be kept: its `max-age` less its `age`; `None`
/// when it must not be (no `max-age`, `no-store`, `no-cache`).
fn freshness(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        for directive in value.to_str().ok()?.split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            match directive.split_once('=') {
                Some(("max-age", secs)) => max_age = Some(secs.trim_matches('"').parse().ok()?),
                None if directive == "no-store" || directive == "no-cache" => return None,
                _ => {}
            }
        }
    }
    let age: u64 = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let secs: u64 = max_age?;
    (secs > age).then(|| Duration::from_secs(secs - age))
}

/// The network and the cache behind the capability, shared by every
/// instance.
#[derive(Clone)]
pub struct Outbound {
    pub client: Arc<dyn HttpClient>,
    pub cache: Arc<OutboundCache>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl Outbound {
    pub fn new(client: Arc<dyn HttpClient>, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            cache: Arc::new(OutboundCache::new(clock)),
        }
    }
}

/// What one policy may do with the capability: its config's
/// `allow_outbound` and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundGrant {
    /// Origins it may reach; empty, the default, grants nothing.
    pub allow: Vec<Origin>,
    /// Calls one request may make (all hooks together).
    pub calls_per_request: u32,
    /// One call's limit, redirects included; also cut to the hook's deadline.
    pub timeout: Duration,
    /// Largest response body read.
    pub max_bytes: usize,
}

impl Default for OutboundGrant {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            calls_per_request: 4,
            timeout: Duration::from_secs(5),
            max_bytes: 1024 * 1024,
        }
    }
}

/// Per-instance state of the capability.
pub struct OutboundState {
    outbound: Outbound,
    grant: Arc<OutboundGrant>,
    caller: Caller,
    /// Calls made in this request.
    calls: u32,
    /// When the current hook call started, and its deadline.
    call_started: Instant,
    deadline: Duration,
}

impl OutboundState {
    /// A new instance's context: the policy's `grant`, and the `deadline`
    /// of each of its hook calls (a call out is cut to what is left of it).
    pub(crate) fn new(
        outbound: Outbound,
        grant: Arc<OutboundGrant>,
        caller: Caller,
        deadline: Duration,
    ) -> Self {
        Self {
            outbound,
            grant,
            caller,
            calls: 0,
            call_started: Instant::now(),
            deadline,
        }
    }

    /// A reused instance serves another request.
    pub(crate) fn set_caller(&mut self, caller: Caller) {
        self.caller = caller;
    }

    /// A new request: the whole quota again.
    pub(crate) fn start_request(&mut self) {
        self.calls = 0;
    }

    /// A hook call starts now.
    pub(crate) fn start_call(&mut self) {
        self.call_started = Instant::now();
    }
}

/// What `send` works on: the instance's context, and how long the current
/// hook call has waited on host I/O (a body) so far. That wait is given back
/// at the hook's deadline, so it does not shorten a call out either; the
/// call's own wait is not given back. The store's data lends both (see
/// [`add_to_linker`]).
pub struct OutboundView<'a> {
    state: &'a mut OutboundState,
    io_credit: Duration,
}

impl<'a> OutboundView<'a> {
    pub(crate) fn new(state: &'a mut OutboundState, io_credit: Duration) -> Self {
        Self { state, io_credit }
    }
}

/// The [`HasData`] of the capability: its host functions see an
/// [`OutboundView`].
struct HasOutbound;

impl HasData for HasOutbound {
    type Data<'a> = OutboundView<'a>;
}

impl wit::Host for OutboundView<'_> {
    async fn send(&mut self, req: OutgoingRequest) -> Result<IncomingResponse, wit::Error> {
        let started = Instant::now();
        let state = &mut *self.state;
        let used = state.call_started.elapsed().saturating_sub(self.io_credit);
        let left = state.deadline.saturating_sub(used);
        let (target, result) = send(state, req, left).await;
        let outcome = match &result {
            Ok((_, true)) => CallOutcome::Cached,
            Ok((_, false)) => CallOutcome::Sent,
            Err(wit::Error::Denied(_) | wit::Error::Invalid(_)) => CallOutcome::Denied,
            Err(wit::Error::Timeout) => CallOutcome::Timeout,
            Err(wit::Error::TooLarge) => CallOutcome::TooLarge,
            Err(wit::Error::Failed(_)) => CallOutcome::Failed,
        };
        state
            .outbound
            .client
            .observe(&state.caller.policy, &target, outcome, started.elapsed());
        result.map(|(r, _)| r)
    }
}

/// One call: checks, the cache, the network and its redirects. Returns the
/// target origin (for metrics) and the response, with whether it was cached.
async fn send(
    state: &mut OutboundState,
    req: OutgoingRequest,
    deadline_left: Duration,
) -> (String, Result<(IncomingResponse, bool), wit::Error>) {
    let mut request = match request_of(req) {
        Ok(r) => r,
        Err(e) => return ("-".into(), Err(e)),
    };
    let origin = match granted(&state.grant, &request.uri) {
        Ok(o) => o,
        Err(e) => {
            return (
                Origin::of(&request.uri).map_or("-".into(), |o| o.to_string()),
                Err(e),
            );
        }
    };
    let target = origin.to_string();
    if state.calls >= state.grant.calls_per_request {
        return (
            target,
            Err(wit::Error::Denied(format!(
                "this request's {} outbound calls are spent (`outbound_calls_per_request`)",
                state.grant.calls_per_request
            ))),
        );
    }
    state.calls += 1;
    let namespace = state.caller.policy.clone();
    let cacheable = request.method == Method::GET;
    let url = request.uri.to_string();
    // A policy that knows its copy is stale (a key set without the token's
    // kid) asks past the cache, as a browser's reload does.
    let revalidate = request
        .headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("no-cache") || v.contains("no-store"));
    if cacheable
        && !revalidate
        && let Some(hit) = state.outbound.cache.get(&namespace, &url)
    {
        return (target, Ok((incoming(hit), true)));
    }
    // Leave the policy a moment after a timeout to act on it, rather than
    // trap at its deadline.
    let margin = (state.deadline / 10).min(Duration::from_millis(5));
    let budget = state
        .grant
        .timeout
        .min(deadline_left.saturating_sub(margin));
    let until = Instant::now() + budget;
    let client = state.outbound.client.clone();
    for _ in 0..=MAX_REDIRECTS {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (target, Err(wit::Error::Timeout));
        }
        let response = match client
            .send(request.clone(), left, state.grant.max_bytes)
            .await
        {
            Ok(r) => r,
            Err(SendError::Timeout) => return (target, Err(wit::Error::Timeout)),
            Err(SendError::TooLarge(_)) => return (target, Err(wit::Error::TooLarge)),
            Err(SendError::Failed(m)) => return (target, Err(wit::Error::Failed(m))),
        };
        if response.body.len() > state.grant.max_bytes {
            return (target, Err(wit::Error::TooLarge));
        }
        let Some(next) = redirect(&request, &response) else {
            if cacheable && request.method == Method::GET && response.status == StatusCode::OK {
                state.outbound.cache.put(&namespace, &url, &response);
            }
            return (target, Ok((incoming(response), false)));
        };
        let next = match next {
            Ok(n) => n,
            Err(e) => return (target, Err(e)),
        };
        if let Err(e) = granted(&state.grant, &next.uri) {
            let e = match e {
                wit::Error::Denied(m) => {
                    wit::Error::Denied(format!("redirected to {}: {m}", next.uri))
                }
                other => other,
            };
            return (target, Err(e));
        }
        request = next;
    }
    (
        target,
        Err(wit::Error::Failed(format!(
            "more than {MAX_REDIRECTS} redirects"
        ))),
    )
}

/// The host's request from the policy's, or why it is not one.
fn request_of(req: OutgoingRequest) -> Result<OutboundRequest, wit::Error> {
    let invalid = |m: String| wit::Error::Invalid(m);
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| invalid(format!("method `{}`", req.method)))?;
    let uri: Uri = req
        .url
        .parse()
        .map_err(|e| wit::Error::Denied(format!("`{}` is not a URL: {e}", req.url)))?;
    let mut headers = HeaderMap::new();
    for Header { name, value } in req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("header name `{name}`")))?;
        // The client sets these from the URL and the body.
        if matches!(
            name,
            header::HOST | header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION
        ) {
            continue;
        }
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| invalid(format!("the value of header `{name}`")))?;
        headers.append(name, value);
    }
    Ok(OutboundRequest {
        method,
        uri,
        headers,
        body: Bytes::from(req.body),
    })
}

/// The origin of `uri` if the grant lists it.
fn granted(grant: &OutboundGrant, uri: &Uri) -> Result<Origin, wit::Error> {
    let origin = Origin::of(uri).map_err(|e| wit::Error::Denied(format!("`{uri}`: {e}")))?;
    if grant.allow.contains(&origin) {
        Ok(origin)
    } else if grant.allow.is_empty() {
        Err(wit::Error::Denied(format!(
            "{origin} is not granted: this policy's `allow_outbound` is empty"
        )))
    } else {
        Err(wit::Error::Denied(format!(
            "{origin} is not in this policy's `allow_outbound`"
        )))
    }
}

/// The request a redirect asks for, if `response` is one.
fn redirect(
    request: &OutboundRequest,
    response: &OutboundResponse,
) -> Option<Result<OutboundRequest, wit::Error>> {
    let status = response.status.as_u16();
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers.get(header::LOCATION)?;
    let resolved = location
        .to_str()
        .ok()
        .and_then(|l| resolve(&request.uri, l))
        .ok_or_else(|| wit::Error::Failed(format!("a redirect to an invalid URL: {location:?}")));
    Some(resolved.map(|uri| {
        // As browsers do: 303, and 301/302 after a POST, become a GET.
        let to_get =
            status == 303 || (matches!(status, 301 | 302) && request.method == Method::POST);
        let mut next = request.clone();
        next.uri = uri;
        if to_get {
            next.method = Method::GET;
            next.body = Bytes::new();
            next.headers.remove(header::CONTENT_TYPE);
        }
        next
    }))
}

/// `location` against `base`: absolute, or an absolute path.
fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("//") {
        return format!("{}:{location}", base.scheme_str()?).parse().ok();
    }
    if location.starts_with('/') {
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(location.parse().ok()?);
        return Uri::from_parts(parts).ok();
    }
    let uri: Uri = location.parse().ok()?;
    uri.scheme().is_some().then_some(uri)
}

fn incoming(response: OutboundResponse) -> IncomingResponse {
    IncomingResponse {
        status: response.status.as_u16(),
        headers: response
            .headers
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_owned(),
                value: value.as_bytes().to_vec(),
            })
            .collect(),
        body: response.body.to_vec(),
    }
}

/// Links `outbound` (0.2.1; a 0.1 component cannot import it), on the view
/// `get` makes of a store's data.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> OutboundView<'_>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasOutbound>(linker, get)
}

#[cfg(test)]
mod tests;
