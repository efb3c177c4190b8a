//! The cardholder's recharge page (`web/`), served under `/pay/` as it is: plain
//! JavaScript, no build step, no external resource (docs/agent.md "The page"). It talks to
//! `cardvm agent` on the cardholder's machine; the Content-Security-Policy lets it reach
//! nothing else.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::Service;

const INDEX: &str = include_str!("../../../web/index.html");
const APP: &str = include_str!("../../../web/app.js");
const STYLE: &str = include_str!("../../../web/style.css");

/// Scripts and styles only from this origin; connections only to itself and the local
/// agent; no frames, no forms elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self' http://127.0.0.1:* http://localhost:*; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The page's routes.
pub(super) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/pay", get(|| async { Redirect::permanent("/pay/") }))
        .route(
            "/pay/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/pay/app.js",
            get(|| async { asset(APP, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/pay/style.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}
