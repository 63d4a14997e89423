//! Prompt themes: which prompt each generated keyframe is made under.
//!
//! Themes rotate every `rotate_every` generated keyframes (a theme's `weight` stretches or
//! shortens its turn), in the listed order (`cycle`) or in a weighted random order (`shuffle`,
//! never the same theme twice in a row). A theme's `prompt` may be a list: its prompts take turns
//! keyframe by keyframe. A time-of-day modifier is appended by local hour. Injected keyframes do
//! not consume prompts. `next-theme` (HTTP or `dreamd ctl`) moves on from the next keyframe.
//!
//! Unlike the original, the negative prompt is the current theme's (it always used the first
//! theme's), and the modifier table is configuration rather than code.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// `[prompts]`: the themes, their rotation and the time-of-day modifiers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptsConfig {
    /// Generated keyframes per theme (before its weight), ≥ 1.
    pub rotate_every: u32,
    /// `cycle` (listed order) or `shuffle` (weighted random, no immediate repeat).
    pub order: ThemeOrder,
    /// Suffixes appended by local hour.
    pub modifiers: ModifiersConfig,
    /// The themes, at least one.
    pub themes: Vec<Theme>,
}

/// In which order themes take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThemeOrder {
    /// The listed order, round and round.
    #[default]
    Cycle,
    /// A weighted random pick each turn, never the theme that just ended (when there are two).
    Shuffle,
}

/// One `[[prompts.themes]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Theme {
    /// Shown in status and logs.
    pub name: String,
    /// One prompt, or a list that takes turns keyframe by keyframe.
    pub prompt: OneOrMany,
    /// The negative prompt used while this theme plays.
    #[serde(default)]
    pub negative: String,
    /// Relative share: a turn lasts `rotate_every × weight` keyframes (at least 1) and, with
    /// `shuffle`, the theme is picked with this weight. Default 1.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The prompts, in order.
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(p) => std::slice::from_ref(p),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[prompts.modifiers]`: time-of-day suffixes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModifiersConfig {
    /// Append a suffix at all.
    pub enabled: bool,
    /// Hour ranges of local time, first match wins.
    pub hours: Vec<HourModifier>,
    /// The suffix outside every range (empty: none).
    pub otherwise: String,
}

/// One hour range: `from` (inclusive) to `to` (exclusive), 0–24; `from > to` wraps midnight.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HourModifier {
    pub from: u32,
    pub to: u32,
    pub text: String,
}

impl HourModifier {
    fn contains(&self, hour: u32) -> bool {
        if self.from <= self.to {
            (self.from..self.to).contains(&hour)
        } else {
            hour >= self.from || hour < self.to
        }
    }
}

impl Default for ModifiersConfig {
    fn default() -> Self {
        let range = |from, to, text: &str| HourModifier {
            from,
            to,
            text: text.into(),
        };
        // The original's table (§2.13), with "warm tones" softened so it no longer contradicts
        // negative prompts that ban warm colours.
        Self {
            enabled: true,
            hours: vec![
                range(5, 8, "dawn light, morning atmosphere"),
                range(8, 12, "bright daylight, clear atmosphere"),
                range(12, 17, "afternoon light, soft tones"),
                range(17, 20, "twilight, golden hour lighting"),
                range(20, 23, "evening atmosphere, deep shadows"),
            ],
            otherwise: "midnight atmosphere, deep darkness".into(),
        }
    }
}

impl Default for PromptsConfig {
    fn default() -> Self {
        let theme = |name: &str, prompts: &[&str], negative: &str| Theme {
            name: name.into(),
            prompt: if prompts.len() == 1 {
                OneOrMany::One(prompts[0].into())
            } else {
                OneOrMany::Many(prompts.iter().map(|p| (*p).into()).collect())
            },
            negative: negative.into(),
            weight: 1.0,
        };
        let negative = "text, watermark, signature, frame, border, blurry, lowres, jpeg artifacts";
        Self {
            rotate_every: 20,
            order: ThemeOrder::Cycle,
            modifiers: ModifiersConfig::default(),
            themes: vec![
                theme(
                    "deep sea",
                    &["bioluminescent deep sea creatures drifting in dark water, ethereal glow, highly detailed"],
                    negative,
                ),
                theme(
                    "cloud cities",
                    &[
                        "floating cities among towering clouds, soft light, dreamlike architecture",
                        "sky islands with waterfalls falling into clouds, painterly, serene",
                    ],
                    negative,
                ),
                theme(
                    "crystal garden",
                    &["a garden of glass and crystal flowers, prismatic light, intricate, macro photography"],
                    negative,
                ),
                theme(
                    "ink and smoke",
                    &["swirling ink and smoke forms, monochrome, flowing organic shapes, high contrast"],
                    &format!("{negative}, colour, saturated"),
                ),
                theme(
                    "ancient forest",
                    &["an ancient mossy forest with shafts of light, mist, fantasy illustration"],
                    negative,
                ),
                theme(
                    "nebula",
                    &["a colourful nebula with newborn stars, cosmic dust, astrophotography, vast"],
                    negative,
                ),
            ],
        }
    }
}

/// A configuration error in `[prompts]`, naming the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} must be {allowed} (got {value})")]
pub struct PromptsError {
    pub key: String,
    pub value: String,
    pub allowed: &'static str,
}

impl PromptsConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), PromptsError> {
        let bad = |key: String, value: String, allowed| {
            Err(PromptsError {
                key,
                value,
                allowed,
            })
        };
        if self.rotate_every == 0 {
            return bad("prompts.rotate_every".into(), "0".into(), ">= 1");
        }
        if self.themes.is_empty() {
            return bad(
                "prompts.themes".into(),
                "an empty list".into(),
                "at least one [[prompts.themes]] entry",
            );
        }
        for (i, theme) in self.themes.iter().enumerate() {
            let key = |field: &str| format!("prompts.themes[{i}].{field}");
            if theme.name.trim().is_empty() {
                return bad(key("name"), "\"\"".into(), "a non-empty name");
            }
            let prompts = theme.prompt.as_slice();
            if prompts.is_empty() || prompts.iter().any(|p| p.trim().is_empty()) {
                return bad(
                    key("prompt"),
                    format!("{prompts:?}"),
                    "a non-empty prompt or list of non-empty prompts",
                );
            }
            if !(theme.weight.is_finite() && theme.weight > 0.0 && theme.weight <= 100.0) {
                return bad(key("weight"), theme.weight.to_string(), "> 0 and <= 100");
            }
        }
        for (i, m) in self.modifiers.hours.iter().enumerate() {
            if m.from > 24 || m.to > 24 || m.from == m.to {
                return bad(
                    format!("prompts.modifiers.hours[{i}]"),
                    format!("from = {}, to = {}", m.from, m.to),
                    "hours 0..=24 with from != to",
                );
            }
        }
        Ok(())
    }
}

/// What one generated keyframe is made under.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptChoice {
    /// The theme's name.
    pub theme: String,
    /// The full positive prompt, modifier included.
    pub prompt: String,
    /// The theme's negative prompt.
    pub negative: String,
}

/// The local hour, injectable for tests.
pub trait Clock: Send {
    /// Hour of the local day, 0–23.
    fn local_hour(&self) -> u32;
}

/// The system's local time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn local_hour(&self) -> u32 {
        use chrono::Timelike;
        chrono::Local::now().hour()
    }
}

/// Theme rotation state.
pub struct ThemeRotation {
    config: PromptsConfig,
    clock: Box<dyn Clock>,
    rng: StdRng,
    current: usize,
    /// Keyframes made under the current theme.
    on_theme: u64,
    /// Prompts taken in total (each theme's prompt list advances with it).
    taken: u64,
    skip_requested: bool,
    last: Option<PromptChoice>,
}

impl ThemeRotation {
    /// Starts at the first theme (`cycle`) or a weighted random one (`shuffle`).
    pub fn new(config: PromptsConfig, clock: Box<dyn Clock>, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let current = match config.order {
            ThemeOrder::Cycle => 0,
            ThemeOrder::Shuffle => weighted_pick(&config.themes, None, &mut rng),
        };
        Self {
            config,
            clock,
            rng,
            current,
            on_theme: 0,
            taken: 0,
            skip_requested: false,
            last: None,
        }
    }

    /// The theme playing now.
    pub fn current_theme(&self) -> &Theme {
        &self.config.themes[self.current]
    }

    /// The prompt of the last keyframe, if any was made yet.
    pub fn last(&self) -> Option<&PromptChoice> {
        self.last.as_ref()
    }

    /// Moves to the next theme from the next keyframe on.
    pub fn request_next_theme(&mut self) {
        self.skip_requested = true;
    }

    /// Replaces the configuration (hot reload); keeps the current theme when its name is still
    /// there, else starts over.
    pub fn reconfigure(&mut self, config: PromptsConfig) {
        let name = self.current_theme().name.clone();
        self.current = config
            .themes
            .iter()
            .position(|t| t.name == name)
            .unwrap_or(0);
        if self.current == 0 && config.themes.first().is_none_or(|t| t.name != name) {
            self.on_theme = 0;
        }
        self.config = config;
    }

    fn turn_length(&self) -> u64 {
        let theme = self.current_theme();
        ((f64::from(self.config.rotate_every) * theme.weight).round() as u64).max(1)
    }

    fn advance(&mut self) {
        self.current = match self.config.order {
            ThemeOrder::Cycle => (self.current + 1) % self.config.themes.len(),
            ThemeOrder::Shuffle => {
                weighted_pick(&self.config.themes, Some(self.current), &mut self.rng)
            }
        };
        self.on_theme = 0;
    }

    /// The prompt for the next generated keyframe.
    pub fn next_prompt(&mut self) -> PromptChoice {
        if self.skip_requested || self.on_theme >= self.turn_length() {
            self.skip_requested = false;
            self.advance();
        }
        let theme = self.current_theme();
        let prompts = theme.prompt.as_slice();
        let base = &prompts[(self.on_theme as usize) % prompts.len()];
        let prompt = match self.modifier() {
            Some(m) => format!("{base}, {m}"),
            None => base.clone(),
        };
        let choice = PromptChoice {
            theme: theme.name.clone(),
            prompt,
            negative: theme.negative.clone(),
        };
        self.on_theme += 1;
        self.taken += 1;
        self.last = Some(choice.clone());
        choice
    }

    /// The time-of-day suffix now, if modifiers are on and one applies.
    pub fn modifier(&self) -> Option<&str> {
        let m = &self.config.modifiers;
        if !m.enabled {
            return None;
        }
        let hour = self.clock.local_hour();
        let text = m
            .hours
            .iter()
            .find(|r| r.contains(hour))
            .map(|r| r.text.as_str())
            .unwrap_or(m.otherwise.as_str());
        (!text.is_empty()).then_some(text)
    }
}

fn weighted_pick(themes: &[Theme], not: Option<usize>, rng: &mut StdRng) -> usize {
    let eligible = |i: usize| themes.len() < 2 || Some(i) != not;
    let total: f64 = (0..themes.len())
        .filter(|i| eligible(*i))
        .map(|i| themes[i].weight)
        .sum();
    let mut x = rng.random::<f64>() * total;
    for (i, theme) in themes.iter().enumerate() {
        if !eligible(i) {
            continue;
        }
        if x < theme.weight {
            return i;
        }
        x -= theme.weight;
    }
    (0..themes.len()).rev().find(|i| eligible(*i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct FixedClock(Arc<AtomicU32>);
    impl Clock for FixedClock {
        fn local_hour(&self) -> u32 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn themes(n: usize) -> Vec<Theme> {
        (0..n)
            .map(|i| Theme {
                name: format!("t{i}"),
                prompt: OneOrMany::One(format!("p{i}")),
                negative: format!("n{i}"),
                weight: 1.0,
            })
            .collect()
    }

    fn config(n: usize, every: u32, order: ThemeOrder) -> PromptsConfig {
        PromptsConfig {
            rotate_every: every,
            order,
            modifiers: ModifiersConfig {
                enabled: false,
                ..ModifiersConfig::default()
            },
            themes: themes(n),
        }
    }

    fn rotation(config: PromptsConfig, hour: u32) -> (ThemeRotation, Arc<AtomicU32>) {
        let h = Arc::new(AtomicU32::new(hour));
        (
            ThemeRotation::new(config, Box::new(FixedClock(Arc::clone(&h))), 7),
            h,
        )
    }

    #[test]
    fn cycle_rotates_every_n_keyframes_with_the_current_negative() {
        let (mut r, _) = rotation(config(3, 2, ThemeOrder::Cycle), 12);
        let got: Vec<(String, String)> = (0..7)
            .map(|_| {
                let c = r.next_prompt();
                (c.theme, c.negative)
            })
            .collect();
        let names: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["t0", "t0", "t1", "t1", "t2", "t2", "t0"]);
        // The negative is the current theme's, not the first one's.
        assert_eq!(got[2].1, "n1");
        assert_eq!(got[4].1, "n2");
    }

    #[test]
    fn next_theme_applies_from_the_next_keyframe() {
        let (mut r, _) = rotation(config(3, 20, ThemeOrder::Cycle), 12);
        assert_eq!(r.next_prompt().theme, "t0");
        r.request_next_theme();
        assert_eq!(r.next_prompt().theme, "t1");
        assert_eq!(r.next_prompt().theme, "t1");
    }

    #[test]
    fn prompt_lists_take_turns_within_a_theme() {
        let mut c = config(1, 4, ThemeOrder::Cycle);
        c.themes[0].prompt = OneOrMany::Many(vec!["a".into(), "b".into()]);
        let (mut r, _) = rotation(c, 12);
        let prompts: Vec<String> = (0..4).map(|_| r.next_prompt().prompt).collect();
        assert_eq!(prompts, ["a", "b", "a", "b"]);
    }

    #[test]
    fn weight_stretches_a_turn() {
        let mut c = config(2, 2, ThemeOrder::Cycle);
        c.themes[1].weight = 2.0;
        let (mut r, _) = rotation(c, 12);
        let names: Vec<String> = (0..7).map(|_| r.next_prompt().theme).collect();
        assert_eq!(names, ["t0", "t0", "t1", "t1", "t1", "t1", "t0"]);
    }

    #[test]
    fn shuffle_never_repeats_a_turn_and_follows_weights() {
        let mut c = config(3, 1, ThemeOrder::Shuffle);
        c.themes[2].weight = 8.0;
        let (mut r, _) = rotation(c, 12);
        let names: Vec<String> = (0..4000).map(|_| r.next_prompt().theme).collect();
        // Runs of one theme are turns: t2's last 8 keyframes (weight 8), the others' 1.
        let mut turns: Vec<(String, usize)> = Vec::new();
        for n in names {
            match turns.last_mut() {
                Some((t, len)) if *t == n => *len += 1,
                _ => turns.push((n, 1)),
            }
        }
        turns.pop(); // the last turn may be cut short
        for (t, len) in &turns {
            assert_eq!(*len, if t == "t2" { 8 } else { 1 }, "{t}");
        }
        // After a t0 or t1 turn, t2 comes with weight 8 against 1.
        let light = turns.iter().filter(|(t, _)| t != "t2").count();
        let heavy = turns.len() - light;
        assert!(heavy * 10 > light * 7, "t2 {heavy} turns vs {light}");
    }

    #[test]
    fn modifiers_follow_the_local_hour_and_wrap_midnight() {
        let mut c = config(1, 5, ThemeOrder::Cycle);
        c.modifiers = ModifiersConfig::default();
        c.modifiers.hours.push(HourModifier {
            from: 23,
            to: 2,
            text: "late".into(),
        });
        let (mut r, hour) = rotation(c, 6);
        assert_eq!(r.next_prompt().prompt, "p0, dawn light, morning atmosphere");
        hour.store(8, Ordering::Relaxed);
        assert_eq!(
            r.next_prompt().prompt,
            "p0, bright daylight, clear atmosphere"
        );
        hour.store(23, Ordering::Relaxed);
        assert_eq!(r.next_prompt().prompt, "p0, late");
        hour.store(1, Ordering::Relaxed);
        assert_eq!(r.next_prompt().prompt, "p0, late");
        hour.store(3, Ordering::Relaxed);
        assert_eq!(
            r.next_prompt().prompt,
            "p0, midnight atmosphere, deep darkness"
        );
    }

    #[test]
    fn modifiers_off_leave_the_prompt_alone() {
        let (mut r, _) = rotation(config(1, 5, ThemeOrder::Cycle), 6);
        assert_eq!(r.next_prompt().prompt, "p0");
    }

    #[test]
    fn reconfigure_keeps_the_playing_theme_by_name() {
        let (mut r, _) = rotation(config(3, 10, ThemeOrder::Cycle), 12);
        r.request_next_theme();
        r.next_prompt();
        assert_eq!(r.current_theme().name, "t1");
        let mut c = config(3, 10, ThemeOrder::Cycle);
        c.themes.swap(0, 1);
        r.reconfigure(c);
        assert_eq!(r.current_theme().name, "t1");
        assert_eq!(r.next_prompt().theme, "t1");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = PromptsConfig::default();
        assert_eq!(c.validate(), Ok(()));
        c.themes[1].weight = 0.0;
        assert_eq!(c.validate().unwrap_err().key, "prompts.themes[1].weight");
        let mut c = PromptsConfig::default();
        c.themes[0].prompt = OneOrMany::Many(vec![]);
        assert_eq!(c.validate().unwrap_err().key, "prompts.themes[0].prompt");
        let c = PromptsConfig {
            rotate_every: 0,
            ..PromptsConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "prompts.rotate_every");
        let mut c = PromptsConfig::default();
        c.themes.clear();
        assert_eq!(c.validate().unwrap_err().key, "prompts.themes");
    }
}
