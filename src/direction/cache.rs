//! The diverse-frame cache: a bounded, persistent set of keyframes unlike each other, which
//! injections draw on to pull a collapsing dream somewhere new.
//!
//! It lives in `output/cache/`: `index.json` (written atomically) and `images/{id}.png`. A frame
//! is accepted when it is diverse against the cache: its *average* colour similarity to the
//! entries is below `color_diversity` and (`acceptance = "all"`; either with `"any"`) its average
//! structure similarity below `structure_diversity`, the original's tuned rule (§2.11). Ids come
//! from a counter kept in the index, so they never collide (the original's ids repeated once the
//! cache was full).
//!
//! **Eviction is by redundancy** (default): when full, the entry most similar to its nearest
//! neighbour goes, the least recently used first among equals. The cache exists to hold
//! *different* frames; FIFO (what the original did while calling it LRU) and true LRU both throw
//! away an old, unique frame while keeping near-duplicates. `eviction = "lru"` is there for
//! those who prefer recency, and it is real LRU: every injection records its use.
//!
//! A corrupt index is set aside (renamed `index.json.corrupt`) and the cache starts empty; an
//! entry whose picture is missing or malformed is skipped with a warning, and pictures no entry
//! names are deleted.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::similarity::{Embedding, Similarity};
use crate::atomic_file::write_atomic;

/// `[cache]`: the diverse-frame cache.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep a cache at all.
    pub enabled: bool,
    /// Entries kept (1–10000).
    pub max_size: usize,
    /// `selective` (diversity check) or `all` (every offered frame).
    pub population: Population,
    /// `all`: both metrics must be diverse; `any`: one is enough.
    pub acceptance: Acceptance,
    /// Accept when the average colour similarity to the cache is below this (0–3).
    pub color_diversity: f32,
    /// Accept when the average structure similarity to the cache is below this (0–1).
    pub structure_diversity: f32,
    /// `redundancy` (default) or `lru`.
    pub eviction: Eviction,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_size: 50,
            population: Population::Selective,
            acceptance: Acceptance::All,
            color_diversity: 1.92,
            structure_diversity: 0.80,
            eviction: Eviction::Redundancy,
        }
    }
}

impl CacheConfig {
    /// Checks every value, naming the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if self.max_size == 0 || self.max_size > 10_000 {
            return Err(("cache.max_size", self.max_size.to_string(), "1..=10000"));
        }
        if !(self.color_diversity > 0.0 && self.color_diversity <= 3.0) {
            return Err((
                "cache.color_diversity",
                self.color_diversity.to_string(),
                "> 0 and <= 3",
            ));
        }
        if !(self.structure_diversity > 0.0 && self.structure_diversity <= 1.0) {
            return Err((
                "cache.structure_diversity",
                self.structure_diversity.to_string(),
                "> 0 and <= 1",
            ));
        }
        Ok(())
    }
}

/// Which offered frames are considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Population {
    Selective,
    All,
}

/// How the two diversity tests combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Acceptance {
    All,
    Any,
}

/// Which entry leaves a full cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    Redundancy,
    Lru,
}

/// One cached frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Unique for the life of the cache folder.
    pub id: u64,
    /// What it was made under: the prompt, or the source's description.
    pub label: String,
    pub embedding: Embedding,
    /// Seconds since the Unix epoch.
    pub added: u64,
    /// Seconds since the Unix epoch of the last injection that used it (or `added`).
    pub last_used: u64,
    /// Injections that used it.
    pub uses: u64,
}

impl CacheEntry {
    /// The name shown in logs and events.
    pub fn name(&self) -> String {
        format!("cache_{:08}", self.id)
    }
}

const INDEX_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    version: u32,
    next_id: u64,
    entries: Vec<CacheEntry>,
}

/// Why the cache could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache folder {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cache picture {path}: {error}")]
    Image {
        path: PathBuf,
        error: image::ImageError,
    },
    /// A cached picture could not be read back (missing, not a regular file, corrupt or over
    /// the picture budget).
    #[error(transparent)]
    Picture(#[from] crate::keyframes::images::PictureError),
}

/// What [`FrameCache::offer`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// Added under this id; `evicted` names what left to make room.
    Accepted { id: u64, evicted: Option<u64> },
    /// Too similar to the cache: the averages that failed.
    Redundant { average: Similarity },
}

/// Acceptance figures since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CacheStats {
    pub offered: u64,
    pub accepted: u64,
    pub evicted: u64,
}

impl CacheStats {
    /// Accepted / offered, 0 before the first offer.
    pub fn acceptance_rate(&self) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            self.accepted as f64 / self.offered as f64
        }
    }
}

/// The cache on disk and in memory.
#[derive(Debug)]
pub struct FrameCache {
    dir: PathBuf,
    config: CacheConfig,
    next_id: u64,
    entries: Vec<CacheEntry>,
    stats: CacheStats,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FrameCache {
    /// Opens (or creates) the cache in `dir`, skipping what cannot be used with a warning.
    pub fn open(dir: &Path, config: CacheConfig) -> Result<Self, CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| CacheError::Io { path, error }
        };
        let images = dir.join("images");
        std::fs::create_dir_all(&images).map_err(io(&images))?;
        let index_path = dir.join("index.json");
        let index = match std::fs::read(&index_path) {
            Ok(bytes) => match serde_json::from_slice::<Index>(&bytes) {
                Ok(index) => Some(index),
                Err(e) => {
                    let aside = dir.join("index.json.corrupt");
                    tracing::warn!(
                        "cache index {} is unreadable ({e}); set aside as {}, starting empty",
                        index_path.display(),
                        aside.display()
                    );
                    let _ = std::fs::rename(&index_path, &aside);
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&index_path)(e)),
        };
        let (mut next_id, loaded) = index.map_or((0, Vec::new()), |i| (i.next_id, i.entries));
        let mut entries = Vec::with_capacity(loaded.len());
        for entry in loaded {
            let picture = images.join(format!("{}.png", entry.name()));
            if !entry.embedding.is_well_formed() {
                tracing::warn!(
                    "cache entry {} has a malformed embedding; skipped",
                    entry.name()
                );
            } else if !picture.is_file() {
                tracing::warn!(
                    "cache entry {} has no picture at {}; skipped",
                    entry.name(),
                    picture.display()
                );
            } else if entries.iter().any(|e: &CacheEntry| e.id == entry.id) {
                tracing::warn!("cache entry {} appears twice; kept once", entry.name());
            } else {
                next_id = next_id.max(entry.id + 1);
                entries.push(entry);
            }
        }
        let mut cache = Self {
            dir: dir.to_path_buf(),
            config,
            next_id,
            entries,
            stats: CacheStats::default(),
        };
        cache.remove_orphans();
        while cache.entries.len() > cache.config.max_size {
            cache.evict_one();
        }
        cache.write_index()?;
        Ok(cache)
    }

    fn remove_orphans(&self) {
        let Ok(listing) = std::fs::read_dir(self.dir.join("images")) else {
            return;
        };
        for file in listing.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let known = self
                .entries
                .iter()
                .any(|e| name == format!("{}.png", e.name()));
            if !known {
                let _ = std::fs::remove_file(file.path());
            }
        }
    }

    /// Replaces the settings (hot reload), evicting down to a smaller `max_size` at once.
    pub fn reconfigure(&mut self, config: CacheConfig) -> Result<(), CacheError> {
        self.config = config;
        let before = self.entries.len();
        while self.entries.len() > self.config.max_size {
            self.evict_one();
        }
        if self.entries.len() != before {
            self.write_index()?;
        }
        Ok(())
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[CacheEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    fn picture_path(&self, id: u64) -> PathBuf {
        self.dir.join("images").join(format!("cache_{id:08}.png"))
    }

    /// Average similarity of `embedding` to every entry (`None` when empty).
    pub fn average_similarity(&self, embedding: &Embedding) -> Option<Similarity> {
        if self.entries.is_empty() {
            return None;
        }
        let n = self.entries.len() as f32;
        let (c, s) = self.entries.iter().fold((0f32, 0f32), |(c, s), e| {
            let sim = e.embedding.similarity(embedding);
            (c + sim.color, s + sim.structure)
        });
        Some(Similarity {
            color: c / n,
            structure: s / n,
        })
    }

    /// Offers a frame: adds it when diverse enough (evicting one when full).
    pub fn offer(
        &mut self,
        image: &RgbImage,
        embedding: Embedding,
        label: &str,
    ) -> Result<Offer, CacheError> {
        self.stats.offered += 1;
        if self.config.population == Population::Selective {
            if let Some(average) = self.average_similarity(&embedding) {
                let color_ok = average.color < self.config.color_diversity;
                let structure_ok = average.structure < self.config.structure_diversity;
                let diverse = match self.config.acceptance {
                    Acceptance::All => color_ok && structure_ok,
                    Acceptance::Any => color_ok || structure_ok,
                };
                if !diverse {
                    return Ok(Offer::Redundant { average });
                }
            }
        }
        let id = self.next_id;
        let path = self.picture_path(id);
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|error| CacheError::Image {
                path: path.clone(),
                error,
            })?;
        write_atomic(&path, &png).map_err(|error| CacheError::Io {
            path: path.clone(),
            error,
        })?;
        self.next_id += 1;
        let now = now_secs();
        self.entries.push(CacheEntry {
            id,
            label: label.chars().take(200).collect(),
            embedding,
            added: now,
            last_used: now,
            uses: 0,
        });
        let evicted = (self.entries.len() > self.config.max_size).then(|| self.evict_one());
        self.write_index()?;
        self.stats.accepted += 1;
        Ok(Offer::Accepted {
            id,
            evicted: evicted.flatten(),
        })
    }

    /// Removes the entry eviction chooses and its picture; returns its id.
    fn evict_one(&mut self) -> Option<u64> {
        let victim = match self.config.eviction {
            Eviction::Lru => self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| (e.last_used, e.id))
                .map(|(i, _)| i),
            Eviction::Redundancy => {
                let redundancy = |i: usize| {
                    self.entries
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, e)| {
                            e.embedding
                                .similarity(&self.entries[i].embedding)
                                .combined()
                        })
                        .fold(0f32, f32::max)
                };
                (0..self.entries.len())
                    .map(|i| (i, redundancy(i)))
                    .max_by(|(a, ra), (b, rb)| {
                        ra.total_cmp(rb).then_with(|| {
                            // Equal redundancy: the least recently used goes.
                            let (ea, eb) = (&self.entries[*a], &self.entries[*b]);
                            (eb.last_used, eb.id).cmp(&(ea.last_used, ea.id))
                        })
                    })
                    .map(|(i, _)| i)
            }
        }?;
        let entry = self.entries.remove(victim);
        let _ = std::fs::remove_file(self.picture_path(entry.id));
        self.stats.evicted += 1;
        Some(entry.id)
    }

    /// Loads an entry's picture.
    pub fn load(&self, id: u64) -> Result<RgbImage, CacheError> {
        let path = self.picture_path(id);
        crate::keyframes::images::load_bounded(&path).map_err(CacheError::Picture)
    }

    /// Records that an injection used `id` (for LRU and the stats).
    pub fn mark_used(&mut self, id: u64) -> Result<(), CacheError> {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            e.last_used = now_secs().max(e.last_used);
            e.uses += 1;
            self.write_index()?;
        }
        Ok(())
    }

    fn write_index(&self) -> Result<(), CacheError> {
        let path = self.dir.join("index.json");
        let index = Index {
            version: INDEX_VERSION,
            next_id: self.next_id,
            entries: self.entries.clone(),
        };
        let bytes = serde_json::to_vec(&index).map_err(|e| CacheError::Io {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map_err(|error| CacheError::Io { path, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(seed: u32) -> RgbImage {
        // Distinct pictures: a hue of their own and a stripe direction of their own.
        let hues = [[230, 40, 30], [30, 200, 60], [40, 60, 220], [220, 210, 40]];
        let [r, g, b] = hues[seed as usize % 4];
        RgbImage::from_fn(64, 32, |x, y| {
            let on = match seed % 4 {
                0 => (x / 8) % 2 == 0,
                1 => (y / 4) % 2 == 0,
                2 => ((x + y) / 6) % 2 == 0,
                _ => (x / 16 + y / 8) % 2 == 0,
            };
            let k = if on { 1.0 } else { 0.35 };
            image::Rgb([
                (r as f32 * k) as u8,
                (g as f32 * k) as u8,
                (b as f32 * k) as u8,
            ])
        })
    }

    fn open(dir: &Path, config: CacheConfig) -> FrameCache {
        FrameCache::open(dir, config).unwrap()
    }

    #[test]
    fn accepts_diverse_frames_and_rejects_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = open(dir.path(), CacheConfig::default());
        let p = picture(0);
        assert!(matches!(
            cache.offer(&p, Embedding::of(&p), "a").unwrap(),
            Offer::Accepted { id: 0, .. }
        ));
        // The same frame again: colour 3.0 and structure 1.0 on average, redundant.
        match cache.offer(&p, Embedding::of(&p), "a again").unwrap() {
            Offer::Redundant { average } => {
                assert!((average.color - 3.0).abs() < 1e-4);
                assert_eq!(average.structure, 1.0);
            }
            other => panic!("{other:?}"),
        }
        let q = picture(1);
        assert!(matches!(
            cache.offer(&q, Embedding::of(&q), "b").unwrap(),
            Offer::Accepted { id: 1, .. }
        ));
        let stats = cache.stats();
        assert_eq!((stats.offered, stats.accepted), (3, 2));
        assert!((stats.acceptance_rate() - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn persists_across_restarts_without_id_collisions() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            max_size: 2,
            population: Population::All,
            ..CacheConfig::default()
        };
        {
            let mut cache = open(dir.path(), config.clone());
            for s in 0..3 {
                let p = picture(s);
                cache.offer(&p, Embedding::of(&p), "x").unwrap();
            }
            assert_eq!(cache.len(), 2);
        }
        let mut cache = open(dir.path(), config);
        assert_eq!(cache.len(), 2);
        let p = picture(3);
        let Offer::Accepted { id, evicted } = cache.offer(&p, Embedding::of(&p), "y").unwrap()
        else {
            panic!("population all accepts everything")
        };
        assert_eq!(id, 3, "ids continue after a restart");
        assert!(evicted.is_some());
        // Exactly one picture per entry is left on disk.
        let files = std::fs::read_dir(dir.path().join("images"))
            .unwrap()
            .count();
        assert_eq!(files, 2);
        let ids: Vec<u64> = cache.entries().iter().map(|e| e.id).collect();
        for id in ids {
            assert_eq!(cache.load(id).unwrap().dimensions(), (64, 32));
        }
    }

    #[test]
    fn redundancy_eviction_drops_a_near_duplicate_not_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            max_size: 3,
            population: Population::All,
            ..CacheConfig::default()
        };
        let mut cache = open(dir.path(), config);
        let a = picture(0);
        let b = picture(1);
        let mut b2 = b.clone();
        b2.put_pixel(0, 0, image::Rgb([0, 0, 0]));
        let c = picture(2);
        for (img, label) in [(&a, "a"), (&b, "b"), (&b2, "b2"), (&c, "c")] {
            cache.offer(img, Embedding::of(img), label).unwrap();
        }
        let labels: Vec<&str> = cache.entries().iter().map(|e| e.label.as_str()).collect();
        assert!(
            labels.contains(&"a"),
            "the oldest, unique frame stays: {labels:?}"
        );
        assert!(labels.contains(&"c"));
        assert_eq!(labels.len(), 3);
        assert!(!(labels.contains(&"b") && labels.contains(&"b2")));
    }

    #[test]
    fn lru_eviction_drops_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            max_size: 2,
            population: Population::All,
            eviction: Eviction::Lru,
            ..CacheConfig::default()
        };
        let mut cache = open(dir.path(), config);
        let (a, b, c) = (picture(0), picture(1), picture(2));
        cache.offer(&a, Embedding::of(&a), "a").unwrap();
        cache.offer(&b, Embedding::of(&b), "b").unwrap();
        // Use "a" later than "b" was added.
        cache.entries[1].last_used -= 10;
        cache.entries[0].last_used -= 5;
        cache.mark_used(0).unwrap();
        cache.offer(&c, Embedding::of(&c), "c").unwrap();
        let labels: Vec<&str> = cache.entries().iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["a", "c"]);
        assert_eq!(cache.entries()[0].uses, 1);
    }

    #[test]
    fn corrupt_index_and_missing_pictures_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            population: Population::All,
            ..CacheConfig::default()
        };
        {
            let mut cache = open(dir.path(), config.clone());
            for s in 0..3 {
                let p = picture(s);
                cache.offer(&p, Embedding::of(&p), "x").unwrap();
            }
        }
        std::fs::remove_file(dir.path().join("images/cache_00000001.png")).unwrap();
        std::fs::write(dir.path().join("images/stray.png"), b"not ours").unwrap();
        let cache = open(dir.path(), config.clone());
        let ids: Vec<u64> = cache.entries().iter().map(|e| e.id).collect();
        assert_eq!(ids, [0, 2]);
        assert!(!dir.path().join("images/stray.png").exists());
        drop(cache);
        std::fs::write(dir.path().join("index.json"), b"{ not json").unwrap();
        let cache = open(dir.path(), config);
        assert!(cache.is_empty());
        assert!(dir.path().join("index.json.corrupt").exists());
    }

    #[test]
    fn validation_names_the_key() {
        assert_eq!(CacheConfig::default().validate(), Ok(()));
        let c = CacheConfig {
            max_size: 0,
            ..CacheConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "cache.max_size");
    }
}
