//! dreamd: a realtime frame-generation daemon.
//!
//! Keyframes come from a [`keyframes`] source; the [`pipeline`] slerps the in-between
//! [`latent`]s of each pair, decodes them in one batched call under the [`engine`]'s GPU lock,
//! and saves the encoded frames into the [`buffer`]. The [`display`] plays them at the target
//! rate and publishes the current frame; the [`status`] writer keeps `status.json` current.
//! [`daemon`] wires these together; the README's architecture section draws the flow.

pub mod analyze;
pub mod atomic_file;
pub mod bench;
pub mod buffer;
pub mod clock;
pub mod comfyui;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod direction;
pub mod display;
pub mod engine;
pub mod events;
pub mod faults;
pub mod frame;
pub mod keyframes;
pub mod latent;
pub mod limits;
pub mod log_files;
pub mod logging;
pub mod output_lock;
pub mod pipeline;
pub mod priority;
pub mod pull;
pub mod regular_file;
pub mod server;
pub mod service;
pub mod stats;
pub mod status;
pub mod test_weights;
