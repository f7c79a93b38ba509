//! The CUDA backend's kernels: `kernels.cu`, built ahead into the binary by `build.rs`
//! (cubins for sm_80, sm_86, sm_89 and sm_90, PTX for newer chips), the image that fits
//! the device loaded as functions; NVRTC compiles them at start only for a chip that none
//! fits (older than sm_80).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use super::libraries;
use crate::backend::error::BackendError;

/// The kernels' source, kept beside this file.
pub const SOURCE: &str = include_str!("kernels.cu");

include!(concat!(env!("OUT_DIR"), "/built_kernels.rs"));

/// How the kernels reach a device of compute capability `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// A built cubin (`sm_XY`: the device's own, or an earlier one of its major version,
    /// whose code it runs), or built PTX (`compute_XY`, at most the device's), which
    /// the driver compiles.
    Built(&'static str, &'static [u8]),
    /// None fits: NVRTC compiles for `sm_XY` at start.
    Compile(u32, u32),
}

/// The image for a device of compute capability `major.minor`: the built cubin of the
/// same major version with the highest minor not above the device's, else built PTX of
/// a virtual architecture not above it, else NVRTC.
pub fn image_for(major: u32, minor: u32) -> Image {
    let version = |arch: &str, prefix: &str| -> Option<(u32, u32)> {
        let digits = arch.strip_prefix(prefix)?;
        let (a, b) = digits.split_at(digits.len().checked_sub(1)?);
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let cubin = BUILT
        .iter()
        .filter_map(|&(arch, image)| Some((version(arch, "sm_")?, arch, image)))
        .filter(|&((a, b), _, _)| a == major && b <= minor)
        .max_by_key(|&(v, _, _)| v);
    let ptx = BUILT
        .iter()
        .filter_map(|&(arch, image)| Some((version(arch, "compute_")?, arch, image)))
        .filter(|&(v, _, _)| v <= (major, minor))
        .max_by_key(|&(v, _, _)| v);
    match cubin.or(ptx) {
        Some((_, arch, image)) => Image::Built(arch, image),
        None => Image::Compile(major, minor),
    }
}

/// Compiles [`SOURCE`] to PTX for `arch` (for example `compute_90` or `sm_90`). Needs only
/// NVRTC, not a GPU.
pub fn compile(arch: &str) -> Result<Ptx, BackendError> {
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("kernels.cu".into()),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(SOURCE, options).map_err(|e| {
        let detail = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        };
        BackendError::Failed {
            backend: "cuda",
            problem: format!("NVRTC cannot compile kernels.cu for {arch}: {detail}"),
        }
    })
}

/// A kernel parameter's kind, as `kernels.cu` declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Any pointer (a device address).
    Ptr,
    /// `long long`
    I64,
    /// `int`
    I32,
    /// `float`
    F32,
}

/// The parameters of kernel `name` in [`SOURCE`], or why they cannot be read.
pub fn params(name: &str) -> Result<Vec<Param>, String> {
    let start = format!("extern \"C\" __global__ void {name}(");
    let at = SOURCE.find(&start).ok_or_else(|| format!("kernels.cu has no kernel `{name}`"))?;
    let rest = &SOURCE[at + start.len()..];
    let list = &rest[..rest.find(')').ok_or_else(|| format!("`{name}`: unterminated parameters"))?];
    list.split(',')
        .map(|p| {
            let words: Vec<&str> = p.split_whitespace().collect();
            let kind = &words[..words.len().saturating_sub(1)];
            match kind {
                _ if p.contains('*') => Ok(Param::Ptr),
                ["long", "long"] => Ok(Param::I64),
                ["int"] => Ok(Param::I32),
                ["float"] => Ok(Param::F32),
                _ => Err(format!("`{name}`: parameter `{}` of a kind the launcher does not pass", p.trim())),
            }
        })
        .collect()
}

/// A loaded kernel with its parameters, which every launch is checked against.
pub struct Kernel {
    pub name: &'static str,
    pub function: CudaFunction,
    pub params: Vec<Param>,
}

/// The loaded kernels.
pub struct Kernels {
    /// Which image they came from (`sm_90 cubin, NVRTC 12.8`, ...).
    pub image: String,
    pub random_weight: Kernel,
    pub to_operand: Kernel,
    pub embed: Kernel,
    pub rms_norm: Kernel,
    pub rms_norm_runs: Kernel,
    pub rope: Kernel,
    pub gated: Kernel,
    pub add_assign: Kernel,
    pub add_all_in_order: Kernel,
    pub add_row: Kernel,
    pub scale: Kernel,
    pub scale_rows: Kernel,
    pub soft_cap: Kernel,
    pub gather_rows: Kernel,
    pub scatter_add_rows: Kernel,
    pub columns: Kernel,
    pub attention: Kernel,
    pub attention_tc: Kernel,
    pub score: Kernel,
    /// Whether the device runs `attention_tc` (bf16 tensor cores: compute capability 8.0
    /// and newer).
    pub tensor_cores: bool,
}

impl Kernels {
    /// Loads the kernels that fit `context`'s device ([`image_for`]).
    pub fn load(context: &Arc<CudaContext>) -> Result<Self, BackendError> {
        let failed = |what: String| BackendError::Failed { backend: "cuda", problem: what };
        let (major, minor) = context.compute_capability().map_err(|e| failed(format!("compute capability: {e}")))?;
        let (module, from) = match image_for(major as u32, minor as u32) {
            Image::Built(arch, bytes) if arch.starts_with("sm_") => {
                (Ptx::from_binary(bytes.to_vec()), format!("{arch} cubin, {BUILT_BY}"))
            }
            Image::Built(arch, bytes) => {
                (Ptx::from_src(String::from_utf8_lossy(bytes).into_owned()), format!("{arch} PTX, {BUILT_BY}"))
            }
            Image::Compile(major, minor) => {
                let nvrtc = libraries::load(libraries::NVRTC)?;
                (compile(&format!("sm_{major}{minor}"))?, format!("sm_{major}{minor} by {} at start", nvrtc.display()))
            }
        };
        let module = context
            .load_module(module)
            .map_err(|e| failed(format!("loading the kernels ({from}) on a {major}.{minor} device: {e}")))?;
        let function = |name: &'static str| {
            Ok(Kernel {
                name,
                function: module.load_function(name).map_err(|e| failed(format!("kernel `{name}` not found: {e}")))?,
                params: params(name).map_err(failed)?,
            })
        };
        Ok(Kernels {
            image: from,
            random_weight: function("random_weight")?,
            to_operand: function("to_operand")?,
            embed: function("embed")?,
            rms_norm: function("rms_norm")?,
            rms_norm_runs: function("rms_norm_runs")?,
            rope: function("rope")?,
            gated: function("gated")?,
            add_assign: function("add_assign")?,
            add_all_in_order: function("add_all_in_order")?,
            add_row: function("add_row")?,
            scale: function("scale")?,
            scale_rows: function("scale_rows")?,
            soft_cap: function("soft_cap")?,
            gather_rows: function("gather_rows")?,
            scatter_add_rows: function("scatter_add_rows")?,
            columns: function("columns")?,
            attention: function("attention")?,
            attention_tc: function("attention_tc")?,
            score: function("score")?,
            tensor_cores: major >= 8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `extern "C"` kernel of the source, by name.
    fn kernel_names() -> Vec<&'static str> {
        SOURCE.split("extern \"C\" __global__ void ").skip(1).filter_map(|rest| rest.split('(').next()).collect()
    }

    #[test]
    fn every_kernel_has_parameters_the_launcher_passes() {
        for name in kernel_names() {
            let params = params(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!params.is_empty(), "{name}");
        }
        use Param::*;
        assert_eq!(params("rms_norm").unwrap(), [Ptr, Ptr, Ptr, I64, F32]);
        assert_eq!(params("rope").unwrap(), [Ptr, Ptr, I64, I64, I64, I32, I32, I32]);
        assert_eq!(params("attention").unwrap(), [Ptr, Ptr, Ptr, I64, I64, I32, I32, I32, F32, F32]);
        assert_eq!(params("attention_tc").unwrap(), [Ptr, Ptr, Ptr, Ptr, I32, I64, I32, I32, I32, F32, F32]);
        assert_eq!(params("scatter_add_rows").unwrap(), [Ptr, Ptr, Ptr, I64]);
        assert_eq!(params("to_operand").unwrap(), [Ptr, Ptr, Ptr, I64, I64, I64, I64]);
        assert_eq!(params("add_all_in_order").unwrap(), [Ptr, Ptr, I64, I64]);
        // `scale` is not read as the start of `scale_rows`, nor the other way round.
        assert_eq!(params("scale").unwrap(), [Ptr, I64, F32]);
        assert_eq!(params("scale_rows").unwrap(), [Ptr, Ptr, I64, I64]);
        assert!(params("missing").is_err());
    }

    #[test]
    fn every_kernel_of_the_source_is_loaded() {
        let mut names = kernel_names();
        names.sort_unstable();
        let loaded = [
            "add_all_in_order",
            "add_assign",
            "add_row",
            "attention",
            "attention_tc",
            "columns",
            "embed",
            "gated",
            "gather_rows",
            "random_weight",
            "rms_norm",
            "rms_norm_runs",
            "rope",
            "scale",
            "scale_rows",
            "scatter_add_rows",
            "score",
            "soft_cap",
            "to_operand",
        ];
        assert_eq!(names, loaded);
        let this = include_str!("kernels.rs");
        for name in loaded {
            assert!(this.contains(&format!("function(\"{name}\")")), "{name} is not loaded");
        }
    }

    /// The images `build.rs` made are in the binary: a cubin of each targeted architecture
    /// (an ELF for CUDA whose flags name that architecture, holding every kernel) and PTX
    /// for newer chips with an entry for every kernel.
    #[test]
    fn the_binary_holds_a_kernel_image_for_each_targeted_architecture() {
        let archs: Vec<&str> = BUILT.iter().map(|&(arch, _)| arch).collect();
        assert_eq!(archs, ["sm_80", "sm_86", "sm_89", "sm_90", "compute_90"]);
        for &(arch, image) in BUILT {
            if let Some(sm) = arch.strip_prefix("sm_") {
                assert_eq!(&image[..4], b"\x7fELF", "{arch}");
                let machine = u16::from_le_bytes([image[18], image[19]]);
                assert_eq!(machine, 190, "{arch}: EM_CUDA");
                let flags = u32::from_le_bytes([image[48], image[49], image[50], image[51]]);
                assert_eq!(cubin_arch(flags), sm.parse::<u32>().unwrap(), "{arch}: e_flags {flags:#x}");
                for name in kernel_names() {
                    let symbol = [name.as_bytes(), b"\0"].concat();
                    assert!(image.windows(symbol.len()).any(|w| w == symbol), "{arch}: no {name}");
                }
            } else {
                let text = std::str::from_utf8(image).unwrap();
                assert!(text.contains(".target sm_90"), "{arch}");
                for name in kernel_names() {
                    assert!(text.contains(&format!(".entry {name}(")), "{arch}: no entry for {name}");
                }
            }
        }
        assert!(BUILT_BY.starts_with("NVRTC "));
    }

    /// The architecture an ELF for CUDA is for, from its flags: the low byte in the
    /// layout before CUDA 12.8's (ABI version 7), bits 8–15 in the newer one.
    fn cubin_arch(flags: u32) -> u32 {
        if flags & 0xff != 0 {
            flags & 0xff
        } else {
            (flags >> 8) & 0xff
        }
    }

    #[test]
    fn each_compute_capability_gets_the_image_that_fits_it() {
        let built = |major, minor| match image_for(major, minor) {
            Image::Built(arch, _) => arch.to_string(),
            Image::Compile(a, b) => format!("NVRTC sm_{a}{b}"),
        };
        assert_eq!(built(8, 0), "sm_80");
        assert_eq!(built(8, 6), "sm_86");
        assert_eq!(built(8, 7), "sm_86");
        assert_eq!(built(8, 9), "sm_89");
        assert_eq!(built(9, 0), "sm_90");
        assert_eq!(built(10, 0), "compute_90");
        assert_eq!(built(12, 0), "compute_90");
        assert_eq!(built(7, 5), "NVRTC sm_75");
    }

    /// NVRTC needs no GPU: where its library loads, the kernels must compile for the
    /// architectures of the GPUs evalmesh targets (A100, L40S, H100/H200), as they do at
    /// start on a chip no built image fits. CI fetches NVRTC and sets
    /// EVALMESH_REQUIRE_NVRTC=1, so there this cannot pass by skipping.
    #[test]
    fn kernels_compile_under_nvrtc() {
        if let Err(e) = libraries::load(libraries::NVRTC) {
            assert!(std::env::var_os("EVALMESH_REQUIRE_NVRTC").is_none(), "EVALMESH_REQUIRE_NVRTC is set but {e}");
            eprintln!("skipped: {e} (scripts/fetch-nvrtc.sh fetches it for CI)");
            return;
        }
        for arch in ["compute_80", "compute_89", "compute_90"] {
            let ptx = compile(arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            for name in kernel_names() {
                assert!(text.contains(&format!(".entry {name}(")), "{arch}: no entry for {name}");
            }
        }
    }
}
