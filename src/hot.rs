//! The hot cache: recently served transform results and what their sources' sidecars
//! say, in memory, so that a popular thumbnail is answered without touching the store.
//!
//! Everything it holds is immutable by construction: an image id is the hash of its
//! bytes, so its format, size and length never change, and a derived object is a pure
//! function of the id and its cache key. Nothing can go stale except through a delete.
//! Every transform request looks its source up first, and a result is only served from
//! here after that look. A delete here forgets the source, so the store then answers
//! 404. A delete through another instance sharing the store is seen once the source
//! has been remembered for `hot_cache_source_secs`: a source older than that is read
//! from its sidecar again, which is gone.
//!
//! Results are weighed by their length against `hot_cache_bytes`; one larger than
//! 1/64 of it is not kept (a 50 MP PNG conversion would flush everything else).
//! Eviction is quick_cache's CLOCK-Pro, which keeps one-off requests from pushing
//! out the thumbnails asked for again and again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::engine::Format;
use crate::store::ImageId;

/// Sources remembered at most (each entry is a few dozen bytes).
const SOURCES: usize = 65_536;
/// A guess at the typical result, to size the table: a thumbnail.
const TYPICAL_RESULT: u64 = 16 * 1024;

/// What a transform needs to know of its source before reading it: the format, for
/// the cache key, and where the sidecar has them the size and length, for the memory
/// it reserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub format: Format,
    pub size: Option<(u32, u32)>,
    pub bytes: Option<u64>,
}

pub struct HotCache {
    /// Each source with when it was read from the store.
    sources: Cache<ImageId, (Source, Instant)>,
    source_lifetime: Duration,
    results: Option<Cache<Path, Bytes, ByLength>>,
    largest: u64,
}

#[derive(Clone)]
struct ByLength;

impl Weighter<Path, Bytes> for ByLength {
    fn weight(&self, _path: &Path, bytes: &Bytes) -> u64 {
        bytes.len() as u64
    }
}

impl HotCache {
    /// A cache holding up to `bytes` of results; 0 keeps none (sources are still
    /// remembered: they cost next to nothing and save a sidecar read per request).
    /// Sources are trusted for `source_lifetime`, then read again.
    pub fn new(bytes: u64, source_lifetime: Duration) -> Self {
        let results = (bytes > 0).then(|| {
            let items = (bytes / TYPICAL_RESULT).clamp(16, 1 << 20) as usize;
            Cache::with_weighter(items, bytes, ByLength)
        });
        Self {
            sources: Cache::new(SOURCES),
            source_lifetime,
            results,
            largest: bytes / 64,
        }
    }

    /// The source of `id`, if it was read from the store less than the source
    /// lifetime ago.
    pub fn source(&self, id: &ImageId) -> Option<Source> {
        let (source, read_at) = self.sources.get(id)?;
        (read_at.elapsed() < self.source_lifetime).then_some(source)
    }

    pub fn remember_source(&self, id: &ImageId, source: Source) {
        self.sources.insert(id.clone(), (source, Instant::now()));
    }

    /// The stored result at `path`, if it was served lately.
    pub fn result(&self, path: &Path) -> Option<Bytes> {
        self.results.as_ref()?.get(path)
    }

    /// Whether a result of `length` bytes would be kept.
    pub fn would_keep(&self, length: u64) -> bool {
        self.results.is_some() && length > 0 && length <= self.largest
    }

    pub fn remember_result(&self, path: &Path, bytes: &Bytes) {
        if let Some(results) = &self.results {
            if self.would_keep(bytes.len() as u64) {
                results.insert(path.clone(), bytes.clone());
            }
        }
    }

    /// Bytes of results held now.
    pub fn held_bytes(&self) -> u64 {
        self.results.as_ref().map_or(0, |results| results.weight())
    }

    /// Forgets a deleted image: its source, and with it the way to its results.
    pub fn forget(&self, id: &ImageId) {
        self.sources.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn id(digit: char) -> ImageId {
        ImageId::parse(&digit.to_string().repeat(40)).unwrap()
    }

    #[test]
    fn keeps_results_up_to_a_sixty_fourth_of_its_size() {
        let hot = HotCache::new(64 * 1024, MINUTE);
        let small = Path::from("a/a/small");
        let large = Path::from("a/a/large");
        hot.remember_result(&small, &Bytes::from(vec![1; 1024]));
        hot.remember_result(&large, &Bytes::from(vec![1; 1025]));
        assert_eq!(hot.result(&small).map(|b| b.len()), Some(1024));
        assert!(hot.result(&large).is_none());
    }

    #[test]
    fn holds_no_more_than_its_size() {
        let hot = HotCache::new(64 * 1024, MINUTE);
        for n in 0..1000 {
            hot.remember_result(&Path::from(format!("r{n}")), &Bytes::from(vec![0; 1000]));
        }
        let held = (0..1000)
            .filter(|n| hot.result(&Path::from(format!("r{n}"))).is_some())
            .count();
        assert!(held > 0 && held <= 65, "{held} results of 1000 bytes held");
    }

    fn png() -> Source {
        Source {
            format: Format::Png,
            size: Some((64, 48)),
            bytes: Some(1234),
        }
    }

    #[test]
    fn zero_bytes_keeps_no_results_but_remembers_sources() {
        let hot = HotCache::new(0, MINUTE);
        let path = Path::from("a/a/x");
        hot.remember_result(&path, &Bytes::from_static(b"x"));
        assert!(hot.result(&path).is_none());
        hot.remember_source(&id('a'), png());
        assert_eq!(hot.source(&id('a')), Some(png()));
    }

    #[test]
    fn a_source_is_trusted_for_its_lifetime_only() {
        let hot = HotCache::new(1024, Duration::from_millis(50));
        hot.remember_source(&id('c'), png());
        assert_eq!(hot.source(&id('c')), Some(png()));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(hot.source(&id('c')), None);
        hot.remember_source(&id('c'), png());
        assert_eq!(hot.source(&id('c')), Some(png()));
    }

    #[test]
    fn forgetting_an_image_drops_its_source() {
        let hot = HotCache::new(1024, MINUTE);
        hot.remember_source(&id('b'), png());
        hot.forget(&id('b'));
        assert_eq!(hot.source(&id('b')), None);
    }
}
