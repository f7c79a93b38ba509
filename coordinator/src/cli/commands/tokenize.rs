//! `evalmesh tokenize`: the tokens of a text, like llama.cpp's llama-tokenize (BOS first
//! when the tokenizer's policy or `--add-bos` says so). Reads the tokenizer only, so any
//! model whose vocabulary evalmesh reads can be tokenized, whatever its architecture.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::args::TokenizeArgs;
use crate::model::open_tokenizer;
use crate::tasks::read_text;

pub fn tokenize(args: &TokenizeArgs) -> anyhow::Result<()> {
    let text = match (&args.file, &args.text) {
        (Some(path), _) => read_text(path)?,
        (None, Some(text)) => text.clone(),
        (None, None) => String::new(),
    };
    // A --tokenizer alone needs no model (nor the cached test model).
    let model = match (&args.model.model, &args.model.tokenizer) {
        (None, Some(_)) => PathBuf::new(),
        _ => args.model.path()?,
    };
    let (mut tokenizer, _) = open_tokenizer(&model, args.model.tokenizer.as_deref())?;
    if let Some(add) = args.add_bos {
        tokenizer.set_add_bos(add)?;
    }
    let ids = tokenizer.encode_document(&text)?;
    let mut out = String::with_capacity(ids.len() * 8);
    for id in ids {
        if args.ids {
            out.push_str(&format!("{id}\n"));
        } else {
            out.push_str(&format!("{id:>6} -> '{}'\n", tokenizer.token_text(id)));
        }
    }
    std::io::stdout().lock().write_all(out.as_bytes()).context("<stdout>")
}
