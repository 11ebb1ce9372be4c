//! HTTP/1.x message starts, parsed with httparse, reduced to a whitelist.
//!
//! Nothing but the fields below ever leaves this module: method, path and
//! query, status, the OpenStack request id, the API microversion, the
//! content length, whether a token header was present, and for state
//! changes the requested target (one of a fixed set of words). Header values
//! other than those, token values, cookies and bodies are looked at here and
//! dropped.

use serde::{Deserialize, Serialize};

/// Longest path (with query) kept; longer ones are cut.
pub const MAX_PATH: usize = 512;
/// Longest kept header value (request ids, microversions).
const MAX_VALUE: usize = 64;
/// At most this many headers are looked at.
const MAX_HEADERS: usize = 64;

/// The whitelisted headers both directions carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microversion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    pub path: String,
    #[serde(flatten)]
    pub headers: Headers,
    /// An X-Auth-Token or Authorization header was sent (its value is never kept).
    pub token: bool,
    /// The headers were cut before their end (capture limit).
    pub truncated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    #[serde(flatten)]
    pub headers: Headers,
    pub truncated: bool,
}

/// What a buffer held.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// Messages whose headers were complete, each with the bytes of body
    /// that followed it in the buffer (up to its content length).
    Complete(Vec<(T, BodyStart)>),
    /// A message whose start line is complete but whose headers are not
    /// (possibly after complete ones): the rest may come in a later piece.
    Partial(Vec<(T, BodyStart)>, T),
    /// Not HTTP (TLS records, a protocol we do not parse, garbage).
    NotHttp,
}

/// Where a message's body starts in the buffer it came in, and how much of
/// it is there. Used only to look for a state change's target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyStart {
    pub offset: usize,
    pub len: usize,
}

fn truncate(value: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(value);
    text.chars().take(max).collect()
}

/// What `keystoneauth1.noauth.NoAuth.get_token()` returns.
const NOAUTH_PLACEHOLDER: &[u8] = b"notused";

/// The whitelisted headers, and whether a token header was sent.
fn read_headers(headers: &[httparse::Header<'_>]) -> (Headers, bool) {
    let (mut request_id, mut microversion, mut length, mut token) = (None, None, None, false);
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("x-openstack-request-id")
            || name.eq_ignore_ascii_case("x-compute-request-id")
        {
            request_id = Some(truncate(header.value, MAX_VALUE));
        } else if name.eq_ignore_ascii_case("x-openstack-ironic-api-version") {
            microversion = Some(truncate(header.value, MAX_VALUE));
        } else if name.eq_ignore_ascii_case("openstack-api-version") && microversion.is_none() {
            // "baremetal 1.95": keep the version.
            let value = truncate(header.value, MAX_VALUE);
            microversion = Some(value.rsplit(' ').next().unwrap_or(&value).to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if name.eq_ignore_ascii_case("x-auth-token") || name.eq_ignore_ascii_case("authorization") {
            // keystoneauth's `none` plugin (keystone-less set-ups) sends the
            // placeholder `notused`: not a credential. The value is compared,
            // never kept.
            token |= header.value.trim_ascii() != NOAUTH_PLACEHOLDER;
        }
    }
    let headers = Headers {
        request_id,
        microversion,
        content_length: length,
    };
    (headers, token)
}

/// The request line alone, for headers cut by the capture limit.
fn request_line(buf: &[u8]) -> Option<Request> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..end]).ok()?;
    let mut parts = line.split(' ');
    let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase())
    {
        return None;
    }
    Some(Request {
        method: method.to_string(),
        path: truncate(path.as_bytes(), MAX_PATH),
        truncated: true,
        ..Request::default()
    })
}

fn body_after(buf: &[u8], header_len: usize, content_length: Option<u64>) -> BodyStart {
    let available = buf.len() - header_len;
    let len = content_length.map_or(0, |l| (l as usize).min(available));
    BodyStart {
        offset: header_len,
        len,
    }
}

/// Requests at the start of `buf` (several when pipelined).
pub fn requests(buf: &[u8]) -> Parsed<Request> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(header_len)) => {
                let (headers, token) = read_headers(request.headers);
                let content_length = headers.content_length;
                let parsed = Request {
                    method: request.method.unwrap_or_default().to_string(),
                    path: truncate(request.path.unwrap_or_default().as_bytes(), MAX_PATH),
                    headers,
                    token,
                    truncated: false,
                };
                let body = body_after(&buf[at..], header_len, content_length);
                let body = BodyStart {
                    offset: at + body.offset,
                    ..body
                };
                found.push((parsed, body));
                let consumed = header_len + content_length.unwrap_or(0) as usize;
                if consumed == 0 || at + consumed >= buf.len() {
                    break;
                }
                at += consumed;
            }
            Ok(httparse::Status::Partial) => {
                return match request_line(&buf[at..]) {
                    Some(partial) => {
                        // Whatever whitelisted headers made it are still worth having.
                        let (headers, token) = read_headers(request.headers);
                        let partial = Request {
                            headers,
                            token: token || partial_has_token(&buf[at..]),
                            ..partial
                        };
                        Parsed::Partial(found, partial)
                    }
                    None if found.is_empty() => Parsed::NotHttp,
                    None => Parsed::Complete(found),
                };
            }
            // More headers than we look at: the request line is still good.
            Err(httparse::Error::TooManyHeaders) => {
                if let Some(request) = request_line(&buf[at..]) {
                    let token = partial_has_token(&buf[at..]);
                    found.push((Request { token, ..request }, BodyStart::default()));
                }
                break;
            }
            Err(_) if found.is_empty() => return Parsed::NotHttp,
            Err(_) => break,
        }
    }
    if found.is_empty() {
        Parsed::NotHttp
    } else {
        Parsed::Complete(found)
    }
}

/// A token header line in headers httparse could not finish.
fn partial_has_token(buf: &[u8]) -> bool {
    buf.split(|b| *b == b'\n').any(|line| {
        let mut parts = line.splitn(2, |b| *b == b':');
        let name = parts.next().unwrap_or_default();
        let value = parts.next().unwrap_or_default().trim_ascii();
        (name.eq_ignore_ascii_case(b"x-auth-token") || name.eq_ignore_ascii_case(b"authorization"))
            && value != NOAUTH_PLACEHOLDER
    })
}

/// The response at the start of `buf`.
pub fn response(buf: &[u8]) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(status) => {
            let code = response.code?;
            let (headers, _) = read_headers(response.headers);
            Some(Response {
                status: code,
                headers,
                truncated: status.is_partial(),
            })
        }
        Err(httparse::Error::TooManyHeaders) => status_line(buf),
        Err(_) => None,
    }
}

/// `HTTP/1.x NNN ...` of a response whose headers httparse gave up on.
fn status_line(buf: &[u8]) -> Option<Response> {
    let rest = buf.strip_prefix(b"HTTP/1.")?.get(2..)?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    Some(Response {
        status: code,
        truncated: true,
        ..Response::default()
    })
}

/// Targets of Ironic state changes worth naming; anything else is "other".
const TARGETS: [&str; 21] = [
    "active",
    "deleted",
    "rebuild",
    "rescue",
    "unrescue",
    "manage",
    "provide",
    "inspect",
    "clean",
    "abort",
    "adopt",
    "service",
    "power on",
    "power off",
    "rebooting",
    "soft power off",
    "soft rebooting",
    "undeploy",
    "deploy",
    "unhold",
    "hold",
];

/// The target of a state-change body (`{"target": "active", ...}`, or the
/// console's `{"enabled": true}`), as one of a fixed set of words. The rest
/// of the body (a config drive, instance info) is never looked at.
pub fn body_target(body: &[u8]) -> Option<&'static str> {
    let text = std::str::from_utf8(&body[..body.len().min(256)])
        .ok()
        .or_else(|| {
            // A body cut in the middle of a UTF-8 sequence: keep its valid prefix.
            let valid = std::str::from_utf8(body).err()?.valid_up_to();
            std::str::from_utf8(&body[..valid.min(256)]).ok()
        })?;
    if let Some(rest) = text.split("\"target\"").nth(1) {
        let value = rest
            .trim_start()
            .strip_prefix(':')?
            .trim_start()
            .strip_prefix('"')?;
        let value = value.split('"').next()?;
        return Some(TARGETS.iter().find(|t| **t == value).copied().unwrap_or("other"));
    }
    let rest = text
        .split("\"enabled\"")
        .nth(1)?
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    if rest.starts_with("true") {
        Some("enable")
    } else if rest.starts_with("false") {
        Some("disable")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::FAKE_TOKEN;

    fn request_bytes(path: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:6385\r\nUser-Agent: nova-compute keystoneauth1\r\n\
             X-OpenStack-Ironic-API-Version: 1.95\r\nX-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\r\nCookie: session=s3cret\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn one(parsed: Parsed<Request>) -> Request {
        match parsed {
            Parsed::Complete(mut found) if found.len() == 1 => found.remove(0).0,
            other => panic!("expected one request, got {other:?}"),
        }
    }

    #[test]
    fn keeps_the_whitelist_and_nothing_else() {
        let request = one(requests(&request_bytes("/v1/nodes?fields=uuid", "")));
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/v1/nodes?fields=uuid");
        assert_eq!(request.headers.microversion.as_deref(), Some("1.95"));
        assert!(request.token);
        let everything = format!("{request:?} {}", serde_json::to_string(&request).unwrap());
        assert!(
            !everything.contains(FAKE_TOKEN) && !everything.contains("s3cret"),
            "{everything}"
        );
    }

    #[test]
    fn keystoneauths_noauth_placeholder_is_no_token() {
        // The header name apart: its value here is keystoneauth's public
        // placeholder, and committed token headers carry only the fake token.
        let (header, placeholder) = ("X-Auth-Token", std::str::from_utf8(NOAUTH_PLACEHOLDER).unwrap());
        let request = format!("GET /v1/nodes HTTP/1.1\r\n{header}: {placeholder}\r\n\r\n");
        let Parsed::Complete(found) = requests(request.as_bytes()) else {
            panic!("not parsed");
        };
        assert!(!found[0].0.token);
    }

    #[test]
    fn pipelined_requests_are_all_found_with_their_bodies() {
        let mut buf =
            b"PUT /v1/nodes/n1/states/power HTTP/1.1\r\nContent-Length: 22\r\n\r\n{\"target\": \"power on\"}"
                .to_vec();
        buf.extend_from_slice(&request_bytes("/v1/nodes/n1", ""));
        let Parsed::Complete(found) = requests(&buf) else {
            panic!("not complete");
        };
        assert_eq!(found.len(), 2);
        let (put, body) = &found[0];
        assert_eq!(
            (put.method.as_str(), put.headers.content_length),
            ("PUT", Some(22))
        );
        assert_eq!(
            body_target(&buf[body.offset..body.offset + body.len]),
            Some("power on")
        );
        assert_eq!(found[1].0.path, "/v1/nodes/n1");
    }

    #[test]
    fn headers_cut_by_the_capture_keep_the_request_line() {
        let buf = request_bytes("/v1/nodes/abc/validate", "");
        let cut = &buf[..buf.len() - 30];
        let Parsed::Partial(complete, partial) = requests(cut) else {
            panic!("not partial");
        };
        assert!(complete.is_empty());
        assert_eq!(
            (partial.method.as_str(), partial.path.as_str()),
            ("GET", "/v1/nodes/abc/validate")
        );
        assert!(partial.truncated);
        assert!(partial.token, "the token header line made it into the capture");
        assert!(!format!("{partial:?}").contains(FAKE_TOKEN));
    }

    #[test]
    fn garbage_and_tls_are_not_http() {
        assert_eq!(requests(b"\x16\x03\x01\x02\x00\x01\x00\x01"), Parsed::NotHttp);
        assert_eq!(requests(b""), Parsed::NotHttp);
        assert_eq!(requests(b"hello world\r\n\r\n"), Parsed::NotHttp);
        assert_eq!(response(b"\x17\x03\x03garbage"), None);
        let huge: Vec<u8> = std::iter::repeat_n(b'A', 100_000).collect();
        assert_eq!(requests(&huge), Parsed::NotHttp);
    }

    #[test]
    fn too_many_headers_keep_the_request_and_status_line() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            buf.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"X-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\r\n\r\n");
        let Parsed::Complete(found) = requests(&buf) else {
            panic!("the request line is kept");
        };
        assert_eq!(
            (found[0].0.path.as_str(), found[0].0.truncated, found[0].0.token),
            ("/", true, true)
        );
        let mut response_buf = b"HTTP/1.1 503 Service Unavailable\r\n".to_vec();
        response_buf.extend_from_slice(&buf[16..]);
        let answer = response(&response_buf).unwrap();
        assert_eq!((answer.status, answer.truncated), (503, true));
    }

    #[test]
    fn oversized_values_are_cut_not_kept_whole() {
        let long_path = format!("/v1/nodes?{}", "a".repeat(2000));
        let long_id = "r".repeat(500);
        let buf = format!("GET {long_path} HTTP/1.1\r\nX-Openstack-Request-Id: {long_id}\r\n\r\n");
        let Parsed::Complete(found) = requests(buf.as_bytes()) else {
            panic!("a request");
        };
        let request = &found[0].0;
        assert_eq!(request.path.len(), MAX_PATH);
        assert_eq!(
            request.headers.request_id.as_ref().map(String::len),
            Some(MAX_VALUE)
        );
    }

    #[test]
    fn responses_give_status_request_id_and_microversion() {
        let buf = b"HTTP/1.1 409 Conflict\r\nX-Openstack-Request-Id: req-1234\r\nOpenStack-API-Version: baremetal 1.95\r\nContent-Length: 10\r\nSet-Cookie: secret\r\n\r\n{\"err\"";
        let response = response(buf).unwrap();
        assert_eq!(response.status, 409);
        assert_eq!(response.headers.request_id.as_deref(), Some("req-1234"));
        assert_eq!(response.headers.microversion.as_deref(), Some("1.95"));
        assert_eq!(response.headers.content_length, Some(10));
        assert!(!response.truncated);
        let cut = response_cut();
        assert_eq!((cut.status, cut.truncated), (200, true));
    }

    fn response_cut() -> Response {
        response(b"HTTP/1.1 200 OK\r\nX-Openstack-Request-Id: req-9").unwrap()
    }

    #[test]
    fn targets_are_words_from_a_fixed_set() {
        assert_eq!(
            body_target(br#"{"target": "active", "configdrive": "H4sIAAAA"}"#),
            Some("active")
        );
        assert_eq!(body_target(br#"{"target":"deleted"}"#), Some("deleted"));
        assert_eq!(body_target(br#"{"target": "my-secret-value"}"#), Some("other"));
        assert_eq!(body_target(br#"{"enabled": true}"#), Some("enable"));
        assert_eq!(body_target(br#"[{"op": "add", "path": "/instance_uuid"}]"#), None);
        assert_eq!(body_target(b"\xff\xfe"), None);
    }
}
