//! A document's context as lm-evaluation-harness's `fewshot_context` builds it
//! (`lm_eval/api/task.py`, `lm_eval/api/utils.py`): a system prompt (`--system-instruction`
//! and the task's description, joined by the task's few-shot delimiter where neither has
//! whitespace at the join), the few-shot turns, then the document's text; as plain text,
//! or through the model's chat template (`--apply-chat-template`) with the turns collapsed
//! into one user message, or kept as user and assistant turns (`--fewshot-as-multiturn`),
//! and the assistant's turn opened for the answer.

use super::fewshot::{Delimiters, Turn};
use crate::tokenizer::chat::{ChatMessage, ChatTemplate};

/// How contexts are written.
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptStyle<'a> {
    pub system_instruction: Option<&'a str>,
    /// The model's chat template, with whether few-shot turns stay separate.
    pub chat: Option<(&'a ChatTemplate, bool)>,
}

/// lm-evaluation-harness's `maybe_delimit`: `prefix`, `delimiter` and `suffix`, without the
/// delimiter where either has whitespace at the join, and either alone where the other is empty.
fn maybe_delimit(prefix: &str, suffix: &str, delimiter: &str) -> String {
    match (prefix.chars().last(), suffix.chars().next()) {
        (None, _) => suffix.to_string(),
        (_, None) => prefix.to_string(),
        (Some(p), Some(s)) if p.is_whitespace() || s.is_whitespace() => format!("{prefix}{suffix}"),
        _ => format!("{prefix}{delimiter}{suffix}"),
    }
}

/// One message with the text that follows it in plain text (lm-eval's `Message`).
struct Message {
    role: &'static str,
    content: String,
    delimiter: String,
}

impl Message {
    fn new(role: &'static str, content: &str, delimiter: &str) -> Message {
        Message { role, content: content.to_string(), delimiter: delimiter.to_string() }
    }

    fn chat(&self) -> ChatMessage {
        ChatMessage { role: self.role.to_string(), content: self.content.clone() }
    }
}

/// The context of `question` after `turns`. `description` is the task's (resolved for this
/// document), `task_fewshot_delimiter` the task's own; `delimiters` are the few-shot
/// turns' (their `fewshot_config`'s where it has them).
pub fn compose(
    style: &PromptStyle,
    description: &str,
    task_fewshot_delimiter: &str,
    turns: &[Turn],
    delimiters: &Delimiters,
    question: &str,
) -> Result<String, String> {
    let system = maybe_delimit(style.system_instruction.unwrap_or(""), description, task_fewshot_delimiter);
    let Some((template, multiturn)) = style.chat else {
        let shots: String = turns.iter().map(|t| t.plain(delimiters)).collect();
        return Ok(format!("{system}{shots}{question}"));
    };
    let mut messages = Vec::new();
    for turn in turns {
        match turn.answer.is_empty() {
            true => messages.push(Message::new("user", &turn.question, "")),
            false => {
                messages.push(Message::new("user", &turn.question, &delimiters.target));
                messages.push(Message::new("assistant", &turn.answer, &delimiters.fewshot));
            }
        }
    }
    messages.push(Message::new("user", question, ""));
    let mut chat: Vec<ChatMessage> = Vec::new();
    if !system.is_empty() {
        chat.push(ChatMessage { role: "system".into(), content: system });
    }
    match multiturn {
        true => chat.extend(messages.iter().map(Message::chat)),
        // `multiturn_to_singleturn`: every turn as the plain text of one user message.
        false => chat.push(ChatMessage {
            role: "user".into(),
            content: messages.iter().map(|m| format!("{}{}", m.content, m.delimiter)).collect(),
        }),
    }
    template.render(&chat, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns() -> Vec<Turn> {
        vec![Turn { question: "Q: 1+1?\nA:".into(), answer: "2".into() }]
    }

    /// A template that writes each message as `[role]content` and the generation prompt as `[assistant]`.
    fn template() -> ChatTemplate {
        ChatTemplate {
            source: "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        }
    }

    #[test]
    fn plain_contexts_are_lm_evals() {
        let delimiters = Delimiters::default();
        let plain = PromptStyle::default();
        let got = compose(&plain, "Maths.\n\n", "\n\n", &turns(), &delimiters, "Q: 2+2?\nA:").unwrap();
        assert_eq!(got, "Maths.\n\nQ: 1+1?\nA: 2\n\nQ: 2+2?\nA:");
        // The system instruction and the description, joined by the task's few-shot delimiter.
        let system = PromptStyle { system_instruction: Some("Be exact."), chat: None };
        let got = compose(&system, "Maths.", "\n\n", &[], &delimiters, "Q").unwrap();
        assert_eq!(got, "Be exact.\n\nMaths.Q");
    }

    #[test]
    fn chat_contexts_collapse_or_keep_the_turns() {
        let (delimiters, template) = (Delimiters::default(), template());
        let single = PromptStyle { system_instruction: Some("Be exact."), chat: Some((&template, false)) };
        let got = compose(&single, "", "\n\n", &turns(), &delimiters, "Q: 2+2?\nA:").unwrap();
        assert_eq!(got, "[system]Be exact.[user]Q: 1+1?\nA: 2\n\nQ: 2+2?\nA:[assistant]");
        let multi = PromptStyle { system_instruction: None, chat: Some((&template, true)) };
        let got = compose(&multi, "", "\n\n", &turns(), &delimiters, "Q: 2+2?\nA:").unwrap();
        assert_eq!(got, "[user]Q: 1+1?\nA:[assistant]2[user]Q: 2+2?\nA:[assistant]");
    }
}
