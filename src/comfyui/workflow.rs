//! Workflows: the graphs dreamd queues on ComfyUI.
//!
//! Two are built in, from core nodes only (never a third-party node, unlike the original's
//! `FSamplerAdvanced`): img2img (`CheckpointLoaderSimple → LoadImage → VAEEncode →
//! CLIPTextEncode ×2 → KSampler → VAEDecode → SaveImage`) for every keyframe after the first,
//! and txt2img (`EmptyLatentImage` instead of the loaded picture) for the first keyframe when
//! there is no picture yet. A user workflow is any API-format JSON ("Save (API Format)" in
//! ComfyUI) with placeholders that dreamd fills for each keyframe:
//!
//! | placeholder | value |
//! |---|---|
//! | `{{image}}` | the uploaded name of the previous keyframe's picture |
//! | `{{prompt}}`, `{{negative}}` | the current prompt and the negative prompt |
//! | `{{seed}}` | this keyframe's seed |
//! | `{{denoise}}` | `comfyui.denoise` (1.0 for a first keyframe made from noise) |
//! | `{{width}}`, `{{height}}` | the output size |
//! | `{{steps}}`, `{{cfg}}`, `{{sampler}}`, `{{scheduler}}`, `{{checkpoint}}` | the `[comfyui]` values |
//!
//! A placeholder that is the whole string becomes the value's own JSON type (`"{{seed}}"` → a
//! number), so numeric inputs stay numbers; inside a longer string it is replaced as text.
//! Before the first prompt the graph is checked against `GET /object_info`: every node class,
//! and every model or sampler name a combo input lists (`ckpt_name`, `sampler_name`, …), must
//! exist; the first missing one is one error that names it.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::config::{ComfyUiConfig, WorkflowChoice};
use super::protocol::{Graph, ObjectInfo};

/// Why a workflow cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkflowError {
    #[error("cannot read comfyui.workflow {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("comfyui.workflow {path} is not an API-format workflow: {message}")]
    Format { path: PathBuf, message: String },
    #[error(
        "workflow {workflow}: unknown placeholder {{{{{name}}}}} in node {node} (known: {known})"
    )]
    UnknownPlaceholder {
        workflow: String,
        node: String,
        name: String,
        known: String,
    },
    #[error(
        "workflow {workflow}: node {node} uses node class {class_type:?}, which the ComfyUI \
         server does not have (a missing custom node?)"
    )]
    MissingNodeClass {
        workflow: String,
        node: String,
        class_type: String,
    },
    #[error(
        "workflow {workflow}: {wanted}, which the ComfyUI server does not have (it offers: \
         {offered})"
    )]
    MissingOption {
        workflow: String,
        /// `node 1 (CheckpointLoaderSimple) asks for ckpt_name = "…"`.
        wanted: String,
        offered: String,
    },
}

const KNOWN: [&str; 12] = [
    "image",
    "prompt",
    "negative",
    "seed",
    "denoise",
    "width",
    "height",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "checkpoint",
];

/// The values for one keyframe's placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    pub image: String,
    pub prompt: String,
    pub negative: String,
    pub seed: u64,
    pub denoise: f64,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg: f64,
    pub sampler: String,
    pub scheduler: String,
    pub checkpoint: String,
}

impl Values {
    /// The `[comfyui]` values, with placeholders for the per-keyframe ones.
    pub fn from_config(config: &ComfyUiConfig, width: u32, height: u32) -> Values {
        Values {
            image: "dreamd-check.png".into(),
            prompt: default_prompt().prompt,
            negative: default_prompt().negative,
            seed: 0,
            denoise: config.denoise,
            width,
            height,
            steps: config.steps,
            cfg: config.cfg,
            sampler: config.sampler.clone(),
            scheduler: config.scheduler.clone(),
            checkpoint: config.checkpoint.clone(),
        }
    }

    fn get(&self, name: &str) -> Option<Value> {
        Some(match name {
            "image" => json!(self.image),
            "prompt" => json!(self.prompt),
            "negative" => json!(self.negative),
            "seed" => json!(self.seed),
            "denoise" => json!(self.denoise),
            "width" => json!(self.width),
            "height" => json!(self.height),
            "steps" => json!(self.steps),
            "cfg" => json!(self.cfg),
            "sampler" => json!(self.sampler),
            "scheduler" => json!(self.scheduler),
            "checkpoint" => json!(self.checkpoint),
            _ => return None,
        })
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A workflow template: a graph with placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// `img2img`, `txt2img`, or the file's path: named in errors.
    pub name: String,
    template: Graph,
}

impl Workflow {
    /// The built-in img2img graph (core nodes only).
    pub fn img2img() -> Workflow {
        let graph = json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{checkpoint}}"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
            "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["1", 1]}},
            "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative}}", "clip": ["1", 1]}},
            "6": {"class_type": "KSampler", "inputs": {
                "model": ["1", 0], "seed": "{{seed}}", "steps": "{{steps}}", "cfg": "{{cfg}}",
                "sampler_name": "{{sampler}}", "scheduler": "{{scheduler}}",
                "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["3", 0],
                "denoise": "{{denoise}}"
            }},
            "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
            "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "dreamd"}}
        });
        Workflow {
            name: "img2img".into(),
            template: into_graph(graph),
        }
    }

    /// The built-in txt2img graph for a first keyframe without a picture (denoise 1.0).
    pub fn txt2img() -> Workflow {
        let mut graph = Self::img2img().template;
        graph.remove("2");
        graph.insert(
            "3".into(),
            json!({"class_type": "EmptyLatentImage",
                   "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1}}),
        );
        if let Some(inputs) = graph
            .get_mut("6")
            .and_then(|n| n.get_mut("inputs"))
            .and_then(Value::as_object_mut)
        {
            inputs.insert("denoise".into(), json!(1.0));
        }
        Workflow {
            name: "txt2img".into(),
            template: graph,
        }
    }

    /// The workflow `comfyui.workflow` names.
    pub fn from_choice(choice: &WorkflowChoice) -> Result<Workflow, WorkflowError> {
        match choice {
            WorkflowChoice::Img2Img => Ok(Self::img2img()),
            WorkflowChoice::File(path) => Self::load(path),
        }
    }

    /// Reads an API-format workflow JSON.
    pub fn load(path: &Path) -> Result<Workflow, WorkflowError> {
        let text = std::fs::read_to_string(path).map_err(|e| WorkflowError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses an API-format workflow; `name` is used in errors.
    pub fn parse(text: &str, name: &str) -> Result<Workflow, WorkflowError> {
        let format = |message: String| WorkflowError::Format {
            path: PathBuf::from(name),
            message,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| format(format!("invalid JSON: {e}")))?;
        let Value::Object(mut graph) = value else {
            return Err(format("the top level is not an object of nodes".into()));
        };
        if graph.contains_key("nodes") && graph.contains_key("links") {
            return Err(format(
                "this is ComfyUI's UI format; export it with \"Save (API Format)\"".into(),
            ));
        }
        // Some exports wrap the graph as {"prompt": {...}}.
        if graph.len() == 1 {
            if let Some(Value::Object(inner)) = graph.get("prompt") {
                graph = inner.clone();
            }
        }
        if graph.is_empty() {
            return Err(format("it has no nodes".into()));
        }
        for (id, node) in &graph {
            let class = node.get("class_type").and_then(Value::as_str);
            let inputs = node.get("inputs").map(Value::is_object);
            if class.is_none() || inputs != Some(true) {
                return Err(format(format!(
                    "node {id} lacks a string \"class_type\" or an \"inputs\" object"
                )));
            }
        }
        let workflow = Workflow {
            name: name.to_string(),
            template: graph,
        };
        // Unknown placeholders are an error now, not at the first keyframe.
        workflow.fill(&Values {
            image: String::new(),
            prompt: String::new(),
            negative: String::new(),
            seed: 0,
            denoise: 1.0,
            width: 8,
            height: 8,
            steps: 1,
            cfg: 1.0,
            sampler: String::new(),
            scheduler: String::new(),
            checkpoint: String::new(),
        })?;
        Ok(workflow)
    }

    /// Whether the graph takes the previous picture (`{{image}}`); without it the keyframes do
    /// not feed back and the stream jumps instead of drifting.
    pub fn uses_image(&self) -> bool {
        Value::Object(self.template.clone())
            .to_string()
            .contains("{{image}}")
    }

    /// The template, placeholders unfilled.
    pub fn template(&self) -> &Graph {
        &self.template
    }

    /// The graph for one keyframe.
    pub fn fill(&self, values: &Values) -> Result<Graph, WorkflowError> {
        let mut out = Map::new();
        for (id, node) in &self.template {
            out.insert(id.clone(), fill_value(node, values, &self.name, id)?);
        }
        Ok(out)
    }

    /// Node ids of the `SaveImageWebsocket` nodes: their picture comes as a binary frame.
    pub fn websocket_outputs(graph: &Graph) -> Vec<String> {
        graph
            .iter()
            .filter(|(_, n)| {
                n.get("class_type").and_then(Value::as_str) == Some("SaveImageWebsocket")
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Checks a filled graph against the server's node schemas: every class exists, and every
    /// model/sampler combo value (`*_name`, `scheduler`) is one the server offers.
    pub fn validate(&self, graph: &Graph, info: &ObjectInfo) -> Result<(), WorkflowError> {
        for (id, node) in graph {
            let class = node
                .get("class_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(schema) = info.get(class) else {
                return Err(WorkflowError::MissingNodeClass {
                    workflow: self.name.clone(),
                    node: id.clone(),
                    class_type: class.to_string(),
                });
            };
            let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
                continue;
            };
            for (input, value) in inputs {
                if !(input.ends_with("_name") || input == "scheduler") {
                    continue;
                }
                let (Some(value), Some(options)) = (value.as_str(), schema.combo_options(input))
                else {
                    continue;
                };
                if !options.iter().any(|o| o == value) {
                    let mut offered = options.iter().take(8).cloned().collect::<Vec<_>>();
                    if options.len() > 8 {
                        offered.push(format!("… {} in all", options.len()));
                    }
                    return Err(WorkflowError::MissingOption {
                        workflow: self.name.clone(),
                        wanted: format!("node {id} ({class}) asks for {input} = {value:?}"),
                        offered: if offered.is_empty() {
                            "nothing".into()
                        } else {
                            offered.join(", ")
                        },
                    });
                }
            }
        }
        Ok(())
    }
}

fn into_graph(value: Value) -> Graph {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn fill_value(
    value: &Value,
    values: &Values,
    workflow: &str,
    node: &str,
) -> Result<Value, WorkflowError> {
    match value {
        Value::String(s) => fill_string(s, values, workflow, node),
        Value::Array(items) => items
            .iter()
            .map(|v| fill_value(v, values, workflow, node))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                out.insert(k.clone(), fill_value(v, values, workflow, node)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

fn fill_string(
    s: &str,
    values: &Values,
    workflow: &str,
    node: &str,
) -> Result<Value, WorkflowError> {
    if !s.contains("{{") {
        return Ok(Value::String(s.to_string()));
    }
    let unknown = |name: &str| WorkflowError::UnknownPlaceholder {
        workflow: workflow.to_string(),
        node: node.to_string(),
        name: name.to_string(),
        known: KNOWN.join(", "),
    };
    // The whole string is one placeholder: the value keeps its JSON type.
    let trimmed = s.trim();
    if let Some(name) = trimmed
        .strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .filter(|n| !n.contains("{{") && !n.contains("}}"))
    {
        let name = name.trim();
        return values.get(name).ok_or_else(|| unknown(name));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| unknown(name))?;
        out.push_str(&text_of(&value));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// The first default theme's prompt: what a source uses before the director gives it one.
pub fn default_prompt() -> crate::direction::themes::PromptChoice {
    let prompts = crate::direction::themes::PromptsConfig::default();
    let theme = &prompts.themes[0];
    crate::direction::themes::PromptChoice {
        theme: theme.name.clone(),
        prompt: theme.prompt.as_slice()[0].clone(),
        negative: theme.negative.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfyui::protocol::NodeInfo;

    fn values() -> Values {
        Values {
            image: "dreamd-abc-3.png".into(),
            prompt: "a glowing forest".into(),
            negative: "blurry".into(),
            seed: 123_456_789_012,
            denoise: 0.2,
            width: 512,
            height: 256,
            steps: 10,
            cfg: 7.0,
            sampler: "euler_ancestral".into(),
            scheduler: "normal".into(),
            checkpoint: "v1-5-pruned-emaonly.safetensors".into(),
        }
    }

    fn classes(graph: &Graph) -> Vec<String> {
        let mut c: Vec<String> = graph
            .values()
            .map(|n| n["class_type"].as_str().unwrap().to_string())
            .collect();
        c.sort();
        c
    }

    #[test]
    fn built_in_img2img_uses_core_nodes_and_typed_values() {
        let wf = Workflow::img2img();
        assert!(wf.uses_image());
        let g = wf.fill(&values()).unwrap();
        assert_eq!(
            classes(&g),
            [
                "CLIPTextEncode",
                "CLIPTextEncode",
                "CheckpointLoaderSimple",
                "KSampler",
                "LoadImage",
                "SaveImage",
                "VAEDecode",
                "VAEEncode"
            ]
        );
        let k = &g["6"]["inputs"];
        assert_eq!(k["seed"], json!(123_456_789_012_u64));
        assert_eq!(k["denoise"], json!(0.2));
        assert_eq!(k["steps"], json!(10));
        assert_eq!(k["sampler_name"], json!("euler_ancestral"));
        assert_eq!(g["2"]["inputs"]["image"], json!("dreamd-abc-3.png"));
        assert_eq!(g["4"]["inputs"]["text"], json!("a glowing forest"));
        assert_eq!(
            g["1"]["inputs"]["ckpt_name"],
            json!("v1-5-pruned-emaonly.safetensors")
        );
        assert!(!serde_json::to_string(&g).unwrap().contains("{{"));
    }

    #[test]
    fn built_in_txt2img_starts_from_an_empty_latent() {
        let wf = Workflow::txt2img();
        assert!(!wf.uses_image());
        let g = wf.fill(&values()).unwrap();
        assert!(classes(&g).contains(&"EmptyLatentImage".to_string()));
        assert!(!classes(&g).contains(&"LoadImage".to_string()));
        assert_eq!(g["3"]["inputs"]["width"], json!(512));
        assert_eq!(g["3"]["inputs"]["height"], json!(256));
        assert_eq!(g["6"]["inputs"]["denoise"], json!(1.0));
    }

    #[test]
    fn user_placeholders_whole_and_embedded() {
        let text = r#"{
          "10": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
          "11": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "denoise": " {{ denoise }} ",
                  "steps": 4, "latent_image": ["10", 0]}},
          "12": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}, {{width}}x{{height}}, seed {{seed}}"}},
          "13": {"class_type": "Note", "inputs": {"list": ["{{negative}}", {"deep": "{{height}}"}]}}
        }"#;
        let wf = Workflow::parse(text, "flows/mine.json").unwrap();
        assert!(wf.uses_image());
        let g = wf.fill(&values()).unwrap();
        assert_eq!(g["11"]["inputs"]["seed"], json!(123_456_789_012_u64));
        assert!(g["11"]["inputs"]["seed"].is_number());
        assert_eq!(g["11"]["inputs"]["denoise"], json!(0.2));
        assert_eq!(g["11"]["inputs"]["steps"], json!(4));
        assert_eq!(
            g["12"]["inputs"]["text"],
            json!("a glowing forest, 512x256, seed 123456789012")
        );
        assert_eq!(g["13"]["inputs"]["list"], json!(["blurry", {"deep": 256}]));
        assert_eq!(g["10"]["inputs"]["image"], json!("dreamd-abc-3.png"));
    }

    #[test]
    fn bad_user_workflows_are_named() {
        let err = Workflow::parse(
            r#"{"1": {"class_type": "X", "inputs": {"a": "{{colour}}"}}}"#,
            "w.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("{{colour}}") && err.contains("node 1") && err.contains("w.json"),
            "{err}"
        );
        let err = Workflow::parse(r#"{"nodes": [], "links": []}"#, "ui.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("API Format"), "{err}");
        let err = Workflow::parse(r#"{"1": {"inputs": {}}}"#, "w.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node 1"), "{err}");
        assert!(Workflow::parse("[1]", "w.json").is_err());
        let err = Workflow::load(Path::new("/nonexistent/flow.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/flow.json"), "{err}");
        let wrapped = Workflow::parse(
            r#"{"prompt": {"1": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}}}"#,
            "w.json",
        )
        .unwrap();
        let g = wrapped.fill(&values()).unwrap();
        assert_eq!(Workflow::websocket_outputs(&g), ["1"]);
    }

    fn object_info(ckpts: &[&str]) -> ObjectInfo {
        let mut info = ObjectInfo::new();
        for class in [
            "CheckpointLoaderSimple",
            "LoadImage",
            "VAEEncode",
            "CLIPTextEncode",
            "KSampler",
            "VAEDecode",
            "SaveImage",
            "EmptyLatentImage",
        ] {
            info.insert(class.into(), NodeInfo::default());
        }
        info.insert(
            "CheckpointLoaderSimple".into(),
            serde_json::from_value(json!({"input": {"required": {"ckpt_name": [ckpts, {}]}}}))
                .unwrap(),
        );
        info.insert(
            "KSampler".into(),
            serde_json::from_value(json!({"input": {"required": {
                "sampler_name": [["euler", "euler_ancestral"], {}],
                "scheduler": [["normal", "karras"], {}]
            }}}))
            .unwrap(),
        );
        info
    }

    #[test]
    fn validation_names_the_missing_class_or_checkpoint() {
        let wf = Workflow::img2img();
        let g = wf.fill(&values()).unwrap();
        wf.validate(&g, &object_info(&["v1-5-pruned-emaonly.safetensors"]))
            .unwrap();
        let err = wf
            .validate(&g, &object_info(&["other.safetensors"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"v1-5-pruned-emaonly.safetensors\"")
                && err.contains("other.safetensors"),
            "{err}"
        );
        assert!(err.contains("ckpt_name"), "{err}");
        let mut info = object_info(&["v1-5-pruned-emaonly.safetensors"]);
        info.remove("VAEEncode");
        let err = wf.validate(&g, &info).unwrap_err().to_string();
        assert!(
            err.contains("\"VAEEncode\"") && err.contains("node 3"),
            "{err}"
        );
        let mut v = values();
        v.sampler = "fsampler".into();
        let g = wf.fill(&v).unwrap();
        let err = wf
            .validate(&g, &object_info(&["v1-5-pruned-emaonly.safetensors"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sampler_name") && err.contains("fsampler"),
            "{err}"
        );
    }
}
