//! Dreaming through ComfyUI: keyframes made by img2img on the previous keyframe, in a feedback
//! loop (issue 13; the original's core, `shared/reference/original-system.md` §2.2).
//!
//! The module is self-contained so the daemon wires it in one place:
//!
//! - [`config`]: the `[comfyui]` table ([`ComfyUiConfig`]) with key-naming validation;
//! - [`protocol`]: ComfyUI's HTTP and WebSocket messages as typed serde structs, shared by the
//!   client and the replaying test server;
//! - [`workflow`]: the built-in img2img/txt2img graphs (core nodes only), user workflows with
//!   placeholders, and validation against the server's `/object_info`;
//! - [`client`]: the robust client (one persistent WebSocket, our own prompt ids, reconcile
//!   after reconnects, deadlines, cancelling only our prompt);
//! - [`source`]: [`ComfyUiSource`], the `comfyui` keyframe source (img2img of the displayed
//!   keyframe, fitted and encoded to the pipeline's latent);
//! - [`fallback`]: [`FallbackSource`], which plays another source while the server is away;
//! - [`health`]: [`ComfyUiHealth`], the shared status handle behind `comfyui_status`;
//! - [`replay`]: a ComfyUI that replays the recorded protocol, for the tests and
//!   `dreamd bench comfyui`.
//!
//! Wiring, in the daemon: build `ComfyUiSource::new(config.comfyui, engine, SourceOptions {
//! fit, lock_timeout, initial_picture, .. })`, keep `source.health()` (for `status.json` and
//! `/metrics`) and `source.feedback()` (to feed back the displayed keyframe), optionally call
//! `source.preflight().await` at start-up (a `SourceError::Invalid` is a config error), then
//! box `FallbackSource::new(source, fallback)` as the `KeyframeSource`.

pub mod client;
pub mod config;
pub mod fallback;
pub mod health;
pub mod protocol;
pub mod replay;
pub mod source;
pub mod workflow;

pub use client::{ClientOptions, ComfyClient, ComfyError};
pub use config::{ComfyUiConfig, FallbackChoice, SeedChoice, WorkflowChoice};
pub use fallback::FallbackSource;
pub use health::{ComfyUiHealth, ComfyUiStatus, HealthSnapshot, KeyframeOrigin, KeyframeReport};
pub use source::{ComfyUiSource, FeedbackHandle, ServerInfo, SourceError, SourceOptions};
pub use workflow::{Workflow, WorkflowError};
