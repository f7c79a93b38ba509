//! Perplexity over a text in two modes:
//! - `llamacpp`: chunks of `ctx` tokens, each scored on its second half, exactly as
//!   llama.cpp's `llama-perplexity` (BOS replaces a chunk's first token when the model adds one);
//! - `rolling`: lm-evaluation-harness's `loglikelihood_rolling`: disjoint windows of
//!   `ctx` tokens, every token scored once, the first predicted from the prefix token;
//!   reports word and byte perplexity and bits per byte too.

use evalmesh_common::ScoreTree;
use serde::Serialize;

use super::TaskError;

/// The text scored by the `perplexity` task when no `--data` is given (see `coordinator/tasks/perplexity/README.md`).
pub const BUILTIN_TEXT: &str = include_str!("../../tasks/perplexity/wikitext-2-excerpt.txt");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PerplexityMode {
    Rolling,
    Llamacpp,
}

/// llama.cpp's chunks: `tokens` cut into `ctx`-token chunks (the remainder dropped),
/// targets from the middle on.
pub fn llamacpp_chunks(tokens: &[u32], ctx: usize, bos: Option<u32>) -> Result<Vec<ScoreTree>, TaskError> {
    if ctx < 4 {
        return Err(TaskError::Settings(format!("--ctx {ctx} is too small for llamacpp perplexity (at least 4)")));
    }
    if tokens.len() < 2 * ctx {
        return Err(TaskError::Settings(format!(
            "the text has {} tokens; llamacpp perplexity with --ctx {ctx} needs at least {} (2 × ctx)",
            tokens.len(),
            2 * ctx
        )));
    }
    Ok(tokens
        .chunks_exact(ctx)
        .map(|chunk| {
            let mut prefix = chunk.to_vec();
            if let Some(bos) = bos {
                prefix[0] = bos;
            }
            // Logits at positions ctx/2 .. ctx−2 predict tokens ctx/2+1 .. ctx−1.
            ScoreTree { prefix, prefix_targets_from: ctx / 2 + 1, branches: vec![] }
        })
        .collect())
}

/// lm-evaluation-harness's rolling windows (`get_rolling_token_windows` with
/// context length 1, then `make_disjoint_window`).
pub fn rolling_windows(tokens: &[u32], prefix_token: u32, max_len: usize) -> Vec<ScoreTree> {
    let n = tokens.len();
    if n == 0 || max_len == 0 {
        return Vec::new();
    }
    let window = |context: &[u32], continuation: &[u32]| {
        let mut prefix = context.to_vec();
        prefix.extend_from_slice(continuation);
        ScoreTree { prefix, prefix_targets_from: context.len(), branches: vec![] }
    };
    let first = max_len.min(n);
    let mut windows = vec![window(&[prefix_token], &tokens[..first])];
    let mut predicted = first;
    while predicted < n {
        let pred_len = (n - predicted).min(max_len);
        let end = predicted + pred_len;
        let context = &tokens[end - max_len - 1..end - 1];
        let continuation = &tokens[end - pred_len..end];
        windows.push(window(&context[..context.len() - (pred_len - 1)], continuation));
        predicted = end;
    }
    windows
}

/// Words as lm-evaluation-harness counts them: `len(re.split(r"\s+", text))`.
pub fn word_count(text: &str) -> usize {
    let mut pieces = 1;
    let mut in_space = false;
    for c in text.chars() {
        let space = c.is_whitespace();
        if space && !in_space {
            pieces += 1;
        }
        in_space = space;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llamacpp_chunks_score_the_second_half() {
        let tokens: Vec<u32> = (0..20).collect();
        let chunks = llamacpp_chunks(&tokens, 8, None).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].prefix, (8..16).collect::<Vec<u32>>());
        // Positions 4..6 predict tokens 5..7: three targets.
        assert_eq!(chunks[0].target_count(), 3);
        assert_eq!(chunks[0].input_len(), 7);
        let with_bos = llamacpp_chunks(&tokens, 8, Some(99)).unwrap();
        assert_eq!(with_bos[1].prefix[0], 99);
        assert!(llamacpp_chunks(&tokens, 16, None).is_err());
    }

    #[test]
    fn rolling_windows_score_every_token_once() {
        let tokens: Vec<u32> = (10..30).collect();
        let windows = rolling_windows(&tokens, 1, 8);
        // lm-eval: ([1]+t[0:7], t[0:8]), then (t[7], t[8:16]), then the last 4 with a long context.
        assert_eq!(windows[0].prefix[..2], [1, 10]);
        assert_eq!(windows[0].prefix_targets_from, 1);
        assert_eq!(windows[1].prefix, (17..26).collect::<Vec<u32>>());
        assert_eq!(windows[1].prefix_targets_from, 1);
        assert_eq!(windows[2].prefix, (21..30).collect::<Vec<u32>>());
        assert_eq!(windows[2].prefix_targets_from, 5);
        let targets: usize = windows.iter().map(ScoreTree::target_count).sum();
        assert_eq!(targets, tokens.len());
        assert!(windows.iter().all(|w| w.input_len() <= 8));
    }

    #[test]
    fn words_follow_python_re_split() {
        assert_eq!(word_count("a b  c"), 3);
        assert_eq!(word_count(" a\n"), 3); // ['', 'a', '']
        assert_eq!(word_count(""), 1);
    }
}
