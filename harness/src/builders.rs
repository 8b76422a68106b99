//! Terse builders for the requests and responses a test feeds a policy.
//!
//! ```
//! use policy_harness::{get, post, response};
//! let req = get("/profile?x=1").header("authorization", "Bearer t").route("users");
//! let login = post("/login").json(&serde_json::json!({ "user": "a" }));
//! let upstream = response(200).header("cache-control", "max-age=60").body("hello");
//! ```

use crate::{Header, Request, Response};

/// Builds a [`Request`]. Defaults: route `test`, client `127.0.0.1:40000`,
/// an `x-request-id` of `test-request`, no body.
#[derive(Debug, Clone)]
pub struct RequestBuilder(Request);

/// A request with any method.
pub fn request(method: &str, path: &str) -> RequestBuilder {
    RequestBuilder(Request {
        method: method.to_ascii_uppercase(),
        path: path.to_owned(),
        headers: vec![Header {
            name: "x-request-id".into(),
            value: "test-request".into(),
        }],
        body: Vec::new(),
        route: "test".into(),
        client_addr: "127.0.0.1:40000".into(),
    })
}

pub fn get(path: &str) -> RequestBuilder {
    request("GET", path)
}

pub fn post(path: &str) -> RequestBuilder {
    request("POST", path)
}

pub fn put(path: &str) -> RequestBuilder {
    request("PUT", path)
}

pub fn delete(path: &str) -> RequestBuilder {
    request("DELETE", path)
}

impl RequestBuilder {
    /// Adds a header (the name is lower-cased, as the sidecar does). An
    /// `x-request-id` replaces the default one: the sidecar sends exactly one.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if name.eq_ignore_ascii_case("x-request-id") {
            self.0.headers.retain(|h| h.name != "x-request-id");
        }
        push_header(&mut self.0.headers, name, value);
        self
    }

    /// Sets the request id the policy and its log lines see.
    #[must_use]
    pub fn request_id(self, id: &str) -> Self {
        self.header("x-request-id", id)
    }

    /// `authorization: Bearer <token>`.
    #[must_use]
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.0.body = body.into();
        self
    }

    /// A JSON body with its content type.
    #[must_use]
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    #[must_use]
    pub fn route(mut self, route: &str) -> Self {
        self.0.route = route.to_owned();
        self
    }

    #[must_use]
    pub fn client(mut self, addr: &str) -> Self {
        self.0.client_addr = addr.to_owned();
        self
    }

    pub fn build(self) -> Request {
        self.0
    }
}

impl From<RequestBuilder> for Request {
    fn from(b: RequestBuilder) -> Self {
        b.0
    }
}

/// Builds a [`Response`].
#[derive(Debug, Clone)]
pub struct ResponseBuilder(Response);

/// A response with `status`, no headers, no body.
pub fn response(status: u16) -> ResponseBuilder {
    ResponseBuilder(Response {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    })
}

impl ResponseBuilder {
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        push_header(&mut self.0.headers, name, value);
        self
    }

    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.0.body = body.into();
        self
    }

    /// A JSON body with its content type.
    #[must_use]
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    pub fn build(self) -> Response {
        self.0
    }
}

impl From<ResponseBuilder> for Response {
    fn from(b: ResponseBuilder) -> Self {
        b.0
    }
}

/// Header names are lower-cased, as the sidecar hands them to policies.
fn push_header(headers: &mut Vec<Header>, name: &str, value: &str) {
    headers.push(Header {
        name: name.to_ascii_lowercase(),
        value: value.to_owned(),
    });
}
