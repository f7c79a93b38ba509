//! Where a task name is looked up: the `--include-path` folder's YAML tasks, groups and
//! tags first, then the built-in tasks; an unknown name lists both.

use super::builtin::{self, Source};
use super::yaml::Registry;
use super::{Task, TaskError};

/// The tasks a name stands for.
pub fn load(name: &str, source: &Source, registry: Option<&Registry>) -> Result<Vec<Task>, TaskError> {
    match registry.filter(|r| r.contains(name)) {
        Some(registry) => registry.load(name, source.num_fewshot),
        None => builtin::load(name, source).map_err(|e| match (e, registry) {
            (TaskError::UnknownTask { name, available }, Some(r)) => {
                TaskError::UnknownTask { name, available: format!("{available}; from --include-path: {}", r.names()) }
            }
            (e, _) => e,
        }),
    }
}
