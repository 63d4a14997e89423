//! Injections: when to replace the next generated keyframe by a blend with a dissimilar cached
//! frame or a seed picture, and which one to use.
//!
//! The rules are the original's (§2.9–2.10 of the inventory), in its order: nothing during the
//! warm-up; a **seed** when its cooldown has passed and either cache injections have become too
//! frequent, collapse verdicts have, the cache is still small (a bootstrap chance), or by an
//! adaptive chance that grows with the cache injections made; otherwise a **cache** injection when
//! the detector says `collapsed` (this ignores the cooldown), or off cooldown with the baseline
//! probability raised by how far the dream is converging.
//!
//! A cache candidate must lie in the colour *or* structure dissimilarity window; it is scored by
//! how far towards the dissimilar end it lies — by the metric that triggered the collapse when
//! one did (the original never passed the trigger, so it always took the larger), weighted
//! `exp(2·score)`, with a ×0.1 penalty for the last five frames injected, and drawn at random.
//!
//! The blend itself happens in latent space in the director: `blend_weight` of the cached latent
//! (`seed_blend_weight` for seeds) and the rest of the current keyframe's.

use std::collections::VecDeque;
use std::path::PathBuf;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::collapse::{CollapseReport, CollapseState};
use super::similarity::{Embedding, Similarity};

/// `[injection]`: when and how keyframes are blended with cached or seed pictures.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InjectionConfig {
    /// Inject at all.
    pub enabled: bool,
    /// Keyframes at the start with no injection (and no collapse analysis).
    pub warmup_keyframes: u64,
    /// Baseline chance of a cache injection per keyframe.
    pub probability: f64,
    /// A cache injection waits until more than this many keyframes have passed since the last.
    pub cooldown: u64,
    /// Share of the cached latent in the blend.
    pub blend_weight: f64,
    /// Folder of seed pictures (PNG, JPEG, WebP); empty: no seed injections.
    pub seeds_dir: PathBuf,
    /// Share of the seed's latent in the blend.
    pub seed_blend_weight: f64,
    /// A seed waits until more than this many keyframes have passed since the last.
    pub seed_cooldown: u64,
    /// Adaptive seed chance: from `seed_floor` to `seed_max` over `seed_ramp` cache injections.
    pub seed_floor: f64,
    pub seed_max: f64,
    pub seed_ramp: u64,
    /// While the cache holds fewer entries than this, seeds come with `seed_boost_probability`.
    pub seed_boost_below: usize,
    pub seed_boost_probability: f64,
    /// Force a seed when more than this share of the last 10 keyframes were cache injections.
    pub force_seed_cache_share: f64,
    /// Force a seed when more than this share of the last 20 verdicts were converging/collapsed.
    pub force_seed_collapse_share: f64,
    /// Colour similarity window (exclusive) of a cache candidate.
    pub color_window: [f32; 2],
    /// Structure similarity window (exclusive) of a cache candidate.
    pub structure_window: [f32; 2],
}

impl Default for InjectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            warmup_keyframes: 10,
            probability: 0.15,
            cooldown: 2,
            blend_weight: 0.75,
            seeds_dir: PathBuf::new(),
            seed_blend_weight: 0.85,
            seed_cooldown: 2,
            seed_floor: 0.02,
            seed_max: 0.15,
            seed_ramp: 50,
            seed_boost_below: 10,
            seed_boost_probability: 0.20,
            force_seed_cache_share: 0.30,
            force_seed_collapse_share: 0.30,
            color_window: [1.18, 2.05],
            structure_window: [0.68, 0.92],
        }
    }
}

impl InjectionConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        for (key, v) in [
            ("injection.probability", self.probability),
            ("injection.blend_weight", self.blend_weight),
            ("injection.seed_blend_weight", self.seed_blend_weight),
            ("injection.seed_floor", self.seed_floor),
            ("injection.seed_max", self.seed_max),
            (
                "injection.seed_boost_probability",
                self.seed_boost_probability,
            ),
            (
                "injection.force_seed_cache_share",
                self.force_seed_cache_share,
            ),
            (
                "injection.force_seed_collapse_share",
                self.force_seed_collapse_share,
            ),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((key, v.to_string(), "between 0 and 1"));
            }
        }
        if self.seed_floor > self.seed_max {
            return Err((
                "injection.seed_floor",
                self.seed_floor.to_string(),
                "<= injection.seed_max",
            ));
        }
        let [lo, hi] = self.color_window;
        if !(0.0 <= lo && lo < hi && hi <= 3.0) {
            return Err((
                "injection.color_window",
                format!("[{lo}, {hi}]"),
                "[low, high] with 0 <= low < high <= 3",
            ));
        }
        let [lo, hi] = self.structure_window;
        if !(0.0 <= lo && lo < hi && hi <= 1.0) {
            return Err((
                "injection.structure_window",
                format!("[{lo}, {hi}]"),
                "[low, high] with 0 <= low < high <= 1",
            ));
        }
        Ok(())
    }
}

/// What kind of picture an injection blends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectionKind {
    Cache,
    Seed,
}

impl InjectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InjectionKind::Cache => "cache",
            InjectionKind::Seed => "seed",
        }
    }
}

/// The decision for one keyframe.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Generate as usual.
    Generate,
    /// Blend with a seed picture; the reason for the log.
    Seed { reason: String },
    /// Blend with a cached frame; `forced` when collapse demanded it.
    Cache { forced: bool, probability: f64 },
}

/// Which metric made the detector speak, to score candidates by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Color,
    Structure,
    Both,
}

impl Trigger {
    /// Reads the trigger from a report's deltas against the converging thresholds.
    pub fn of(report: &CollapseReport, color_th: f32, structure_th: f32) -> Option<Trigger> {
        if report.state == CollapseState::Ok {
            return None;
        }
        let c = report.color_delta.is_some_and(|d| d > color_th);
        let s = report.structure_delta.is_some_and(|d| d > structure_th);
        match (c, s) {
            (true, true) => Some(Trigger::Both),
            (true, false) => Some(Trigger::Color),
            (false, true) => Some(Trigger::Structure),
            (false, false) => None,
        }
    }
}

/// The injection bookkeeping across keyframes.
#[derive(Debug)]
pub struct InjectionPolicy {
    config: InjectionConfig,
    last_cache: Option<u64>,
    last_seed: Option<u64>,
    /// Last 10 keyframes: was it a cache injection?
    recent_cache: VecDeque<bool>,
    /// Last 20 verdicts: converging or collapsed?
    recent_collapse: VecDeque<bool>,
    /// Cache ids injected most recently (anti-repeat window of 5).
    recent_ids: VecDeque<u64>,
    cache_injections: u64,
    seed_injections: u64,
}

/// A chosen cache entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: u64,
    pub similarity: Similarity,
    /// How dissimilar, 0 (window's similar end) to 1 (dissimilar end); may leave `[0, 1]` for
    /// the metric that did not qualify it.
    pub score: f32,
}

impl InjectionPolicy {
    pub fn new(config: InjectionConfig) -> Self {
        Self {
            config,
            last_cache: None,
            last_seed: None,
            recent_cache: VecDeque::new(),
            recent_collapse: VecDeque::new(),
            recent_ids: VecDeque::new(),
            cache_injections: 0,
            seed_injections: 0,
        }
    }

    pub fn config(&self) -> &InjectionConfig {
        &self.config
    }

    /// Replaces the settings (hot reload), keeping the history.
    pub fn reconfigure(&mut self, config: InjectionConfig) {
        self.config = config;
    }

    /// Cache and seed injections made so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.cache_injections, self.seed_injections)
    }

    /// Whether keyframe `n` is still in the warm-up (no injections, no collapse analysis).
    pub fn in_warmup(&self, n: u64) -> bool {
        n <= self.config.warmup_keyframes
    }

    /// Records a collapse verdict (for the collapse-share rule).
    pub fn record_verdict(&mut self, state: CollapseState) {
        push_bounded(&mut self.recent_collapse, state != CollapseState::Ok, 20);
    }

    /// Decides keyframe `n`, given the latest collapse verdict, the cache size and whether seed
    /// pictures exist.
    pub fn decide(
        &mut self,
        n: u64,
        collapse: &CollapseReport,
        cache_len: usize,
        have_seeds: bool,
        rng: &mut impl Rng,
    ) -> Decision {
        let cfg = &self.config;
        if !cfg.enabled || self.in_warmup(n) {
            return Decision::Generate;
        }
        let p = match collapse.state {
            CollapseState::Converging => {
                cfg.probability + (1.0 - cfg.probability) * f64::from(collapse.severity)
            }
            _ => cfg.probability,
        };
        let seed_ready = have_seeds && self.last_seed.is_none_or(|l| n - l > cfg.seed_cooldown);
        if seed_ready {
            let share = |q: &VecDeque<bool>| {
                if q.is_empty() {
                    0.0
                } else {
                    q.iter().filter(|b| **b).count() as f64 / q.len() as f64
                }
            };
            let cache_share = share(&self.recent_cache);
            let collapse_share = share(&self.recent_collapse);
            if cache_share > cfg.force_seed_cache_share {
                return Decision::Seed {
                    reason: format!(
                        "cache injections at {:.0} % of recent keyframes > {:.0} %",
                        cache_share * 100.0,
                        cfg.force_seed_cache_share * 100.0
                    ),
                };
            }
            if collapse_share > cfg.force_seed_collapse_share {
                return Decision::Seed {
                    reason: format!(
                        "collapse verdicts at {:.0} % of recent analyses > {:.0} %",
                        collapse_share * 100.0,
                        cfg.force_seed_collapse_share * 100.0
                    ),
                };
            }
            if cache_len < cfg.seed_boost_below {
                if rng.random::<f64>() < cfg.seed_boost_probability {
                    return Decision::Seed {
                        reason: format!(
                            "bootstrap: cache holds {cache_len} < {} (chance {:.0} %)",
                            cfg.seed_boost_below,
                            cfg.seed_boost_probability * 100.0
                        ),
                    };
                }
            } else {
                let ramp = (self.cache_injections as f64 / cfg.seed_ramp.max(1) as f64).min(1.0);
                let p_seed = cfg.seed_floor + (cfg.seed_max - cfg.seed_floor) * ramp;
                if rng.random::<f64>() < p_seed {
                    return Decision::Seed {
                        reason: format!("adaptive chance {:.1} %", p_seed * 100.0),
                    };
                }
            }
        }
        if cache_len > 0 {
            if collapse.state == CollapseState::Collapsed {
                return Decision::Cache {
                    forced: true,
                    probability: 1.0,
                };
            }
            let on_cooldown = self.last_cache.is_some_and(|l| n - l <= cfg.cooldown);
            if !on_cooldown && rng.random::<f64>() < p {
                return Decision::Cache {
                    forced: false,
                    probability: p,
                };
            }
        }
        Decision::Generate
    }

    /// Chooses a cache entry to blend in, or `None` when no entry lies in either window.
    pub fn choose_cached<'a>(
        &self,
        current: &Embedding,
        entries: impl IntoIterator<Item = (u64, &'a Embedding)>,
        trigger: Option<Trigger>,
        rng: &mut impl Rng,
    ) -> Option<Candidate> {
        let [clo, chi] = self.config.color_window;
        let [slo, shi] = self.config.structure_window;
        let candidates: Vec<(Candidate, f64)> = entries
            .into_iter()
            .filter_map(|(id, e)| {
                let sim = current.similarity(e);
                let qualifies = (sim.color > clo && sim.color < chi)
                    || (sim.structure > slo && sim.structure < shi);
                if !qualifies {
                    return None;
                }
                let dc = 1.0 - (sim.color - clo) / (chi - clo);
                let ds = 1.0 - (sim.structure - slo) / (shi - slo);
                let score = match trigger {
                    Some(Trigger::Color) => dc,
                    Some(Trigger::Structure) => ds,
                    _ => dc.max(ds),
                };
                let mut weight = (2.0 * f64::from(score)).exp();
                if self.recent_ids.contains(&id) {
                    weight *= 0.1;
                }
                Some((
                    Candidate {
                        id,
                        similarity: sim,
                        score,
                    },
                    weight,
                ))
            })
            .collect();
        let total: f64 = candidates.iter().map(|(_, w)| w).sum();
        if candidates.is_empty() || !total.is_finite() || total <= 0.0 {
            return None;
        }
        let mut x = rng.random::<f64>() * total;
        for (c, w) in &candidates {
            if x < *w {
                return Some(c.clone());
            }
            x -= w;
        }
        candidates.last().map(|(c, _)| c.clone())
    }

    /// Records what keyframe `n` became.
    pub fn record(&mut self, n: u64, injected: Option<(InjectionKind, Option<u64>)>) {
        match injected {
            Some((InjectionKind::Cache, id)) => {
                self.last_cache = Some(n);
                self.cache_injections += 1;
                push_bounded(&mut self.recent_cache, true, 10);
                if let Some(id) = id {
                    push_bounded(&mut self.recent_ids, id, 5);
                }
            }
            Some((InjectionKind::Seed, _)) => {
                self.last_seed = Some(n);
                self.seed_injections += 1;
                push_bounded(&mut self.recent_cache, false, 10);
            }
            None => push_bounded(&mut self.recent_cache, false, 10),
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    q.push_back(v);
    while q.len() > cap {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn report(state: CollapseState, severity: f32) -> CollapseReport {
        CollapseReport {
            state,
            severity,
            ..CollapseReport::default()
        }
    }

    fn quiet() -> InjectionConfig {
        // No random injections: only the forced rules speak.
        InjectionConfig {
            probability: 0.0,
            seed_floor: 0.0,
            seed_max: 0.0,
            seed_boost_probability: 0.0,
            warmup_keyframes: 3,
            ..InjectionConfig::default()
        }
    }

    #[test]
    fn warmup_blocks_everything_even_a_collapse() {
        let mut p = InjectionPolicy::new(quiet());
        let mut rng = StdRng::seed_from_u64(1);
        let collapsed = report(CollapseState::Collapsed, 1.0);
        for n in 1..=3 {
            assert_eq!(
                p.decide(n, &collapsed, 5, true, &mut rng),
                Decision::Generate
            );
        }
        assert!(matches!(
            p.decide(4, &collapsed, 5, false, &mut rng),
            Decision::Cache { forced: true, .. }
        ));
    }

    #[test]
    fn collapse_forces_a_cache_injection_through_the_cooldown() {
        let mut p = InjectionPolicy::new(quiet());
        let mut rng = StdRng::seed_from_u64(1);
        p.record(10, Some((InjectionKind::Cache, Some(1))));
        let ok = report(CollapseState::Ok, 0.0);
        let collapsed = report(CollapseState::Collapsed, 1.0);
        assert_eq!(p.decide(11, &ok, 5, false, &mut rng), Decision::Generate);
        assert!(matches!(
            p.decide(11, &collapsed, 5, false, &mut rng),
            Decision::Cache { forced: true, .. }
        ));
        // An empty cache cannot be injected from.
        assert_eq!(
            p.decide(11, &collapsed, 0, false, &mut rng),
            Decision::Generate
        );
    }

    #[test]
    fn cooldown_holds_random_cache_injections() {
        let cfg = InjectionConfig {
            probability: 1.0,
            ..quiet()
        };
        let mut p = InjectionPolicy::new(cfg);
        let mut rng = StdRng::seed_from_u64(1);
        let ok = report(CollapseState::Ok, 0.0);
        p.record(10, Some((InjectionKind::Cache, Some(1))));
        assert_eq!(p.decide(11, &ok, 5, false, &mut rng), Decision::Generate);
        assert_eq!(p.decide(12, &ok, 5, false, &mut rng), Decision::Generate);
        assert!(matches!(
            p.decide(13, &ok, 5, false, &mut rng),
            Decision::Cache { forced: false, .. }
        ));
    }

    #[test]
    fn converging_scales_the_probability() {
        let mut p = InjectionPolicy::new(InjectionConfig {
            probability: 0.2,
            ..quiet()
        });
        let mut rng = StdRng::seed_from_u64(3);
        let half = report(CollapseState::Converging, 0.5);
        let hits = (0..2000)
            .filter(|i| {
                matches!(
                    p.decide(100 + i * 10, &half, 5, false, &mut rng),
                    Decision::Cache { .. }
                )
            })
            .count();
        // p = 0.2 + 0.8·0.5 = 0.6.
        assert!((1100..1300).contains(&hits), "{hits}");
    }

    #[test]
    fn frequent_cache_injections_force_a_seed_after_its_cooldown() {
        let mut p = InjectionPolicy::new(quiet());
        let mut rng = StdRng::seed_from_u64(1);
        let ok = report(CollapseState::Ok, 0.0);
        for n in 10..14 {
            p.record(n, Some((InjectionKind::Cache, Some(n))));
        }
        // 4 of 4 recent keyframes were cache injections: > 30 %.
        assert!(matches!(
            p.decide(14, &ok, 20, true, &mut rng),
            Decision::Seed { .. }
        ));
        // Without seed pictures the rule cannot apply.
        assert_eq!(p.decide(14, &ok, 20, false, &mut rng), Decision::Generate);
        p.record(14, Some((InjectionKind::Seed, None)));
        // Seed cooldown 2: not at 15 or 16.
        assert_eq!(p.decide(15, &ok, 20, true, &mut rng), Decision::Generate);
        assert_eq!(p.decide(16, &ok, 20, true, &mut rng), Decision::Generate);
        assert!(matches!(
            p.decide(17, &ok, 20, true, &mut rng),
            Decision::Seed { .. }
        ));
    }

    #[test]
    fn frequent_collapse_verdicts_force_a_seed() {
        let mut p = InjectionPolicy::new(quiet());
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..3 {
            p.record_verdict(CollapseState::Ok);
        }
        p.record_verdict(CollapseState::Converging);
        let ok = report(CollapseState::Ok, 0.0);
        assert_eq!(p.decide(20, &ok, 20, true, &mut rng), Decision::Generate);
        p.record_verdict(CollapseState::Converging);
        let Decision::Seed { reason } = p.decide(20, &ok, 20, true, &mut rng) else {
            panic!("2 of 5 > 30 %")
        };
        assert!(reason.contains("collapse verdicts"), "{reason}");
    }

    #[test]
    fn bootstrap_seeds_while_the_cache_is_small() {
        let mut p = InjectionPolicy::new(InjectionConfig {
            seed_boost_probability: 1.0,
            ..quiet()
        });
        let mut rng = StdRng::seed_from_u64(1);
        let ok = report(CollapseState::Ok, 0.0);
        assert!(matches!(
            p.decide(20, &ok, 3, true, &mut rng),
            Decision::Seed { .. }
        ));
        assert_eq!(p.decide(20, &ok, 10, true, &mut rng), Decision::Generate);
    }

    fn embedding(color_bins: [f32; 2], phash: u64) -> Embedding {
        let mut color = vec![0f32; 96];
        for c in 0..3 {
            color[c * 32] = color_bins[0];
            color[c * 32 + 1] = color_bins[1];
        }
        Embedding { color, phash }
    }

    #[test]
    fn candidates_lie_in_a_window_and_dissimilar_ones_win() {
        let p = InjectionPolicy::new(InjectionConfig::default());
        let current = embedding([1.0, 0.0], 0);
        // Colour similarities 3·x: 0.9 → 2.7 (too similar), 0.5 → 1.5 (in), 0.41 → 1.23 (in,
        // more dissimilar), 0.1 → 0.3 (too different). Structure far outside its window.
        let far = u64::MAX; // structure 0
        let entries = [
            (1, embedding([0.9, 0.1], far)),
            (2, embedding([0.5, 0.5], far)),
            (3, embedding([0.41, 0.59], far)),
            (4, embedding([0.1, 0.9], far)),
        ];
        let mut rng = StdRng::seed_from_u64(9);
        let mut picks = [0usize; 5];
        for _ in 0..2000 {
            let c = p
                .choose_cached(
                    &current,
                    entries.iter().map(|(id, e)| (*id, e)),
                    Some(Trigger::Color),
                    &mut rng,
                )
                .unwrap();
            picks[c.id as usize] += 1;
        }
        assert_eq!(picks[1] + picks[4], 0, "outside the windows: {picks:?}");
        assert!(
            picks[3] > picks[2],
            "the more dissimilar wins more often: {picks:?}"
        );
        // None qualify: no candidate.
        assert!(p
            .choose_cached(&current, [(1u64, &entries[0].1)], None, &mut rng)
            .is_none());
    }

    #[test]
    fn recently_injected_frames_are_penalised() {
        let mut p = InjectionPolicy::new(InjectionConfig::default());
        let current = embedding([1.0, 0.0], 0);
        let a = embedding([0.5, 0.5], u64::MAX);
        let entries = [(1, a.clone()), (2, a)];
        p.record(20, Some((InjectionKind::Cache, Some(1))));
        let mut rng = StdRng::seed_from_u64(5);
        let ones = (0..2000)
            .filter(|_| {
                p.choose_cached(
                    &current,
                    entries.iter().map(|(id, e)| (*id, e)),
                    None,
                    &mut rng,
                )
                .unwrap()
                .id == 1
            })
            .count();
        // Weight 0.1 against 1: about 9 %.
        assert!((100..300).contains(&ones), "{ones}");
    }

    #[test]
    fn validation_names_the_key() {
        assert_eq!(InjectionConfig::default().validate(), Ok(()));
        let c = InjectionConfig {
            blend_weight: 1.5,
            ..InjectionConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "injection.blend_weight");
        let c = InjectionConfig {
            color_window: [2.0, 1.0],
            ..InjectionConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "injection.color_window");
    }
}
