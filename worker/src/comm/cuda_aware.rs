//! Whether this process's MPI is CUDA-aware: reads and writes device memory, so that a
//! GPU's activations may go to it where they lie.

/// Whether this process's MPI reads and writes device memory, as
/// `MPIX_Query_cuda_support()` says where the library has it (Open MPI, MPICH 4 and
/// later); `false` where it does not. Looked up at run time, so that any MPI links.
pub fn mpi_is_cuda_aware() -> bool {
    // SAFETY: dlsym with RTLD_DEFAULT only searches the loaded objects' symbols.
    let query = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"MPIX_Query_cuda_support".as_ptr()) };
    if query.is_null() {
        return false;
    }
    // SAFETY: the symbol is MPI's `int MPIX_Query_cuda_support(void)`, callable once MPI
    // is initialised (every worker runs after it).
    let query: extern "C" fn() -> i32 = unsafe { std::mem::transmute(query) };
    query() == 1
}
