//! The tiny GRIP backend behind pushpin: every `GET /stream/{channel}` is answered with a
//! stream hold on that channel (`Grip-Hold: stream`, `Grip-Channel`), and an SSE comment as
//! the first bytes of the stream. pushpin then keeps the client connection open and sends it
//! whatever is published to the channel.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

async fn hold(Path(channel): Path<String>) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("grip-hold", HeaderValue::from_static("stream"));
    match HeaderValue::from_str(&channel) {
        Ok(v) => {
            headers.insert("grip-channel", v);
            (StatusCode::OK, headers, ": ok\n\n")
        }
        Err(_) => (StatusCode::BAD_REQUEST, HeaderMap::new(), "bad channel\n"),
    }
}

pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let addr = ssegate_loadgen::wire::Url::parse(&format!("http://{listen}"))?.addr;
    // A long accept queue: pushpin's zurl opens many backend connections at once during a
    // connection storm (tokio's default of 128 made it answer 502).
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    eprintln!(
        "grip backend listening on http://{}",
        listener.local_addr()?
    );
    let app = Router::new().route("/stream/{channel}", get(hold));
    axum::serve(listener, app).await?;
    Ok(())
}
