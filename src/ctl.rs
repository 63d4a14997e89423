//! `dreamd ctl`: a small HTTP client for a running daemon's `/status` and `/control/*`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::config::ServerConfig;

/// How long `ctl` waits for the daemon.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What `dreamd ctl` asks for (its subcommands). Control needs the token (DREAMD_TOKEN, else
/// server.token) when the daemon has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Action {
    /// Print the daemon's state, display, buffer and generation figures.
    Status,
    /// Stop generating and hold the display on the current frame.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Jump to the next keyframe.
    Skip,
    /// Move the keyframe source to its next theme.
    NextTheme,
}

impl Action {
    /// The control route's last segment (None for status).
    fn control_path(self) -> Option<&'static str> {
        match self {
            Action::Status => None,
            Action::Pause => Some("pause"),
            Action::Resume => Some("resume"),
            Action::Skip => Some("skip"),
            Action::NextTheme => Some("next-theme"),
        }
    }
}

/// The daemon's base URL from its `[server]` config: the bind address, with a wildcard
/// address (0.0.0.0, ::) replaced by loopback.
pub fn url_from_config(server: &ServerConfig) -> anyhow::Result<String> {
    let addr = server.bind_addr()?;
    anyhow::ensure!(
        addr.port() != 0,
        "server.bind {addr} picks a free port at start-up; pass the daemon's --url \
         (it is in status.json under server.url)"
    );
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!("http://{}", SocketAddr::new(ip, addr.port())))
}

/// Runs `action` against the daemon at `base_url`; returns the text to print.
pub fn run(
    base_url: &str,
    token: Option<&str>,
    action: Action,
    json: bool,
) -> anyhow::Result<String> {
    let base = base_url.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let (url, response) = match action.control_path() {
        None => {
            let url = format!("{base}/status");
            let response = agent.get(&url).call();
            (url, response)
        }
        Some(path) => {
            let url = format!("{base}/control/{path}");
            // JSON (a non-simple content type) marks the request as not coming from a web page.
            let mut request = agent.post(&url).header("Content-Type", "application/json");
            if let Some(token) = token {
                request = request.header("Authorization", &format!("Bearer {token}"));
            }
            (url.clone(), request.send("{}"))
        }
    };
    let mut response =
        response.with_context(|| format!("cannot reach the daemon at {url} (is it running?)"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("cannot read the answer from {url}"))?;
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    if !status.is_success() {
        let reason = parsed
            .as_ref()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        anyhow::bail!("{url} answered {status}: {reason}");
    }
    let parsed = parsed.with_context(|| format!("{url} did not answer JSON: {body}"))?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&parsed)?));
    }
    Ok(match action {
        Action::Status => summary(&parsed),
        _ => format!(
            "{}: ok (state {})\n",
            parsed["action"].as_str().unwrap_or("?"),
            parsed["state"].as_str().unwrap_or("?")
        ),
    })
}

/// A few lines from the status document.
fn summary(status: &Value) -> String {
    let d = &status["display"];
    let b = &status["buffer"];
    let g = &status["generation"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    format!(
        "state      {}\n\
         display    frame {} at {} fps (target {})\n\
         buffer     {} s of {} s ({} %)\n\
         generation {} keyframes, {} in-betweens ({} on {}, source {})\n\
         theme      {}\n",
        text(&status["state"]),
        text(&d["current_sequence"]),
        text(&d["actual_fps"]),
        text(&d["target_fps"]),
        text(&b["seconds"]),
        text(&b["target_seconds"]),
        text(&b["percentage"]),
        text(&g["keyframes"]),
        text(&g["interpolated_frames"]),
        text(&g["decoder"]),
        text(&g["device"]),
        text(&g["source"]),
        text(&status["theme"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(bind: &str) -> ServerConfig {
        ServerConfig {
            bind: bind.to_string(),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn url_comes_from_the_bind_address() {
        assert_eq!(
            url_from_config(&server("127.0.0.1:8765")).unwrap(),
            "http://127.0.0.1:8765"
        );
        assert_eq!(
            url_from_config(&server("0.0.0.0:9000")).unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            url_from_config(&server("[::]:9000")).unwrap(),
            "http://[::1]:9000"
        );
        assert!(url_from_config(&server("127.0.0.1:0"))
            .unwrap_err()
            .to_string()
            .contains("--url"));
    }
}
