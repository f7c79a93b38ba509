//! With the `cuda` feature: compiles `src/backend/cuda/kernels.cu` ahead, with NVRTC, to a
//! cubin for each GPU architecture evalmesh targets (A100 sm_80, A10/RTX 30 sm_86, L40S
//! sm_89, H100/H200 sm_90) and to PTX for newer chips (which their driver compiles), and
//! writes `built_kernels.rs` for `backend::cuda::kernels` to embed them. NVRTC is found in
//! `EVALMESH_NVRTC` (its folder or file), `LD_LIBRARY_PATH`, or the folder
//! `scripts/fetch-nvrtc.sh` fills (NVRTC 12.8, from PyPI: its cubins load on every driver
//! of CUDA 12 and 13). Without the feature it does nothing.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

/// The architectures built as cubins, and the virtual one built as PTX.
const CUBINS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];
const PTX: &str = "compute_90";
const SOURCE: &str = "src/backend/cuda/kernels.cu";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(e) = build() {
        eprintln!("evalmesh-worker (cuda feature): {e}");
        std::process::exit(1);
    }
}

type Program = *mut c_void;

type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type CreateFn =
    unsafe extern "C" fn(*mut Program, *const c_char, *const c_char, c_int, *const c_void, *const c_void) -> c_int;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type ReadFn = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> c_int;

/// The NVRTC functions used, looked up in the loaded library.
struct Nvrtc {
    version: VersionFn,
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: ReadFn,
    cubin_size: SizeFn,
    cubin: ReadFn,
    ptx_size: SizeFn,
    ptx: ReadFn,
    destroy: DestroyFn,
}

fn nvrtc_file() -> Result<PathBuf, String> {
    println!("cargo:rerun-if-env-changed=EVALMESH_NVRTC");
    println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");
    let names = ["libnvrtc.so.12", "libnvrtc.so.13"];
    if let Some(given) = std::env::var_os("EVALMESH_NVRTC").map(PathBuf::from) {
        if given.is_file() {
            return Ok(given);
        }
        return names
            .iter()
            .map(|n| given.join(n))
            .find(|f| f.is_file())
            .ok_or_else(|| format!("EVALMESH_NVRTC={} holds neither {}", given.display(), names.join(" nor ")));
    }
    let cache = std::env::var_os("EVALMESH_CACHE").map(PathBuf::from).or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("evalmesh"))
    });
    let mut folders: Vec<PathBuf> =
        std::env::var_os("LD_LIBRARY_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    folders.extend(cache.map(|c| c.join("nvrtc-12.8")));
    names.iter().flat_map(|n| folders.iter().map(move |f| f.join(n))).find(|f| f.is_file()).ok_or_else(|| {
        let places: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
        format!(
            "the kernels are compiled ahead with NVRTC, and no libnvrtc.so.12 or .13 is in {}: run scripts/fetch-nvrtc.sh \
             (it fetches NVRTC 12.8 from PyPI into that cache), or set EVALMESH_NVRTC to NVRTC's folder",
            places.join(", ")
        )
    })
}

fn load(file: &Path) -> Result<Nvrtc, String> {
    let path = CString::new(file.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated path; the handle stays open for the build script's life.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        return Err(format!("{} cannot be loaded", file.display()));
    }
    let symbol = |name: &str| -> Result<*mut c_void, String> {
        let c = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a live handle and a NUL-terminated name.
        let found = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if found.is_null() {
            Err(format!("{} has no {name}", file.display()))
        } else {
            Ok(found)
        }
    };
    // SAFETY: each symbol is NVRTC's function of that name, whose C signature the field's
    // type spells (nvrtc.h: every function returns nvrtcResult, an int).
    unsafe {
        Ok(Nvrtc {
            version: std::mem::transmute::<*mut c_void, VersionFn>(symbol("nvrtcVersion")?),
            create: std::mem::transmute::<*mut c_void, CreateFn>(symbol("nvrtcCreateProgram")?),
            compile: std::mem::transmute::<*mut c_void, CompileFn>(symbol("nvrtcCompileProgram")?),
            log_size: std::mem::transmute::<*mut c_void, SizeFn>(symbol("nvrtcGetProgramLogSize")?),
            log: std::mem::transmute::<*mut c_void, ReadFn>(symbol("nvrtcGetProgramLog")?),
            cubin_size: std::mem::transmute::<*mut c_void, SizeFn>(symbol("nvrtcGetCUBINSize")?),
            cubin: std::mem::transmute::<*mut c_void, ReadFn>(symbol("nvrtcGetCUBIN")?),
            ptx_size: std::mem::transmute::<*mut c_void, SizeFn>(symbol("nvrtcGetPTXSize")?),
            ptx: std::mem::transmute::<*mut c_void, ReadFn>(symbol("nvrtcGetPTX")?),
            destroy: std::mem::transmute::<*mut c_void, DestroyFn>(symbol("nvrtcDestroyProgram")?),
        })
    }
}

/// Reads an output of `program` whose size `size` gives into a buffer `read` fills.
fn output(program: Program, size: SizeFn, read: ReadFn) -> Result<Vec<u8>, String> {
    let mut bytes = 0usize;
    // SAFETY: a live program; NVRTC writes the size, then at most that many bytes.
    unsafe {
        if size(program, &mut bytes) != 0 {
            return Err("NVRTC gave no output size".into());
        }
        let mut buffer = vec![0u8; bytes];
        if read(program, buffer.as_mut_ptr().cast()) != 0 {
            return Err("NVRTC gave no output".into());
        }
        Ok(buffer)
    }
}

/// Compiles `source` for `arch`: the cubin for a real architecture, PTX for a virtual one.
fn compile(nvrtc: &Nvrtc, source: &CStr, arch: &str) -> Result<Vec<u8>, String> {
    let options: Vec<CString> = [format!("--gpu-architecture={arch}"), "--std=c++17".into()]
        .into_iter()
        .map(|o| CString::new(o).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut program: Program = std::ptr::null_mut();
    // SAFETY: NUL-terminated source and name, no headers; the program is destroyed below.
    unsafe {
        if (nvrtc.create)(&mut program, source.as_ptr(), c"kernels.cu".as_ptr(), 0, std::ptr::null(), std::ptr::null())
            != 0
        {
            return Err(format!("NVRTC cannot create a program for {arch}"));
        }
        let compiled = (nvrtc.compile)(program, pointers.len() as c_int, pointers.as_ptr());
        let result = if compiled != 0 {
            let log = output(program, nvrtc.log_size, nvrtc.log).unwrap_or_default();
            Err(format!("NVRTC cannot compile {SOURCE} for {arch}: {}", String::from_utf8_lossy(&log)))
        } else if arch.starts_with("sm_") {
            output(program, nvrtc.cubin_size, nvrtc.cubin)
        } else {
            output(program, nvrtc.ptx_size, nvrtc.ptx)
        };
        (nvrtc.destroy)(&mut program);
        result
    }
}

fn build() -> Result<(), String> {
    println!("cargo:rerun-if-changed={SOURCE}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo set no OUT_DIR")?);
    let file = nvrtc_file()?;
    let nvrtc = load(&file)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC writes two ints.
    unsafe { (nvrtc.version)(&mut major, &mut minor) };
    let text = std::fs::read_to_string(SOURCE).map_err(|e| format!("{SOURCE}: {e}"))?;
    let source = CString::new(text).map_err(|e| format!("{SOURCE}: {e}"))?;
    let mut entries = String::new();
    for arch in CUBINS.iter().copied().chain([PTX]) {
        let image = compile(&nvrtc, &source, arch)?;
        let name = format!("kernels.{arch}.{}", if arch.starts_with("sm_") { "cubin" } else { "ptx" });
        std::fs::write(out.join(&name), &image).map_err(|e| format!("{name}: {e}"))?;
        entries.push_str(&format!("    (\"{arch}\", include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}\"))),\n"));
    }
    let generated = format!(
        "/// The NVRTC that built the kernels ahead.\npub const BUILT_BY: &str = \"NVRTC {major}.{minor}\";\n\
         /// The kernels built ahead: a cubin per real architecture (`sm_XY`), PTX for a virtual one (`compute_XY`).\n\
         pub const BUILT: &[(&str, &[u8])] = &[\n{entries}];\n"
    );
    std::fs::write(out.join("built_kernels.rs"), generated).map_err(|e| format!("built_kernels.rs: {e}"))
}
