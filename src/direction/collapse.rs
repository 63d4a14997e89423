//! Mode-collapse detection: is the dream converging to one texture or colour?
//!
//! The original's rule (§2.8 of the inventory), with its defects mended. For each displayed
//! keyframe the detector takes the mean colour and structure similarity of consecutive pairs in
//! the last `window` keyframes; once `min_history` such means exist, the *delta* of each metric
//! is the mean of the newest `compare` values minus the mean of the oldest `compare` ones. A
//! rising similarity means the frames are growing alike:
//!
//! - `collapsed` when the colour delta exceeds `color_force` or (with `logic = "any"`; both with
//!   `"all"`) the structure delta exceeds `structure_force` → force an injection;
//! - `converging` when the same holds for the `*_converge` thresholds → raise the injection
//!   probability by how far past the threshold the delta is;
//! - `ok` otherwise.
//!
//! Mended: the logic is configurable and logged as what it is (the original computed OR and
//! logged AND), colour and structure are reported separately with colour normalised to
//! `[0, 1]` for the combined figure, the thresholds are configuration, and every figure the
//! status shows is a real one.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::similarity::{Embedding, MAX_COLOR_SIMILARITY};

/// `[collapse]`: windows and thresholds of the detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollapseConfig {
    /// Watch for collapse at all.
    pub enabled: bool,
    /// Keyframes whose consecutive pairs are averaged per analysis (≥ 2).
    pub window: usize,
    /// Per-analysis means needed before deltas are computed (≥ 2 × `compare`).
    pub min_history: usize,
    /// Means averaged at each end of the history for the delta.
    pub compare: usize,
    /// How many per-analysis means are kept (≥ `min_history`).
    pub history: usize,
    /// Colour delta (similarity units, 0–3) for `converging`.
    pub color_converge: f32,
    /// Colour delta for `collapsed`.
    pub color_force: f32,
    /// Structure delta (0–1) for `converging`.
    pub structure_converge: f32,
    /// Structure delta for `collapsed`.
    pub structure_force: f32,
    /// `any`: one metric past its threshold is enough (the original's behaviour); `all`: both.
    pub logic: CollapseLogic,
    /// What an injection does to the history: `none`, `partial` (keep the newest
    /// `keep_after_injection` entries) or `full`.
    pub reset: ResetMode,
    pub keep_after_injection: usize,
}

impl Default for CollapseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: 10,
            min_history: 40,
            compare: 20,
            history: 100,
            color_converge: 0.15,
            color_force: 0.30,
            structure_converge: 0.08,
            structure_force: 0.15,
            logic: CollapseLogic::Any,
            reset: ResetMode::Partial,
            keep_after_injection: 10,
        }
    }
}

/// How the two metrics combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CollapseLogic {
    Any,
    All,
}

/// What an injection does to the detector's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetMode {
    None,
    Partial,
    Full,
}

impl CollapseConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if self.window < 2 || self.window > 1000 {
            return Err(("collapse.window", self.window.to_string(), "2..=1000"));
        }
        if self.compare == 0 || self.min_history < 2 * self.compare {
            return Err((
                "collapse.min_history",
                self.min_history.to_string(),
                ">= 2 × collapse.compare (and compare >= 1)",
            ));
        }
        if self.history < self.min_history || self.history > 100_000 {
            return Err((
                "collapse.history",
                self.history.to_string(),
                ">= collapse.min_history and <= 100000",
            ));
        }
        for (key, v, max) in [
            ("collapse.color_converge", self.color_converge, 3.0),
            ("collapse.color_force", self.color_force, 3.0),
            ("collapse.structure_converge", self.structure_converge, 1.0),
            ("collapse.structure_force", self.structure_force, 1.0),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= max) {
                return Err((key, v.to_string(), "> 0 and within the metric's range"));
            }
        }
        if self.color_force <= self.color_converge {
            return Err((
                "collapse.color_force",
                self.color_force.to_string(),
                "> collapse.color_converge",
            ));
        }
        if self.structure_force <= self.structure_converge {
            return Err((
                "collapse.structure_force",
                self.structure_force.to_string(),
                "> collapse.structure_converge",
            ));
        }
        Ok(())
    }
}

/// The detector's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollapseState {
    /// Not enough history yet, or no sign of convergence.
    #[default]
    Ok,
    /// Frames are growing alike: inject more often.
    Converging,
    /// Severe convergence: inject now.
    Collapsed,
}

impl CollapseState {
    /// The name status and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            CollapseState::Ok => "ok",
            CollapseState::Converging => "converging",
            CollapseState::Collapsed => "collapsed",
        }
    }
}

/// One analysis.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CollapseReport {
    pub state: CollapseState,
    /// Mean colour similarity of consecutive keyframes in the window (0–3).
    pub color_similarity: f32,
    /// Mean structure similarity of consecutive keyframes in the window (0–1).
    pub structure_similarity: f32,
    /// Colour delta, recent minus early (`None` until `min_history`).
    pub color_delta: Option<f32>,
    /// Structure delta.
    pub structure_delta: Option<f32>,
    /// How far into the converging band, 0–1 (1 when collapsed): the extra injection share.
    pub severity: f32,
    /// Which metrics triggered, e.g. `colour 0.183 > 0.150`.
    pub reason: String,
}

/// The detector's state.
#[derive(Debug)]
pub struct CollapseDetector {
    config: CollapseConfig,
    embeddings: VecDeque<Embedding>,
    color_means: VecDeque<f32>,
    structure_means: VecDeque<f32>,
    last: CollapseReport,
}

impl CollapseDetector {
    pub fn new(config: CollapseConfig) -> Self {
        Self {
            config,
            embeddings: VecDeque::new(),
            color_means: VecDeque::new(),
            structure_means: VecDeque::new(),
            last: CollapseReport::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &CollapseConfig {
        &self.config
    }

    /// The latest analysis.
    pub fn last(&self) -> &CollapseReport {
        &self.last
    }

    /// Keyframes analysed and still in the window.
    pub fn frames_in_window(&self) -> usize {
        self.embeddings.len()
    }

    /// Replaces thresholds and windows (hot reload), keeping the history.
    pub fn reconfigure(&mut self, config: CollapseConfig) {
        self.config = config;
        self.trim();
    }

    fn trim(&mut self) {
        while self.embeddings.len() > self.config.window {
            self.embeddings.pop_front();
        }
        for q in [&mut self.color_means, &mut self.structure_means] {
            while q.len() > self.config.history {
                q.pop_front();
            }
        }
    }

    /// Adds the embedding of the keyframe just shown and analyses.
    pub fn analyse(&mut self, embedding: Embedding) -> &CollapseReport {
        self.embeddings.push_back(embedding);
        self.trim();
        if self.embeddings.len() < 2 {
            self.last = CollapseReport {
                reason: "insufficient history".into(),
                ..CollapseReport::default()
            };
            return &self.last;
        }
        let pairs = self.embeddings.len() - 1;
        let (mut c, mut s) = (0f32, 0f32);
        for (a, b) in self.embeddings.iter().zip(self.embeddings.iter().skip(1)) {
            c += a.color_similarity(b);
            s += a.structure_similarity(b);
        }
        let (c, s) = (c / pairs as f32, s / pairs as f32);
        self.color_means.push_back(c);
        self.structure_means.push_back(s);
        self.trim();
        self.last = self.judge(c, s);
        &self.last
    }

    fn judge(&self, color: f32, structure: f32) -> CollapseReport {
        let cfg = &self.config;
        let mut report = CollapseReport {
            color_similarity: color,
            structure_similarity: structure,
            ..CollapseReport::default()
        };
        if !cfg.enabled || self.color_means.len() < cfg.min_history {
            report.reason = format!(
                "history {}/{}",
                self.color_means.len().min(cfg.min_history),
                cfg.min_history
            );
            return report;
        }
        let delta = |q: &VecDeque<f32>| {
            let n = cfg.compare;
            let early: f32 = q.iter().take(n).sum::<f32>() / n as f32;
            let recent: f32 = q.iter().rev().take(n).sum::<f32>() / n as f32;
            recent - early
        };
        let (dc, ds) = (delta(&self.color_means), delta(&self.structure_means));
        report.color_delta = Some(dc);
        report.structure_delta = Some(ds);
        let joiner = match cfg.logic {
            CollapseLogic::Any => " OR ",
            CollapseLogic::All => " AND ",
        };
        let decide = |c_th: f32, s_th: f32| -> Option<String> {
            let (c_hit, s_hit) = (dc > c_th, ds > s_th);
            let hit = match cfg.logic {
                CollapseLogic::Any => c_hit || s_hit,
                CollapseLogic::All => c_hit && s_hit,
            };
            hit.then(|| {
                let mut parts = Vec::new();
                if c_hit {
                    parts.push(format!("colour delta {dc:.3} > {c_th:.3}"));
                }
                if s_hit {
                    parts.push(format!("structure delta {ds:.3} > {s_th:.3}"));
                }
                parts.join(joiner)
            })
        };
        if let Some(reason) = decide(cfg.color_force, cfg.structure_force) {
            report.state = CollapseState::Collapsed;
            report.severity = 1.0;
            report.reason = reason;
        } else if let Some(reason) = decide(cfg.color_converge, cfg.structure_converge) {
            let progress = |d: f32, lo: f32, hi: f32| ((d - lo) / (hi - lo)).clamp(0.0, 1.0);
            let pc = progress(dc, cfg.color_converge, cfg.color_force);
            let ps = progress(ds, cfg.structure_converge, cfg.structure_force);
            report.state = CollapseState::Converging;
            report.severity = match cfg.logic {
                CollapseLogic::Any => pc.max(ps),
                CollapseLogic::All => pc.min(ps),
            };
            report.reason = reason;
        } else {
            report.reason = format!("colour delta {dc:.3}, structure delta {ds:.3}");
        }
        report
    }

    /// Forgets history after an injection, as `collapse.reset` says.
    pub fn reset_after_injection(&mut self) {
        match self.config.reset {
            ResetMode::None => {}
            ResetMode::Full => {
                self.embeddings.clear();
                self.color_means.clear();
                self.structure_means.clear();
            }
            ResetMode::Partial => {
                let keep = self.config.keep_after_injection;
                for q in [&mut self.color_means, &mut self.structure_means] {
                    while q.len() > keep {
                        q.pop_front();
                    }
                }
                while self.embeddings.len() > keep {
                    self.embeddings.pop_front();
                }
            }
        }
        self.last.state = CollapseState::Ok;
        self.last.severity = 0.0;
    }
}

/// A colour similarity on the `[0, 1]` scale of the structure metric.
pub fn normalised_color(color: f32) -> f32 {
    color / MAX_COLOR_SIMILARITY
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An embedding whose similarity to `base` is set by `phash_bits` differing bits and a
    /// colour histogram that moves `shift` of its mass.
    fn embedding(shift: f32, phash: u64) -> Embedding {
        let mut color = vec![0f32; 96];
        for c in 0..3 {
            color[c * 32] = 1.0 - shift;
            color[c * 32 + 1] = shift;
        }
        Embedding { color, phash }
    }

    fn cfg() -> CollapseConfig {
        CollapseConfig {
            window: 2,
            min_history: 4,
            compare: 2,
            history: 10,
            ..CollapseConfig::default()
        }
    }

    /// Makes each new keyframe's similarity to the previous one what a step says: `bits`
    /// pHash bits flip (structure `1 − bits/64`), and the colour alternates between a
    /// reference and one moving `shift` of its mass (colour `3·(1 − shift)` while the shift is
    /// held for a phase).
    #[derive(Default)]
    struct Feeder {
        phash: u64,
        flip: bool,
    }

    impl Feeder {
        fn feed(&mut self, d: &mut CollapseDetector, steps: &[(f32, u32)]) -> CollapseReport {
            let mut last = CollapseReport::default();
            for &(shift, bits) in steps {
                self.phash ^= (1u64 << bits) - 1;
                self.flip = !self.flip;
                let e = embedding(if self.flip { shift } else { 0.0 }, self.phash);
                last = d.analyse(e).clone();
            }
            last
        }
    }

    #[test]
    fn insufficient_history_is_ok() {
        let mut d = CollapseDetector::new(cfg());
        let r = d.analyse(embedding(0.0, 0)).clone();
        assert_eq!(r.state, CollapseState::Ok);
        assert_eq!(r.reason, "insufficient history");
        assert!(r.color_delta.is_none());
    }

    #[test]
    fn rising_structure_similarity_converges_then_collapses() {
        // Early pairs differ by 32 bits (s = 0.5); recent by 24 (0.625, Δs = 0.125 → converging)
        // and then by 16 (0.75, Δs = 0.25 → collapsed).
        let mut d = CollapseDetector::new(cfg());
        let mut f = Feeder::default();
        let r = f.feed(&mut d, &[(0.5, 32); 5]);
        assert_eq!(r.structure_delta, Some(0.0));
        let r = f.feed(&mut d, &[(0.5, 24), (0.5, 24)]);
        assert_eq!(r.state, CollapseState::Converging, "{r:?}");
        assert_eq!(r.structure_delta, Some(0.125));
        assert_eq!(r.color_delta, Some(0.0));
        assert!(r.severity > 0.0 && r.severity < 1.0);
        assert!(r.reason.contains("structure delta"));
        assert!(!r.reason.contains("colour delta"));
        let r = f.feed(&mut d, &[(0.5, 16); 4]);
        assert_eq!(r.state, CollapseState::Collapsed, "{r:?}");
        assert_eq!(r.severity, 1.0);
    }

    #[test]
    fn all_logic_needs_both_metrics() {
        let mut c = cfg();
        c.logic = CollapseLogic::All;
        let mut d = CollapseDetector::new(c);
        let mut f = Feeder::default();
        // Structure rises a lot (0.5 → 0.875), colour stays: no verdict with AND.
        f.feed(&mut d, &[(0.5, 32); 5]);
        let r = f.feed(&mut d, &[(0.5, 8); 6]);
        assert_eq!(r.state, CollapseState::Ok, "{r:?}");
        assert!(r.structure_delta.unwrap() > 0.15);
        // Both rise: colour 1.5 → 3.0 (Δc 1.5), structure 0.875 → 1.0 (Δs 0.125).
        let r = f.feed(&mut d, &[(0.0, 0); 6]);
        assert_eq!(r.state, CollapseState::Converging, "{r:?}");
        assert!(r.reason.contains(" AND "), "{}", r.reason);
        assert!((r.color_delta.unwrap() - 1.5).abs() < 1e-6);
    }

    #[test]
    fn stable_stream_stays_ok_with_real_deltas() {
        let mut d = CollapseDetector::new(cfg());
        let r = Feeder::default().feed(&mut d, &[(0.5, 32); 12]);
        assert_eq!(r.state, CollapseState::Ok);
        assert_eq!(r.color_delta, Some(0.0));
        assert_eq!(r.structure_delta, Some(0.0));
        assert!((r.color_similarity - 1.5).abs() < 1e-6);
        assert!((r.structure_similarity - 0.5).abs() < 1e-6);
    }

    #[test]
    fn partial_reset_keeps_the_newest_entries_and_delays_the_next_verdict() {
        let mut c = cfg();
        c.keep_after_injection = 1;
        let mut d = CollapseDetector::new(c);
        let mut f = Feeder::default();
        f.feed(&mut d, &[(0.5, 32); 5]);
        let r = f.feed(&mut d, &[(0.5, 8); 3]);
        assert_eq!(r.state, CollapseState::Collapsed, "{r:?}");
        d.reset_after_injection();
        assert_eq!(d.last().state, CollapseState::Ok);
        let r = f.feed(&mut d, &[(0.5, 8)]);
        assert!(r.color_delta.is_none(), "history restarted: {r:?}");
    }

    #[test]
    fn validation_names_the_key() {
        assert_eq!(CollapseConfig::default().validate(), Ok(()));
        let c = CollapseConfig {
            color_force: 0.1,
            ..CollapseConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "collapse.color_force");
        let c = CollapseConfig {
            min_history: 10,
            ..CollapseConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "collapse.min_history");
    }
}
