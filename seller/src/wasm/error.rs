//! What can go wrong loading or starting a module (as opposed to the
//! module's own fate, which is a [`JobOutcome`](super::JobOutcome)).

use std::io;
use std::path::PathBuf;

/// Why a module could not be loaded, or a job could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// the module is {len} bytes, more than the {max}-byte limit
    #[error("the module is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Size of the offered module.
        len: usize,
        /// The largest module accepted.
        max: usize,
    },
    /// not a WebAssembly binary (it starts with `{head}`); send a `.wasm` file
    #[error("not a WebAssembly binary (it starts with `{head}`); send a `.wasm` file")]
    NotWasm {
        /// Hex of the first bytes, at most 8.
        head: String,
    },
    /// this is a WebAssembly component; only core modules (WASI preview 1) run here
    #[error(
        "this is a WebAssembly component; only core modules (WASI preview 1) run here, \
         build for wasm32-wasi(p1) instead"
    )]
    ComponentNotSupported,
    /// the module is not valid WebAssembly: {reason}
    #[error("the module is not valid WebAssembly: {reason}")]
    Invalid {
        /// What the parser or compiler rejected.
        reason: String,
    },
    /// the module imports `{module}.{name}`; only `wasi_snapshot_preview1` functions are provided
    #[error(
        "the module imports `{module}.{name}`; only `wasi_snapshot_preview1` functions are provided"
    )]
    ForbiddenImport {
        /// The import's module name.
        module: String,
        /// The import's field name.
        name: String,
    },
    /// the module was announced as {claimed} but its bytes hash to {actual}
    #[error("the module was announced as {claimed} but its bytes hash to {actual}")]
    IdMismatch {
        /// The id the caller gave.
        claimed: String,
        /// The SHA-256 of the bytes.
        actual: String,
    },
    /// the module was loaded by a different `WasmRuntime` than the one asked to run it
    #[error("the module was loaded by a different `WasmRuntime` than the one asked to run it")]
    ForeignModule,
    /// a job asked for {requested} bytes of memory but this seller's pool allows {max}
    #[error("a job asked for {requested} bytes of memory but this seller's pool allows {max}")]
    MemoryLimitAboveCeiling {
        /// The job's memory limit.
        requested: u64,
        /// [`RuntimeConfig::max_memory_bytes`](super::RuntimeConfig::max_memory_bytes).
        max: u64,
    },
    /// all {max} sandbox slots are busy; retry when a job ends
    #[error("all {max} sandbox slots are busy; retry when a job ends")]
    PoolExhausted {
        /// [`RuntimeConfig::max_instances`](super::RuntimeConfig::max_instances).
        max: u32,
    },
    /// argument or environment string {value:?} contains a NUL byte, which WASI cannot pass
    #[error(
        "argument or environment string {value:?} contains a NUL byte, which WASI cannot pass"
    )]
    NulInJobString {
        /// The offending string.
        value: String,
    },
    /// environment variable name {name:?} is empty or contains `=`
    #[error("environment variable name {name:?} is empty or contains `=`")]
    BadEnvName {
        /// The offending name.
        name: String,
    },
    /// the scratch directory {path} cannot be opened: {reason}
    #[error("the scratch directory {path} cannot be opened: {reason}")]
    Scratch {
        /// The job's scratch directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// the compiled-module cache directory {path} is unusable: {source}
    #[error("the compiled-module cache directory {path} is unusable: {source}")]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// the compiled-module cache directory {path} is not private to this user (mode {mode:o}, owner uid {uid})
    #[error(
        "the compiled-module cache directory {path} is not private to this user \
         (mode {mode:o}, owner uid {uid}); point compiled_cache_dir at a directory only the seller owns"
    )]
    CacheDirNotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
    /// the wasmtime engine could not be configured: {reason}
    #[error("the wasmtime engine could not be configured: {reason}")]
    Engine {
        /// wasmtime's explanation.
        reason: String,
    },
    /// the module could not be instantiated: {reason}
    #[error("the module could not be instantiated: {reason}")]
    Instantiate {
        /// wasmtime's explanation.
        reason: String,
    },
    /// the module has no `_start` function; build it as a WASI command, not a reactor
    #[error("the module has no `_start` function; build it as a WASI command, not a reactor")]
    NoStart,
    /// a sandbox helper thread could not be started: {0}
    #[error("a sandbox helper thread could not be started: {0}")]
    Thread(#[source] io::Error),
}
