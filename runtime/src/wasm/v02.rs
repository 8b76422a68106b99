//! Contract 0.2: the message stays on the host.
//!
//! For one hook call the exchange is lent to the policy's store
//! ([`lend`], [`take_back`]); the `request` and `response` handles the hook
//! receives are borrows that name it (there is one exchange per store, so
//! the handle's value only says which half). Getters copy out just what was
//! asked for; setters check their input and the phase (the request is
//! read-only once it went upstream, everything once the exchange is over).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker, Resource};

use super::EPOCH_TICK;
use super::policy::{MessageError, Verdict};
use super::state::HostState;
use crate::bindings::v02::types::{self, Body, EditError, Header, Request, Response};
use crate::bindings::v02::{Completion, Decision, Hooks, Reply};
use crate::message::{self, BodyLimits, Exchange, Filled, HeaderEdit, HeaderEditError, Phase};

/// The part of a store's data that holds the exchange during a call.
#[derive(Default)]
pub struct MessageState {
    exchange: Exchange,
    /// Epoch ticks this call spent waiting for a body: time the policy did
    /// not use, given back at its deadline.
    pub(crate) io_credit_ticks: u64,
}

impl MessageState {
    /// The time this call spent waiting for a body so far.
    pub(crate) fn io_credit(&self) -> Duration {
        EPOCH_TICK * u32::try_from(self.io_credit_ticks).unwrap_or(u32::MAX)
    }
}

const REQUEST: u32 = 0;
const RESPONSE: u32 = 1;

/// The handle a hook gets for the request.
pub(super) fn request() -> Resource<Request> {
    Resource::new_borrow(REQUEST)
}

/// The handle a hook gets for the response.
pub(super) fn response() -> Resource<Response> {
    Resource::new_borrow(RESPONSE)
}

/// Moves `exchange` into the store for one call.
pub(super) fn lend(store: &mut Store<HostState>, exchange: &mut Exchange) {
    store.data_mut().message.exchange = std::mem::take(exchange);
}

/// Moves it back after the call, whatever the call did.
pub(super) fn take_back(store: &mut Store<HostState>, exchange: &mut Exchange) {
    *exchange = std::mem::take(&mut store.data_mut().message.exchange);
}

pub(super) fn hooks(flags: Hooks) -> super::Hooks {
    super::Hooks {
        on_response: flags.contains(Hooks::ON_RESPONSE),
        on_complete: flags.contains(Hooks::ON_COMPLETE),
    }
}

pub(super) fn completion(info: &message::Completion) -> Completion {
    Completion {
        status: info.status,
        request_body_bytes: info.request_body_bytes,
        response_body_bytes: info.response_body_bytes,
        duration_micros: u64::try_from(info.duration.as_micros()).unwrap_or(u64::MAX),
        complete: info.complete,
        error: info.error.clone(),
    }
}

/// A request hook's decision, its answer checked.
pub(super) fn verdict(
    policy: &std::sync::Arc<str>,
    decision: Decision,
    max_body: usize,
) -> Result<Verdict, MessageError> {
    match decision {
        Decision::Continue => Ok(Verdict::Continue),
        Decision::Respond(reply) => reply_response(reply, max_body)
            .map(Verdict::Respond)
            .map_err(|detail| MessageError::BadOutput {
                policy: policy.clone(),
                what: "response",
                detail,
            }),
    }
}

fn reply_response(reply: Reply, max_body: usize) -> Result<message::Response, String> {
    let status = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| format!("status {}", reply.status))?;
    check_body_size(reply.body.len(), max_body)?;
    if reply.headers.len() > message::MAX_HEADERS {
        return Err(format!(
            "{} headers (at most {})",
            reply.headers.len(),
            message::MAX_HEADERS
        ));
    }
    let mut headers = HeaderMap::with_capacity(reply.headers.len());
    for h in reply.headers {
        let name = message::header_name(&h.name)?;
        // The sidecar frames the answer itself.
        if message::is_managed(name.as_str()) {
            continue;
        }
        headers.append(name, message::header_value(&h.name, &h.value)?);
    }
    Ok(message::Response::full(status, headers, reply.body.into()))
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    types::add_to_linker::<HostState, HasSelf<MessageState>>(linker, |s| &mut s.message)
}

/// Every value of `name` in `headers`.
fn values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers
        .get_all(name.to_ascii_lowercase())
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fn all(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(n, v)| Header {
            name: n.as_str().to_owned(),
            value: v.as_bytes().to_vec(),
        })
        .collect()
}

fn edit(headers: &mut HeaderMap, name: &str, change: HeaderEdit<'_>) -> Result<(), EditError> {
    message::edit_header(headers, name, change).map_err(|e| match e {
        HeaderEditError::Invalid(why) => EditError::Invalid(why),
        HeaderEditError::ReadOnly => EditError::ReadOnly,
    })
}

/// A body a policy gives is bounded as one it reads: by the sidecar's
/// `max_policy_body_bytes`.
fn check_body_size(len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!(
            "a body of {len} bytes is over the sidecar's limit of {max} (`max_policy_body_bytes`)"
        ));
    }
    Ok(())
}

/// What a body read hands the guest.
fn body_answer(filled: Filled) -> Body {
    match filled {
        Filled::Complete(bytes) => Body::Complete(bytes.to_vec()),
        Filled::TooLarge => Body::TooLarge,
    }
}

/// Reads `body` up to `max` (cut to the sidecar's bound), or says why not.
async fn read(body: &mut message::Body, max: u64, limits: &BodyLimits) -> (Body, u64) {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if max > limits.policy_max
        && body
            .known_len()
            .is_some_and(|n| n > limits.policy_max as u64)
    {
        return (Body::TooLarge, 0);
    }
    let started = Instant::now();
    let answer = match body.fill(max.min(limits.policy_max), limits.idle).await {
        Ok(Filled::TooLarge) => Body::TooLarge,
        // Complete within the sidecar's bound, but maybe not within what
        // the policy asked for (a smaller ask after a larger one).
        Ok(Filled::Complete(bytes)) if bytes.len() > max => Body::TooLarge,
        Ok(filled) => body_answer(filled),
        // The failure stays on the body: the request fails after the hook.
        Err(_) => Body::Unavailable,
    };
    let waited = started.elapsed().as_micros() / EPOCH_TICK.as_micros();
    (answer, u64::try_from(waited).unwrap_or(u64::MAX))
}

impl types::Host for MessageState {}

impl types::HostRequest for MessageState {
    fn method(&mut self, _: Resource<Request>) -> String {
        self.exchange.request.method.as_str().to_owned()
    }

    fn path(&mut self, _: Resource<Request>) -> String {
        self.exchange.request.path.clone()
    }

    fn query(&mut self, _: Resource<Request>) -> Option<String> {
        self.exchange.request.query.clone()
    }

    fn route(&mut self, _: Resource<Request>) -> String {
        self.exchange.request.route.to_string()
    }

    fn client_addr(&mut self, _: Resource<Request>) -> String {
        self.exchange.request.client.to_string()
    }

    fn request_id(&mut self, _: Resource<Request>) -> String {
        self.exchange.request.request_id.to_string()
    }

    fn protocol(&mut self, _: Resource<Request>) -> String {
        self.exchange.request.protocol().to_owned()
    }

    fn scheme(&mut self, _: Resource<Request>) -> String {
        if self.exchange.request.tls {
            "https"
        } else {
            "http"
        }
        .to_owned()
    }

    fn header(&mut self, _: Resource<Request>, name: String) -> Vec<Vec<u8>> {
        values(&self.exchange.request.headers, &name)
    }

    fn headers(&mut self, _: Resource<Request>) -> Vec<Header> {
        all(&self.exchange.request.headers)
    }

    fn set_header(
        &mut self,
        _: Resource<Request>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), EditError> {
        let head = self.request_mut()?;
        edit(&mut head.headers, &name, HeaderEdit::Set(&value))
    }

    fn append_header(
        &mut self,
        _: Resource<Request>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), EditError> {
        let head = self.request_mut()?;
        edit(&mut head.headers, &name, HeaderEdit::Append(&value))
    }

    fn remove_header(&mut self, _: Resource<Request>, name: String) -> Result<(), EditError> {
        let head = self.request_mut()?;
        edit(&mut head.headers, &name, HeaderEdit::Remove)
    }

    fn set_path(&mut self, _: Resource<Request>, path_and_query: String) -> Result<(), EditError> {
        let (path, query) = message::split_path(&path_and_query).map_err(EditError::Invalid)?;
        let head = self.request_mut()?;
        head.path = path;
        head.query = query;
        Ok(())
    }

    fn set_method(&mut self, _: Resource<Request>, method: String) -> Result<(), EditError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| EditError::Invalid(format!("method `{method}` is not an HTTP token")))?;
        self.request_mut()?.method = method;
        Ok(())
    }

    async fn body(&mut self, _: Resource<Request>, max_bytes: u64) -> wasmtime::Result<Body> {
        let ex = &mut self.exchange;
        // An upgrade has no body of its own: after the 101 its bytes are
        // the new protocol's.
        if ex.request.upgrade.is_some() {
            return Ok(Body::Unavailable);
        }
        if ex.phase != Phase::Request {
            // Only what was buffered before it went upstream is still here.
            return Ok(match ex.request_body.complete() {
                Some(b) if b.len() as u64 <= max_bytes => Body::Complete(b.to_vec()),
                Some(_) => Body::TooLarge,
                None => Body::Unavailable,
            });
        }
        let limits = ex.limits;
        let (answer, waited) = read(&mut ex.request_body, max_bytes, &limits).await;
        self.io_credit_ticks = self.io_credit_ticks.saturating_add(waited);
        Ok(answer)
    }

    fn set_body(&mut self, _: Resource<Request>, body: Vec<u8>) -> Result<(), EditError> {
        if self.exchange.phase != Phase::Request {
            return Err(EditError::ReadOnly);
        }
        if self.exchange.request.upgrade.is_some() {
            return Err(EditError::Invalid(
                "an upgrade request has no body to replace".into(),
            ));
        }
        check_body_size(body.len(), self.exchange.limits.policy_max).map_err(EditError::Invalid)?;
        message::set_content_length(&mut self.exchange.request.headers, body.len());
        self.exchange.request_body.replace(Bytes::from(body));
        Ok(())
    }

    fn drop(&mut self, _: Resource<Request>) -> wasmtime::Result<()> {
        // Hooks only ever get borrows: nothing to free.
        Ok(())
    }
}

impl MessageState {
    fn request_mut(&mut self) -> Result<&mut message::RequestHead, EditError> {
        if self.exchange.phase == Phase::Request {
            Ok(&mut self.exchange.request)
        } else {
            Err(EditError::ReadOnly)
        }
    }

    fn response_mut(&mut self) -> Result<&mut message::Response, EditError> {
        match (&mut self.exchange.response, self.exchange.phase) {
            (Some(r), Phase::Response) => Ok(r),
            _ => Err(EditError::ReadOnly),
        }
    }

    fn response_head(&self) -> Option<&message::ResponseHead> {
        self.exchange.response.as_ref().map(|r| &r.head)
    }
}

impl types::HostResponse for MessageState {
    fn status(&mut self, _: Resource<Response>) -> u16 {
        self.response_head().map_or(0, |h| h.status.as_u16())
    }

    fn set_status(&mut self, _: Resource<Response>, status: u16) -> Result<(), EditError> {
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(|s| s.as_u16() >= 200)
            .ok_or_else(|| EditError::Invalid(format!("status {status} (200–999 only)")))?;
        self.response_mut()?.head.status = status;
        Ok(())
    }

    fn header(&mut self, _: Resource<Response>, name: String) -> Vec<Vec<u8>> {
        self.response_head()
            .map(|h| values(&h.headers, &name))
            .unwrap_or_default()
    }

    fn headers(&mut self, _: Resource<Response>) -> Vec<Header> {
        self.response_head()
            .map(|h| all(&h.headers))
            .unwrap_or_default()
    }

    fn set_header(
        &mut self,
        _: Resource<Response>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), EditError> {
        let resp = self.response_mut()?;
        edit(&mut resp.head.headers, &name, HeaderEdit::Set(&value))
    }

    fn append_header(
        &mut self,
        _: Resource<Response>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), EditError> {
        let resp = self.response_mut()?;
        edit(&mut resp.head.headers, &name, HeaderEdit::Append(&value))
    }

    fn remove_header(&mut self, _: Resource<Response>, name: String) -> Result<(), EditError> {
        let resp = self.response_mut()?;
        edit(&mut resp.head.headers, &name, HeaderEdit::Remove)
    }

    async fn body(&mut self, _: Resource<Response>, max_bytes: u64) -> wasmtime::Result<Body> {
        let ex = &mut self.exchange;
        let limits = ex.limits;
        let phase = ex.phase;
        let Some(resp) = ex.response.as_mut() else {
            return Ok(Body::Unavailable);
        };
        if resp.head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Body::Unavailable);
        }
        if phase != Phase::Response {
            return Ok(match resp.body.complete() {
                Some(b) if b.len() as u64 <= max_bytes => Body::Complete(b.to_vec()),
                Some(_) => Body::TooLarge,
                None => Body::Unavailable,
            });
        }
        let (answer, waited) = read(&mut resp.body, max_bytes, &limits).await;
        self.io_credit_ticks = self.io_credit_ticks.saturating_add(waited);
        Ok(answer)
    }

    fn set_body(&mut self, _: Resource<Response>, body: Vec<u8>) -> Result<(), EditError> {
        let max = self.exchange.limits.policy_max;
        let resp = self.response_mut()?;
        check_body_size(body.len(), max).map_err(EditError::Invalid)?;
        if resp.head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(EditError::Invalid(
                "a 101 response has no body to replace".into(),
            ));
        }
        message::set_content_length(&mut resp.head.headers, body.len());
        resp.body.replace(Bytes::from(body));
        Ok(())
    }

    fn drop(&mut self, _: Resource<Response>) -> wasmtime::Result<()> {
        Ok(())
    }
}
