//! Monitoring of a rank: hdrhistogram distributions of durations (compute, idle, send,
//! receive-wait per micro-batch), a timeline of the same spans for Chrome traces, the
//! wall time of work that overlaps itself ([`ComputeTime`] for micro-batches, [`BusyTime`]
//! for products), the process's peak memory and the machine's.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use evalmesh_common::protocol::{Quantiles, TraceEvent};
use hdrhistogram::Histogram;

/// The most spans a timeline keeps (the rest are dropped, the histograms still count them).
const MAX_TRACE_EVENTS: usize = 1_000_000;

/// A rank's spans: a distribution per kind and a timeline.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    pub timeline: Vec<TraceEvent>,
}

impl Spans {
    /// Records a span that began at `started` and ends now, into `durations` and the timeline.
    pub fn record(&mut self, durations: &mut Durations, name: &str, started: Instant, thread: u8, batch: Option<u64>) {
        self.record_between(durations, name, started..Instant::now(), thread, batch);
    }

    /// Records a span that began and ended as `span` says (the end at the latest now).
    pub fn record_between(
        &mut self,
        durations: &mut Durations,
        name: &str,
        span: Range<Instant>,
        thread: u8,
        batch: Option<u64>,
    ) {
        let duration = span.end.saturating_duration_since(span.start);
        durations.record(duration);
        if self.timeline.len() < MAX_TRACE_EVENTS {
            let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
            let end_us = now_us.saturating_sub(span.end.elapsed().as_micros() as u64);
            let duration_us = duration.as_micros() as u64;
            self.timeline.push(TraceEvent {
                name: name.to_string(),
                start_us: end_us.saturating_sub(duration_us),
                duration_us,
                thread,
                batch,
            });
        }
    }
}

/// Durations recorded in microseconds, from 1 µs to an hour, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Durations(Histogram<u64>);

impl Default for Durations {
    fn default() -> Self {
        Durations(Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|e| unreachable!("fixed bounds: {e}")))
    }
}

impl Durations {
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn summary(&self) -> Quantiles {
        let h = &self.0;
        if h.is_empty() {
            return Quantiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Quantiles {
            count: h.len(),
            total_ms: h.mean() * h.len() as f64 / 1000.0,
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// A rank's compute: each micro-batch's time, and the wall time during which it computed
/// any: micro-batches computed at once (on lanes) overlap, so that their times add up to
/// more than the wall's, which its summary's total is.
#[derive(Debug, Clone, Default)]
pub struct ComputeTime {
    pub each: Durations,
    wall: Duration,
}

impl ComputeTime {
    /// Counts `wall` more of computing.
    pub fn add_wall(&mut self, wall: Duration) {
        self.wall += wall;
    }

    /// The micro-batches' times, totalled as the wall time.
    pub fn summary(&self) -> Quantiles {
        Quantiles { total_ms: self.wall.as_secs_f64() * 1e3, ..self.each.summary() }
    }
}

/// The wall time during which at least one of some activities ran, however many ran at
/// once: the products of micro-batches computed together overlap, and their own times
/// would add up to more than the wall's.
#[derive(Debug, Default)]
pub struct BusyTime(Mutex<Busy>);

#[derive(Debug, Default)]
struct Busy {
    running: usize,
    /// Since when one has run, while one does.
    since: Option<Instant>,
    total: Duration,
}

impl BusyTime {
    /// Runs `activity`, timed.
    pub fn time<T>(&self, activity: impl FnOnce() -> T) -> T {
        self.update(|busy| {
            busy.running += 1;
            busy.since.get_or_insert_with(Instant::now);
        });
        let result = activity();
        self.update(|busy| {
            busy.running -= 1;
            if busy.running == 0 {
                busy.total += busy.since.take().map_or(Duration::ZERO, |since| since.elapsed());
            }
        });
        result
    }

    /// The time so far, the current stretch included.
    pub fn seconds(&self) -> f64 {
        let busy = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (busy.total + busy.since.map_or(Duration::ZERO, |since| since.elapsed())).as_secs_f64()
    }

    fn update(&self, change: impl FnOnce(&mut Busy)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The machine's memory (`MemTotal`), where the system reports it.
pub fn total_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's peak resident memory (`VmHWM`), where the system reports it.
pub fn peak_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_quantiles_in_milliseconds() {
        let mut d = Durations::default();
        for ms in 1..=100 {
            d.record(Duration::from_millis(ms));
        }
        let q = d.summary();
        assert_eq!(q.count, 100);
        assert!((q.p50_ms - 50.0).abs() < 0.1 && (q.max_ms - 100.0).abs() < 0.1, "{q:?}");
        assert!((q.total_ms - 5050.0).abs() < 5.0);
        assert!(peak_memory_bytes() > 0);
    }

    #[test]
    fn busy_time_counts_overlapping_activities_once() {
        let busy = BusyTime::default();
        let pause = Duration::from_millis(40);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| busy.time(|| std::thread::sleep(pause)));
            }
        });
        let wall = started.elapsed().as_secs_f64();
        // Three overlapping 40 ms sleeps: at least one of them long, at most the wall.
        assert!(busy.seconds() >= pause.as_secs_f64() && busy.seconds() <= wall, "{} of {wall}", busy.seconds());
        busy.time(|| std::thread::sleep(pause));
        assert!(busy.seconds() >= 2.0 * pause.as_secs_f64(), "{}", busy.seconds());
    }
}
