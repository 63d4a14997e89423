//! Creative direction: which themes were shown, how the mode-collapse detector's verdict moved
//! over time, the injections by kind and reason, and the diverse-frame cache's acceptance rate,
//! from the daemon's `keyframe` (its `theme`, `prompt`, `origin`), `collapse`, `injection` and
//! `cache` events (README, "dreamd.jsonl events").
//!
//! Like the rest of the analyzer it folds the stream in bounded memory: names are capped at
//! [`MAX_NAMES`] (further ones count as [`OTHER`]), theme spans and collapse state changes are
//! listed up to [`MAX_SPANS`] and [`MAX_CHANGES`] (with the true totals beside them), and the
//! plot's series are downsampled [`Series`]. A log without any of these events (an older
//! dreamd's, the Python controller's) yields no section at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::aggregate::{MAX_NAMES, OTHER};
use super::model::SeriesPoint;
use super::record::{
    format_timestamp, CacheRecord, CollapseRecord, InjectionRecord, KeyframeDirection,
    KeyframeRecord, Timestamp,
};
use super::report::num;
use super::sketch::{Series, Sketch};
use crate::direction::collapse::CollapseState;

/// Spans listed per theme (in order; `spans_total` counts them all).
pub const MAX_SPANS: usize = 16;
/// Collapse state changes listed (in order; `changes_total` counts them all).
pub const MAX_CHANGES: usize = 64;
/// Prompts and reasons are kept to this many characters.
const TEXT_CHARS: usize = 200;

/// The creative-direction section of the report (`direction` in the JSON); each part is
/// `None` when the logs hold none of its events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Direction {
    pub themes: Option<Themes>,
    pub collapse: Option<Collapse>,
    pub injections: Option<Injections>,
    pub cache: Option<Cache>,
    pub series: DirectionSeries,
}

/// Keyframes by theme, from `keyframe` events that name one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Themes {
    /// Keyframes made under a theme (failed attempts are not shown, so not counted).
    pub keyframes: u64,
    /// Changes of theme between consecutive themed keyframes.
    pub switches: u64,
    /// Made keyframes by `origin` (`comfyui`, `fallback`, `cache`, `seed`), where the event says.
    pub by_origin: BTreeMap<String, u64>,
    /// In order of first appearance.
    pub shown: Vec<Theme>,
}

/// One theme.
#[derive(Debug, Clone, Serialize)]
pub struct Theme {
    pub name: String,
    pub keyframes: u64,
    /// Its first and last keyframe (RFC 3339).
    pub first: String,
    pub last: String,
    /// Runs of consecutive themed keyframes under it (keyframes without a theme, such as
    /// injections, neither end nor extend a run).
    pub spans_total: u64,
    /// The first [`MAX_SPANS`] runs.
    pub spans: Vec<Span>,
    /// The latest prompt (modifier included; first 200 characters).
    pub last_prompt: Option<String>,
}

/// A run of keyframes under one theme: from its first keyframe to its last.
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub from: String,
    /// Seconds since the report's first record.
    pub from_s: f64,
    pub duration_s: f64,
    pub keyframes: u64,
}

/// A moment: RFC 3339, seconds since the report's first record, and the keyframe concerned.
#[derive(Debug, Clone, Serialize)]
pub struct At {
    pub at: String,
    pub t_s: f64,
    pub index: u64,
}

/// A change of the detector's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub at: String,
    pub t_s: f64,
    pub index: u64,
    pub state: &'static str,
}

/// The mode-collapse detector, from `collapse` events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Collapse {
    pub analyses: u64,
    pub ok: u64,
    pub converging: u64,
    pub collapsed: u64,
    pub first_converging: Option<At>,
    pub first_collapsed: Option<At>,
    /// Largest deltas (recent minus early similarity; colour 0–3, structure 0–1) and severity.
    pub max_color_delta: Option<f64>,
    pub max_structure_delta: Option<f64>,
    pub max_severity: Option<f64>,
    /// The latest verdict.
    pub final_state: &'static str,
    /// Verdict changes, the first analysis included.
    pub changes_total: u64,
    /// The first [`MAX_CHANGES`] of them.
    pub changes: Vec<StateChange>,
}

/// Injections, from `injection` events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Injections {
    pub total: u64,
    /// `cache`, `seed`.
    pub by_kind: BTreeMap<String, InjectionKindStats>,
}

/// Injections of one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InjectionKindStats {
    pub count: u64,
    /// Mean share of the injected picture's latent.
    pub mean_weight: Option<f64>,
    /// Counts by reason, the reason's numbers left out (`chance 20 %` counts as `chance`).
    pub reasons: BTreeMap<String, u64>,
    pub first: Option<At>,
    /// The latest reason in full (first 200 characters) and source (cache entry, seed file).
    pub last_reason: String,
    pub last_source: String,
}

/// The diverse-frame cache, from `cache` events (one per offered keyframe).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cache {
    pub offered: u64,
    pub accepted: u64,
    /// Turned away as redundant.
    pub redundant: u64,
    /// accepted / offered.
    pub acceptance_rate: Option<f64>,
    /// Entries evicted to make room.
    pub evicted: u64,
    /// Entries after the last offer.
    pub final_size: u64,
    pub max_size: u64,
}

/// Downsampled series for the plot (≤ 256 points each; `t_s` = seconds since the report's
/// first record).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectionSeries {
    pub color_delta: Vec<SeriesPoint>,
    pub structure_delta: Vec<SeriesPoint>,
    /// The worst verdict per bucket in `max` (0 ok, 1 converging, 2 collapsed).
    pub collapse_state: Vec<SeriesPoint>,
    /// Injections per bucket in `count`.
    pub cache_injections: Vec<SeriesPoint>,
    pub seed_injections: Vec<SeriesPoint>,
}

impl Direction {
    /// Whether the plot has something to show beyond a detector that stayed `ok`: an
    /// injection, or a `converging`/`collapsed` verdict. A calm run's deltas are in the text.
    pub fn eventful(&self) -> bool {
        self.injections.as_ref().is_some_and(|i| i.total > 0)
            || self
                .collapse
                .as_ref()
                .is_some_and(|c| c.converging + c.collapsed > 0)
    }
}

/// The class of an injection reason: its leading words, up to the first number, `:` or `(`
/// (`bootstrap: cache holds 3 < 10` → `bootstrap`, `adaptive chance 12.5 %` → `adaptive
/// chance`, `cache injections at 40 % …` → `cache injections`).
pub fn reason_class(reason: &str) -> String {
    let mut words = Vec::new();
    for word in reason.split_whitespace() {
        if word.chars().any(|c| c.is_ascii_digit()) {
            break;
        }
        if let Some(cut) = word.find([':', '(']) {
            if cut > 0 {
                words.push(&word[..cut]);
            }
            break;
        }
        words.push(word);
    }
    while words
        .last()
        .is_some_and(|w| matches!(*w, "at" | "of" | "by" | "="))
    {
        words.pop();
    }
    if words.is_empty() {
        "unspecified".to_string()
    } else {
        words.join(" ")
    }
}

fn clip(text: &str) -> String {
    text.chars().take(TEXT_CHARS).collect()
}

fn state_level(state: CollapseState) -> f64 {
    match state {
        CollapseState::Ok => 0.0,
        CollapseState::Converging => 1.0,
        CollapseState::Collapsed => 2.0,
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b.filter(|v| v.is_finite())) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug)]
struct ThemeAcc {
    name: String,
    keyframes: u64,
    first: Timestamp,
    last: Timestamp,
    spans_total: u64,
    /// (from, to, keyframes)
    spans: Vec<(Timestamp, Timestamp, u64)>,
    last_prompt: Option<String>,
}

#[derive(Debug, Default)]
struct KindAcc {
    count: u64,
    weight: Sketch,
    reasons: BTreeMap<String, u64>,
    first: Option<(Timestamp, u64)>,
    last_reason: String,
    last_source: String,
}

/// Folds creative-direction records; [`DirectionAggregator::finish`] makes the section.
#[derive(Debug, Default)]
pub struct DirectionAggregator {
    themed: u64,
    switches: u64,
    by_origin: BTreeMap<String, u64>,
    directed_keyframes: u64,
    /// In order of first appearance.
    themes: Vec<ThemeAcc>,
    /// Index into `themes` of the current run.
    current_theme: Option<usize>,

    analyses: u64,
    states: [u64; 3],
    first_converging: Option<(Timestamp, u64)>,
    first_collapsed: Option<(Timestamp, u64)>,
    max_color_delta: Option<f64>,
    max_structure_delta: Option<f64>,
    max_severity: Option<f64>,
    last_state: Option<CollapseState>,
    changes_total: u64,
    changes: Vec<(Timestamp, u64, CollapseState)>,
    color_delta: Series,
    structure_delta: Series,
    state_series: Series,

    injections: BTreeMap<String, KindAcc>,
    cache_injections: Series,
    seed_injections: Series,

    offered: u64,
    accepted: u64,
    evicted: u64,
    final_size: u64,
    max_size: u64,
}

impl DirectionAggregator {
    /// A keyframe event that said how it was made.
    pub fn keyframe(&mut self, keyframe: &KeyframeRecord, direction: &KeyframeDirection) {
        self.directed_keyframes += 1;
        if !keyframe.ok {
            return;
        }
        let ts = keyframe.ts;
        if let Some(origin) = &direction.origin {
            let origin = bounded(&self.by_origin, origin);
            *self.by_origin.entry(origin).or_default() += 1;
        }
        let Some(theme) = &direction.theme else {
            return;
        };
        self.themed += 1;
        let index = match self.themes.iter().position(|t| &t.name == theme) {
            Some(i) => i,
            None => {
                let name = if self.themes.len() < MAX_NAMES {
                    theme.clone()
                } else {
                    OTHER.to_string()
                };
                match self.themes.iter().position(|t| t.name == name) {
                    Some(i) => i,
                    None => {
                        self.themes.push(ThemeAcc {
                            name,
                            keyframes: 0,
                            first: ts,
                            last: ts,
                            spans_total: 0,
                            spans: Vec::new(),
                            last_prompt: None,
                        });
                        self.themes.len() - 1
                    }
                }
            }
        };
        let continues = self.current_theme == Some(index);
        if !continues && self.current_theme.is_some() {
            self.switches += 1;
        }
        self.current_theme = Some(index);
        let acc = &mut self.themes[index];
        acc.keyframes += 1;
        acc.first = acc.first.min(ts);
        acc.last = acc.last.max(ts);
        if let Some(prompt) = &direction.prompt {
            acc.last_prompt = Some(clip(prompt));
        }
        if continues {
            // The current run is the last listed one unless the list is full.
            let listed = acc.spans_total as usize <= MAX_SPANS;
            if let Some(span) = acc.spans.last_mut().filter(|_| listed) {
                span.1 = span.1.max(ts);
                span.2 += 1;
            }
        } else {
            acc.spans_total += 1;
            if acc.spans.len() < MAX_SPANS {
                acc.spans.push((ts, ts, 1));
            }
        }
    }

    /// A `collapse` analysis.
    pub fn collapse(&mut self, c: &CollapseRecord) {
        self.analyses += 1;
        let slot = state_level(c.state) as usize;
        self.states[slot] += 1;
        match c.state {
            CollapseState::Converging if self.first_converging.is_none() => {
                self.first_converging = Some((c.ts, c.index));
            }
            CollapseState::Collapsed if self.first_collapsed.is_none() => {
                self.first_collapsed = Some((c.ts, c.index));
            }
            _ => {}
        }
        self.max_color_delta = max_opt(self.max_color_delta, c.color_delta);
        self.max_structure_delta = max_opt(self.max_structure_delta, c.structure_delta);
        self.max_severity = max_opt(self.max_severity, Some(c.severity));
        if self.last_state != Some(c.state) {
            self.changes_total += 1;
            if self.changes.len() < MAX_CHANGES {
                self.changes.push((c.ts, c.index, c.state));
            }
        }
        self.last_state = Some(c.state);
        if let Some(d) = c.color_delta {
            self.color_delta.add(c.ts, d);
        }
        if let Some(d) = c.structure_delta {
            self.structure_delta.add(c.ts, d);
        }
        self.state_series.add(c.ts, state_level(c.state));
    }

    /// An `injection`.
    pub fn injection(&mut self, i: &InjectionRecord) {
        let kind = i.kind.as_str();
        let acc = self.injections.entry(kind.to_string()).or_default();
        acc.count += 1;
        acc.weight.add(i.weight);
        let class = reason_class(&i.reason);
        let class = bounded(&acc.reasons, &class);
        *acc.reasons.entry(class).or_default() += 1;
        acc.first.get_or_insert((i.ts, i.index));
        acc.last_reason = clip(&i.reason);
        acc.last_source = clip(&i.source_id);
        match i.kind {
            crate::direction::injection::InjectionKind::Cache => &mut self.cache_injections,
            crate::direction::injection::InjectionKind::Seed => &mut self.seed_injections,
        }
        .add(i.ts, 1.0);
    }

    /// A `cache` offer.
    pub fn cache(&mut self, c: &CacheRecord) {
        self.offered += 1;
        if c.accepted {
            self.accepted += 1;
        }
        if c.evicted {
            self.evicted += 1;
        }
        self.final_size = c.size;
        self.max_size = self.max_size.max(c.size);
    }

    /// The section, or `None` when no creative-direction event was seen; times are given
    /// relative to `origin` (the report's first record).
    pub fn finish(&self, origin: Timestamp) -> Option<Direction> {
        let at = |(ts, index): (Timestamp, u64)| At {
            at: format_timestamp(ts),
            t_s: ts - origin,
            index,
        };
        let themes = (self.directed_keyframes > 0).then(|| Themes {
            keyframes: self.themed,
            switches: self.switches,
            by_origin: self.by_origin.clone(),
            shown: self
                .themes
                .iter()
                .map(|t| Theme {
                    name: t.name.clone(),
                    keyframes: t.keyframes,
                    first: format_timestamp(t.first),
                    last: format_timestamp(t.last),
                    spans_total: t.spans_total,
                    spans: t
                        .spans
                        .iter()
                        .map(|&(from, to, keyframes)| Span {
                            from: format_timestamp(from),
                            from_s: from - origin,
                            duration_s: to - from,
                            keyframes,
                        })
                        .collect(),
                    last_prompt: t.last_prompt.clone(),
                })
                .collect(),
        });
        let collapse = (self.analyses > 0).then(|| Collapse {
            analyses: self.analyses,
            ok: self.states[0],
            converging: self.states[1],
            collapsed: self.states[2],
            first_converging: self.first_converging.map(at),
            first_collapsed: self.first_collapsed.map(at),
            max_color_delta: self.max_color_delta,
            max_structure_delta: self.max_structure_delta,
            max_severity: self.max_severity,
            final_state: self.last_state.unwrap_or_default().as_str(),
            changes_total: self.changes_total,
            changes: self
                .changes
                .iter()
                .map(|&(ts, index, state)| StateChange {
                    at: format_timestamp(ts),
                    t_s: ts - origin,
                    index,
                    state: state.as_str(),
                })
                .collect(),
        });
        let injections = (!self.injections.is_empty()).then(|| Injections {
            total: self.injections.values().map(|k| k.count).sum(),
            by_kind: self
                .injections
                .iter()
                .map(|(kind, k)| {
                    let stats = InjectionKindStats {
                        count: k.count,
                        mean_weight: k.weight.mean(),
                        reasons: k.reasons.clone(),
                        first: k.first.map(at),
                        last_reason: k.last_reason.clone(),
                        last_source: k.last_source.clone(),
                    };
                    (kind.clone(), stats)
                })
                .collect(),
        });
        let cache = (self.offered > 0).then(|| Cache {
            offered: self.offered,
            accepted: self.accepted,
            redundant: self.offered - self.accepted,
            acceptance_rate: Some(self.accepted as f64 / self.offered as f64),
            evicted: self.evicted,
            final_size: self.final_size,
            max_size: self.max_size,
        });
        if themes.is_none() && collapse.is_none() && injections.is_none() && cache.is_none() {
            return None;
        }
        let points = |series: &Series| series.report_points(origin);
        Some(Direction {
            themes,
            collapse,
            injections,
            cache,
            series: DirectionSeries {
                color_delta: points(&self.color_delta),
                structure_delta: points(&self.structure_delta),
                collapse_state: points(&self.state_series),
                cache_injections: points(&self.cache_injections),
                seed_injections: points(&self.seed_injections),
            },
        })
    }
}

/// `name` if the map already has it or has room, else [`OTHER`].
fn bounded<V>(map: &BTreeMap<String, V>, name: &str) -> String {
    if map.contains_key(name) || map.len() < MAX_NAMES {
        name.to_string()
    } else {
        OTHER.to_string()
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k} {n}")).collect();
    parts.join(", ")
}

fn moment(at: &Option<At>) -> String {
    match at {
        Some(a) => format!("{} (keyframe {}, +{:.1} s)", a.at, a.index, a.t_s),
        None => "never".to_string(),
    }
}

/// The section as text (appended to the text report when the logs hold such events).
pub fn to_text(out: &mut String, d: &Direction) {
    let _ = writeln!(out, "\nCreative direction:");
    if let Some(t) = &d.themes {
        let _ = writeln!(
            out,
            "  Themes: {} shown, {} keyframes under a theme, {} switches{}",
            t.shown.len(),
            t.keyframes,
            t.switches,
            if t.by_origin.is_empty() {
                String::new()
            } else {
                format!("; keyframes by origin: {}", counts(&t.by_origin))
            }
        );
        for (i, theme) in t.shown.iter().enumerate() {
            let spans: Vec<String> = theme
                .spans
                .iter()
                .map(|s| format!("{} +{:.0} s ({})", s.from, s.duration_s, s.keyframes))
                .collect();
            let more = theme.spans_total.saturating_sub(theme.spans.len() as u64);
            let _ = writeln!(
                out,
                "    {}. {}: {} keyframes in {} span(s): {}{}",
                i + 1,
                theme.name,
                theme.keyframes,
                theme.spans_total,
                spans.join(", "),
                if more > 0 {
                    format!(", … {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(c) = &d.collapse {
        let _ = writeln!(
            out,
            "  Collapse: {} analyses (ok {}, converging {}, collapsed {}); latest {}",
            c.analyses, c.ok, c.converging, c.collapsed, c.final_state
        );
        let _ = writeln!(
            out,
            "    first converging {}; first collapsed {}",
            moment(&c.first_converging),
            moment(&c.first_collapsed)
        );
        let _ = writeln!(
            out,
            "    max colour delta {}, max structure delta {}, max severity {}",
            num(c.max_color_delta, 3),
            num(c.max_structure_delta, 3),
            num(c.max_severity, 2)
        );
        if c.changes_total > 1 {
            let changes: Vec<String> = c
                .changes
                .iter()
                .map(|s| format!("+{:.1} s {}", s.t_s, s.state))
                .collect();
            let more = c.changes_total - c.changes.len() as u64;
            let _ = writeln!(
                out,
                "    over time: {}{}",
                changes.join(" -> "),
                if more > 0 {
                    format!(" … {more} more changes")
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(i) = &d.injections {
        let kinds: Vec<String> = i
            .by_kind
            .iter()
            .map(|(k, s)| format!("{k} {}", s.count))
            .collect();
        let _ = writeln!(out, "  Injections: {} ({})", i.total, kinds.join(", "));
        for (kind, s) in &i.by_kind {
            let _ = writeln!(
                out,
                "    {kind}: mean weight {}; reasons: {}; last {} ({})",
                num(s.mean_weight, 2),
                counts(&s.reasons),
                s.last_source,
                s.last_reason
            );
        }
    }
    if let Some(c) = &d.cache {
        let _ = writeln!(
            out,
            "  Cache: {} of {} offers accepted ({} %), {} evicted, final size {} (max {})",
            c.accepted,
            c.offered,
            num(c.acceptance_rate.map(|r| r * 100.0), 1),
            c.evicted,
            c.final_size,
            c.max_size
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::aggregate::Aggregator;
    use crate::analyze::jsonl::{parse_line, Parsed};
    use crate::analyze::record::Record;
    use crate::direction::injection::InjectionKind;

    /// A synthetic ComfyUI run (tests/fixtures/dream.jsonl): 20 keyframes 3 s apart, themes
    /// nebula (0–7), forest (8–15), nebula (16–19); seed injections at 3 and 17, cache
    /// injections at 9 (forced by collapse) and 15; collapse analyses from keyframe 1 on,
    /// converging at 7, 13, 14 and collapsed at 8; every third offer to a 6-entry cache turned
    /// away.
    const FIXTURE: &str = include_str!("../../tests/fixtures/dream.jsonl");

    fn report_of(log: &str) -> crate::analyze::Report {
        let mut agg = Aggregator::default();
        for line in log.lines() {
            match parse_line(line) {
                Parsed::Record(r) => agg.add(r),
                other => panic!("{other:?}: {line}"),
            }
        }
        agg.finish(Vec::new())
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn themes_in_order_of_first_appearance_with_spans() {
        let report = report_of(FIXTURE);
        assert_eq!(report.keyframes.count, 20, "still counted as keyframes");
        let t = report.direction.unwrap().themes.unwrap();
        assert_eq!((t.keyframes, t.switches), (16, 2));
        let origins: Vec<(&str, u64)> = t.by_origin.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            origins,
            [("cache", 2), ("comfyui", 15), ("fallback", 1), ("seed", 2)]
        );
        let names: Vec<&str> = t.shown.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["nebula", "forest"]);
        let nebula = &t.shown[0];
        assert_eq!((nebula.keyframes, nebula.spans_total), (10, 2));
        assert_eq!(nebula.first, "2025-03-01T20:00:01Z");
        assert_eq!(nebula.last, "2025-03-01T20:00:58Z");
        assert_eq!(
            nebula.last_prompt.as_deref(),
            Some("nebula dreamscape, night")
        );
        // The seed injection at keyframe 3 neither ends nor extends the first run.
        let spans: Vec<(f64, f64, u64)> = nebula
            .spans
            .iter()
            .map(|s| (s.from_s, s.duration_s, s.keyframes))
            .collect();
        assert_eq!(spans, [(0.0, 21.0, 7), (48.0, 9.0, 3)]);
        let forest = &t.shown[1];
        assert_eq!((forest.keyframes, forest.spans_total), (6, 1));
        assert_eq!(forest.spans[0].from, "2025-03-01T20:00:25Z");
        assert_eq!(forest.spans[0].duration_s, 18.0);
    }

    #[test]
    fn collapse_status_over_time() {
        let c = report_of(FIXTURE).direction.unwrap().collapse.unwrap();
        assert_eq!(
            (c.analyses, c.ok, c.converging, c.collapsed),
            (19, 15, 3, 1)
        );
        let first = c.first_converging.unwrap();
        assert_eq!(
            (first.at.as_str(), first.index),
            ("2025-03-01T20:00:22Z", 7)
        );
        assert!((first.t_s - 21.2).abs() < 1e-6, "{}", first.t_s);
        assert_eq!(c.first_collapsed.unwrap().index, 8);
        // f32 in the log.
        assert!((c.max_color_delta.unwrap() - 0.33).abs() < 1e-6);
        assert!((c.max_structure_delta.unwrap() - 0.12).abs() < 1e-6);
        assert_eq!(c.max_severity, Some(1.0));
        assert_eq!(c.final_state, "ok");
        let changes: Vec<(u64, &str)> = c.changes.iter().map(|s| (s.index, s.state)).collect();
        assert_eq!(
            changes,
            [
                (1, "ok"),
                (7, "converging"),
                (8, "collapsed"),
                (9, "ok"),
                (13, "converging"),
                (15, "ok")
            ]
        );
        assert_eq!(c.changes_total, 6);
    }

    #[test]
    fn injections_by_kind_and_reason() {
        let i = report_of(FIXTURE).direction.unwrap().injections.unwrap();
        assert_eq!(i.total, 4);
        let cache = &i.by_kind["cache"];
        assert_eq!(cache.count, 2);
        assert!(close(cache.mean_weight, 0.35));
        let reasons: Vec<(&str, u64)> = cache
            .reasons
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(reasons, [("chance", 1), ("forced by collapse", 1)]);
        assert_eq!(cache.first.as_ref().unwrap().index, 9);
        let seed = &i.by_kind["seed"];
        assert_eq!(seed.count, 2);
        let reasons: Vec<&str> = seed.reasons.keys().map(String::as_str).collect();
        assert_eq!(reasons, ["adaptive chance", "bootstrap"]);
        assert_eq!(seed.last_source, "tide.png");
        assert_eq!(seed.last_reason, "adaptive chance 12.5 %");
    }

    #[test]
    fn cache_acceptance_rate() {
        let c = report_of(FIXTURE).direction.unwrap().cache.unwrap();
        assert_eq!((c.offered, c.accepted, c.redundant), (20, 14, 6));
        assert!(close(c.acceptance_rate, 0.7));
        assert_eq!((c.evicted, c.final_size, c.max_size), (8, 6, 6));
    }

    #[test]
    fn series_and_text() {
        let report = report_of(FIXTURE);
        let d = report.direction.as_ref().unwrap();
        assert!(d.eventful());
        let s = &d.series;
        assert_eq!(s.color_delta.iter().map(|p| p.count).sum::<u64>(), 16);
        assert_eq!(s.collapse_state.iter().map(|p| p.count).sum::<u64>(), 19);
        assert_eq!(s.collapse_state.iter().filter(|p| p.max == 2.0).count(), 1);
        assert_eq!(s.cache_injections.len(), 2);
        assert_eq!(s.seed_injections[0].t_s, 8.5);

        let text = crate::analyze::report::to_text(&report);
        for expected in [
            "\nCreative direction:\n",
            "  Themes: 2 shown, 16 keyframes under a theme, 2 switches; keyframes by origin: cache 2, comfyui 15, fallback 1, seed 2\n",
            "    1. nebula: 10 keyframes in 2 span(s): 2025-03-01T20:00:01Z +21 s (7), 2025-03-01T20:00:49Z +9 s (3)\n",
            "  Collapse: 19 analyses (ok 15, converging 3, collapsed 1); latest ok\n",
            "    first converging 2025-03-01T20:00:22Z (keyframe 7, +21.2 s); first collapsed 2025-03-01T20:00:25Z (keyframe 8, +24.2 s)\n",
            "    max colour delta 0.330, max structure delta 0.120, max severity 1.00\n",
            "    over time: +3.2 s ok -> +21.2 s converging -> +24.2 s collapsed -> +27.2 s ok -> +39.2 s converging -> +45.2 s ok\n",
            "  Injections: 4 (cache 2, seed 2)\n",
            "    cache: mean weight 0.35; reasons: chance 1, forced by collapse 1; last cache_00000007 (chance 25 %)\n",
            "  Cache: 14 of 20 offers accepted (70.0 %), 8 evicted, final size 6 (max 6)\n",
        ] {
            assert!(text.contains(expected), "{expected}\n---\n{text}");
        }
        // After the failures, before the verdict.
        assert!(text.find("Failures:").unwrap() < text.find("Creative direction:").unwrap());
        assert!(text.find("Creative direction:").unwrap() < text.find("Bottlenecks:").unwrap());
    }

    #[test]
    fn logs_without_direction_events_have_no_section() {
        let log = r#"{"timestamp":"2024-05-01T12:00:00Z","event":"keyframe","index":1,"seq":5,"source":"procedural","ms":2.0,"outcome":"ok"}
{"timestamp":"2024-05-01T12:00:01Z","event":"keyframe","index":2,"seq":10,"source":"comfyui","ms":2.0,"outcome":"ok","prompt_id":"abc","seed":3}"#;
        let report = report_of(log);
        assert!(report.direction.is_none());
        let json = serde_json::to_value(&report).unwrap();
        assert!(json.get("direction").is_none());
        assert!(!crate::analyze::report::to_text(&report).contains("Creative direction"));
    }

    #[test]
    fn a_calm_detector_alone_is_not_eventful() {
        let log = r#"{"timestamp":"2024-05-01T12:00:00Z","event":"collapse","index":11,"state":"ok","color_similarity":2.4,"structure_similarity":0.65,"color_delta":0.018,"structure_delta":0.007,"severity":0.0,"reason":"colour delta 0.018, structure delta 0.007"}"#;
        let d = report_of(log).direction.unwrap();
        assert!(d.themes.is_none() && d.injections.is_none() && d.cache.is_none());
        assert_eq!(d.collapse.as_ref().unwrap().changes_total, 1);
        assert!(!d.eventful());
    }

    #[test]
    fn reasons_are_classed_without_their_numbers() {
        for (reason, class) in [
            ("bootstrap: cache holds 3 < 10 (chance 50 %)", "bootstrap"),
            ("adaptive chance 12.5 %", "adaptive chance"),
            ("chance 20 %", "chance"),
            (
                "forced by collapse (colour delta 0.400 > 0.300)",
                "forced by collapse",
            ),
            (
                "cache injections at 40 % of recent keyframes > 30 %",
                "cache injections",
            ),
            (
                "collapse verdicts at 60 % of recent analyses > 50 %",
                "collapse verdicts",
            ),
            ("", "unspecified"),
            ("42", "unspecified"),
        ] {
            assert_eq!(reason_class(reason), class, "{reason}");
        }
    }

    #[test]
    fn names_spans_and_changes_are_bounded() {
        let mut agg = DirectionAggregator::default();
        let keyframe = |ts: f64| KeyframeRecord {
            ts,
            source: "comfyui".to_string(),
            ms: Some(1.0),
            ok: true,
            error: None,
        };
        let themed = |theme: String| KeyframeDirection {
            theme: Some(theme),
            prompt: Some("p".repeat(1000)),
            origin: None,
        };
        // 100 themes, then two themes alternating 40 times.
        for i in 0..100 {
            agg.keyframe(&keyframe(i as f64), &themed(format!("theme{i}")));
        }
        for i in 0..80 {
            agg.keyframe(
                &keyframe(100.0 + i as f64),
                &themed(format!("theme{}", i % 2)),
            );
        }
        for i in 0..200u64 {
            agg.collapse(&CollapseRecord {
                ts: i as f64,
                index: i,
                state: if i % 2 == 0 {
                    CollapseState::Ok
                } else {
                    CollapseState::Converging
                },
                color_similarity: 2.0,
                structure_similarity: 0.5,
                color_delta: Some(0.1),
                structure_delta: None,
                severity: 0.5,
            });
        }
        for i in 0..100 {
            agg.injection(&InjectionRecord {
                ts: i as f64,
                index: i,
                kind: InjectionKind::Seed,
                source_id: "s.png".to_string(),
                weight: 0.5,
                reason: format!(
                    "reason{} x",
                    "abcdefghijklmnopqrstuvwxyz"
                        .repeat(2)
                        .get(..i as usize % 50)
                        .unwrap_or("")
                ),
            });
        }
        let d = agg.finish(0.0).unwrap();
        let t = d.themes.unwrap();
        assert_eq!(t.shown.len(), MAX_NAMES + 1);
        assert_eq!(t.shown[MAX_NAMES].name, OTHER);
        assert_eq!(t.shown[MAX_NAMES].keyframes, 100 - MAX_NAMES as u64);
        let theme0 = &t.shown[0];
        assert_eq!(theme0.spans_total, 41);
        assert_eq!(theme0.spans.len(), MAX_SPANS);
        assert_eq!(theme0.last_prompt.as_ref().unwrap().len(), TEXT_CHARS);
        let c = d.collapse.unwrap();
        assert_eq!(c.changes_total, 200);
        assert_eq!(c.changes.len(), MAX_CHANGES);
        let seed = &d.injections.unwrap().by_kind["seed"];
        assert_eq!(seed.reasons.len(), MAX_NAMES + 1);
        assert_eq!(seed.reasons.values().sum::<u64>(), 100);
    }

    #[test]
    fn the_jsonl_reader_keeps_direction_apart_from_plain_keyframes() {
        let line = FIXTURE.lines().next().unwrap();
        let Parsed::Record(Record::DirectedKeyframe(k, d)) = parse_line(line) else {
            panic!("not a directed keyframe: {line}");
        };
        assert_eq!((k.source.as_str(), k.ok), ("comfyui", true));
        assert_eq!(d.theme.as_deref(), Some("nebula"));
        assert_eq!(d.origin.as_deref(), Some("comfyui"));
    }
}
