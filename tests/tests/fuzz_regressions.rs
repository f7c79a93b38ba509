//! Replays, for every fuzz target, its seeds (`fuzz/seeds/TARGET`), every input a fuzzer
//! once crashed on (`fuzz/regressions/TARGET`, kept after the fix) and the inputs made in
//! code (`fuzz::generated_inputs`: the binary ones) through the same function the target calls, so that no fixed crash comes back, without the
//! fuzzing toolchain. One test, in order: the targets share a scratch folder. As under
//! the fuzzer's allocation cap, no input may make a single allocation above 256 MiB.

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use evalmesh_tests::{fuzz, repo_dir};

/// The system allocator, noting the largest single request.
struct Watched;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
const ALLOCATION_CAP: usize = 256 << 20;

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

#[test]
fn every_seed_and_former_crash_is_handled() {
    let listed: Vec<String> = std::fs::read_dir(repo_dir().join("fuzz/fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed.len(), fuzz::TARGETS.len(), "a fuzz target is missing here: {listed:?}");
    let generated = fuzz::generated_inputs();
    for (target, check) in fuzz::TARGETS {
        assert!(listed.iter().any(|l| l == target), "{target} is not a fuzz target");
        let mut inputs: Vec<(String, Vec<u8>)> = generated
            .iter()
            .filter(|(t, _, _)| *t == target)
            .map(|(_, name, bytes)| (format!("generated {name}"), bytes.clone()))
            .collect();
        for folder in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(repo_dir().join("fuzz").join(folder).join(target)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                inputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
        assert!(!inputs.is_empty(), "no seeds for {target}");
        for (name, input) in inputs {
            eprintln!("{target}: {name}");
            LARGEST.store(0, Ordering::Relaxed);
            check(&input);
            let largest = LARGEST.load(Ordering::Relaxed);
            assert!(largest <= ALLOCATION_CAP, "{name}: one allocation of {largest} bytes");
        }
    }
}
