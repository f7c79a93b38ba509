//! Where task files and their data come from: a folder on disk (`--include-path`) or the
//! task files shipped inside evalmesh (`coordinator/tasks/`, embedded when it is built), and
//! how a `dataset_kwargs.data_files` entry is found: beside its task file, else under
//! `--data-dir`, else as written; `--data FILE` replaces the evaluated split's files.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};

use crate::tasks::{read_text, TaskError};

static SHIPPED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/tasks");

/// How messages name the folder of the shipped task files.
const SHIPPED_ROOT: &str = "<evalmesh>/tasks";

/// Where a task file was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Disk,
    Shipped,
}

fn shipped_entry(path: &Path) -> Option<&'static include_dir::File<'static>> {
    SHIPPED.get_file(path.strip_prefix(SHIPPED_ROOT).ok()?)
}

impl Origin {
    /// The text of a file of this origin.
    pub fn read(self, path: &Path) -> Result<Cow<'static, str>, TaskError> {
        match self {
            Origin::Disk => read_text(path).map(Cow::Owned),
            Origin::Shipped => shipped_entry(path)
                .and_then(|f| f.contents_utf8())
                .map(Cow::Borrowed)
                .ok_or_else(|| TaskError::Io { path: path.to_path_buf(), error: std::io::ErrorKind::NotFound.into() }),
        }
    }

    pub fn is_file(self, path: &Path) -> bool {
        match self {
            Origin::Disk => path.is_file(),
            Origin::Shipped => shipped_entry(path).is_some(),
        }
    }
}

/// The shipped task files (`*.yaml`), by the names messages give them.
pub fn shipped_yaml_files() -> Vec<PathBuf> {
    fn walk(dir: &Dir<'static>, out: &mut Vec<PathBuf>) {
        for file in dir.files().filter(|f| f.path().extension().is_some_and(|e| e == "yaml")) {
            out.push(Path::new(SHIPPED_ROOT).join(file.path()));
        }
        for sub in dir.dirs() {
            walk(sub, out);
        }
    }
    let mut files = Vec::new();
    walk(&SHIPPED, &mut files);
    files.sort();
    files
}

/// A data file found: on disk, or shipped beside a shipped task file.
#[derive(Debug, Clone)]
pub struct DataFile {
    pub path: PathBuf,
    pub origin: Origin,
}

impl DataFile {
    /// The file as UTF-8 text, gunzipped where its name ends in `.gz` (as `datasets` does).
    pub fn text(&self) -> Result<Cow<'static, str>, TaskError> {
        match self.gzipped() {
            false => self.origin.read(&self.path),
            true => {
                let bytes = self.bytes()?;
                String::from_utf8(bytes.into_owned()).map(Cow::Owned).map_err(|e| TaskError::Data {
                    path: self.path.clone(),
                    problem: format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
                })
            }
        }
    }

    /// The file's bytes, gunzipped where its name ends in `.gz`.
    pub fn bytes(&self) -> Result<Cow<'static, [u8]>, TaskError> {
        let raw = match self.origin {
            Origin::Disk => std::fs::read(&self.path)
                .map(Cow::Owned)
                .map_err(|error| TaskError::Io { path: self.path.clone(), error })?,
            Origin::Shipped => shipped_entry(&self.path)
                .map(|f| Cow::Borrowed(f.contents()))
                .ok_or_else(|| TaskError::Io { path: self.path.clone(), error: std::io::ErrorKind::NotFound.into() })?,
        };
        if !self.gzipped() {
            return Ok(raw);
        }
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out).map_err(|e| {
            TaskError::Data { path: self.path.clone(), problem: format!("not a readable gzip file: {e}") }
        })?;
        Ok(Cow::Owned(out))
    }

    fn gzipped(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "gz")
    }
}

/// Finds data file `name` of the task file `task_file`: beside it, else under `data_dir`,
/// else as written (relative to the working folder).
pub fn find(name: &str, task_file: &Path, origin: Origin, data_dir: Option<&Path>) -> Result<DataFile, TaskError> {
    let beside = task_file.parent().unwrap_or(Path::new(".")).join(name);
    if origin.is_file(&beside) {
        return Ok(DataFile { path: beside, origin });
    }
    if let Some(under) = data_dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
        return Ok(DataFile { path: under, origin: Origin::Disk });
    }
    let written = PathBuf::from(name);
    if origin == Origin::Disk && written.is_file() {
        return Ok(DataFile { path: written, origin: Origin::Disk });
    }
    let problem = match (data_dir, origin) {
        (Some(dir), _) => format!(
            "`dataset_kwargs.data_files`: {} not found (--data-dir is {}); pass --data-dir with the layout of shared/data",
            dir.join(name).display(),
            dir.display()
        ),
        (None, Origin::Shipped) => {
            format!("`dataset_kwargs.data_files`: {name} is read from a folder laid out like shared/data: pass --data-dir")
        }
        (None, Origin::Disk) => format!("`dataset_kwargs.data_files`: {name} does not exist beside the task file or as written"),
    };
    Err(TaskError::Data { path: task_file.to_path_buf(), problem })
}
