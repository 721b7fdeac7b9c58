//! The admin console at `/admin`: a page, a script and a style sheet embedded in the binary
//! (plain HTML/JS/CSS in `src/http/console/`, no build step). The assets are public; every API
//! call the console makes needs the admin grant. Served with `Cache-Control: no-cache` (a new
//! binary's console is picked up at once) and a strict Content-Security-Policy: nothing but
//! this origin, no inline script or style, no framing.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::ApiError;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Everything from this origin only; no inline code, no plugins, no framing, no `<base>`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

fn asset_response(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /admin`, `GET /admin/`
pub(super) async fn page() -> Response {
    asset_response("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /admin/{file}`: `index.html`, `console.js`, `console.css`; anything else is the JSON 404.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "index.html" => asset_response("text/html; charset=utf-8", INDEX_HTML),
        "console.js" => asset_response("text/javascript; charset=utf-8", CONSOLE_JS),
        "console.css" => asset_response("text/css; charset=utf-8", CONSOLE_CSS),
        _ => ApiError::NotFound {
            code: "not_found",
            message: "no such console file".into(),
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn assets_have_their_type_and_the_policy() {
        for (file, ty) in [
            ("console.js", "text/javascript; charset=utf-8"),
            ("console.css", "text/css; charset=utf-8"),
            ("index.html", "text/html; charset=utf-8"),
        ] {
            let r = asset(Path(file.to_owned())).await;
            assert_eq!(r.status(), 200, "{file}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], ty);
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
            assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'"));
        }
        let r = asset(Path("../Cargo.toml".to_owned())).await;
        assert_eq!(r.status(), 404);
        assert_eq!(page().await.status(), 200);
    }

    /// The page loads its script and style from the routed paths, with no inline code (the
    /// policy would block it).
    #[test]
    fn page_has_no_inline_code() {
        assert!(INDEX_HTML.contains(r#"src="/admin/console.js""#));
        assert!(INDEX_HTML.contains(r#"href="/admin/console.css""#));
        assert!(!INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains(" style="));
        // No event handler attributes (` onclick=`…).
        let lower = INDEX_HTML.to_ascii_lowercase();
        for (at, _) in lower.match_indices(" on") {
            let rest = &lower[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            assert!(
                name_len == 0 || !rest[name_len..].starts_with('='),
                "an inline handler at {at}"
            );
        }
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!CONSOLE_JS.contains("innerHTML"));
    }
}
