//! `dreamd init --from-dream-window config.yaml`: turns the original Dream Window's
//! `backend/config.yaml` (inventory §3) into a commented `dreamd.toml`.
//!
//! Every key the original had is either carried over under its dreamd name (with the original
//! key named in a comment) or listed as dropped with the reason, so a user moving over knows
//! exactly what happened to each setting. Values are checked by parsing the result as a dreamd
//! config before it is written.

use std::fmt::Write as _;

use serde_yaml_ng::Value;

/// The converted configuration and what was left behind.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The commented `dreamd.toml`.
    pub toml: String,
    /// `(original key, why it was dropped)`.
    pub dropped: Vec<(String, String)>,
    /// Original keys carried over.
    pub carried: Vec<String>,
}

/// Why a Dream Window config could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a Dream Window config: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("{key}: {message}")]
    Value { key: String, message: String },
}

/// Keys dropped on purpose, by prefix, and why.
const DROPPED: &[(&str, &str)] = &[
    (
        "system.cache_dir",
        "dreamd keeps the frame cache in <output_dir>/cache",
    ),
    (
        "system.gpu_id",
        "set generation.device = \"cuda:N\" in a CUDA build to choose the GPU",
    ),
    (
        "generation.use_async_orchestrator",
        "dreamd has one pipeline",
    ),
    ("generation.mode", "dreamd has one mode"),
    (
        "generation.model",
        "name the checkpoint in comfyui.checkpoint",
    ),
    (
        "generation.hybrid.interpolation_upscale_method",
        "dreamd upscales with Catmull-Rom",
    ),
    (
        "generation.hybrid.interpolation_downsample_method",
        "it was never used",
    ),
    (
        "generation.img2img",
        "only a fallback the original never reached",
    ),
    (
        "generation.cache.similarity_method",
        "dreamd always uses both metrics",
    ),
    (
        "generation.cache.cache_interpolations",
        "dreamd offers keyframes to the cache",
    ),
    (
        "generation.cache.injection_mode",
        "injections are always dissimilar-frame",
    ),
    (
        "generation.cache.convergence_mode",
        "only \"absolute\" ever existed",
    ),
    (
        "generation.cache.log_convergence_stats",
        "every analysis is a collapse event in dreamd.jsonl",
    ),
    (
        "generation.cache.log_diversity_stats",
        "the cache figures are in status.json and /metrics",
    ),
    (
        "generation.cache.diversity_check_interval",
        "the cache figures are always current",
    ),
    (
        "generation.cache.color_histogram.bins_per_channel",
        "fixed at 32, the tuned thresholds depend on it",
    ),
    (
        "generation.cache.phash.hash_size",
        "fixed at 8, the tuned thresholds depend on it",
    ),
    (
        "generation.cache.advanced_monitoring",
        "never implemented in the original",
    ),
    (
        "generation.flux",
        "only used with generation.model = flux; set comfyui.* by hand",
    ),
    (
        "display.max_output_frames",
        "only dead code read it; see output.keep_frames",
    ),
    (
        "prompts.modifiers.system_based",
        "never implemented in the original",
    ),
    (
        "game_detection",
        "never called in the original; pause with `dreamd ctl pause`",
    ),
    ("performance.max_queue_size", "unused in the original"),
    ("performance.enable_torch_compile", "unused in the original"),
    (
        "performance.async_file_operations",
        "unused in the original",
    ),
    (
        "daemon",
        "dreamd is one process: run it under systemd (see the README) for restarts",
    ),
];

struct Out {
    sections: Vec<(String, String)>,
    carried: Vec<String>,
}

impl Out {
    fn section(&mut self, name: &str) -> &mut String {
        if let Some(i) = self.sections.iter().position(|(n, _)| n == name) {
            return &mut self.sections[i].1;
        }
        self.sections.push((name.to_string(), String::new()));
        let last = self.sections.len() - 1;
        &mut self.sections[last].1
    }

    fn put(&mut self, original: &str, section: &str, key: &str, value: toml::Value) {
        let line = format!("# from {original}\n{key} = {value}\n");
        self.section(section).push_str(&line);
        self.carried.push(original.to_string());
    }
}

fn get<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, k| v.get(k))
}

fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

fn num(key: &str, v: &Value) -> Result<f64, ImportError> {
    v.as_f64().ok_or_else(|| ImportError::Value {
        key: key.into(),
        message: format!("expected a number, found {v:?}"),
    })
}

fn text(key: &str, v: &Value) -> Result<String, ImportError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| ImportError::Value {
            key: key.into(),
            message: format!("expected a string, found {v:?}"),
        })
}

fn pair(key: &str, v: &Value) -> Result<toml::Value, ImportError> {
    let items = v
        .as_sequence()
        .filter(|s| s.len() == 2)
        .ok_or_else(|| ImportError::Value {
            key: key.into(),
            message: format!("expected [low, high], found {v:?}"),
        })?;
    Ok(toml::Value::Array(
        items
            .iter()
            .map(|x| num(key, x).map(toml::Value::Float))
            .collect::<Result<_, _>>()?,
    ))
}

/// Converts the text of a Dream Window `config.yaml`.
pub fn convert(yaml: &str) -> Result<Converted, ImportError> {
    let root: Value = serde_yaml_ng::from_str(yaml)?;
    let mut out = Out {
        sections: Vec::new(),
        carried: Vec::new(),
    };
    let float = toml::Value::Float;
    let int = |v: f64| toml::Value::Integer(v.round() as i64);
    let string = toml::Value::String;

    // (original key, dreamd section, dreamd key, kind)
    enum Kind {
        Float,
        Int,
        Str,
        Pair,
    }
    use Kind::*;
    let simple: &[(&str, &str, &str, Kind)] = &[
        ("system.output_dir", "paths", "output_dir", Str),
        ("system.log_dir", "paths", "log_dir", Str),
        ("system.seed_dir", "injection", "seeds_dir", Str),
        (
            "display.buffer_target_seconds",
            "buffer",
            "target_seconds",
            Float,
        ),
        (
            "display.min_buffer_seconds",
            "display",
            "start_gate_seconds",
            Float,
        ),
        (
            "generation.hybrid.target_interpolation_fps",
            "display",
            "target_fps",
            Float,
        ),
        (
            "generation.hybrid.interpolation_frames",
            "generation",
            "frames_per_pair",
            Int,
        ),
        (
            "generation.hybrid.interpolation_resolution_divisor",
            "generation",
            "decode_divisor",
            Int,
        ),
        ("system.comfyui_url", "comfyui", "url", Str),
        (
            "generation.hybrid.keyframe_denoise",
            "comfyui",
            "denoise",
            Float,
        ),
        ("generation.sd.steps", "comfyui", "steps", Int),
        ("generation.sd.cfg_scale", "comfyui", "cfg", Float),
        ("generation.sd.sampler", "comfyui", "sampler", Str),
        ("generation.sd.scheduler", "comfyui", "scheduler", Str),
        (
            "performance.generation_timeout",
            "comfyui",
            "timeout_seconds",
            Float,
        ),
        ("prompts.rotation_interval", "prompts", "rotate_every", Int),
        ("generation.cache.max_size", "cache", "max_size", Int),
        (
            "generation.cache.population_mode",
            "cache",
            "population",
            Str,
        ),
        (
            "generation.cache.color_histogram.diversity_threshold",
            "cache",
            "color_diversity",
            Float,
        ),
        (
            "generation.cache.phash.diversity_threshold",
            "cache",
            "structure_diversity",
            Float,
        ),
        (
            "generation.cache.color_histogram.convergence_threshold",
            "collapse",
            "color_converge",
            Float,
        ),
        (
            "generation.cache.color_histogram.force_cache_threshold",
            "collapse",
            "color_force",
            Float,
        ),
        (
            "generation.cache.phash.convergence_threshold",
            "collapse",
            "structure_converge",
            Float,
        ),
        (
            "generation.cache.phash.force_cache_threshold",
            "collapse",
            "structure_force",
            Float,
        ),
        (
            "generation.cache.embedding_history_reset",
            "collapse",
            "reset",
            Str,
        ),
        (
            "generation.cache.embedding_history_keep_recent",
            "collapse",
            "keep_after_injection",
            Int,
        ),
        (
            "generation.cache.color_histogram.dissimilarity_range",
            "injection",
            "color_window",
            Pair,
        ),
        (
            "generation.cache.phash.dissimilarity_range",
            "injection",
            "structure_window",
            Pair,
        ),
        (
            "generation.cache.injection_probability",
            "injection",
            "probability",
            Float,
        ),
        (
            "generation.cache.blend_weight",
            "injection",
            "blend_weight",
            Float,
        ),
        (
            "generation.cache.injection_cooldown",
            "injection",
            "cooldown",
            Int,
        ),
        (
            "generation.cache.seed_injection_cooldown",
            "injection",
            "seed_cooldown",
            Int,
        ),
        (
            "generation.cache.warmup_keyframes",
            "injection",
            "warmup_keyframes",
            Int,
        ),
        (
            "generation.cache.seed_injection_floor",
            "injection",
            "seed_floor",
            Float,
        ),
        (
            "generation.cache.seed_injection_max",
            "injection",
            "seed_max",
            Float,
        ),
        (
            "generation.cache.seed_injection_ramp",
            "injection",
            "seed_ramp",
            Int,
        ),
        (
            "generation.cache.seed_injection_boost_threshold",
            "injection",
            "seed_boost_below",
            Int,
        ),
        (
            "generation.cache.seed_injection_boost_probability",
            "injection",
            "seed_boost_probability",
            Float,
        ),
        (
            "generation.cache.force_seed_injection_frequency",
            "injection",
            "force_seed_cache_share",
            Float,
        ),
        (
            "generation.cache.force_seed_collapse_frequency",
            "injection",
            "force_seed_collapse_share",
            Float,
        ),
        (
            "generation.cache.seed_blend_weight",
            "injection",
            "seed_blend_weight",
            Float,
        ),
    ];
    for (original, section, key, kind) in simple {
        let Some(v) = get(&root, original) else {
            continue;
        };
        let value = match kind {
            Float => float(num(original, v)?),
            Int => int(num(original, v)?),
            Str => string(text(original, v)?),
            Pair => pair(original, v)?,
        };
        out.put(original, section, key, value);
    }

    if let Some(v) = get(&root, "system.log_level") {
        out.put(
            "system.log_level",
            "logging",
            "level",
            string(text("system.log_level", v)?.to_lowercase()),
        );
    }
    if let Some(v) = get(&root, "generation.resolution") {
        let items = v
            .as_sequence()
            .filter(|s| s.len() == 2)
            .ok_or_else(|| ImportError::Value {
                key: "generation.resolution".into(),
                message: format!("expected [width, height], found {v:?}"),
            })?;
        let to8 = |x: f64| toml::Value::Integer(((x / 8.0).round().max(1.0) * 8.0) as i64);
        out.put(
            "generation.resolution",
            "generation",
            "width",
            to8(num("generation.resolution", &items[0])?),
        );
        out.carried.pop();
        out.put(
            "generation.resolution",
            "generation",
            "height",
            to8(num("generation.resolution", &items[1])?),
        );
    }
    if let Some(v) = get(&root, "generation.cache.cache_diversity_logic") {
        let logic = text("generation.cache.cache_diversity_logic", v)?;
        let acceptance = if logic == "all" { "all" } else { "any" };
        out.put(
            "generation.cache.cache_diversity_logic",
            "cache",
            "acceptance",
            string(acceptance.into()),
        );
    }
    if let Some(v) = get(&root, "generation.cache.injection_logic") {
        let logic = text("generation.cache.injection_logic", v)?;
        // The original ignored this key and always used OR; "all" becomes AND in dreamd.
        let logic = if logic == "all" { "all" } else { "any" };
        out.put(
            "generation.cache.injection_logic",
            "collapse",
            "logic",
            string(logic.into()),
        );
    }
    if let Some(v) = get(&root, "generation.cache.collapse_detection") {
        let on = v.as_bool().unwrap_or(true);
        out.put(
            "generation.cache.collapse_detection",
            "collapse",
            "enabled",
            toml::Value::Boolean(on),
        );
    }
    if let Some(false) =
        get(&root, "generation.cache.blend_seed_injection").and_then(Value::as_bool)
    {
        // A direct seed copy is a blend that is all seed.
        out.put(
            "generation.cache.blend_seed_injection",
            "injection",
            "seed_blend_weight",
            float(1.0),
        );
    } else if get(&root, "generation.cache.blend_seed_injection").is_some() {
        out.carried
            .push("generation.cache.blend_seed_injection".into());
    }
    if get(&root, "system.comfyui_url").is_some() {
        out.section("keyframes")
            .push_str("# The original dreamed through ComfyUI.\nsource = \"comfyui\"\n");
    }
    if let Some(m) = get(&root, "prompts.modifiers") {
        let enabled = m.get("enabled").and_then(Value::as_bool).unwrap_or(true)
            && m.get("time_based").and_then(Value::as_bool).unwrap_or(true);
        out.section("prompts.modifiers").push_str(&format!(
            "# from prompts.modifiers.enabled and .time_based (the original's hour table is the default)\nenabled = {enabled}\n"
        ));
        out.carried.push("prompts.modifiers.enabled".into());
        out.carried.push("prompts.modifiers.time_based".into());
    }
    let mut themes = String::new();
    if let Some(pairs) = get(&root, "prompts.theme_pairs").and_then(Value::as_sequence) {
        for (i, p) in pairs.iter().enumerate() {
            let key = format!("prompts.theme_pairs[{i}]");
            let positive = p
                .get("positive")
                .map(|v| text(&key, v))
                .transpose()?
                .unwrap_or_default();
            let negative = p
                .get("negative")
                .map(|v| text(&key, v))
                .transpose()?
                .unwrap_or_default();
            let _ = write!(
                themes,
                "\n# from {key}\n[[prompts.themes]]\nname = \"theme {}\"\nprompt = {}\nnegative = {}\n",
                i + 1,
                toml::Value::String(positive.trim().to_string()),
                toml::Value::String(negative.trim().to_string()),
            );
        }
        out.carried.push("prompts.theme_pairs".into());
    }

    let mut all = Vec::new();
    leaves("", &root, &mut all);
    let mut dropped = Vec::new();
    for key in all {
        let covered = out.carried.iter().any(|c| {
            key == *c || key.starts_with(&format!("{c}.")) || key.starts_with(&format!("{c}["))
        });
        if covered || key.starts_with("prompts.theme_pairs") {
            continue;
        }
        let reason = DROPPED
            .iter()
            .find(|(p, _)| key == *p || key.starts_with(&format!("{p}.")))
            .map(|(_, r)| r.to_string())
            .unwrap_or_else(|| "dreamd has no such setting".to_string());
        dropped.push((key, reason));
    }

    let mut toml = String::from(
        "# dreamd configuration converted from Dream Window's backend/config.yaml by\n\
         # `dreamd init --from-dream-window`. Keys not written here take dreamd's defaults\n\
         # (`dreamd init` writes them all, with comments).\n",
    );
    if !dropped.is_empty() {
        toml.push_str("#\n# Dropped from the original:\n");
        for (key, why) in &dropped {
            let _ = writeln!(toml, "#   {key}: {why}");
        }
    }
    for (name, body) in &out.sections {
        let _ = write!(toml, "\n[{name}]\n{body}");
    }
    toml.push_str(&themes);
    Ok(Converted {
        toml,
        dropped,
        carried: out.carried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const ORIGINAL: &str = include_str!("../../tests/fixtures/dream_window_config.yaml");

    #[test]
    fn the_original_config_converts_to_a_valid_dreamd_config() {
        let converted = convert(ORIGINAL).unwrap();
        let config = Config::parse(&converted.toml, "converted").unwrap_or_else(|e| {
            panic!("{e}\n{}", converted.toml);
        });
        assert_eq!(config.display.target_fps, 3.5);
        assert_eq!(config.buffer.target_seconds, 30.0);
        assert_eq!(config.generation.frames_per_pair, 10);
        assert_eq!(
            (config.generation.width, config.generation.height),
            (512, 256)
        );
        assert_eq!(
            config.injection.seeds_dir,
            std::path::PathBuf::from("./seeds")
        );
        assert_eq!(config.injection.color_window, [1.18, 2.05]);
        assert_eq!(config.cache.color_diversity, 1.92);
        assert_eq!(config.collapse.structure_force, 0.15);
        assert_eq!(config.prompts.rotate_every, 20);
        assert_eq!(config.prompts.themes.len(), 2);
        assert_eq!(
            config.prompts.themes[0].negative,
            "warm colors, text, watermark"
        );
        assert_eq!(config.logging.level, "info");
        // Every key of the original is either carried or dropped with a reason.
        let dropped: Vec<&str> = converted.dropped.iter().map(|(k, _)| k.as_str()).collect();
        for key in [
            "game_detection.method",
            "daemon.pid_file",
            "system.cache_dir",
            "generation.flux.steps",
            "generation.cache.advanced_monitoring.enabled",
        ] {
            assert!(dropped.contains(&key), "{key} not listed: {dropped:?}");
        }
        assert!(converted
            .dropped
            .iter()
            .all(|(_, why)| !why.is_empty() && why != "dreamd has no such setting"));
        assert!(converted
            .toml
            .contains("# from generation.hybrid.keyframe_denoise"));
        assert!(converted
            .toml
            .contains("#   daemon.pid_file: dreamd is one process"));
    }

    #[test]
    fn a_wrong_value_names_the_original_key() {
        let err = convert("generation:\n  resolution: [512]\n").unwrap_err();
        assert!(
            err.to_string().starts_with("generation.resolution:"),
            "{err}"
        );
        let err = convert("display:\n  buffer_target_seconds: lots\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("display.buffer_target_seconds:"),
            "{err}"
        );
        assert!(convert("- just\n- a list\n").is_ok_and(|c| c.carried.is_empty()));
    }
}
