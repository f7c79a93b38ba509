//! Device memory of one GPU: a caching pool for activations and workspace (buffers of a
//! size class are kept when freed and handed out again, so micro-batches after the first
//! allocate nothing), exact allocations for weights, and the counts behind the peak
//! memory a run reports.
//!
//! The backend works on one stream, so a buffer returned to the pool while kernels that
//! use it are still queued is safe to hand out again: its next use is queued after them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{result, CudaContext};

use crate::backend::error::BackendError;

/// The smallest size class: also the alignment every buffer gets from the driver.
const MIN_CLASS: usize = 256;

/// The bytes a request of `bytes` takes from the pool: the next of 2ᵏ or 1.5·2ᵏ, so that
/// at most a third of a buffer is slack and similar micro-batches share classes.
pub fn size_class(bytes: usize) -> usize {
    let bytes = bytes.max(MIN_CLASS);
    let power = bytes.next_power_of_two();
    let three_quarters = power / 4 * 3;
    if bytes <= three_quarters && three_quarters >= MIN_CLASS {
        three_quarters
    } else {
        power
    }
}

/// What the pool holds, in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Weights and staging buffers: allocated exactly, never cached.
    pub exact_bytes: u64,
    /// Pool buffers taken from the driver (in use or cached).
    pub reserved_bytes: u64,
    /// Pool buffers handed out now.
    pub in_use_bytes: u64,
    /// The most of weights plus reserved buffers at any time.
    pub peak_bytes: u64,
    /// Calls to the driver's allocator: stays put once the pool is warm.
    pub driver_allocations: u64,
}

struct State {
    free: HashMap<usize, Vec<CUdeviceptr>>,
    stats: PoolStats,
}

/// One device's memory.
pub struct Pool {
    context: Arc<CudaContext>,
    state: Mutex<State>,
}

/// A buffer of device memory; back to its pool (or, for a weight, to the driver) on drop.
pub struct DeviceBuffer {
    ptr: CUdeviceptr,
    bytes: usize,
    cached: bool,
    pool: Arc<Pool>,
}

impl DeviceBuffer {
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    /// The bytes it holds (its size class, for a pool buffer).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.pool.give_back(self.ptr, self.bytes, self.cached);
    }
}

fn failed(problem: String) -> BackendError {
    BackendError::Failed { backend: "cuda", problem }
}

impl Pool {
    pub fn new(context: Arc<CudaContext>) -> Arc<Self> {
        Arc::new(Pool { context, state: Mutex::new(State { free: HashMap::new(), stats: PoolStats::default() }) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> PoolStats {
        self.state().stats
    }

    /// A buffer of at least `bytes` for activations or workspace, reused where one is cached.
    pub fn take(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer, BackendError> {
        let class = size_class(bytes);
        let mut state = self.state();
        let reused = state.free.get_mut(&class).and_then(Vec::pop);
        let ptr = match reused {
            Some(ptr) => ptr,
            None => {
                let ptr = self.allocate(&mut state, class)?;
                state.stats.reserved_bytes += class as u64;
                ptr
            }
        };
        state.stats.in_use_bytes += class as u64;
        let stats = &mut state.stats;
        stats.peak_bytes = stats.peak_bytes.max(stats.exact_bytes + stats.reserved_bytes);
        Ok(DeviceBuffer { ptr, bytes: class, cached: true, pool: self.clone() })
    }

    /// A buffer of exactly `bytes` for a weight or a staging buffer: allocated once, freed on drop.
    pub fn take_exact(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer, BackendError> {
        let mut state = self.state();
        let ptr = self.allocate(&mut state, bytes.max(1))?;
        state.stats.exact_bytes += bytes as u64;
        let stats = &mut state.stats;
        stats.peak_bytes = stats.peak_bytes.max(stats.exact_bytes + stats.reserved_bytes);
        Ok(DeviceBuffer { ptr, bytes, cached: false, pool: self.clone() })
    }

    /// From the driver; where it is out of memory, the cached buffers are freed and it is asked again.
    fn allocate(&self, state: &mut State, bytes: usize) -> Result<CUdeviceptr, BackendError> {
        self.context.bind_to_thread().map_err(|e| failed(format!("binding the context: {e}")))?;
        state.stats.driver_allocations += 1;
        // SAFETY: the context is current; the pointer is freed by `give_back` or `drop`.
        if let Ok(ptr) = unsafe { result::malloc_sync(bytes) } {
            return Ok(ptr);
        }
        self.release_cached(state);
        // SAFETY: as above.
        unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            let s = state.stats;
            failed(format!(
                "out of device memory: {bytes} bytes asked for with {} in weights and {} in buffers ({e}); \
                 use smaller --batch-tokens or more GPUs",
                s.exact_bytes, s.in_use_bytes
            ))
        })
    }

    fn release_cached(&self, state: &mut State) {
        for (class, ptrs) in state.free.drain() {
            for ptr in ptrs {
                // SAFETY: cached buffers are not in use; the backend's stream is drained
                // before it drops them (see `CudaBackend`'s `Drop`), and frees are ordered.
                let _ = unsafe { result::free_sync(ptr) };
                state.stats.reserved_bytes -= class as u64;
            }
        }
    }

    fn give_back(&self, ptr: CUdeviceptr, bytes: usize, cached: bool) {
        let mut state = self.state();
        if cached {
            state.stats.in_use_bytes -= bytes as u64;
            state.free.entry(bytes).or_default().push(ptr);
        } else {
            state.stats.exact_bytes -= bytes as u64;
            if self.context.bind_to_thread().is_ok() {
                // SAFETY: a weight or staging buffer is dropped with its backend, after its streams are drained.
                let _ = unsafe { result::free_sync(ptr) };
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.context.bind_to_thread().is_ok() {
            let state = self.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
            for ptr in state.free.drain().flat_map(|(_, ptrs)| ptrs) {
                // SAFETY: every buffer is back (they hold the pool alive) and unused.
                let _ = unsafe { result::free_sync(ptr) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_waste_at_most_a_third() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 384);
        assert_eq!(size_class(384), 384);
        assert_eq!(size_class(385), 512);
        assert_eq!(size_class(3 << 20), 3 << 20);
        for bytes in (1..200_000).step_by(97) {
            let class = size_class(bytes);
            assert!(class >= bytes && (class <= 256 || 3 * bytes > 2 * class), "{bytes} → {class}");
        }
    }
}
