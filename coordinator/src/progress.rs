//! Progress of long work on standard error ([`Progress`]): an indicatif bar with its rate
//! and ETA where standard error is a terminal; elsewhere (a batch job's log, the output
//! `mpirun` forwards) a log line at most every `--progress-every` seconds, which a bar
//! cannot give there.

use std::cell::Cell;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress of one task's work.
pub struct Progress {
    bar: ProgressBar,
    /// What is counted, in the plural.
    unit: &'static str,
    /// Where the bar is hidden: how often a line is logged, and when the last one was.
    lines: Option<(Duration, Cell<Instant>)>,
}

impl Progress {
    /// Progress over `total` tokens, with their rate and the time left.
    pub fn tokens(total: usize, label: &str, every: Option<Duration>) -> Progress {
        let template = "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} tokens {per_sec} ETA {eta}";
        Progress::new(total, label, template, "tokens", every)
    }

    /// Progress over `total` generated sequences, with the tokens generated so far in its
    /// message.
    pub fn sequences(total: usize, label: &str, every: Option<Duration>) -> Progress {
        let template = "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} sequences, {msg} ETA {eta}";
        Progress::new(total, label, template, "sequences", every)
    }

    fn new(total: usize, label: &str, template: &str, unit: &'static str, every: Option<Duration>) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        let lines = every.filter(|_| bar.is_hidden()).map(|every| (every, Cell::new(Instant::now())));
        Progress { bar, unit, lines }
    }

    /// Counts `n` more done, with `message` (shown after the count) where given.
    pub fn inc(&self, n: u64, message: Option<String>) {
        if let Some(message) = message {
            self.bar.set_message(message);
        }
        self.bar.inc(n);
        let Some((every, last)) = &self.lines else { return };
        if last.get().elapsed() < *every {
            return;
        }
        last.set(Instant::now());
        let (done, total) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let mut line = format!(
            "{}: {} of {} {} ({:.0}%)",
            self.bar.prefix(),
            HumanCount(done),
            HumanCount(total),
            self.unit,
            100.0 * done as f64 / total.max(1) as f64
        );
        match self.bar.message() {
            message if message.is_empty() => line += &format!(", {:.1} {}/s", self.bar.per_sec(), self.unit),
            message => line += &format!(", {message}"),
        }
        if done < total {
            line += &format!(", about {} left", HumanDuration(self.bar.eta()));
        }
        log::info!("{line}");
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
