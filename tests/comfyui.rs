//! The ComfyUI client and keyframe source against the replaying ComfyUI (`comfyui::replay`),
//! one test per recorded behaviour and failure: the happy path, a cached result, a validation
//! 400, a runtime error, interrupt and queue delete (only our prompt), a WebSocket drop with a
//! prompt-less `executing`, binary frames of both kinds, a server that never answers, one that
//! dies mid-run and comes back, and the JSON-`null` interrupt 500.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dreamd::comfyui::client::{ClientOptions, ComfyClient, ComfyError, GenerateRequest};
use dreamd::comfyui::protocol::{InterruptRequest, PromptRequest, QueueDelete};
use dreamd::comfyui::replay::{silent_server, Options, Replay, ReplayError, Scenario};
use dreamd::comfyui::workflow::{Values, Workflow};
use dreamd::comfyui::{
    ComfyUiConfig, ComfyUiHealth, ComfyUiSource, ComfyUiStatus, FallbackSource, SourceOptions,
};
use dreamd::keyframes::KeyframeSource;

fn fast_options() -> ClientOptions {
    ClientOptions {
        http_timeout: Duration::from_secs(2),
        object_info_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        ws_wait: Duration::from_secs(2),
        reconcile_interval: Duration::from_millis(100),
        safety_poll: Duration::from_secs(5),
        ping_interval: Duration::from_secs(5),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        max_body_bytes: 16 << 20,
    }
}

fn client(url: &str) -> ComfyClient {
    ComfyClient::new(
        url,
        fast_options(),
        ComfyUiHealth::new(ComfyUiStatus::Unreachable),
    )
    .unwrap()
}

fn picture() -> image::RgbImage {
    image::RgbImage::from_fn(512, 256, |x, y| {
        image::Rgb([(x / 2) as u8, y as u8, ((x + y) / 3) as u8])
    })
}

fn png(picture: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn values() -> Values {
    Values::from_config(&ComfyUiConfig::default(), 512, 256)
}

fn request(deadline: Duration) -> GenerateRequest {
    GenerateRequest {
        workflow: Workflow::img2img(),
        values: values(),
        input_png: Some(png(&picture())),
        deadline,
    }
}

/// The replaying ComfyUI with `options`, or None after a loud skip when the recordings it
/// serves are not there (a failure under `DREAMD_REQUIRE_MODELS` / `DREAMD_REQUIRE_TOOLS`, as
/// in CI).
async fn start(options: Options) -> Option<Replay> {
    match Replay::start(options).await {
        Ok(server) => Some(server),
        Err(e @ (ReplayError::Read { .. } | ReplayError::Parse { .. })) => {
            dreamd::test_weights::skip(&format!(
                "the ComfyUI recordings (../shared/comfyui/recordings, or \
                 $DREAMD_SHARED/comfyui/recordings): {e}"
            ));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

async fn replay(scenario: Scenario) -> Option<Replay> {
    start(Options {
        scenario,
        ..Options::default()
    })
    .await
}

/// Waits until `f` holds, up to `limit`.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

fn prompt_ids(server: &Replay) -> Vec<String> {
    server
        .requests("POST", "/prompt")
        .iter()
        .filter_map(|l| serde_json::from_str::<PromptRequest>(&l.body).ok())
        .filter_map(|r| r.prompt_id)
        .collect()
}

/// Every interrupt carried a prompt id (never bare, never `null`), and none was a queue clear.
fn assert_only_scoped_cancels(server: &Replay) {
    for l in server.requests("POST", "/interrupt") {
        serde_json::from_str::<InterruptRequest>(&l.body)
            .unwrap_or_else(|e| panic!("unscoped interrupt {:?}: {e}", l.body));
    }
    for l in server.requests("POST", "/queue") {
        serde_json::from_str::<QueueDelete>(&l.body)
            .unwrap_or_else(|e| panic!("queue request other than delete {:?}: {e}", l.body));
    }
    assert_eq!(
        server
            .shared
            .bare_interrupts
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_opens_the_socket_first_and_cleans_up() {
    let Some(server) = replay(Scenario::Happy).await else {
        return;
    };
    let client = client(&server.url);
    let done = client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap();
    let picture_out = image::load_from_memory(&done.image).unwrap().to_rgb8();
    let mut expected = picture();
    image::imageops::invert(&mut expected);
    assert_eq!(picture_out, expected, "the server's img2img of our upload");
    assert!(!done.cached);
    assert!(done.source.starts_with("dreamd_"), "{}", done.source);

    // The socket was open before the prompt, with our UUID client id.
    let log = server.shared.log.lock().clone();
    let ws_at = log
        .iter()
        .position(|l| l.path.starts_with("/ws?clientId="))
        .unwrap();
    let prompt_at = log.iter().position(|l| l.path == "/prompt").unwrap();
    assert!(ws_at < prompt_at, "WebSocket opened after the prompt");
    assert!(log[ws_at].path.ends_with(client.client_id()));
    assert!(uuid::Uuid::parse_str(client.client_id()).is_ok());
    let sent: PromptRequest = serde_json::from_str(&log[prompt_at].body).unwrap();
    assert_eq!(sent.client_id, client.client_id());
    assert_eq!(sent.prompt_id.as_deref(), Some(done.prompt_id.as_str()));
    assert!(uuid::Uuid::parse_str(&done.prompt_id).is_ok());
    assert_eq!(
        server
            .shared
            .feature_flags_seen
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Our history entry is deleted after the fetch.
    assert!(eventually(Duration::from_secs(2), || server.history_len() == 0).await);
    assert!(!server.requests("POST", "/history").is_empty());
    assert!(server.requests("POST", "/interrupt").is_empty());
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.health().status(), ComfyUiStatus::Connected);

    // Upload names: per client, from a small ring.
    let second = client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_ne!(second.prompt_id, done.prompt_id);
    let short = &client.client_id()[..8];
    assert!(server.upload(&format!("dreamd-{short}-0.png")).is_some());
    assert!(server.upload(&format!("dreamd-{short}-1.png")).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_result_still_gives_the_picture() {
    let Some(server) = replay(Scenario::Cached).await else {
        return;
    };
    let client = client(&server.url);
    let done = client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(
        done.cached,
        "execution_cached listed the nodes and none ran"
    );
    assert!(image::load_from_memory(&done.image).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_400_names_the_node_errors() {
    let Some(server) = replay(Scenario::Validation).await else {
        return;
    };
    let client = client(&server.url);
    let err = client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, ComfyError::Rejected { .. }), "{err:?}");
    let text = err.to_string();
    for part in [
        "Prompt outputs failed validation",
        "node 1 (LoadImage)",
        "Invalid image file: no_such_file.png",
    ] {
        assert!(text.contains(part), "{text}");
    }
    assert!(!err.is_unreachable());
    // Refused before queueing: nothing to cancel.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.requests("POST", "/queue").is_empty());
    assert!(server.requests("POST", "/interrupt").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_error_carries_the_servers_message() {
    let Some(server) = replay(Scenario::RuntimeError).await else {
        return;
    };
    let client = client(&server.url);
    let err = client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap_err();
    match &err {
        ComfyError::Execution {
            node,
            node_type,
            exception_type,
            message,
            ..
        } => {
            assert_eq!(node, "3");
            assert_eq!(node_type, "SaveImage");
            assert_eq!(exception_type, "Exception");
            assert!(
                message.contains("Saving image outside the output folder"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        eventually(Duration::from_secs(2), || server.history_len() == 0).await,
        "{:#?}",
        server.shared.log.lock()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_interrupts_only_our_prompt_on_an_old_server() {
    let Some(server) = replay(Scenario::Stall).await else {
        return;
    };
    let client = client(&server.url);
    let start = Instant::now();
    let err = client
        .generate(request(Duration::from_millis(800)))
        .await
        .unwrap_err();
    assert!(matches!(err, ComfyError::Deadline { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let id = prompt_ids(&server).pop().unwrap();
    // Queue delete, then the jobs API (404 on 0.3.59), then a prompt-scoped interrupt.
    let deletes = server.requests("POST", "/queue");
    assert_eq!(
        serde_json::from_str::<QueueDelete>(&deletes[0].body)
            .unwrap()
            .delete,
        std::slice::from_ref(&id)
    );
    assert_eq!(
        server
            .requests("POST", &format!("/api/jobs/{id}/cancel"))
            .len(),
        1
    );
    let interrupts = server.requests("POST", "/interrupt");
    assert_eq!(interrupts.len(), 1);
    assert_eq!(
        serde_json::from_str::<InterruptRequest>(&interrupts[0].body)
            .unwrap()
            .prompt_id,
        id
    );
    assert_only_scoped_cancels(&server);
    // The run really stopped, and its history entry is forgotten.
    assert!(eventually(Duration::from_secs(2), || server.queued_ids().is_empty()).await);
    assert!(eventually(Duration::from_secs(4), || server.history_len() == 0).await);

    // The client remembers the server has no jobs API.
    let _ = client.generate(request(Duration::from_millis(500))).await;
    assert_eq!(server.requests("POST", "/api/jobs/").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_uses_the_jobs_api_where_the_server_has_it() {
    let Some(server) = start(Options {
        scenario: Scenario::Stall,
        jobs_api: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let client = client(&server.url);
    let err = client
        .generate(request(Duration::from_millis(800)))
        .await
        .unwrap_err();
    assert!(matches!(err, ComfyError::Deadline { .. }), "{err:?}");
    let id = prompt_ids(&server).pop().unwrap();
    assert_eq!(
        server
            .requests("POST", &format!("/api/jobs/{id}/cancel"))
            .len(),
        1
    );
    assert!(server.requests("POST", "/interrupt").is_empty());
    assert!(eventually(Duration::from_secs(2), || server.queued_ids().is_empty()).await);
    assert_only_scoped_cancels(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_from_elsewhere_ends_the_keyframe_with_its_node() {
    let Some(server) = replay(Scenario::Stall).await else {
        return;
    };
    let client = Arc::new(client(&server.url));
    let task = {
        let client = Arc::clone(&client);
        tokio::spawn(async move { client.generate(request(Duration::from_secs(10))).await })
    };
    assert!(eventually(Duration::from_secs(5), || !server.queued_ids().is_empty()).await);
    let id = server.queued_ids()[0].clone();
    // Someone presses "cancel" on our job in ComfyUI's own UI.
    let http = ComfyClient::new(
        &server.url,
        fast_options(),
        ComfyUiHealth::new(ComfyUiStatus::Unreachable),
    )
    .unwrap();
    http.cancel(&id).await;
    let err = task.await.unwrap().unwrap_err();
    match err {
        ComfyError::Interrupted {
            node, node_type, ..
        } => {
            assert_eq!(node, "2");
            assert_eq!(node_type, "ImageBlur");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_prompt_is_deleted_from_the_queue_and_the_other_job_keeps_running() {
    let Some(server) = replay(Scenario::BehindOther).await else {
        return;
    };
    let client = client(&server.url);
    assert!(eventually(Duration::from_secs(2), || server.foreign_running()).await);
    let err = client
        .generate(request(Duration::from_millis(800)))
        .await
        .unwrap_err();
    assert!(matches!(err, ComfyError::Deadline { .. }), "{err:?}");
    let id = prompt_ids(&server).pop().unwrap();
    assert!(
        eventually(Duration::from_secs(2), || !server
            .queued_ids()
            .contains(&id))
        .await
    );
    assert!(server.foreign_running(), "another user's job was stopped");
    assert_only_scoped_cancels(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_drop_is_reconciled_through_the_history() {
    let Some(server) = replay(Scenario::WsDrop).await else {
        return;
    };
    let client = client(&server.url);
    let start = Instant::now();
    let done = client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(image::load_from_memory(&done.image).is_ok());
    assert!(client.ws_connections() >= 2, "the socket reconnected");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(!server
        .requests("GET", &format!("/history/{}", done.prompt_id))
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_and_unknown_messages_never_break_the_wait() {
    let Some(server) = replay(Scenario::Binary).await else {
        return;
    };
    let client = client(&server.url);
    let done = client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(
        done.source.starts_with("dreamd_"),
        "the SaveImage file: {}",
        done.source
    );
    assert!(
        client.skipped_frames() >= 2,
        "malformed text and binary frames are skipped"
    );
    // A second keyframe on the same socket.
    client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_image_websocket_result_comes_from_a_binary_frame() {
    let Some(server) = replay(Scenario::Binary).await else {
        return;
    };
    let client = client(&server.url);
    let workflow = Workflow::parse(
        r#"{"1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}}"#,
        "ws.json",
    )
    .unwrap();
    let done = client
        .generate(GenerateRequest {
            workflow,
            ..request(Duration::from_secs(10))
        })
        .await
        .unwrap();
    assert_eq!(done.source, "websocket:3");
    let mut expected = picture();
    image::imageops::invert(&mut expected);
    assert_eq!(
        image::load_from_memory(&done.image).unwrap().to_rgb8(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_fails_within_the_timeouts() {
    let (url, _task) = silent_server().await.unwrap();
    let client = client(&url);
    let start = Instant::now();
    let err = client
        .generate(request(Duration::from_secs(8)))
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(err.is_unreachable(), "{err:?}");
    // ws_wait (2 s) + one HTTP timeout (2 s), well inside the deadline.
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    assert!(err.to_string().contains(&url), "{err}");
    assert_eq!(client.health().status(), ComfyUiStatus::Unreachable);
    let t = Instant::now();
    assert!(client.system_stats().await.is_err());
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_dies_mid_run_and_comes_back() {
    let Some(server) = replay(Scenario::Stall).await else {
        return;
    };
    let client = Arc::new(client(&server.url));
    let task = {
        let client = Arc::clone(&client);
        tokio::spawn(async move { client.generate(request(Duration::from_secs(20))).await })
    };
    assert!(eventually(Duration::from_secs(5), || !server.queued_ids().is_empty()).await);
    let start = Instant::now();
    server.kill();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!client.ws_connected());
    server.set_scenario(Scenario::Happy);
    server.restart().await.unwrap();
    let err = task.await.unwrap().unwrap_err();
    // The restarted server knows nothing of our prompt: lost, long before the deadline.
    assert!(matches!(err, ComfyError::Lost { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // And the next keyframe works on the reconnected socket.
    let done = client
        .generate(request(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(image::load_from_memory(&done.image).is_ok());
    assert!(client.ws_connections() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_null_interrupt_is_a_500_and_the_client_never_sends_it() {
    let Some(server) = start(Options {
        scenario: Scenario::Stall,
        interrupt_fails: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    // The replay answers `null` the way ComfyUI 0.3.59 did.
    let raw = raw_post(&server, "/interrupt", "null").await;
    assert!(raw.starts_with("HTTP/1.1 500"), "{raw}");
    assert!(raw.contains("Server got itself in trouble"), "{raw}");

    // A server whose interrupt fails: the keyframe still ends at its deadline, cleanly.
    let client = client(&server.url);
    let start = Instant::now();
    let err = client
        .generate(request(Duration::from_millis(800)))
        .await
        .unwrap_err();
    assert!(matches!(err, ComfyError::Deadline { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let interrupts = server.requests("POST", "/interrupt");
    assert_eq!(interrupts.len(), 2, "ours plus the raw probe");
    assert!(interrupts
        .iter()
        .filter(|l| l.body != "null")
        .all(|l| { serde_json::from_str::<InterruptRequest>(&l.body).is_ok() }));
}

async fn raw_post(server: &Replay, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_keyframe_future_cancels_our_prompt() {
    let Some(server) = replay(Scenario::Stall).await else {
        return;
    };
    let client = client(&server.url);
    let dropped = tokio::time::timeout(
        Duration::from_millis(600),
        client.generate(request(Duration::from_secs(30))),
    )
    .await;
    assert!(dropped.is_err(), "the coordinator's own timeout fired");
    assert!(
        eventually(Duration::from_secs(3), || !server
            .requests("POST", "/interrupt")
            .is_empty())
        .await
    );
    assert!(eventually(Duration::from_secs(2), || server.queued_ids().is_empty()).await);
    assert_only_scoped_cancels(&server);
    assert_eq!(client.in_flight(), 0);
}

// ---------------------------------------------------------------------------------------------
// The keyframe source
// ---------------------------------------------------------------------------------------------

/// The TAESD engine the source encodes with, or None after a loud skip when the weights are
/// not found (a failure under `DREAMD_REQUIRE_MODELS`, as in CI).
fn taesd_engine() -> Option<Arc<dreamd::engine::Engine>> {
    let models = dreamd::test_weights::models_dir(dreamd::engine::taesd::Family::Taesd)?;
    let mut config = dreamd::config::Config::default();
    config.generation.decoder = dreamd::config::DecoderChoice::Taesd;
    config.generation.models_dir = Some(models);
    config.generation.decode_divisor = Some(1);
    Some(Arc::new(
        dreamd::engine::Engine::from_config(&config).unwrap(),
    ))
}

fn source_options() -> SourceOptions {
    SourceOptions {
        client: fast_options(),
        probe_min: Duration::from_millis(100),
        probe_max: Duration::from_millis(400),
        lock_timeout: Duration::from_secs(60),
        ..SourceOptions::default()
    }
}

fn comfy_config(url: &str) -> ComfyUiConfig {
    ComfyUiConfig {
        url: url.to_string(),
        timeout_seconds: 10.0,
        ..ComfyUiConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_feeds_each_keyframe_back_through_img2img() {
    let Some(engine) = taesd_engine() else {
        return;
    };
    let Some(server) = replay(Scenario::Happy).await else {
        return;
    };
    let mut source = ComfyUiSource::new(
        comfy_config(&server.url),
        Arc::clone(&engine),
        source_options(),
    )
    .unwrap();
    let info = source.preflight().await.unwrap();
    assert_eq!(info.version, "0.3.59");

    // Keyframe 0: txt2img, nothing uploaded; the recorded colour.
    let k0 = source.keyframe(0).await.unwrap();
    assert!(server.requests("POST", "/upload/image").is_empty());
    let p0 = k0.image.clone().unwrap();
    assert_eq!(p0.dimensions(), engine.output_size());
    assert_eq!(p0.get_pixel(10, 10).0, [54, 225, 195]);
    assert_eq!(k0.latent.shape(), engine.latent_shape());
    let first: PromptRequest =
        serde_json::from_str(&server.requests("POST", "/prompt")[0].body).unwrap();
    assert!(first
        .prompt
        .values()
        .any(|n| n["class_type"] == "EmptyLatentImage"));

    // Keyframe 1: img2img of keyframe 0's picture (uploaded as PNG), at denoise 0.2.
    let k1 = source.keyframe(1).await.unwrap();
    let uploads = server.requests("POST", "/upload/image");
    assert_eq!(uploads.len(), 1);
    let second: PromptRequest =
        serde_json::from_str(&server.requests("POST", "/prompt")[1].body).unwrap();
    let sampler = second
        .prompt
        .values()
        .find(|n| n["class_type"] == "KSampler")
        .unwrap();
    assert_eq!(sampler["inputs"]["denoise"], serde_json::json!(0.2));
    let loaded = second
        .prompt
        .values()
        .find(|n| n["class_type"] == "LoadImage")
        .unwrap();
    let name = loaded["inputs"]["image"].as_str().unwrap();
    let uploaded = image::load_from_memory(&server.upload(name).unwrap())
        .unwrap()
        .to_rgb8();
    assert_eq!(uploaded, p0, "keyframe 1 starts from keyframe 0's picture");
    let p1 = k1.image.unwrap();
    assert_eq!(p1.get_pixel(10, 10).0, [255 - 54, 255 - 225, 255 - 195]);

    let report = source.health().snapshot();
    assert_eq!(report.counters.ok, 2);
    let last = report.last.unwrap();
    assert_eq!(last.index, 1);
    assert_eq!(last.denoise, 0.2);
    assert_eq!(report.status, ComfyUiStatus::Connected);

    // The displayed keyframe can replace what feeds back (a blend, an injection).
    let shown = image::RgbImage::from_pixel(512, 256, image::Rgb([10, 20, 30]));
    source.feedback().set_picture(shown.clone());
    source.keyframe(2).await.unwrap();
    let third: PromptRequest =
        serde_json::from_str(&server.requests("POST", "/prompt")[2].body).unwrap();
    let loaded = third
        .prompt
        .values()
        .find(|n| n["class_type"] == "LoadImage")
        .unwrap();
    let uploaded = image::load_from_memory(
        &server
            .upload(loaded["inputs"]["image"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
    .to_rgb8();
    assert_eq!(uploaded, shown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_names_a_missing_checkpoint() {
    let Some(server) = start(Options {
        checkpoints: vec!["sd_xl_base_1.0.safetensors".into()],
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let Some(engine) = taesd_engine() else {
        return;
    };
    let mut source =
        ComfyUiSource::new(comfy_config(&server.url), engine, source_options()).unwrap();
    let err = source.preflight().await.unwrap_err().to_string();
    assert!(err.contains("\"v1-5-pruned-emaonly.safetensors\""), "{err}");
    assert!(
        err.contains("ckpt_name") && err.contains("sd_xl_base_1.0.safetensors"),
        "{err}"
    );
    assert!(err.contains(&server.url), "{err}");
    // No prompt was queued.
    assert!(server.requests("POST", "/prompt").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_plays_while_comfyui_is_down_and_dreaming_resumes() {
    let Some(engine) = taesd_engine() else {
        return;
    };
    let Some(server) = replay(Scenario::Happy).await else {
        return;
    };
    let source = ComfyUiSource::new(
        comfy_config(&server.url),
        Arc::clone(&engine),
        source_options(),
    )
    .unwrap();
    let health = source.health();
    let fallback =
        dreamd::keyframes::procedural::ProceduralSource::new(1, 0.35, engine.latent_shape());
    let mut source = FallbackSource::new(source, Some(Box::new(fallback)));

    source.keyframe(0).await.unwrap();
    assert_eq!(
        source.last_origin(),
        Some(dreamd::comfyui::KeyframeOrigin::ComfyUi)
    );

    server.kill();
    let t = Instant::now();
    let k1 = source.keyframe(1).await.unwrap();
    assert_eq!(
        source.last_origin(),
        Some(dreamd::comfyui::KeyframeOrigin::Fallback)
    );
    assert!(k1.image.is_none(), "the procedural source gives a latent");
    assert_eq!(health.status(), ComfyUiStatus::Unreachable);
    assert!(
        health.reason().unwrap().contains(&server.url),
        "{:?}",
        health.reason()
    );
    // While waiting for the next probe, keyframes do not wait on the dead server.
    let t2 = Instant::now();
    source.keyframe(2).await.unwrap();
    assert!(
        t2.elapsed() < Duration::from_millis(500),
        "{:?}",
        t2.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());

    server.restart().await.unwrap();
    let mut resumed = false;
    for index in 3..40 {
        source.keyframe(index).await.unwrap();
        if source.last_origin() == Some(dreamd::comfyui::KeyframeOrigin::ComfyUi) {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "back to ComfyUI once it answers");
    assert_eq!(health.status(), ComfyUiStatus::Connected);
    // The first ComfyUI keyframe after the outage started from the fallback's (decoded) latent.
    let uploads = server.requests("POST", "/upload/image");
    assert!(!uploads.is_empty());
    let counters = health.snapshot().counters;
    assert!(
        counters.fallback >= 2 && counters.ok >= 2 && counters.outages >= 1,
        "{counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_keyframes_fail_fast_while_down() {
    let Some(engine) = taesd_engine() else {
        return;
    };
    let (url, _task) = silent_server().await.unwrap();
    let source = ComfyUiSource::new(comfy_config(&url), engine, source_options()).unwrap();
    let mut source = FallbackSource::new(source, None);
    let err = source.keyframe(0).await.unwrap_err().to_string();
    assert!(err.contains(&url), "{err}");
    let t = Instant::now();
    let err = source.keyframe(1).await.unwrap_err().to_string();
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert!(err.contains("next probe"), "{err}");
}
