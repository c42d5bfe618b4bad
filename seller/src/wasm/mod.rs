//! The WebAssembly sandbox: runs a buyer's WASI preview 1 command module in
//! wasmtime with its memory, CPU time and wall time bounded, its output
//! streamed live, and only its own scratch directory visible.
//!
//! A lease goes through it as: [`WasmRuntime::load`] (validate, then compile
//! or reuse the seller's own compiled artifact) and [`WasmRuntime::run`]
//! (fresh store, WASI context, `_start`, [`JobOutcome`]). The API blocks; the
//! seller's async shell calls it from `spawn_blocking`.

mod artifact;
mod clock;
mod error;
mod job;
mod limiter;
pub(crate) mod module_lru;
mod output;
mod runtime;
pub mod shares;
mod thread_hook;
mod ticker;
mod validate;

pub use error::WasmError;
pub use job::{BudgetRaise, JobOutcome, JobSpec, Limits};
pub use output::{OutputSink, StdStream};
pub use runtime::{InstanceAllocator, LoadedModule, RuntimeConfig, RuntimeStats, WasmRuntime};
pub use thread_hook::set_helper_thread_hook;
pub use validate::MAX_MODULE_BYTES;
