//! Finding the CUDA libraries (the driver, cuBLAS, NVRTC) by their versioned names before
//! cudarc asks for them: in `LD_LIBRARY_PATH`, the usual system folders, and the folders of
//! NVIDIA's Python wheels beside the `python3` on `PATH` (`nvidia/cu13/lib` for CUDA 13,
//! `nvidia/*/lib` for CUDA 12), where a PyTorch install keeps them and the dynamic loader
//! never looks. Each is opened by its full path with `RTLD_GLOBAL`; cudarc's later
//! `dlopen` of the bare name (`libcublas.so.13`, then `.so.12`) then finds the library
//! already loaded under its soname. CUDA 13 is preferred to 12 wherever both are found, as
//! cudarc's own order does, so both choose the same file.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::backend::error::BackendError;

/// A CUDA library, the names it goes by (preferred first), and the libraries it loads by
/// name at run time, which a wheel's folder holds beside it but no loader path reaches:
/// opened first from its folder, those whose name starts with a companion's prefix and
/// the library's major version (`libnvrtc-builtins.so.13.0` beside `libnvrtc.so.13`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Library {
    pub what: &'static str,
    pub names: &'static [&'static str],
    pub companions: &'static [&'static str],
    /// How to get it, for the error when it is missing.
    pub install: &'static str,
}

pub const DRIVER: Library = Library {
    what: "the NVIDIA driver",
    names: &["libcuda.so.1"],
    companions: &[],
    install: "install the NVIDIA driver, or add the folder of its libcuda.so.1 to LD_LIBRARY_PATH",
};
pub const CUBLAS: Library = Library {
    what: "cuBLAS",
    names: &["libcublas.so.13", "libcublas.so.12"],
    companions: &["libcublasLt.so."],
    install: "install CUDA 13 or 12's cuBLAS (pip install nvidia-cublas, or the CUDA toolkit), or add its folder to LD_LIBRARY_PATH",
};
pub const NVRTC: Library = Library {
    what: "NVRTC",
    names: &["libnvrtc.so.13", "libnvrtc.so.12"],
    companions: &["libnvrtc-builtins.so."],
    install: "install CUDA 13 or 12's NVRTC (pip install nvidia-cuda-nvrtc, or the CUDA toolkit), or add its folder to LD_LIBRARY_PATH",
};

/// The folders looked in, in order: `ld_library_path`'s, the system's, then the NVIDIA
/// wheels' of the Python installation whose `python3` is first on `path` (a virtual
/// environment's or a system one's, and the user's own site folder under `home`).
pub fn search_folders(ld_library_path: Option<&OsStr>, path: Option<&OsStr>, home: Option<&Path>) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = ld_library_path.map(|p| std::env::split_paths(p).collect()).unwrap_or_default();
    let triple = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let cuda = format!("/usr/local/cuda/targets/{}-linux/lib", std::env::consts::ARCH);
    for system in
        [triple.as_str(), "/usr/lib64", "/usr/lib", "/usr/local/cuda/lib64", cuda.as_str(), "/usr/lib/wsl/lib"]
    {
        folders.push(PathBuf::from(system));
    }
    let python = path.and_then(|p| std::env::split_paths(p).map(|d| d.join("python3")).find(|f| f.is_file()));
    let mut prefixes: Vec<PathBuf> =
        python.iter().filter_map(|p| p.parent()?.parent().map(Path::to_path_buf)).collect();
    if let Some(prefix) = prefixes.first().cloned() {
        prefixes.push(prefix.join("local"));
    }
    prefixes.extend(home.map(|h| h.join(".local")));
    for prefix in prefixes {
        for site in python_site_folders(&prefix) {
            folders.push(site.join("nvidia/cu13/lib"));
            folders.extend(sorted_entries(&site.join("nvidia")).into_iter().map(|d| d.join("lib")));
        }
    }
    let mut seen = std::collections::HashSet::new();
    folders.retain(|f| seen.insert(f.clone()));
    folders
}

/// `PREFIX/lib/python3.*/{site,dist}-packages` that exist, newest name last.
fn python_site_folders(prefix: &Path) -> Vec<PathBuf> {
    sorted_entries(&prefix.join("lib"))
        .into_iter()
        .filter(|d| d.file_name().is_some_and(|n| n.as_bytes().starts_with(b"python3")))
        .flat_map(|d| [d.join("site-packages"), d.join("dist-packages")])
        .filter(|d| d.is_dir())
        .collect()
}

fn sorted_entries(folder: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(folder).map(|r| r.filter_map(|e| Some(e.ok()?.path())).collect()).unwrap_or_default();
    entries.sort();
    entries
}

/// The file `library` would be loaded from: its first name found in any folder, then its
/// second, and so on (CUDA 13 anywhere before CUDA 12).
pub fn find(library: Library, folders: &[PathBuf]) -> Option<PathBuf> {
    library.names.iter().flat_map(|name| folders.iter().map(move |f| f.join(name))).find(|p| p.is_file())
}

/// The companions of `library` beside `file` (found under one of its names), in name order.
pub fn companions(library: Library, file: &Path) -> Vec<PathBuf> {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(major) = name.rsplit('.').next() else { return Vec::new() };
    let folder = file.parent().unwrap_or(Path::new("/"));
    sorted_entries(folder)
        .into_iter()
        .filter(|f| {
            let n = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            library
                .companions
                .iter()
                .any(|prefix| n.strip_prefix(prefix).is_some_and(|v| v == major || v.starts_with(&format!("{major}."))))
        })
        .collect()
}

/// Opens the library at `file` for the whole process, its symbols global.
fn open(file: &Path) -> Result<(), String> {
    let name = CString::new(file.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen takes a NUL-terminated path; the handle is kept open for the process's
    // life (never closed), so the library's code stays mapped for cudarc.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns NULL or a NUL-terminated message owned by libc.
        let message = unsafe { libc::dlerror() };
        return Err(if message.is_null() {
            "dlopen failed".into()
        } else {
            // SAFETY: non-null, NUL-terminated, read before any other dl call.
            unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
        });
    }
    Ok(())
}

/// Finds and opens `library` from `folders`, or says what was looked for and where.
pub fn load_from(library: Library, folders: &[PathBuf]) -> Result<PathBuf, String> {
    let file = find(library, folders).ok_or_else(|| {
        let places: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
        format!(
            "{} cannot be loaded: none of {} in {} ({}; or run with --device cpu)",
            library.what,
            library.names.join(", "),
            places.join(", "),
            library.install
        )
    })?;
    for companion in companions(library, &file) {
        open(&companion).map_err(|e| format!("{} at {} cannot be loaded: {e}", library.what, companion.display()))?;
    }
    open(&file).map_err(|e| format!("{} at {} cannot be loaded: {e}", library.what, file.display()))?;
    Ok(file)
}

/// This process's search folders, from its environment.
fn process_folders() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    search_folders(std::env::var_os("LD_LIBRARY_PATH").as_deref(), std::env::var_os("PATH").as_deref(), home.as_deref())
}

/// A library and what loading it gave.
type Answer = (Library, Result<PathBuf, String>);

/// Loads `library` once per process (later calls give the first call's answer): the file
/// it came from, or the error naming every place looked.
pub fn load(library: Library) -> Result<PathBuf, BackendError> {
    static LOADED: OnceLock<Mutex<Vec<Answer>>> = OnceLock::new();
    let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    let answer = match loaded.iter().find(|(l, _)| *l == library) {
        Some((_, answer)) => answer.clone(),
        None => {
            let answer = load_from(library, &process_folders());
            loaded.push((library, answer.clone()));
            answer
        }
    };
    answer.map_err(|problem| BackendError::Failed { backend: "cuda", problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(file: &Path) {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, b"").unwrap();
    }

    /// A Python installation laid out as pip lays out the CUDA 13 wheels (`nvidia/cu13/lib`)
    /// beside a CUDA 12 wheel (`nvidia/cublas/lib`): the search finds them from the
    /// `python3` on PATH alone, and prefers CUDA 13.
    #[test]
    fn finds_cuda_13_wheels_beside_the_python_on_path() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("venv");
        touch(&venv.join("bin/python3"));
        let site = venv.join("lib/python3.12/site-packages");
        touch(&site.join("nvidia/cu13/lib/libcublas.so.13"));
        touch(&site.join("nvidia/cu13/lib/libnvrtc.so.13"));
        touch(&site.join("nvidia/cublas/lib/libcublas.so.12"));
        let path = std::env::join_paths([root.path().join("nowhere"), venv.join("bin")]).unwrap();
        let folders = search_folders(None, Some(&path), None);
        assert!(folders.contains(&site.join("nvidia/cu13/lib")), "{folders:?}");
        assert!(folders.contains(&site.join("nvidia/cublas/lib")), "{folders:?}");
        assert_eq!(find(CUBLAS, &folders), Some(site.join("nvidia/cu13/lib/libcublas.so.13")));
        assert_eq!(find(NVRTC, &folders), Some(site.join("nvidia/cu13/lib/libnvrtc.so.13")));
    }

    /// NVRTC's builtins of the same major version (not the `.alt` ones, nor CUDA 12's) and
    /// cuBLASLt are opened before the library they serve.
    #[test]
    fn companions_of_the_same_major_version() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path();
        for name in [
            "libnvrtc.so.13",
            "libnvrtc-builtins.so.13.0",
            "libnvrtc-builtins.alt.so.13.0",
            "libnvrtc-builtins.so.12.8",
        ] {
            touch(&lib.join(name));
        }
        touch(&lib.join("libcublas.so.13"));
        touch(&lib.join("libcublasLt.so.13"));
        assert_eq!(companions(NVRTC, &lib.join("libnvrtc.so.13")), [lib.join("libnvrtc-builtins.so.13.0")]);
        assert_eq!(companions(CUBLAS, &lib.join("libcublas.so.13")), [lib.join("libcublasLt.so.13")]);
        assert!(companions(DRIVER, &lib.join("libcuda.so.1")).is_empty());
    }

    /// LD_LIBRARY_PATH comes first; a CUDA 12-only install is found by its `.so.12` name; a
    /// user's site folder counts too.
    #[test]
    fn ld_library_path_first_then_cuda_12_and_user_site() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("ld/libcublas.so.12"));
        let user_site = root.path().join("home/.local/lib/python3.10/site-packages");
        touch(&user_site.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
        let ld = root.path().join("ld");
        let folders = search_folders(Some(ld.as_os_str()), None, Some(&root.path().join("home")));
        assert_eq!(folders[0], ld);
        assert_eq!(find(CUBLAS, &folders), Some(ld.join("libcublas.so.12")));
        assert_eq!(find(NVRTC, &folders), Some(user_site.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12")));
    }

    /// Nothing found: the one-line error names the library, its names and every folder.
    #[test]
    fn the_error_names_every_place_looked() {
        let root = tempfile::tempdir().unwrap();
        let folders = vec![root.path().join("a"), root.path().join("b")];
        let e = load_from(CUBLAS, &folders).unwrap_err();
        assert!(e.starts_with("cuBLAS cannot be loaded: none of libcublas.so.13, libcublas.so.12 in "), "{e}");
        for f in &folders {
            assert!(e.contains(&f.display().to_string()), "{e}");
        }
        assert!(!e.contains('\n'));
    }

    /// A file that is not a library: found, and the loader's reason is given.
    #[test]
    fn a_broken_library_is_named_with_the_loaders_reason() {
        let root = tempfile::tempdir().unwrap();
        touch(&root.path().join("libnvrtc.so.13"));
        let e = load_from(NVRTC, &[root.path().to_path_buf()]).unwrap_err();
        assert!(e.starts_with(&format!("NVRTC at {} cannot be loaded: ", root.path().join("libnvrtc.so.13").display())));
    }
}
