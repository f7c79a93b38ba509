//! Where a task name is looked up: the `--include-path` folder's task, group and tag files
//! first, then the task files shipped with evalmesh (the built-in tasks); an unknown name
//! lists both. Also what a run gives the tasks it loads ([`Source`]).

use std::path::Path;

use super::prompt::PromptStyle;
use super::yaml::Registry;
use super::{Task, TaskError};
use crate::cli::lm_eval_flags::Seeds;

/// What a run gives the tasks it loads.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// `--data-dir`: a folder laid out like `shared/data`, where data files are looked for
    /// that are not beside their task file.
    pub data_dir: Option<&'a Path>,
    /// `--data FILE`: the file of the evaluated split, in place of the task file's.
    pub data_file: Option<&'a Path>,
    /// `--num-fewshot` (0: the task file's own `num_fewshot`, else none).
    pub num_fewshot: usize,
    /// How contexts are written: `--system-instruction`, `--apply-chat-template`.
    pub prompt: PromptStyle<'a>,
    /// The few-shot sampler's seed (`--seed`'s fourth).
    pub fewshot_seed: u32,
    /// `--gen_kwargs`: laid over each generate_until task's `generation_kwargs`.
    pub gen_kwargs: &'a [(String, serde_json::Value)],
}

impl Default for Source<'_> {
    /// No data folder or file, the task files' own few-shot counts and generation
    /// settings, plain prompts, and lm-evaluation-harness's few-shot seed (1234).
    fn default() -> Self {
        Source {
            data_dir: None,
            data_file: None,
            num_fewshot: 0,
            prompt: PromptStyle::default(),
            fewshot_seed: Seeds::default().fewshot,
            gen_kwargs: &[],
        }
    }
}

/// The shipped tasks and a user's.
pub struct Catalog {
    shipped: Registry,
    included: Option<Registry>,
}

impl Catalog {
    /// The shipped tasks, and those under `include_path`.
    pub fn new(include_path: Option<&Path>) -> Result<Self, TaskError> {
        Ok(Catalog { shipped: Registry::shipped()?, included: include_path.map(Registry::scan).transpose()? })
    }

    /// The tasks a name stands for.
    pub fn load(&self, name: &str, source: &Source) -> Result<Vec<Task>, TaskError> {
        match self.included.as_ref().filter(|r| r.contains(name)) {
            Some(included) => included.load(name, source),
            None if self.shipped.contains(name) => self.shipped.load(name, source),
            None => {
                let mut available = names(&self.shipped);
                if let Some(included) = &self.included {
                    available.push_str(&format!("; from --include-path: {}", names(included)));
                }
                Err(TaskError::UnknownTask { name: name.to_string(), available })
            }
        }
    }
}

impl Catalog {
    /// The names `--tasks` takes, one a line with what each is: the shipped tasks, then
    /// the `--include-path` folder's.
    pub fn listing(&self) -> String {
        let mut lines = vec!["Shipped with evalmesh (data from --data-dir):".to_string()];
        lines.extend(self.shipped.summary(true).iter().map(|l| format!("  {l}")));
        if let Some(included) = &self.included {
            lines.push("From --include-path:".into());
            lines.extend(included.summary(true).iter().map(|l| format!("  {l}")));
        }
        lines.join("\n")
    }
}

fn names(registry: &Registry) -> String {
    let lines = registry.summary(false);
    lines.iter().filter_map(|l| l.split(':').next()).collect::<Vec<_>>().join(", ")
}

/// `--task`'s help: the shipped tasks, groups and tags with what each reads.
pub fn tasks_help() -> String {
    let listed = match Registry::shipped() {
        Ok(shipped) => shipped.summary(false).iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"),
        Err(e) => format!("  (the shipped task files cannot be read: {e})"),
    };
    format!(
        "Tasks, groups or tags to score, separated by commas (`list`: print them, with --include-path's, and \
         stop): lm-evaluation-harness task files shipped with evalmesh (coordinator/tasks/), reading --data-dir \
         (laid out like shared/data), or from --include-path:\n{listed}"
    )
}
