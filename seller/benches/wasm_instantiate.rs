//! Instantiation cost of `hello.wasm` (store + WASI context + instance, not
//! running it) with the pooling allocator and with wasmtime's on-demand
//! allocator, side by side. Prints both medians and their ratio; asserts
//! nothing about time.
//!
//! `cargo bench -p cpushare-seller --bench wasm_instantiate`

#[path = "../tests/guest_modules/mod.rs"]
mod guest_modules;

use cpushare_proto::id::ContentId;
use cpushare_seller::wasm::{
    InstanceAllocator, JobSpec, Limits, LoadedModule, RuntimeConfig, WasmRuntime,
};
use criterion::Criterion;
use std::path::Path;
use std::time::{Duration, Instant};

/// Samples taken for the printed medians.
const SAMPLES: usize = 5000;

fn runtime(dir: &Path, allocator: InstanceAllocator) -> (WasmRuntime, LoadedModule) {
    let rt = WasmRuntime::with_allocator(
        RuntimeConfig {
            compiled_cache_dir: dir.join("compiled"),
            max_instances: 16,
            max_memory_bytes: 256 << 20,
        },
        allocator,
    )
    .expect("runtime starts");
    let bytes = guest_modules::bytes("hello");
    let module = rt
        .load(&ContentId::of(&bytes).hex(), &bytes)
        .expect("hello loads");
    (rt, module)
}

fn median_of(rt: &WasmRuntime, module: &LoadedModule, job: &JobSpec, limits: Limits) -> Duration {
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            rt.probe_instantiate(module, job, limits)
                .expect("instantiates");
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch dir");
    let job = JobSpec {
        args: vec!["bench".into()],
        env: vec![("GREETING".into(), "hi".into())],
        stdin: vec![],
        scratch_dir: scratch,
        interrupt: None,
        raise: None,
    };
    let limits = Limits {
        memory_bytes: 64 << 20,
        cpu_time: Duration::from_secs(10),
        wall_time: Duration::from_secs(10),
    };
    let pooled = runtime(dir.path(), InstanceAllocator::Pooling);
    let on_demand = runtime(dir.path(), InstanceAllocator::OnDemand);

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("instantiate_hello");
    group.bench_function("pooling", |b| {
        b.iter(|| pooled.0.probe_instantiate(&pooled.1, &job, limits))
    });
    group.bench_function("on_demand", |b| {
        b.iter(|| on_demand.0.probe_instantiate(&on_demand.1, &job, limits))
    });
    group.finish();
    criterion.final_summary();

    let pool_median = median_of(&pooled.0, &pooled.1, &job, limits);
    let demand_median = median_of(&on_demand.0, &on_demand.1, &job, limits);
    println!("instantiate hello.wasm, median of {SAMPLES}:");
    println!("  pooling allocator:   {pool_median:?}");
    println!("  on-demand allocator: {demand_median:?}");
    println!(
        "  on-demand / pooling: {:.2}x",
        demand_median.as_secs_f64() / pool_median.as_secs_f64()
    );
}
