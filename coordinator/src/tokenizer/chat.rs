//! A model's chat template (the Jinja text its GGUF or tokenizer_config.json carries),
//! rendered as transformers' `apply_chat_template` renders it: minijinja with Jinja's
//! `trim_blocks` and `lstrip_blocks`, Python's string methods (`pycompat`), `raise_exception`,
//! `strftime_now`, and `messages`, `add_generation_prompt`, `bos_token` and `eos_token` in scope.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A chat template with the texts of the model's special tokens.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// The tokens chat models end a turn with; those in a vocabulary stop generation when a
/// chat template is applied.
pub const END_OF_TURN_TOKENS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"];

impl ChatTemplate {
    /// The chat `messages` as the template writes them, followed by the start of the
    /// assistant's turn where `add_generation_prompt` is set; the error says why not.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", strftime_now);
        let template = env.template_from_str(&self.source).map_err(|e| e.to_string())?;
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        template.render(context).map_err(|e| e.to_string())
    }
}

/// transformers' `strftime_now`: the local date and time in a strftime `format` (Llama
/// 3's templates write today's date into the system turn).
fn strftime_now(format: String) -> Result<String, Error> {
    let items = chrono::format::StrftimeItems::new(&format).parse().map_err(|_| {
        Error::new(ErrorKind::InvalidOperation, format!("strftime_now: `{format}` is not a strftime format"))
    })?;
    Ok(chrono::Local::now().format_with_items(items.iter()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn renders_as_transformers_does() {
        // SmolLM2-Instruct's template (its GGUF's tokenizer.chat_template).
        let template = ChatTemplate {
            source: "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".into(),
            bos_token: "<|im_start|>".into(),
            eos_token: "<|im_end|>".into(),
        };
        let rendered = template.render(&[message("user", "2+2?")], true).unwrap();
        assert_eq!(
            rendered,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let system = template.render(&[message("system", "Be brief."), message("user", "Hi")], false).unwrap();
        assert_eq!(system, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
        let raising = ChatTemplate { source: "{{ raise_exception('roles must alternate') }}".into(), ..template };
        assert!(raising.render(&[], true).unwrap_err().contains("roles must alternate"));
    }

    #[test]
    fn strftime_now_writes_today_as_python_does() {
        // Llama 3.1's system turn: `{{- "Today Date: " + date_string }}` with
        // `strftime_now("%d %b %Y")`, e.g. "02 Dec 2026".
        let template =
            |source: &str| ChatTemplate { source: source.into(), bos_token: String::new(), eos_token: String::new() };
        let date = template("{{ strftime_now('%d %b %Y') }}").render(&[], false).unwrap();
        let (day, rest) = date.split_once(' ').unwrap();
        let (month, year) = rest.split_once(' ').unwrap();
        assert!(day.len() == 2 && day.chars().all(|c| c.is_ascii_digit()), "{date}");
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        assert!(months.contains(&month), "{date}");
        let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let this_year = 1970 + seconds / 31_556_952;
        assert!(year.parse::<u64>().unwrap().abs_diff(this_year) <= 1, "{date}");
        let bad = template("{{ strftime_now('%Q') }}").render(&[], false).unwrap_err();
        assert!(bad.contains("strftime_now") && bad.contains("%Q"), "{bad}");
    }
}
