//! The engine, its module cache and the run of one job: a fresh store with
//! its own limits, WASI context and clock for every job, on the caller's
//! thread, with output forwarded live by a helper thread.

use super::artifact::ArtifactDir;
use super::clock::{Expired, JobClock};
use super::limiter::JobLimiter;
use super::module_lru::ModuleLru;
use super::output::{self, ChannelStream, Chunk, OutputSink, StdStream, QUEUE_CHUNKS};
use super::ticker::EpochTicker;
use super::validate::{check_module, WASI_P1_MODULE};
use super::{JobOutcome, JobSpec, Limits, WasmError};
use bytes::Bytes;
use cpushare_proto::id::ContentId;
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolConcurrencyLimitError, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// Bytes of compiled modules kept in memory: dozens of typical modules (a
/// few hundred KiB to a few MiB of machine code each), or two big ones.
const MODULE_BYTES_IN_MEMORY: u64 = 512 << 20;

/// Wasm page size; pool slots are whole pages.
const WASM_PAGE: u64 = 65536;

/// Guest names for the scratch directory: absolute, and the working
/// directory so relative paths resolve into it.
const SCRATCH_GUEST_PATHS: [&str; 2] = ["/scratch", "."];

/// How the seller's wasm sandbox is sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Private directory for this seller's compiled modules.
    pub compiled_cache_dir: PathBuf,
    /// Jobs that may run at once (pool slots).
    pub max_instances: u32,
    /// Largest memory limit any one job may be given, in bytes.
    pub max_memory_bytes: u64,
}

/// Which wasmtime instance allocator backs the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceAllocator {
    /// Slots reserved up front and reused: fast instantiation, bounded count.
    #[default]
    Pooling,
    /// mmap per instance (wasmtime's default); kept to measure the pool against.
    OnDemand,
}

/// Counters of how modules were obtained, for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Modules compiled from wasm.
    pub compiled: u64,
    /// Modules loaded from this seller's compiled-artifact directory.
    pub loaded_from_disk: u64,
    /// Loads answered from the in-memory cache.
    pub memory_hits: u64,
}

/// A module ready to run: validated, compiled and linked against WASI.
#[derive(Clone)]
pub struct LoadedModule {
    id_hex: String,
    name: String,
    pre: InstancePre<JobState>,
}

impl LoadedModule {
    /// The module's content id (64 hex digits).
    pub fn id_hex(&self) -> &str {
        &self.id_hex
    }

    /// The name the guest sees as `argv[0]` (the short content id).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModule")
            .field("id", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why the epoch callback stopped a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Budget(Expired),
    Interrupted,
}

/// Everything a store holds for one job.
struct JobState {
    wasi: WasiP1Ctx,
    limiter: JobLimiter,
    clock: JobClock,
    interrupt: Option<Arc<AtomicBool>>,
    stopped: Option<Stop>,
}

impl JobState {
    /// Why the guest must stop now, if it must.
    fn must_stop(&self) -> Option<Stop> {
        let interrupted = self
            .interrupt
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed));
        if interrupted {
            Some(Stop::Interrupted)
        } else {
            self.clock.check().map(Stop::Budget)
        }
    }
}

/// The seller's WebAssembly sandbox: one engine, shared by all jobs.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<JobState>,
    provided: HashSet<String>,
    artifacts: ArtifactDir,
    modules: Mutex<ModuleLru<Module>>,
    compiled: AtomicU64,
    loaded_from_disk: AtomicU64,
    memory_hits: AtomicU64,
    max_instances: u32,
    max_memory_bytes: u64,
    _ticker: EpochTicker,
}

impl fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("max_instances", &self.max_instances)
            .field("max_memory_bytes", &self.max_memory_bytes)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl WasmRuntime {
    /// A runtime on the pooling allocator, sized by `cfg`.
    pub fn new(cfg: RuntimeConfig) -> Result<WasmRuntime, WasmError> {
        WasmRuntime::with_allocator(cfg, InstanceAllocator::Pooling)
    }

    /// A runtime on the chosen instance allocator (benchmarks compare them).
    pub fn with_allocator(
        cfg: RuntimeConfig,
        allocator: InstanceAllocator,
    ) -> Result<WasmRuntime, WasmError> {
        if cfg.max_instances == 0 {
            return Err(WasmError::Engine {
                reason: "max_instances must be at least 1".into(),
            });
        }
        let slot_bytes = cfg.max_memory_bytes.div_ceil(WASM_PAGE) * WASM_PAGE;
        let mut config = Config::new();
        config.epoch_interruption(true);
        if allocator == InstanceAllocator::Pooling {
            let mut pool = PoolingAllocationConfig::new();
            // Every pool sized to the instance count: the defaults (1000
            // stacks, component instances...) cost a sandbox that runs one
            // guest milliseconds of mmap/mprotect at start and munmap at exit.
            // A store that uses exceptions or GC types also takes a GC
            // heap, which the pooling allocator carves from the same
            // memory pool as linear memories: two slots per instance.
            pool.total_core_instances(cfg.max_instances)
                .total_memories(cfg.max_instances.saturating_mul(2))
                .total_gc_heaps(cfg.max_instances)
                .total_tables(cfg.max_instances)
                .total_stacks(cfg.max_instances)
                .total_component_instances(cfg.max_instances)
                .max_memory_size(usize::try_from(slot_bytes).unwrap_or(usize::MAX));
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |s: &mut JobState| &mut s.wasi)
            .map_err(engine_error)?;
        let provided = provided_imports(&engine, &linker);
        let artifacts = ArtifactDir::open(&cfg.compiled_cache_dir, &engine)?;
        let ticker = EpochTicker::start(engine.clone()).map_err(WasmError::Thread)?;
        Ok(WasmRuntime {
            engine,
            linker,
            provided,
            artifacts,
            modules: Mutex::new(ModuleLru::new(MODULE_BYTES_IN_MEMORY)),
            compiled: AtomicU64::new(0),
            loaded_from_disk: AtomicU64::new(0),
            memory_hits: AtomicU64::new(0),
            max_instances: cfg.max_instances,
            max_memory_bytes: cfg.max_memory_bytes,
            _ticker: ticker,
        })
    }

    /// How modules were obtained so far.
    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded_from_disk: self.loaded_from_disk.load(Ordering::Relaxed),
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// Validates `wasm` (which must hash to `id_hex`) and makes it ready to
    /// run, reusing a compiled form from memory or from this seller's disk.
    pub fn load(&self, id_hex: &str, wasm: &[u8]) -> Result<LoadedModule, WasmError> {
        self.load_from(id_hex, wasm)
    }

    /// Largest guest memory this runtime's pool slots hold, bytes.
    pub fn max_memory_bytes(&self) -> u64 {
        self.max_memory_bytes
    }

    /// The machine code of `module` as this engine serializes it, for a
    /// sandbox child to load with [`WasmRuntime::load_trusted`].
    pub fn compiled_bytes(&self, module: &LoadedModule) -> Result<Vec<u8>, WasmError> {
        module.pre.module().serialize().map_err(engine_error)
    }

    /// Like [`WasmRuntime::load`], but the machine code comes from
    /// `compiled` instead of this process's compiler or disk, and the
    /// module's bytes are not needed: a confined sandbox child gets the
    /// code from the daemon that started it, which verified and validated
    /// the module when it compiled it.
    ///
    /// # Safety
    ///
    /// `compiled` must be [`WasmRuntime::compiled_bytes`] output of a
    /// trusted process (never bytes a buyer or a sandbox could choose):
    /// wasmtime maps it as executable code after checking only its header.
    pub unsafe fn load_trusted(
        &self,
        id_hex: &str,
        compiled: &[u8],
    ) -> Result<LoadedModule, WasmError> {
        let id = hex::decode(id_hex)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(ContentId)
            .ok_or_else(|| WasmError::Invalid {
                reason: format!("`{id_hex}` is not a content id"),
            })?;
        // SAFETY: `load_trusted`'s contract: these bytes are the daemon's
        // own `Module::serialize` output; wasmtime still rejects a header
        // from an incompatible engine.
        let module = unsafe { Module::deserialize(&self.engine, compiled) }.map_err(|e| {
            WasmError::Invalid {
                reason: format!("compiled module from the daemon: {e:#}"),
            }
        })?;
        self.loaded_from_disk.fetch_add(1, Ordering::Relaxed);
        self.ready(id, module)
    }

    fn load_from(&self, id_hex: &str, wasm: &[u8]) -> Result<LoadedModule, WasmError> {
        // Size first, so an oversized input is not even hashed.
        if wasm.len() > super::MAX_MODULE_BYTES {
            return Err(WasmError::TooLarge {
                len: wasm.len(),
                max: super::MAX_MODULE_BYTES,
            });
        }
        let id = ContentId::of(wasm);
        let actual = id.hex();
        if !id_hex.eq_ignore_ascii_case(&actual) {
            return Err(WasmError::IdMismatch {
                claimed: id_hex.to_string(),
                actual,
            });
        }
        let module = self.module_for(&actual, wasm)?;
        self.ready(id, module)
    }

    /// Checks `module` has a WASI `_start` and links it.
    fn ready(&self, id: ContentId, module: Module) -> Result<LoadedModule, WasmError> {
        let has_start = module
            .get_export("_start")
            .and_then(|e| e.func().cloned())
            .is_some_and(|f| f.params().len() == 0 && f.results().len() == 0);
        if !has_start {
            return Err(WasmError::NoStart);
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| WasmError::Invalid {
                reason: format!("{e:#}"),
            })?;
        Ok(LoadedModule {
            id_hex: id.hex(),
            name: id.short(),
            pre,
        })
    }

    /// Runs `module`'s `_start` once with `job`'s inputs under `limits`,
    /// streaming its output to `out` as it is written. Blocks until the
    /// guest ends and all its output has been delivered.
    pub fn run(
        &self,
        module: &LoadedModule,
        job: JobSpec,
        limits: Limits,
        out: &dyn OutputSink,
    ) -> Result<JobOutcome, WasmError> {
        self.check_job(module, &job, &limits)?;
        let (tx, rx) = mpsc::sync_channel::<Chunk>(QUEUE_CHUNKS);
        thread::scope(|scope| {
            let forwarder = thread::Builder::new()
                .name("wasm-output".into())
                .spawn_scoped(scope, move || output::forward(rx, out))
                .map_err(WasmError::Thread)?;
            // `execute` drops the store, and with it every sender, before it
            // returns; the forwarder then ends after the last chunk.
            let outcome = self.execute(module, job, limits, tx);
            if let Err(panic) = forwarder.join() {
                std::panic::resume_unwind(panic);
            }
            outcome
        })
    }

    /// Instantiates `module` with a full WASI context for `job` and drops it
    /// without running anything: the fixed cost every job pays.
    pub fn probe_instantiate(
        &self,
        module: &LoadedModule,
        job: &JobSpec,
        limits: Limits,
    ) -> Result<(), WasmError> {
        self.check_job(module, job, &limits)?;
        let (tx, _rx) = mpsc::sync_channel::<Chunk>(QUEUE_CHUNKS);
        let stdin = Bytes::copy_from_slice(&job.stdin);
        let mut store = self.new_store(module, job, stdin, limits, tx)?;
        match module.pre.instantiate(&mut store) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.instantiate_error(e)),
        }
    }

    fn module_for(&self, id_hex: &str, wasm: &[u8]) -> Result<Module, WasmError> {
        if let Some(module) = self.lru().get(id_hex) {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(module);
        }
        check_module(wasm, |name| self.provided.contains(name))?;
        let module = match self.artifacts.load(&self.engine, id_hex) {
            Some(module) => {
                self.loaded_from_disk.fetch_add(1, Ordering::Relaxed);
                module
            }
            None => {
                let module = Module::from_binary(&self.engine, wasm);
                // Compiling a big module takes gigabytes that the allocator
                // would otherwise keep (the daemon stayed at 1.67 GB
                // resident after a 69 MB module, 0.68 GB with this); give
                // the free part back.
                // SAFETY: malloc_trim only releases free heap memory; it
                // has no preconditions.
                unsafe { libc::malloc_trim(0) };
                let module = module.map_err(|e| WasmError::Invalid {
                    reason: format!("{e:#}"),
                })?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.artifacts.store(id_hex, &module) {
                    tracing::warn!(id = id_hex, error = %e, "could not save compiled module");
                }
                module
            }
        };
        let code = module.image_range();
        let bytes = (code.end as usize).saturating_sub(code.start as usize) as u64;
        self.lru().insert(id_hex.to_string(), module.clone(), bytes);
        Ok(module)
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, ModuleLru<Module>> {
        // The map stays consistent even if a holder panicked mid-operation.
        self.modules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_job(
        &self,
        module: &LoadedModule,
        job: &JobSpec,
        limits: &Limits,
    ) -> Result<(), WasmError> {
        if !Engine::same(module.pre.module().engine(), &self.engine) {
            return Err(WasmError::ForeignModule);
        }
        if limits.memory_bytes > self.max_memory_bytes {
            return Err(WasmError::MemoryLimitAboveCeiling {
                requested: limits.memory_bytes,
                max: self.max_memory_bytes,
            });
        }
        let strings = job
            .args
            .iter()
            .chain(job.env.iter().flat_map(|(k, v)| [k, v]));
        if let Some(bad) = strings.into_iter().find(|s| s.contains('\0')) {
            return Err(WasmError::NulInJobString { value: bad.clone() });
        }
        if let Some((name, _)) = job
            .env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains('='))
        {
            return Err(WasmError::BadEnvName { name: name.clone() });
        }
        Ok(())
    }

    fn execute(
        &self,
        module: &LoadedModule,
        mut job: JobSpec,
        limits: Limits,
        tx: mpsc::SyncSender<Chunk>,
    ) -> Result<JobOutcome, WasmError> {
        let stdin = Bytes::from(std::mem::take(&mut job.stdin));
        let mut store = self.new_store(module, &job, stdin, limits, tx)?;
        let instance = match module.pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => {
                let state = store.data();
                if state.limiter.memory_denied() {
                    return Ok(JobOutcome::MemoryExceeded {
                        limit: state.limiter.limit(),
                    });
                }
                if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
                    return Ok(JobOutcome::Trapped {
                        message: trap.to_string(),
                    });
                }
                return Err(self.instantiate_error(e));
            }
        };
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|_| WasmError::NoStart)?;
        let result = start.call(&mut store, ());
        Ok(outcome_of(store.data(), result))
    }

    fn new_store(
        &self,
        module: &LoadedModule,
        job: &JobSpec,
        stdin: Bytes,
        limits: Limits,
        tx: mpsc::SyncSender<Chunk>,
    ) -> Result<Store<JobState>, WasmError> {
        let mut wasi = WasiCtxBuilder::new();
        // Must come before the preopens: each preopen captures it. The caller
        // is a dedicated blocking thread, so host calls may block it.
        wasi.allow_blocking_current_thread(true)
            .arg(&module.name)
            .args(&job.args)
            .envs(&job.env)
            .stdin(MemoryInputPipe::new(stdin))
            .stdout(ChannelStream::new(StdStream::Stdout, tx.clone()))
            .stderr(ChannelStream::new(StdStream::Stderr, tx));
        for guest_path in SCRATCH_GUEST_PATHS {
            wasi.preopened_dir(&job.scratch_dir, guest_path, FsPerms::ReadWrite)
                .map_err(|e| WasmError::Scratch {
                    path: job.scratch_dir.clone(),
                    reason: format!("{e:#}"),
                })?;
        }
        // The buyer's shares, staged by the daemon inside scratch.
        let shares = super::shares::find(&job.scratch_dir).map_err(|e| WasmError::Scratch {
            path: job.scratch_dir.clone(),
            reason: format!("cannot list its shares: {e}"),
        })?;
        for (host, guest, writable) in shares {
            let perms = if writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&host, &guest, perms)
                .map_err(|e| WasmError::Scratch {
                    path: host.clone(),
                    reason: format!("cannot open the share for {guest}: {e:#}"),
                })?;
        }
        let state = JobState {
            wasi: wasi.build_p1(),
            limiter: JobLimiter::new(limits.memory_bytes),
            clock: JobClock::start(limits.cpu_time, limits.wall_time).raised_by(job.raise.clone()),
            interrupt: job.interrupt.clone(),
            stopped: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        // The epoch ticks for every job at once; each store then checks its
        // own budgets and only its own guest is interrupted.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            match state.must_stop() {
                None => Ok(UpdateDeadline::Continue(1)),
                Some(stop) => {
                    state.stopped = Some(stop);
                    Ok(UpdateDeadline::Interrupt)
                }
            }
        });
        Ok(store)
    }

    fn instantiate_error(&self, e: wasmtime::Error) -> WasmError {
        let exhausted = e.is::<PoolConcurrencyLimitError>()
            || e.chain().any(|c| c.is::<PoolConcurrencyLimitError>());
        if exhausted {
            WasmError::PoolExhausted {
                max: self.max_instances,
            }
        } else {
            WasmError::Instantiate {
                reason: format!("{e:#}"),
            }
        }
    }
}

/// Names the guest's fate from how `_start` returned.
fn outcome_of(state: &JobState, result: wasmtime::Result<()>) -> JobOutcome {
    let err = match result {
        Ok(()) => return JobOutcome::Exited(0),
        Err(err) => err,
    };
    match state.stopped {
        Some(Stop::Budget(Expired::Cpu)) => return JobOutcome::CpuTimeExceeded,
        Some(Stop::Budget(Expired::Wall)) => return JobOutcome::WallTimeExceeded,
        Some(Stop::Interrupted) => return JobOutcome::Interrupted,
        None => {}
    }
    let memory_exceeded = JobOutcome::MemoryExceeded {
        limit: state.limiter.limit(),
    };
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        if exit.0 != 0 && state.limiter.memory_denied() {
            return memory_exceeded;
        }
        return JobOutcome::Exited(exit.0);
    }
    if state.limiter.memory_denied() {
        return memory_exceeded;
    }
    JobOutcome::Trapped {
        message: format!("{err:?}"),
    }
}

/// The `wasi_snapshot_preview1` function names `linker` defines.
fn provided_imports(engine: &Engine, linker: &Linker<JobState>) -> HashSet<String> {
    let state = JobState {
        wasi: WasiCtxBuilder::new().build_p1(),
        limiter: JobLimiter::new(0),
        clock: JobClock::start(Default::default(), Default::default()),
        interrupt: None,
        stopped: None,
    };
    let mut store = Store::new(engine, state);
    linker
        .iter(&mut store)
        .filter(|(module, _, _)| *module == WASI_P1_MODULE)
        .map(|(_, name, _)| name.to_string())
        .collect()
}

fn engine_error(e: wasmtime::Error) -> WasmError {
    WasmError::Engine {
        reason: format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<WasmRuntime>();
        shared::<LoadedModule>();
    }

    #[test]
    fn zero_instances_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RuntimeConfig {
            compiled_cache_dir: dir.path().into(),
            max_instances: 0,
            max_memory_bytes: 1 << 20,
        };
        assert!(matches!(
            WasmRuntime::new(cfg),
            Err(WasmError::Engine { .. })
        ));
    }

    #[test]
    fn linker_provides_the_wasi_p1_functions() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RuntimeConfig {
            compiled_cache_dir: dir.path().into(),
            max_instances: 1,
            max_memory_bytes: 1 << 20,
        };
        let rt = WasmRuntime::new(cfg).unwrap();
        for name in ["fd_write", "proc_exit", "path_open", "args_get"] {
            assert!(rt.provided.contains(name), "{name} missing");
        }
        assert!(!rt.provided.contains("not_a_wasi_call"));
    }
}
