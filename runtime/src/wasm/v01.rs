//! Contract 0.1: whole messages copied in as records, answers copied back.
//!
//! A chain with a 0.1 policy has its bodies buffered before the policy is
//! called (the chain does that, with the 0.1 limits: 413 and 502 beyond
//! them, as the 0.1 sidecar did); here the buffered exchange becomes the
//! records the policy expects, and what it returns is checked and applied.
//! Header values must be UTF-8 in this contract: a message with another
//! value cannot be given to a 0.1 policy.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};

use super::policy::{MessageError, Verdict};
use crate::bindings::v01::{Decision, Header, Request, Response};
use crate::message::{self, Exchange};

/// Headers as 0.1 records: without `content-length` (the body's length
/// says it), values as text.
fn list(headers: &HeaderMap, what: &'static str) -> Result<Vec<Header>, MessageError> {
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        let value = std::str::from_utf8(value.as_bytes()).map_err(|_| MessageError::NotUtf8 {
            what,
            name: name.as_str().to_owned(),
        })?;
        out.push(Header {
            name: name.as_str().to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(out)
}

/// The request as a 0.1 record. Its body must be buffered already.
///
/// # Errors
/// A header value is not UTF-8, or the body is not buffered.
pub(super) fn request_record(ex: &Exchange) -> Result<Request, MessageError> {
    let body = ex
        .request_body
        .complete()
        .ok_or(MessageError::RequestBodyTooLarge {
            limit: ex.limits.v01_request,
        })?;
    Ok(Request {
        method: ex.request.method.as_str().to_owned(),
        path: ex.request.path_and_query(),
        headers: list(&ex.request.headers, "request")?,
        body: body.to_vec(),
        route: ex.request.route.to_string(),
        client_addr: ex.request.client.to_string(),
    })
}

/// The response as a 0.1 record. Its body must be buffered already.
///
/// # Errors
/// As [`request_record`].
pub(super) fn response_record(ex: &Exchange) -> Result<Response, MessageError> {
    let Some(resp) = &ex.response else {
        return Err(MessageError::ResponseBodyTooLarge {
            limit: ex.limits.v01_response,
        });
    };
    let body = resp
        .body
        .complete()
        .ok_or(MessageError::ResponseBodyTooLarge {
            limit: ex.limits.v01_response,
        })?;
    Ok(Response {
        status: resp.head.status.as_u16(),
        headers: list(&resp.head.headers, "response")?,
        body: body.to_vec(),
    })
}

/// Headers from a policy's record, managed ones dropped.
fn headers(list: &[Header]) -> Result<HeaderMap, String> {
    if list.len() > message::MAX_HEADERS {
        return Err(format!(
            "{} headers (at most {})",
            list.len(),
            message::MAX_HEADERS
        ));
    }
    let mut map = HeaderMap::with_capacity(list.len());
    for h in list {
        let name = message::header_name(&h.name)?;
        if message::is_managed(name.as_str()) {
            continue;
        }
        map.append(name, message::header_value(&h.name, h.value.as_bytes())?);
    }
    Ok(map)
}

fn bad<'a>(policy: &'a Arc<str>, what: &'static str) -> impl Fn(String) -> MessageError + 'a {
    move |detail| MessageError::BadOutput {
        policy: policy.clone(),
        what,
        detail,
    }
}

/// Applies a request hook's decision to the exchange.
///
/// # Errors
/// The policy's request or answer is not valid HTTP.
pub(super) fn apply_decision(
    policy: &Arc<str>,
    ex: &mut Exchange,
    decision: Decision,
) -> Result<Verdict, MessageError> {
    match decision {
        Decision::Continue(None) => Ok(Verdict::Continue),
        Decision::Continue(Some(changed)) => {
            let bad = bad(policy, "request");
            let method = Method::from_bytes(changed.method.as_bytes())
                .map_err(|_| bad(format!("method `{}`", changed.method)))?;
            let (path, query) = message::split_path(&changed.path).map_err(&bad)?;
            let mut map = headers(&changed.headers).map_err(&bad)?;
            message::set_content_length(&mut map, changed.body.len());
            if changed.body.len() > ex.limits.v01_request {
                return Err(bad(format!(
                    "a body of {} bytes (at most {})",
                    changed.body.len(),
                    ex.limits.v01_request
                )));
            }
            let head = &mut ex.request;
            head.method = method;
            head.path = path;
            head.query = query;
            head.headers = map;
            ex.request_body.replace(Bytes::from(changed.body));
            Ok(Verdict::Continue)
        }
        Decision::Respond(resp) => Ok(Verdict::Respond(response(policy, resp)?)),
    }
}

/// A 0.1 response record as the exchange's response.
fn response(policy: &Arc<str>, resp: Response) -> Result<message::Response, MessageError> {
    let bad = bad(policy, "response");
    let status = StatusCode::from_u16(resp.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| bad(format!("status {}", resp.status)))?;
    let map = headers(&resp.headers).map_err(&bad)?;
    Ok(message::Response::full(status, map, resp.body.into()))
}

/// Applies a response hook's result: it replaces the response.
///
/// # Errors
/// The response is not valid HTTP.
pub(super) fn apply_response(
    policy: &Arc<str>,
    ex: &mut Exchange,
    answer: Response,
) -> Result<(), MessageError> {
    if answer.body.len() > ex.limits.v01_response {
        return Err(MessageError::BadOutput {
            policy: policy.clone(),
            what: "response",
            detail: format!(
                "a body of {} bytes (at most {})",
                answer.body.len(),
                ex.limits.v01_response
            ),
        });
    }
    ex.response = Some(response(policy, answer)?);
    Ok(())
}
