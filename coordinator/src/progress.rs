//! Progress of long work on standard error: an indicatif bar with tokens/s and ETA
//! when standard error is a terminal, and nothing otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn token_bar(total_tokens: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total_tokens as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} tokens {per_sec} ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_string());
    bar
}

/// A bar over generated sequences, with the tokens generated so far in its message.
pub fn sequence_bar(total_sequences: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total_sequences as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} sequences, {msg} ETA {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_string());
    bar
}
