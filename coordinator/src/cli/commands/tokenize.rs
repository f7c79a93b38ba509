//! `evalmesh tokenize`: the tokens of a text, like llama.cpp's llama-tokenize.

use std::io::Write;

use anyhow::Context;

use crate::cli::args::TokenizeArgs;
use crate::tasks::read_text;

pub fn tokenize(args: &TokenizeArgs) -> anyhow::Result<()> {
    let text = match (&args.file, &args.text) {
        (Some(path), _) => read_text(path)?,
        (None, Some(text)) => text.clone(),
        (None, None) => String::new(),
    };
    let (_, model) = super::open_model(&args.model, false)?;
    let ids = model.tokenizer.encode_document(&text)?;
    let mut out = String::with_capacity(ids.len() * 8);
    for id in ids {
        if args.ids {
            out.push_str(&format!("{id}\n"));
        } else {
            out.push_str(&format!("{id:>6} -> '{}'\n", model.tokenizer.token_text(id)));
        }
    }
    std::io::stdout().lock().write_all(out.as_bytes()).context("<stdout>")
}
