//! SentencePiece vocabularies of GGUF files (`tokenizer.ggml.model = "llama"`: Gemma,
//! Llama 2, Mistral 7B v0.1), tokenized exactly as llama.cpp's `llm_tokenizer_spm`
//! (src/llama-vocab.cpp), which the `tokenizers` crate cannot express (its BPE merges by
//! rank of a pair, its Unigram by best path; this merges by score of the joined token):
//!
//! 1. the text is cut at the special tokens it holds verbatim (control, user-defined and
//!    unknown tokens, the longest first: llama.cpp's `tokenizer_st_partition`);
//! 2. in each piece left, ' ' becomes '▁', and with `tokenizer.ggml.add_space_prefix` a
//!    '▁' goes first when the piece starts the text or follows a special token;
//! 3. the piece is cut into its characters, and neighbours are joined while any pair joins
//!    into a token of the vocabulary: the pair whose joined token scores highest first, the
//!    leftmost of equal scores;
//! 4. a character that is no token becomes byte tokens (`<0xXX>`), one per UTF-8 byte.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::AhoCorasick;
use evalmesh_worker::weights::gguf::{GgufFile, Value};

/// What a token is (GGUF `tokenizer.ggml.token_type`, llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl Kind {
    fn from_gguf(code: i64) -> Kind {
        match code {
            1 => Kind::Normal,
            2 => Kind::Unknown,
            3 => Kind::Control,
            4 => Kind::UserDefined,
            5 => Kind::Unused,
            6 => Kind::Byte,
            _ => Kind::Undefined,
        }
    }

    /// Whether the token is matched verbatim in a text before SentencePiece runs.
    fn is_special(self) -> bool {
        matches!(self, Kind::Control | Kind::UserDefined | Kind::Unknown)
    }
}

/// One entry of the vocabulary.
#[derive(Debug, Clone)]
pub struct Token {
    pub text: String,
    pub score: f32,
    pub kind: Kind,
}

/// A SentencePiece vocabulary, ready to tokenize.
pub struct SpmVocab {
    tokens: Vec<Token>,
    /// Token text to id; of tokens with the same text the last wins, as in llama.cpp.
    ids: HashMap<String, u32>,
    /// The token of each byte value: `<0xXX>`, else the byte itself as a token.
    byte_tokens: [Option<u32>; 256],
    /// The special tokens, longest text first (then by id).
    specials: Vec<u32>,
    /// Finds which of `specials` occur in a text (None when there are none).
    special_finder: Option<AhoCorasick>,
    add_space_prefix: bool,
}

/// A stretch of the text to tokenize: plain text, or a special token found verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragment<'t> {
    Text(&'t str),
    Special(u32),
}

/// A symbol of the text being merged: a byte range, linked to its neighbours.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    /// 0 once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Two neighbouring symbols whose joined text is a token, with that token's score.
#[derive(Debug, Clone, Copy)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    /// The joined length when queued; the pair is stale once either side has changed.
    len: usize,
}

impl Ord for Pair {
    /// The higher score is greater; of equal scores, the leftmost pair (scores are never NaN).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.partial_cmp(&other.score).unwrap_or(Ordering::Equal).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

impl SpmVocab {
    /// Reads `tokenizer.ggml.tokens`, `.scores` and `.token_type` (scores 0 and normal
    /// tokens where those two are missing, as llama.cpp) and `.add_space_prefix`
    /// (default true, as llama.cpp for SentencePiece vocabularies). The error names the
    /// key at fault.
    pub fn from_gguf(file: &GgufFile) -> Result<SpmVocab, String> {
        const TOKENS: &str = "tokenizer.ggml.tokens";
        const SCORES: &str = "tokenizer.ggml.scores";
        const TYPES: &str = "tokenizer.ggml.token_type";
        const SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
        let texts = file.get(TOKENS).and_then(Value::as_array).ok_or_else(|| format!("{TOKENS} is missing"))?;
        let array_of = |key: &str| -> Result<Option<&[Value]>, String> {
            match file.get(key) {
                None => Ok(None),
                Some(v) => match v.as_array() {
                    Some(items) if items.len() == texts.len() => Ok(Some(items)),
                    Some(items) => Err(format!("{key} has {} entries for {} tokens", items.len(), texts.len())),
                    None => Err(format!("{key} is not an array")),
                },
            }
        };
        let scores = array_of(SCORES)?;
        let types = array_of(TYPES)?;
        let mut tokens = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let text = text.as_str().ok_or_else(|| format!("{TOKENS}[{i}] is not a string"))?;
            let score = match scores {
                None => 0.0,
                Some(s) => s[i].as_f64().ok_or_else(|| format!("{SCORES}[{i}] is not a number"))? as f32,
            };
            let kind = match types {
                None => Kind::Normal,
                Some(t) => match &t[i] {
                    Value::Int(v) => Kind::from_gguf(*v),
                    Value::Uint(v) => Kind::from_gguf(i64::try_from(*v).unwrap_or(-1)),
                    _ => return Err(format!("{TYPES}[{i}] is not an integer")),
                },
            };
            if score.is_nan() {
                return Err(format!("{SCORES}[{i}] is NaN"));
            }
            tokens.push(Token { text: text.to_string(), score, kind });
        }
        let add_space_prefix = match file.get(SPACE_PREFIX) {
            None => true,
            Some(v) => v.as_bool().ok_or_else(|| format!("{SPACE_PREFIX} is not a boolean"))?,
        };
        SpmVocab::new(tokens, add_space_prefix)
    }

    /// A vocabulary from its tokens, in id order.
    pub fn new(mut tokens: Vec<Token>, add_space_prefix: bool) -> Result<SpmVocab, String> {
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(format!("the vocabulary has {} tokens", tokens.len()));
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (id, token) in tokens.iter_mut().enumerate() {
            if token.text.is_empty() {
                // llama.cpp names empty tokens so that no text ever matches them.
                token.text = format!("[EMPTY_{id}]");
            }
            ids.insert(token.text.clone(), id as u32);
        }
        let mut byte_tokens = [None; 256];
        for (byte, slot) in byte_tokens.iter_mut().enumerate() {
            let as_text = u8::try_from(byte).ok().filter(u8::is_ascii).map(|b| char::from(b).to_string());
            *slot = ids.get(&format!("<0x{byte:02X}>")).or_else(|| as_text.and_then(|t| ids.get(&t))).copied();
        }
        let mut specials: Vec<u32> =
            (0..tokens.len() as u32).filter(|&id| tokens[id as usize].kind.is_special()).collect();
        specials.sort_by_key(|&id| (std::cmp::Reverse(tokens[id as usize].text.len()), id));
        let special_finder = if specials.is_empty() {
            None
        } else {
            let texts = specials.iter().map(|&id| tokens[id as usize].text.as_str());
            Some(AhoCorasick::new(texts).map_err(|e| format!("the special tokens: {e}"))?)
        };
        Ok(SpmVocab { tokens, ids, byte_tokens, specials, special_finder, add_space_prefix })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Appends the tokens of `text` to `out` (no BOS or EOS). The error says which piece
    /// of the text the vocabulary cannot express.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let mut after_special = true;
        let mut piece = String::new();
        for fragment in self.partition(text)? {
            match fragment {
                Fragment::Special(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(text) => {
                    piece.clear();
                    if self.add_space_prefix && after_special {
                        piece.push('▁');
                    }
                    piece.extend(text.chars().map(|c| if c == ' ' { '▁' } else { c }));
                    self.merge(&piece, out)?;
                    after_special = false;
                }
            }
        }
        Ok(())
    }

    /// `text` cut at the special tokens it holds: each special token in turn, the longest
    /// first, splits every stretch of plain text left at its occurrences, leftmost first.
    fn partition<'t>(&self, text: &'t str) -> Result<Vec<Fragment<'t>>, String> {
        let mut fragments = if text.is_empty() { Vec::new() } else { vec![Fragment::Text(text)] };
        let Some(finder) = &self.special_finder else { return Ok(fragments) };
        // Only the special tokens that occur in the text can split it.
        let mut occurs = vec![false; self.specials.len()];
        for found in finder.try_find_overlapping_iter(text).map_err(|e| format!("finding special tokens: {e}"))? {
            occurs[found.pattern().as_usize()] = true;
        }
        for (&id, _) in self.specials.iter().zip(&occurs).filter(|(_, &occurs)| occurs) {
            let special = self.tokens[id as usize].text.as_str();
            let mut split = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    split.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(special) {
                    if at > 0 {
                        split.push(Fragment::Text(&rest[..at]));
                    }
                    split.push(Fragment::Special(id));
                    rest = &rest[at + special.len()..];
                }
                if !rest.is_empty() {
                    split.push(Fragment::Text(rest));
                }
            }
            fragments = split;
        }
        Ok(fragments)
    }

    /// The SentencePiece merge of one normalised piece of text, its tokens appended to `out`.
    fn merge(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let mut symbols: Vec<Symbol> =
            text.char_indices().map(|(start, c)| Symbol { start, len: c.len_utf8(), prev: None, next: None }).collect();
        let count = symbols.len();
        for (i, symbol) in symbols.iter_mut().enumerate() {
            symbol.prev = i.checked_sub(1);
            symbol.next = Some(i + 1).filter(|&n| n < count);
        }
        let mut queue = BinaryHeap::new();
        for right in 1..count {
            self.queue_pair(text, &symbols, right - 1, right, &mut queue);
        }
        while let Some(pair) = queue.pop() {
            let (left, right) = (symbols[pair.left], symbols[pair.right]);
            if left.len == 0 || right.len == 0 || left.len + right.len != pair.len {
                continue;
            }
            // The right symbol joins the left one and leaves the chain.
            symbols[pair.left].len = pair.len;
            symbols[pair.left].next = right.next;
            symbols[pair.right].len = 0;
            if let Some(next) = right.next {
                symbols[next].prev = Some(pair.left);
            }
            if let Some(prev) = left.prev {
                self.queue_pair(text, &symbols, prev, pair.left, &mut queue);
            }
            if let Some(next) = right.next {
                self.queue_pair(text, &symbols, pair.left, next, &mut queue);
            }
        }
        // The first symbol never joins a left neighbour: the chain starts there.
        let mut at = (count > 0).then_some(0);
        while let Some(i) = at {
            let symbol = symbols[i];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        let id = self.byte_tokens[usize::from(byte)].ok_or_else(|| {
                            format!("`{piece}` is not in the vocabulary, nor is its byte token <0x{byte:02X}>")
                        })?;
                        out.push(id);
                    }
                }
            }
            at = symbol.next;
        }
        Ok(())
    }

    /// Queues symbols `left` and `right` (neighbours) if their joined text is a token.
    fn queue_pair(&self, text: &str, symbols: &[Symbol], left: usize, right: usize, queue: &mut BinaryHeap<Pair>) {
        let start = symbols[left].start;
        let len = symbols[left].len + symbols[right].len;
        if let Some(&id) = self.ids.get(&text[start..start + len]) {
            queue.push(Pair { score: self.tokens[id as usize].score, left, right, len });
        }
    }

    /// A token's text for display: '▁' as a space, a byte token as its character where the
    /// byte is ASCII (else `<0xXX>`), special tokens as they are written.
    /// The text of `ids` without control tokens, as SentencePiece decodes: byte tokens
    /// joined into UTF-8 (invalid sequences replaced), `▁` as spaces, and the space the
    /// vocabulary puts before a text dropped from the front.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for token in ids.iter().filter_map(|&id| self.tokens.get(id as usize)) {
            match token.kind {
                Kind::Normal | Kind::UserDefined => bytes.extend_from_slice(token.text.replace('▁', " ").as_bytes()),
                Kind::Byte => {
                    let hex = token.text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'));
                    bytes.extend(hex.and_then(|h| u8::from_str_radix(h, 16).ok()));
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match text.strip_prefix(' ') {
            Some(rest) if self.add_space_prefix => rest.to_string(),
            _ => text,
        }
    }

    /// The id of the token whose text is `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn token_text(&self, id: u32) -> String {
        let Some(token) = self.tokens.get(id as usize) else { return String::new() };
        match token.kind {
            Kind::Normal => token.text.replace('▁', " "),
            Kind::Byte => token
                .text
                .strip_prefix("<0x")
                .and_then(|t| t.strip_suffix('>'))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .filter(u8::is_ascii)
                .map_or_else(|| token.text.clone(), |b| char::from(b).to_string()),
            _ => token.text.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of (text, score, kind), ids in order, with every byte token after them.
    fn vocab(entries: &[(&str, f32, Kind)], add_space_prefix: bool) -> SpmVocab {
        let mut tokens: Vec<Token> =
            entries.iter().map(|&(text, score, kind)| Token { text: text.into(), score, kind }).collect();
        tokens.extend((0..=255u8).map(|b| Token { text: format!("<0x{b:02X}>"), score: 0.0, kind: Kind::Byte }));
        SpmVocab::new(tokens, add_space_prefix).unwrap()
    }

    fn encode(v: &SpmVocab, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        v.encode(text, &mut out).unwrap();
        out
    }

    const N: Kind = Kind::Normal;

    #[test]
    fn the_highest_scoring_pair_joins_first() {
        // a b c: "bc" outscores "ab", so a + bc, and nothing joins "a" with "bc".
        let v = vocab(&[("a", 0.0, N), ("b", 0.0, N), ("c", 0.0, N), ("ab", -2.0, N), ("bc", -1.0, N)], false);
        assert_eq!(encode(&v, "abc"), vec![0, 4]);
        // With "ab" ahead, ab + c; then "abc" joins them.
        let v = vocab(
            &[("a", 0.0, N), ("b", 0.0, N), ("c", 0.0, N), ("ab", -1.0, N), ("bc", -2.0, N), ("abc", -3.0, N)],
            false,
        );
        assert_eq!(encode(&v, "abc"), vec![5]);
    }

    #[test]
    fn equal_scores_join_the_leftmost_pair() {
        let v = vocab(&[("a", 0.0, N), ("aa", -1.0, N)], false);
        assert_eq!(encode(&v, "aaa"), vec![1, 0]);
        assert_eq!(encode(&v, "aaaaa"), vec![1, 1, 0]);
    }

    #[test]
    fn spaces_become_the_word_marker_with_an_optional_prefix() {
        let entries = [("▁", -5.0, N), ("a", 0.0, N), ("▁a", -1.0, N), ("b", 0.0, N), ("\n", 0.0, Kind::UserDefined)];
        let v = vocab(&entries, true);
        // "▁a▁b": the text starts with a marker, and one follows the special newline.
        assert_eq!(encode(&v, "a b"), vec![2, 0, 3]);
        assert_eq!(encode(&v, "a\na"), vec![2, 4, 2]);
        let v = vocab(&entries, false);
        assert_eq!(encode(&v, "a b"), vec![1, 0, 3]);
        assert_eq!(encode(&v, "a\na"), vec![1, 4, 1]);
        assert_eq!(encode(&v, ""), Vec::<u32>::new());
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let v = vocab(&[("a", 0.0, N)], false);
        // 'é' is C3 A9; the byte tokens follow the one normal token.
        assert_eq!(encode(&v, "aé"), vec![0, 1 + 0xC3, 1 + 0xA9]);
        let no_bytes = SpmVocab::new(vec![Token { text: "a".into(), score: 0.0, kind: N }], false).unwrap();
        let mut out = Vec::new();
        let error = no_bytes.encode("ab", &mut out).unwrap_err();
        assert!(error.contains("<0x62>"), "{error}");
    }

    #[test]
    fn special_tokens_are_cut_out_first_the_longest_first() {
        let v = vocab(
            &[
                ("\n", 0.0, Kind::UserDefined),
                ("\n\n", 0.0, Kind::UserDefined),
                ("<b>", 0.0, Kind::Control),
                ("b", 0.0, N),
                ("<", 0.0, N),
                (">", 0.0, N),
                ("<b", 5.0, N),
            ],
            false,
        );
        assert_eq!(encode(&v, "\n\n\n"), vec![1, 0]);
        assert_eq!(encode(&v, "b<b>\n<b"), vec![3, 2, 0, 6]);
        // The longer special token wins even where a shorter one starts further left.
        let v = vocab(&[("ab", 0.0, Kind::UserDefined), ("bcd", 0.0, Kind::UserDefined), ("a", 0.0, N)], false);
        assert_eq!(encode(&v, "abcd"), vec![2, 1]);
    }

    #[test]
    fn token_text_shows_spaces_and_bytes() {
        let v = vocab(&[("▁the", 0.0, N), ("<bos>", 0.0, Kind::Control)], false);
        assert_eq!(v.token_text(0), " the");
        assert_eq!(v.token_text(1), "<bos>");
        assert_eq!(v.token_text(2 + 0x0A), "\n");
        assert_eq!(v.token_text(2 + 0xE2), "<0xE2>");
        assert_eq!(v.token_text(9999), "");
    }
}
