//! Parsing and validation of `dreamd.toml`, and the embedded default file.

use super::*;

fn err(text: &str) -> String {
    Config::parse(text, "test.toml").unwrap_err().to_string()
}

#[test]
fn embedded_default_file_matches_defaults() {
    let parsed = Config::parse(DEFAULT_CONFIG_TOML, "default").unwrap();
    assert_eq!(parsed, Config::default());
}

#[test]
fn empty_file_is_all_defaults() {
    let config = Config::parse("", "empty").unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.buffer_frames(), 120);
    assert_eq!(config.keep_frames(), 240);
    assert_eq!(config.frame_interval(), Duration::from_millis(250));
}

#[test]
fn zero_fps_names_key_value_and_rule() {
    assert_eq!(
        err("[display]\ntarget_fps = 0"),
        "display.target_fps must be > 0 and <= 120 (got 0)"
    );
}

#[test]
fn unknown_key_is_named_with_its_section() {
    let message = err("[display]\ntarget_fsp = 3");
    assert!(message.contains("target_fsp"), "{message}");
    assert!(message.starts_with("test.toml: display"), "{message}");
}

#[test]
fn unknown_section_is_an_error() {
    let message = err("[displays]\ntarget_fps = 3");
    assert!(message.contains("displays"), "{message}");
}

#[test]
fn wrong_type_names_the_key() {
    let message = err("[generation]\nframes_per_pair = \"ten\"");
    assert!(message.contains("generation.frames_per_pair"), "{message}");
}

#[test]
fn unknown_decoder_lists_allowed_values() {
    let message = err("[generation]\ndecoder = \"sdxl\"");
    assert!(message.contains("generation.decoder"), "{message}");
    assert!(message.contains("preview"), "{message}");
}

#[test]
fn precision_is_fast_exact_or_bf16() {
    assert_eq!(Config::default().generation.precision, Precision::Fast);
    let config = Config::parse("[generation]\nprecision = \"exact\"", "t").unwrap();
    assert_eq!(config.generation.precision, Precision::Exact);
    let config = Config::parse("[generation]\nprecision = \"bf16\"", "t").unwrap();
    assert_eq!(config.generation.precision, Precision::Bf16);
    let message = err("[generation]\nprecision = \"half\"");
    assert!(message.contains("generation.precision"), "{message}");
    assert!(message.contains("exact"), "{message}");
}

#[test]
fn broken_toml_names_the_origin() {
    let message = err("[display\n");
    assert!(message.starts_with("test.toml"), "{message}");
}

#[test]
fn sizes_must_be_multiples_of_eight() {
    assert_eq!(
        err("[generation]\nwidth = 500"),
        "generation.width must be a multiple of 8 between 64 and 4096 (got 500)"
    );
}

#[test]
fn start_gate_cannot_exceed_buffer() {
    let message = err("[display]\nstart_gate_seconds = 40");
    assert!(
        message.starts_with("display.start_gate_seconds"),
        "{message}"
    );
}

#[test]
fn decode_divisor_must_divide_the_latent() {
    let config = Config::parse("[generation]\ndecode_divisor = 2", "t").unwrap();
    assert_eq!(config.generation.decode_divisor, Some(2));
    assert!(err("[generation]\ndecode_divisor = 3").starts_with("generation.decode_divisor"));
    assert!(err("[generation]\nwidth = 520\ndecode_divisor = 2")
        .contains("dividing the latent size 65x32"));
}

#[test]
fn device_names() {
    assert_eq!(parse_device("cuda:1").unwrap(), DeviceRequest::Cuda(1));
    assert_eq!(parse_device("cuda").unwrap(), DeviceRequest::Cuda(0));
    assert_eq!(parse_device("wgpu").unwrap(), DeviceRequest::Wgpu);
    assert!(err("[generation]\ndevice = \"gpu\"").contains("generation.device"));
}

#[test]
fn bad_log_level_is_rejected() {
    assert!(err("[logging]\nlevel = \"info,=,\"").starts_with("logging.level"));
}

#[test]
fn server_defaults_to_loopback_and_checks_its_values() {
    let config = Config::default();
    assert!(config.server.enabled);
    assert!(config.server.bind_addr().unwrap().ip().is_loopback());
    assert_eq!(
        err("[server]\nbind = \"localhost\""),
        "server.bind must be an IP address and port such as \"127.0.0.1:8765\" or \
         \"0.0.0.0:8765\" (got \"localhost\")"
    );
    assert!(err("[server]\nmax_sse_clients = 0").starts_with("server.max_sse_clients"));
    assert!(err("[server]\ntoken = \" \"").starts_with("server.token"));
    assert!(
        err("[server]\nrequest_timeout_seconds = 0").starts_with("server.request_timeout_seconds")
    );
    let parsed = Config::parse("[server]\nbind = \"0.0.0.0:0\"\ntoken = \"s3cret\"", "t").unwrap();
    assert_eq!(parsed.server.token.as_deref(), Some("s3cret"));
}

#[test]
fn keep_frames_overrides_default() {
    let config = Config::parse("[output]\nkeep_frames = 12", "t").unwrap();
    assert_eq!(config.keep_frames(), 12);
    assert!(err("[output]\nkeep_frames = 0").starts_with("output.keep_frames"));
}

#[test]
fn command_line_names_are_the_config_names() {
    use clap::ValueEnum;
    fn names<T: ValueEnum>() -> Vec<(T, String)> {
        T::value_variants()
            .iter()
            .filter_map(|v| Some((v.clone(), v.to_possible_value()?.get_name().to_string())))
            .collect()
    }
    for (decoder, name) in names::<DecoderChoice>() {
        let parsed = Config::parse(&format!("[generation]\ndecoder = {name:?}"), "t").unwrap();
        assert_eq!(parsed.generation.decoder, decoder);
    }
    for (precision, name) in names::<Precision>() {
        let parsed = Config::parse(&format!("[generation]\nprecision = {name:?}"), "t").unwrap();
        assert_eq!(parsed.generation.precision, precision);
    }
    for (format, name) in names::<FrameFormat>() {
        let parsed = Config::parse(&format!("[output]\nformat = {name:?}"), "t").unwrap();
        assert_eq!(parsed.output.format, format);
    }
    for (source, name) in names::<SourceKind>() {
        let parsed = Config::parse(&format!("[keyframes]\nsource = {name:?}"), "t").unwrap();
        assert_eq!(parsed.keyframes.source, source);
    }
}

#[test]
fn buffers_that_cannot_fit_in_memory_are_refused_with_the_figures() {
    // 120 fps x 3600 s of 512x256 frames: 432,000 frames.
    let message = err("[display]\ntarget_fps = 120.0\n[buffer]\ntarget_seconds = 3600.0");
    assert!(
        message.contains("432000 frames") && message.contains("GB of memory"),
        "{message}"
    );
    // 4096x4096 x 240 frames per pair.
    let message = err("[generation]\nwidth = 4096\nheight = 4096\nframes_per_pair = 240");
    assert!(message.contains("frames_per_pair = 240"), "{message}");
    // The default needs tens of megabytes.
    assert!(Config::default().estimated_memory_bytes() < 100 << 20);
}

#[test]
fn server_limits_and_retention_bytes_are_checked() {
    assert!(err("[server]\nidle_timeout_seconds = 5").contains("idle_timeout_seconds"));
    assert!(err("[server]\nmax_connections = 0").contains("max_connections"));
    assert!(err("[server]\nallowed_hosts = [\"http://x\"]").contains("allowed_hosts"));
    assert!(err("[output]\nkeep_mb = 0").contains("output.keep_mb"));
    let config = Config::parse("[output]\nkeep_mb = 2", "t").unwrap();
    assert_eq!(config.keep_bytes(), Some(2 * 1024 * 1024));
}

#[test]
fn a_huge_config_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dreamd.toml");
    std::fs::write(&path, "# x\n".repeat(300_000)).unwrap();
    let message = Config::load(&path).unwrap_err().to_string();
    assert!(
        message.contains("dreamd.toml") && message.contains("more than the 1048576"),
        "{message}"
    );
}
