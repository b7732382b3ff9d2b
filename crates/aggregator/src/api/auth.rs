//! Which token each route needs (the classes are `pollux_transport::auth`'s), checked before any
//! handler runs, for the API and the portal alike, and for paths that match no route (so a
//! caller without a token learns nothing of which paths exist).
//!
//! ```text
//!   /health, /health/active, /api/v1/openapi.json   open (load balancers; no data)
//!   PUT /api/v1/dto/{id}, PUT /api/v1/collectors/{id}   ingest
//!   any other POST, PUT, DELETE, PATCH              admin (failover, maintenance, rules, acks,
//!                                                   forgetting a collector)
//!   any other GET or HEAD                           read (queries, status, metrics, portal)
//! ```

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pollux_transport::auth::{Class, Denied, TokenFiles};
use std::sync::Arc;

/// The class of a request, by method and path alone.
pub fn class_of(method: &Method, path: &str) -> Class {
    let ingest_path = |p: &str| {
        p.strip_prefix("/api/v1/dto/")
            .or_else(|| p.strip_prefix("/api/v1/collectors/"))
            .is_some_and(|id| !id.is_empty())
    };
    match (method, path) {
        (&Method::GET | &Method::HEAD, "/health" | "/health/active" | "/api/v1/openapi.json") => Class::Open,
        (&Method::GET | &Method::HEAD, _) => Class::Read,
        (&Method::PUT, p) if ingest_path(p) => Class::Ingest,
        _ => Class::Admin,
    }
}

/// The middleware: 401 or 403 before the handler, or the handler's answer.
pub async fn check(State(tokens): State<Arc<TokenFiles>>, request: Request, next: Next) -> Response {
    let class = class_of(request.method(), request.uri().path());
    let authorization = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if let Err(denied) = tokens.current().check(class, authorization) {
        return refusal(class, denied, request.uri().path());
    }
    if class != Class::Open && !matches!(*request.method(), Method::GET | Method::HEAD) {
        if let Some(refused) = cross_site_basic(request.headers(), authorization) {
            return refused;
        }
    }
    next.run(request).await
}

/// A browser that logged in to the portal (Basic, the token as password) sends that login with
/// every request to the site, a form posted from another site's page included. A change made
/// with Basic credentials must therefore come from the portal's own pages: the browser says so
/// in `Sec-Fetch-Site`, or in an `Origin` naming this host. Bearer tokens are never added by a
/// browser on its own, so they need no such proof.
fn cross_site_basic(headers: &axum::http::HeaderMap, authorization: Option<&[u8]>) -> Option<Response> {
    let basic =
        authorization.is_some_and(|a| a.trim_ascii_start().get(..6).is_some_and(|s| s.eq_ignore_ascii_case(b"basic ")));
    if !basic {
        return None;
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let same_site = match (text("sec-fetch-site"), text("origin"), text("host")) {
        (Some(site), _, _) => site == "same-origin",
        (None, Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, h)| h == host),
        _ => false,
    };
    (!same_site).then(|| {
        super::ApiError::new(
            StatusCode::FORBIDDEN,
            "a change made with a browser's password must come from the portal's own pages: \
             scripts and tools send Authorization: Bearer <token>",
        )
        .into_response()
    })
}

fn refusal(class: Class, denied: Denied, path: &str) -> Response {
    let (status, message) = match denied {
        Denied::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            format!("this route needs the {} token: send Authorization: Bearer <token>", class.name()),
        ),
        Denied::WrongClass => {
            (StatusCode::FORBIDDEN, format!("this route needs the {} token, not the one sent", class.name()))
        }
    };
    let mut response = super::ApiError::new(status, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        // A browser asks for the portal's password (the token) only when Basic is offered.
        let challenge = if path.starts_with("/api/") || path == "/metrics" {
            "Bearer realm=\"pollux\""
        } else {
            "Basic realm=\"pollux\", Bearer realm=\"pollux\""
        };
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_login_changes_nothing_from_another_site() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = axum::http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            h
        };
        let basic = Some(b"Basic eDphZG1pbg==".as_slice());
        let bearer = Some(b"Bearer admin".as_slice());
        assert!(cross_site_basic(&headers(&[("sec-fetch-site", "cross-site")]), basic).is_some());
        assert!(
            cross_site_basic(&headers(&[("origin", "https://evil.example"), ("host", "da1:8581")]), basic).is_some()
        );
        assert!(cross_site_basic(&headers(&[]), basic).is_some());
        assert!(cross_site_basic(&headers(&[("sec-fetch-site", "same-origin")]), basic).is_none());
        assert!(cross_site_basic(&headers(&[("origin", "https://da1:8581"), ("host", "da1:8581")]), basic).is_none());
        assert!(cross_site_basic(&headers(&[("sec-fetch-site", "cross-site")]), bearer).is_none());
        assert!(cross_site_basic(&headers(&[]), None).is_none());
    }

    #[test]
    fn every_route_has_the_class_the_readme_gives() {
        let table = [
            (Method::GET, "/health", Class::Open),
            (Method::GET, "/health/active", Class::Open),
            (Method::GET, "/api/v1/openapi.json", Class::Open),
            (Method::POST, "/health", Class::Admin),
            (Method::PUT, "/api/v1/dto/a.b.1.0", Class::Ingest),
            (Method::GET, "/api/v1/dto/a.b.1.0", Class::Read),
            (Method::PUT, "/api/v1/dto/", Class::Admin),
            (Method::PUT, "/api/v1/collectors/dc1", Class::Ingest),
            (Method::DELETE, "/api/v1/collectors/dc1", Class::Admin),
            (Method::POST, "/api/v1/dto/x", Class::Admin),
            (Method::POST, "/api/v1/failover", Class::Admin),
            (Method::POST, "/api/v1/maintenance", Class::Admin),
            (Method::POST, "/api/v1/thresholds", Class::Admin),
            (Method::PUT, "/api/v1/thresholds/3", Class::Admin),
            (Method::DELETE, "/api/v1/thresholds/3", Class::Admin),
            (Method::POST, "/api/v1/events/9/ack", Class::Admin),
            (Method::GET, "/api/v1/series", Class::Read),
            (Method::GET, "/api/v1/status", Class::Read),
            (Method::GET, "/metrics", Class::Read),
            (Method::GET, "/devices/core-1", Class::Read),
            (Method::HEAD, "/", Class::Read),
            (Method::GET, "/no/such/path", Class::Read),
            (Method::PATCH, "/no/such/path", Class::Admin),
        ];
        for (method, path, class) in table {
            assert_eq!(class_of(&method, path), class, "{method} {path}");
        }
    }
}
