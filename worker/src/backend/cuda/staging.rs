//! Activations between this GPU and MPI: the CUDA backend's `send_out`, `landing` and
//! `adopt`. Where the MPI is CUDA-aware, MPI reads a stage's output where it lies and
//! writes arriving activations into device buffers; otherwise both go through pinned host
//! buffers, the outgoing copy on a stream of its own, so that the next micro-batch
//! computes while the last one's output leaves the device.
//!
//! The pool hands a buffer out again as soon as the compute stream has queued its last
//! use, which is safe only for work on that one stream. Buffers that MPI or the copy
//! stream touch therefore come from [`Dock`]s instead: a buffer goes back to its dock
//! with a fence (an event after its last use on the compute stream) and is lent again
//! only once the fence has passed.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys::{CUdeviceptr, CUevent_flags};
use cudarc::driver::{result, CudaContext, CudaEvent, CudaStream};

use super::pool::{size_class, Pool};
use crate::backend::error::BackendError;
use crate::comm::wire::{Landing, Memory, Outbound, Wire};

fn failed(problem: impl Into<String>) -> BackendError {
    BackendError::Failed { backend: "cuda", problem: problem.into() }
}

/// Makes a buffer of a size class: its address and the value that owns it.
type Allocate = Box<dyn Fn(usize) -> Result<(usize, Box<dyn Any + Send>), BackendError> + Send + Sync>;

/// A buffer of a dock.
struct Berth {
    class: usize,
    address: usize,
    /// Holds the memory; frees it when the dock drops.
    _owner: Box<dyn Any + Send>,
    /// Passed once the buffer's last use on the compute stream is done.
    fence: Option<CudaEvent>,
}

/// Buffers of one kind of memory, lent out and taken back with a fence.
pub struct Dock {
    memory: Memory,
    free: Mutex<Vec<Berth>>,
    allocate: Allocate,
}

impl Dock {
    fn new(memory: Memory, allocate: Allocate) -> Arc<Dock> {
        Arc::new(Dock { memory, free: Mutex::new(Vec::new()), allocate })
    }

    fn free(&self) -> MutexGuard<'_, Vec<Berth>> {
        self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A buffer of at least `bytes`: a free one of its size class whose fence has passed,
    /// or a new one.
    fn take(self: &Arc<Self>, bytes: usize) -> Result<Loan, BackendError> {
        let class = size_class(bytes);
        let reused = {
            let mut free = self.free();
            let ready = free.iter().position(|b| b.class == class && b.fence.as_ref().is_none_or(|f| f.is_complete()));
            ready.map(|i| free.swap_remove(i))
        };
        let berth = match reused {
            Some(berth) => berth,
            None => {
                let (address, owner) = (self.allocate)(class)?;
                Berth { class, address, _owner: owner, fence: None }
            }
        };
        Ok(Loan { berth: Some(berth), dock: self.clone() })
    }
}

/// A dock's buffer while it is out; back to the dock, with its fence, on drop.
struct Loan {
    berth: Option<Berth>,
    dock: Arc<Dock>,
}

impl Loan {
    fn address(&self) -> usize {
        self.berth.as_ref().map_or(0, |b| b.address)
    }

    /// Lends the buffer again only after `fence`.
    fn fence(&mut self, fence: CudaEvent) {
        if let Some(berth) = self.berth.as_mut() {
            berth.fence = Some(fence);
        }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(berth) = self.berth.take() {
            self.dock.free().push(berth);
        }
    }
}

/// Activations land in a dock's buffers.
struct DockLanding(Arc<Dock>);

impl Landing for DockLanding {
    fn take(&self, len: usize) -> Result<Wire, BackendError> {
        let loan = self.0.take(len * 4)?;
        // SAFETY: the loan's buffer holds its size class, at least `len` f32 values, and is
        // neither lent again nor freed while the loan lives inside the wire.
        Ok(unsafe { Wire::lent(loan.address(), len, self.0.memory, Box::new(loan)) })
    }
}

/// The staging of one GPU's activations.
pub struct Staging {
    /// Whether MPI is handed device memory (a CUDA-aware MPI) or pinned host memory.
    device_memory: AtomicBool,
    /// Copies off the device, beside the compute stream.
    copies: Arc<CudaStream>,
    pinned: Arc<Dock>,
    device: Arc<Dock>,
}

impl Staging {
    pub fn new(context: &Arc<CudaContext>, pool: &Arc<Pool>) -> Result<Staging, BackendError> {
        let copies = context.new_stream().map_err(|e| failed(format!("creating the copy stream: {e}")))?;
        let host_context = context.clone();
        let pinned = Dock::new(
            Memory::Host,
            Box::new(move |bytes| {
                // SAFETY: the memory is written (by a copy or MPI) before anything reads it.
                let mut slice = unsafe { host_context.alloc_pinned_with_flags::<u8>(bytes, 0) }
                    .map_err(|e| failed(format!("allocating {bytes} bytes of pinned host memory: {e}")))?;
                let address = slice.as_mut_ptr().map_err(|e| failed(e.to_string()))? as usize;
                Ok((address, Box::new(slice) as Box<dyn Any + Send>))
            }),
        );
        let device_pool = pool.clone();
        let device = Dock::new(
            Memory::Device,
            Box::new(move |bytes| {
                let buffer = device_pool.take_exact(bytes)?;
                Ok((buffer.ptr() as usize, Box::new(buffer) as Box<dyn Any + Send>))
            }),
        );
        Ok(Staging { device_memory: AtomicBool::new(false), copies, pinned, device })
    }

    pub fn set_device_memory(&self, on: bool) {
        self.device_memory.store(on, Ordering::Relaxed);
    }

    fn memory(&self) -> Memory {
        if self.device_memory.load(Ordering::Relaxed) {
            Memory::Device
        } else {
            Memory::Host
        }
    }

    pub fn landing(&self) -> Arc<dyn Landing> {
        Arc::new(DockLanding(match self.memory() {
            Memory::Device => self.device.clone(),
            Memory::Host => self.pinned.clone(),
        }))
    }

    /// The `rows × cols` f32 values at `ptr`, which `keep` owns, on their way to MPI once
    /// the work queued on `compute` has written them.
    pub fn send_out(
        &self,
        compute: &CudaStream,
        ptr: CUdeviceptr,
        rows: usize,
        cols: usize,
        keep: impl Any + Send,
    ) -> Result<Outbound, BackendError> {
        let len = rows * cols;
        let written = compute
            .record_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .map_err(|e| failed(format!("recording an event: {e}")))?;
        if self.memory() == Memory::Device {
            return Ok(Outbound::later(rows, cols, move || {
                written.synchronize().map_err(|e| failed(format!("waiting for a stage's output: {e}")))?;
                // SAFETY: `keep` owns the `len` values at `ptr`, which nothing queues work on
                // any more (the stage handed them over), and their writes are done.
                Ok(unsafe { Wire::lent(ptr as usize, len, Memory::Device, Box::new(keep)) })
            }));
        }
        let loan = self.pinned.take(len * 4)?;
        self.copies.wait(&written).map_err(|e| failed(format!("ordering the copy stream: {e}")))?;
        // SAFETY: the loan holds at least `len` f32 values of pinned host memory, lent to
        // this copy alone until it is done.
        let host = unsafe { std::slice::from_raw_parts_mut(loan.address() as *mut f32, len) };
        // SAFETY: `ptr` holds `len` values, kept alive by `keep` until the copy is done.
        unsafe { result::memcpy_dtoh_async(host, ptr, self.copies.cu_stream()) }
            .map_err(|e| failed(format!("copying activations off the device: {e}")))?;
        let copied = self
            .copies
            .record_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .map_err(|e| failed(format!("recording an event: {e}")))?;
        Ok(Outbound::later(rows, cols, move || {
            copied.synchronize().map_err(|e| failed(format!("copying activations off the device: {e}")))?;
            drop(keep);
            // SAFETY: the copy into the loan's buffer is done and nothing else uses it.
            Ok(unsafe { Wire::lent(loan.address(), len, Memory::Host, Box::new(loan)) })
        }))
    }

    /// Copies `len` received values from a wire of [`Staging::landing`] to `dst` on
    /// `compute`; the wire's buffer is lent again once the copy is done.
    pub fn adopt(&self, compute: &CudaStream, wire: Wire, dst: CUdeviceptr, len: usize) -> Result<(), BackendError> {
        if wire.len() != len {
            return Err(failed(format!("{} values received for {len}", wire.len())));
        }
        let memory = wire.memory();
        let mut loan: Loan =
            wire.into_owner().map_err(|_| failed("activations landed in memory this GPU did not lend"))?;
        match memory {
            Memory::Host => {
                // SAFETY: the loan holds `len` received f32 values of pinned host memory.
                let host = unsafe { std::slice::from_raw_parts(loan.address() as *const f32, len) };
                // SAFETY: `dst` holds `len` values; the loan's buffer is fenced below.
                unsafe { result::memcpy_htod_async(dst, host, compute.cu_stream()) }
            }
            // SAFETY: both hold `len` values; the loan's buffer is fenced below.
            Memory::Device => unsafe {
                result::memcpy_dtod_async(dst, loan.address() as CUdeviceptr, len * 4, compute.cu_stream())
            },
        }
        .map_err(|e| failed(format!("taking in received activations: {e}")))?;
        loan.fence(compute.record_event(None).map_err(|e| failed(format!("recording an event: {e}")))?);
        Ok(())
    }

    /// Waits for the copies in flight.
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.copies.synchronize().map_err(|e| failed(format!("synchronising the copy stream: {e}")))
    }
}
