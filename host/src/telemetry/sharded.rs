//! Histograms observed on every invocation without sharing a cache line between cores.
//!
//! The `prometheus` crate's histogram writes four atomics every core shares on each
//! observation (a hot/cold shard switch, the bucket, the sum and the count): on a busy
//! node those lines move between cores on every invocation. Here each thread writes its
//! own shard (a bucket and the sum), and a scrape adds the shards up. The count is the sum
//! of the buckets, so a scrape during observations never shows a count that disagrees with
//! its buckets (only the sum may lag by the observations in flight).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// Shards per histogram, at most: threads beyond it share shards (still correct).
const MAX_SHARDS: usize = 64;

/// Which shard the calling thread writes: threads take numbers in the order they first
/// observe, so the runtime's few worker threads get shards of their own.
fn shard_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|s| *s)
}

/// One thread's counts, alone on its cache lines.
#[repr(align(128))]
struct Shard {
    /// Observations per bucket; the last slot counts those above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

/// A histogram whose observations go to the calling thread's shard.
pub struct ShardedHistogram {
    bounds: Arc<[f64]>,
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedHistogram").field("bounds", &self.bounds).finish_non_exhaustive()
    }
}

impl ShardedHistogram {
    fn new(bounds: Arc<[f64]>) -> Self {
        let n = std::thread::available_parallelism().map_or(4, usize::from).next_power_of_two().min(MAX_SHARDS);
        let shards = (0..n)
            .map(|_| Shard { counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) })
            .collect();
        Self { bounds, shards }
    }

    /// Record `v`.
    pub fn observe(&self, v: f64) {
        let shard = &self.shards[shard_of_thread() & (self.shards.len() - 1)];
        let bucket = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        shard.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Other threads only write this shard when there are more threads than shards.
        let mut bits = shard.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(bits) + v).to_bits();
            match shard.sum.compare_exchange_weak(bits, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => bits = now,
            }
        }
    }

    /// The histogram as Prometheus exposes it: cumulative buckets, count and sum.
    fn proto(&self) -> proto::Histogram {
        let mut counts = vec![0u64; self.bounds.len() + 1];
        let mut sum = 0.0;
        for shard in &self.shards {
            for (total, c) in counts.iter_mut().zip(shard.counts.iter()) {
                *total += c.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
        }
        let mut h = proto::Histogram::default();
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&counts)
            .map(|(bound, n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        h.set_bucket(buckets);
        h.set_sample_count(cumulative + counts.last().copied().unwrap_or(0));
        h.set_sample_sum(sum);
        h
    }
}

/// Sharded histograms partitioned by label values, registered as one metric family.
/// Clones share the histograms (one clone goes to the registry).
#[derive(Clone)]
pub struct ShardedHistogramVec(Arc<Family>);

struct Family {
    desc: Desc,
    bounds: Arc<[f64]>,
    children: RwLock<HashMap<Vec<String>, Arc<ShardedHistogram>>>,
}

impl std::fmt::Debug for ShardedHistogramVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedHistogramVec").field("name", &self.0.desc.fq_name).finish_non_exhaustive()
    }
}

impl ShardedHistogramVec {
    /// A family `name` with `labels` and bucket upper `bounds` (ascending, `+Inf` implied).
    pub fn new(name: &str, help: &str, labels: &[&str], bounds: Vec<f64>) -> prometheus::Result<Self> {
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            labels.iter().map(|l| (*l).to_owned()).collect(),
            HashMap::new(),
        )?;
        let bounds: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        if bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(prometheus::Error::Msg(format!("{name}: bucket bounds must ascend")));
        }
        Ok(Self(Arc::new(Family { desc, bounds: bounds.into(), children: RwLock::default() })))
    }

    /// The histogram for `values` (one per label, in order), made on first use. Callers on
    /// a hot path keep the handle rather than looking it up each time.
    pub fn with_label_values(&self, values: &[&str]) -> Arc<ShardedHistogram> {
        let family = &*self.0;
        let found = family
            .children
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(k, _)| k.iter().map(String::as_str).eq(values.iter().copied()))
            .map(|(_, h)| h.clone());
        if let Some(h) = found {
            return h;
        }
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        family
            .children
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert_with(|| Arc::new(ShardedHistogram::new(family.bounds.clone())))
            .clone()
    }
}

impl Collector for ShardedHistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let family = &*self.0;
        let children = family.children.read().unwrap_or_else(PoisonError::into_inner);
        let metrics = children
            .iter()
            .map(|(values, h)| {
                // Sorted by name, as the `prometheus` crate's own metrics are.
                let mut labels: Vec<proto::LabelPair> = family
                    .desc
                    .variable_labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut l = proto::LabelPair::default();
                        l.set_name(name.clone());
                        l.set_value(value.clone());
                        l
                    })
                    .collect();
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                let mut m = proto::Metric::from_label(labels);
                m.set_histogram(h.proto());
                m
            })
            .collect();
        let mut out = proto::MetricFamily::default();
        out.set_name(family.desc.fq_name.clone());
        out.set_help(family.desc.help.clone());
        out.set_field_type(proto::MetricType::HISTOGRAM);
        out.set_metric(metrics);
        vec![out]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposed(v: &ShardedHistogramVec) -> String {
        let r = prometheus::Registry::new();
        r.register(Box::new(v.clone())).unwrap();
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn observations_from_many_threads_add_up_per_label() {
        let v = ShardedHistogramVec::new("t_seconds", "test", &["tenant"], vec![0.1, 1.0]).unwrap();
        let a = v.with_label_values(&["a"]);
        std::thread::scope(|s| {
            for _ in 0..8 {
                let a = a.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        a.observe(0.0625);
                        a.observe(0.5);
                        a.observe(4.0);
                    }
                });
            }
        });
        v.with_label_values(&["b"]).observe(1.0);
        assert!(Arc::ptr_eq(&a, &v.with_label_values(&["a"])), "one histogram per label value");
        let text = exposed(&v);
        for line in [
            r#"t_seconds_bucket{tenant="a",le="0.1"} 8000"#,
            r#"t_seconds_bucket{tenant="a",le="1"} 16000"#,
            r#"t_seconds_bucket{tenant="a",le="+Inf"} 24000"#,
            r#"t_seconds_count{tenant="a"} 24000"#,
            r#"t_seconds_sum{tenant="a"} 36500"#,
            r#"t_seconds_bucket{tenant="b",le="0.1"} 0"#,
            r#"t_seconds_bucket{tenant="b",le="1"} 1"#,
            r#"t_seconds_count{tenant="b"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains("# TYPE t_seconds histogram"), "{text}");
    }

    #[test]
    fn bounds_must_ascend() {
        assert!(ShardedHistogramVec::new("x", "x", &[], vec![1.0, 0.5]).is_err());
        assert!(ShardedHistogramVec::new("x", "x", &[], vec![0.5, 1.0, f64::INFINITY]).is_ok());
    }
}
