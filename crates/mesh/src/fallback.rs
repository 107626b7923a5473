//! Fallback answers for a service's failed calls: the last good answer to
//! the same GET, a fixed answer, or one from code
//! ([`crate::config::FallbackConfig`], [`crate::MeshClientBuilder::fallback`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_TYPE, COOKIE, ETAG,
    LAST_MODIFIED, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use mesh_core::{BoxError, ServiceName};
use tokio::time::Instant;

use crate::client::MeshBody;
use mesh_core::ConfigError;

use crate::config::{fallback_status, FallbackConfig, MeshConfig};

/// The most paths whose last good answer a service keeps.
const MAX_KEPT: usize = 256;
/// The largest answer kept.
const MAX_KEPT_BODY: usize = 1024 * 1024;

/// Marks a response a fallback gave instead of the service, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackUsed {
    /// What the call met (the error, or the status replaced).
    pub cause: String,
    /// Whether the answer is the service's last good one (else fixed or
    /// from code).
    pub last_good: bool,
}

/// What a fallback written in code is told about the failed call. `Debug`
/// shows no userinfo or query: they may hold secrets.
pub struct FallbackCause<'a> {
    /// The service called.
    pub service: &'a ServiceName,
    /// The call's method.
    pub method: &'a Method,
    /// The call's URI (with the service's name as its host).
    pub uri: &'a Uri,
    /// The error, for a failed call.
    pub error: Option<&'a BoxError>,
    /// The status, for an answer `on_status` replaces.
    pub status: Option<StatusCode>,
}

impl std::fmt::Debug for FallbackCause<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackCause")
            .field("service", self.service)
            .field("method", self.method)
            .field("uri", &mesh_core::ShownUri(self.uri))
            .field("error", &self.error)
            .field("status", &self.status)
            .finish()
    }
}

/// A fallback written in code: an answer, or `None` to leave the call's
/// own outcome (or the fixed answer, when one is configured).
pub type FallbackFn =
    Arc<dyn Fn(&FallbackCause<'_>) -> Option<Response<MeshBody>> + Send + Sync + 'static>;

/// One service's fallbacks.
pub(crate) struct Fallback {
    last_good: Option<Arc<LastGood>>,
    fixed: Option<(StatusCode, Option<HeaderValue>, Bytes)>,
    on_status: Vec<StatusCode>,
    code: Option<FallbackFn>,
}

/// What a call asked, kept while it runs for its fallback.
pub(crate) struct Asked {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    /// Whether the request carried credentials (`authorization`, `cookie`):
    /// its answer is that caller's, never kept for another.
    pub(crate) personal: bool,
}

/// The headers of a kept answer that say how to read its body.
const KEPT_HEADERS: [http::HeaderName; 6] = [
    CONTENT_TYPE,
    CONTENT_ENCODING,
    CONTENT_LANGUAGE,
    ETAG,
    LAST_MODIFIED,
    CACHE_CONTROL,
];

// === impl Asked ===

impl Asked {
    /// What `req` asks.
    pub(crate) fn of<B>(req: &http::Request<B>) -> Asked {
        let headers = req.headers();
        Asked {
            method: req.method().clone(),
            uri: req.uri().clone(),
            personal: headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE),
        }
    }
}

/// The last good answers of a service, by path and query.
struct LastGood {
    max_age: Duration,
    kept: Mutex<HashMap<String, Kept>>,
}

struct Kept {
    at: Instant,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// A 2xx answer to a GET being read, kept whole when it ends.
pub(crate) struct Capture {
    into: Arc<LastGood>,
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
}

/// The fallbacks written in code, by service, checked against `config`:
/// each names a valid service, and every `[services.<name>.fallback]`
/// that answers with nothing of its own (only `on_status`) has one.
pub(crate) fn coded(
    config: &MeshConfig,
    written: Vec<(String, FallbackFn)>,
) -> Result<HashMap<ServiceName, FallbackFn>, ConfigError> {
    let mut coded = HashMap::new();
    for (service, fallback) in written {
        let name = ServiceName::new(&service)
            .map_err(|e| ConfigError::new(format!("services.{service}.fallback"), e))?;
        coded.insert(name, fallback);
    }
    for (service, o) in &config.services {
        let Some(section) = &o.fallback else { continue };
        let has_code = ServiceName::new(service).is_ok_and(|n| coded.contains_key(&n));
        if !section.answers() && !has_code {
            return Err(ConfigError::new(
                format!("services.{service}.fallback"),
                "on_status alone needs an answer: last_good, status or body, or one in code \
                 (MeshClientBuilder::fallback)",
            ));
        }
    }
    Ok(coded)
}

// === impl Fallback ===

impl Fallback {
    /// The fallbacks `config` and `code` set, if any.
    pub(crate) fn new(
        config: Option<&FallbackConfig>,
        code: Option<FallbackFn>,
    ) -> Option<Fallback> {
        if config.is_none() && code.is_none() {
            return None;
        }
        let config = config.cloned().unwrap_or_default();
        let fixed = config.has_fixed_answer().then(|| {
            let status = config.status.map_or(StatusCode::OK, |c| {
                fallback_status(c).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            });
            let content_type = config
                .content_type
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok());
            let body = Bytes::from(config.body.clone().unwrap_or_default());
            (status, content_type, body)
        });
        Some(Fallback {
            last_good: config.last_good.map(|max_age| {
                Arc::new(LastGood {
                    max_age,
                    kept: Mutex::default(),
                })
            }),
            fixed,
            on_status: (config.on_status.iter())
                .filter_map(|&c| fallback_status(c).ok())
                .collect(),
            code,
        })
    }

    /// Whether an answer with `status` is replaced.
    pub(crate) fn replaces(&self, status: StatusCode) -> bool {
        self.on_status.contains(&status)
    }

    /// A capture of the answer to `asked`, kept as its last good one when
    /// it is a 2xx answer to a GET that any caller may be given: not to a
    /// request with credentials, not one the service marks private,
    /// uncacheable, setting a cookie or varying by request headers.
    pub(crate) fn capture<B>(&self, asked: &Asked, response: &Response<B>) -> Option<Capture> {
        let into = self.last_good.as_ref()?;
        if asked.method != Method::GET || asked.personal || !response.status().is_success() {
            return None;
        }
        let headers = response.headers();
        if !shareable(headers) {
            return None;
        }
        let mut kept = HeaderMap::new();
        for name in KEPT_HEADERS {
            for value in headers.get_all(&name) {
                kept.append(name.clone(), value.clone());
            }
        }
        Some(Capture {
            into: Arc::clone(into),
            key: key(&asked.uri),
            status: response.status(),
            headers: kept,
            body: BytesMut::new(),
        })
    }

    /// The answer instead of a call that met `cause`: the last good one
    /// while fresh (GETs only), else code's, else the fixed one.
    pub(crate) fn answer(&self, cause: &FallbackCause<'_>) -> Option<Response<MeshBody>> {
        let what = match (cause.error, cause.status) {
            (Some(error), _) => error.to_string(),
            (None, Some(status)) => status.to_string(),
            (None, None) => String::new(),
        };
        let kept = (self.last_good.as_ref())
            .filter(|_| cause.method == Method::GET)
            .and_then(|l| l.get(cause.uri));
        if let Some(response) = kept {
            return Some(marked(response, what, true));
        }
        let coded = self.code.as_ref().and_then(|code| code(cause));
        let response = coded.or_else(|| {
            let (status, content_type, body) = self.fixed.as_ref()?;
            let mut headers = HeaderMap::new();
            if let Some(kind) = content_type {
                headers.insert(CONTENT_TYPE, kind.clone());
            }
            Some(response(*status, headers, body.clone()))
        })?;
        Some(marked(response, what, false))
    }
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("last_good", &self.last_good.as_ref().map(|l| l.max_age))
            .field("fixed", &self.fixed.as_ref().map(|(status, ..)| status))
            .field("on_status", &self.on_status)
            .field("code", &self.code.is_some())
            .finish()
    }
}

fn marked(mut response: Response<MeshBody>, cause: String, last_good: bool) -> Response<MeshBody> {
    response
        .extensions_mut()
        .insert(FallbackUsed { cause, last_good });
    response
}

fn response(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response<MeshBody> {
    let mut response = Response::new(MeshBody::from_bytes(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Whether an answer with `headers` may be given to another caller: not
/// private or uncacheable, setting no cookie, not varying by request.
fn shareable(headers: &HeaderMap) -> bool {
    let private = headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("private") || v.contains("no-store")
        })
    });
    !private && !headers.contains_key(SET_COOKIE) && !headers.contains_key(VARY)
}

/// What a GET is kept by: its path and query.
fn key(uri: &Uri) -> String {
    uri.path_and_query().map_or("/", |p| p.as_str()).to_owned()
}

// === impl LastGood ===

impl LastGood {
    /// The answer kept for `uri`, if fresh.
    fn get(&self, uri: &Uri) -> Option<Response<MeshBody>> {
        let kept = self.kept.lock().ok()?;
        let entry = kept.get(&key(uri))?;
        if entry.at.elapsed() > self.max_age {
            return None;
        }
        Some(response(
            entry.status,
            entry.headers.clone(),
            entry.body.clone(),
        ))
    }

    /// Keeps `entry` for `key`, making room by forgetting the oldest.
    fn keep(&self, key: String, entry: Kept) {
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.len() >= MAX_KEPT && !kept.contains_key(&key) {
            let oldest = kept
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                kept.remove(&oldest);
            }
        }
        kept.insert(key, entry);
    }
}

// === impl Capture ===

impl Capture {
    /// Adds a chunk of the body; `false` when the answer grew too big to
    /// keep.
    pub(crate) fn add(&mut self, data: &Bytes) -> bool {
        if self.body.len() + data.len() > MAX_KEPT_BODY {
            return false;
        }
        self.body.extend_from_slice(data);
        true
    }

    /// Keeps the whole answer as its path's last good one.
    pub(crate) fn keep(self) {
        let entry = Kept {
            at: Instant::now(),
            status: self.status,
            headers: self.headers,
            body: self.body.freeze(),
        };
        self.into.keep(self.key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(body: &'static str, at: Instant) -> Kept {
        Kept {
            at,
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn last_good_answers_are_bounded_by_path_count_and_body_size() {
        let last_good = LastGood {
            max_age: Duration::from_secs(60),
            kept: Mutex::default(),
        };
        // Request paths are caller input: the map never grows past its cap,
        // and the oldest path makes room.
        let start = Instant::now();
        for i in 0..(MAX_KEPT + 50) {
            let at = start + Duration::from_millis(i as u64);
            last_good.keep(format!("/item/{i}"), kept("x", at));
        }
        let uri = |path: &str| path.parse::<Uri>().expect("uri");
        assert_eq!(last_good.kept.lock().map(|k| k.len()).ok(), Some(MAX_KEPT));
        assert!(last_good.get(&uri("/item/0")).is_none());
        assert!(last_good
            .get(&uri(&format!("/item/{}", MAX_KEPT + 49)))
            .is_some());

        let mut capture = Capture {
            into: Arc::new(last_good),
            key: "/big".to_owned(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: BytesMut::new(),
        };
        assert!(capture.add(&Bytes::from(vec![0; MAX_KEPT_BODY])));
        assert!(!capture.add(&Bytes::from_static(b"one byte too many")));
    }
}

#[cfg(test)]
mod capture_tests {
    use super::*;

    #[test]
    fn a_fallback_cause_prints_no_secret() {
        let uri: Uri = "http://admin:hunter2@users/api?token=s3cret"
            .parse()
            .unwrap();
        let cause = FallbackCause {
            service: &ServiceName::new("users").unwrap(),
            method: &Method::GET,
            uri: &uri,
            error: None,
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
        };
        let printed = format!("{cause:?}");
        assert!(printed.contains("users/api"), "{printed}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
    }

    fn fallback() -> Fallback {
        let config = FallbackConfig {
            last_good: Some(Duration::from_secs(60)),
            ..FallbackConfig::default()
        };
        Fallback::new(Some(&config), None).expect("a fallback")
    }

    fn asked(headers: &[(&str, &str)]) -> Asked {
        let mut req = http::Request::get("http://users/api/me")
            .body(())
            .expect("request");
        for (name, value) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        Asked::of(&req)
    }

    fn answer(headers: &[(&str, &str)]) -> Response<()> {
        let mut response = Response::new(());
        for (name, value) in headers {
            response.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        response
    }

    #[test]
    fn only_answers_any_caller_may_be_given_are_kept() {
        let f = fallback();
        assert!(f.capture(&asked(&[]), &answer(&[])).is_some());
        // One caller's answer is never kept for another.
        for personal in [("authorization", "Bearer a"), ("cookie", "session=1")] {
            assert!(
                f.capture(&asked(&[personal]), &answer(&[])).is_none(),
                "{personal:?}"
            );
        }
        for marked in [
            ("cache-control", "private, max-age=60"),
            ("cache-control", "no-store"),
            ("set-cookie", "session=1"),
            ("vary", "accept-language"),
        ] {
            assert!(
                f.capture(&asked(&[]), &answer(&[marked])).is_none(),
                "{marked:?}"
            );
        }
    }

    #[test]
    fn a_kept_answer_keeps_the_headers_that_say_how_to_read_it() {
        let f = fallback();
        let response = answer(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("etag", "\"v1\""),
            ("x-request-id", "one caller's"),
        ]);
        let mut capture = f.capture(&asked(&[]), &response).expect("kept");
        assert!(capture.add(&Bytes::from_static(b"\x1f\x8b")));
        capture.keep();
        let uri: Uri = "http://users/api/me".parse().expect("uri");
        let cause = FallbackCause {
            service: &ServiceName::new("users").expect("name"),
            method: &Method::GET,
            uri: &uri,
            error: None,
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
        };
        let replayed = f.answer(&cause).expect("the last good answer");
        let headers = replayed.headers();
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(headers["etag"], "\"v1\"");
        assert!(!headers.contains_key("x-request-id"));
    }
}
