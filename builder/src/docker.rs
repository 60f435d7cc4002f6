//! The Docker engine's HTTP API over its unix socket: the `/grpc` and `/session` upgrades that reach
//! its embedded BuildKit, and the image push that follows a `moby` export.

use std::path::Path;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::error::{Error, Result};

/// An HTTP/1.1 request on a fresh connection to the engine; the connection task allows upgrades.
async fn send(socket: &Path, req: Request<Empty<Bytes>>) -> std::io::Result<http::Response<hyper::body::Incoming>> {
    let stream = UnixStream::connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "engine connection ended");
        }
    });
    sender.send_request(req).await.map_err(std::io::Error::other)
}

/// `POST path` with `Upgrade: h2c`; the engine answers 101 and the connection becomes HTTP/2.
pub(crate) async fn upgrade(socket: &Path, path: &str, headers: &[(String, String)]) -> std::io::Result<Upgraded> {
    let mut req = Request::post(path).header("Host", "docker").header("Connection", "Upgrade").header("Upgrade", "h2c");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::new()).map_err(std::io::Error::other)?;
    let resp = send(socket, req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(std::io::Error::other(format!(
            "POST {path} answered {status} instead of 101 Switching Protocols ({}); is this a Docker engine with BuildKit (20.10 or newer)?",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    hyper::upgrade::on(resp).await.map_err(std::io::Error::other)
}

/// The engine's version (`GET /version`), to check that the socket is a Docker engine.
pub(crate) async fn version(socket: &Path) -> std::io::Result<String> {
    let req = Request::get("/version").header("Host", "docker").body(Empty::new()).map_err(std::io::Error::other)?;
    let resp = send(socket, req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    if !status.is_success() {
        return Err(std::io::Error::other(format!("GET /version answered {status}")));
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| std::io::Error::other(format!("GET /version: not JSON: {e}")))?;
    Ok(json.get("Version").and_then(|v| v.as_str()).unwrap_or("unknown").to_string())
}

/// `GET path` on the engine, the body left to stream.
pub(crate) async fn get(socket: &Path, path: &str) -> std::io::Result<http::Response<hyper::body::Incoming>> {
    let req = Request::get(path).header("Host", "docker").body(Empty::new()).map_err(std::io::Error::other)?;
    send(socket, req).await
}

/// `DELETE /images/{name}`: removes a local tag (the layers stay while other images use them).
pub(crate) async fn remove_image(socket: &Path, name: &str) -> std::io::Result<()> {
    let req = Request::delete(format!("/images/{name}")).header("Host", "docker").body(Empty::new()).map_err(std::io::Error::other)?;
    let resp = send(socket, req).await?;
    if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("DELETE /images/{name} answered {}", resp.status())))
    }
}

/// Registry credentials in the engine's `X-Registry-Auth` form (base64url JSON).
pub(crate) fn registry_auth_header(registry: &str, username: &str, password: &str) -> String {
    let json = serde_json::json!({ "username": username, "password": password, "serveraddress": registry });
    base64::engine::general_purpose::URL_SAFE.encode(json.to_string())
}

/// Pushes `repository:tag` from the engine's image store; returns the pushed manifest digest.
/// `progress` receives the engine's status lines.
pub(crate) async fn push(socket: &Path, repository: &str, tag: &str, auth: &str, mut progress: impl FnMut(&str)) -> Result<String> {
    let image = format!("{repository}:{tag}");
    let fail = |cause: String| Error::EnginePush { image: image.clone(), cause };
    let req = Request::post(format!("/images/{repository}/push?tag={tag}"))
        .header("Host", "docker")
        .header("X-Registry-Auth", auth)
        .body(Empty::new())
        .map_err(|e| fail(e.to_string()))?;
    let resp = send(socket, req).await.map_err(|e| fail(format!("engine unreachable: {e}")))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    let mut digest = None;
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(format!("engine stream cut: {e}")))?;
        let Some(data) = frame.data_ref() else { continue };
        pending.extend_from_slice(data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
            if let Some(err) = msg.get("error").and_then(|v| v.as_str()) {
                return Err(fail(err.to_string()));
            }
            if let Some(d) = msg.pointer("/aux/Digest").and_then(|v| v.as_str()) {
                digest = Some(d.to_string());
            }
            if let Some(s) = msg.get("status").and_then(|v| v.as_str()) {
                let line = match msg.get("id").and_then(|v| v.as_str()) {
                    Some(id) => format!("{id}: {s}"),
                    None => s.to_string(),
                };
                progress(&line);
            }
        }
        if !status.is_success() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    if !status.is_success() {
        let message =
            serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string)).unwrap_or(text);
        return Err(fail(format!("{status}: {}", message.trim())));
    }
    digest.ok_or_else(|| fail("the engine reported no digest".into()))
}
