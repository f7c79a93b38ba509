//! Progress of long work on standard error: an indicatif bar with tokens/s and ETA
//! when standard error is a terminal, and nothing otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over tokens, with their rate and the time left.
pub fn token_bar(total_tokens: usize, label: &str) -> ProgressBar {
    bar(
        total_tokens,
        label,
        "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} tokens {per_sec} ETA {eta}",
    )
}

/// A bar over generated sequences, with the tokens generated so far in its message.
pub fn sequence_bar(total_sequences: usize, label: &str) -> ProgressBar {
    bar(
        total_sequences,
        label,
        "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} sequences, {msg} ETA {eta}",
    )
}

fn bar(total: usize, label: &str, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(label.to_string());
    bar
}
