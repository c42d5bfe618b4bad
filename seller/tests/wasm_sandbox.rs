//! The wasm sandbox with real wasmtime and real WASI modules compiled from
//! C (`guest-images/wasm/`): outcomes, limits, confinement, live output,
//! concurrency and the compiled-module cache.

mod guest_modules;
mod support;

use cpushare_proto::id::ContentId;
use cpushare_seller::wasm::{
    JobOutcome, JobSpec, Limits, LoadedModule, OutputSink, StdStream, WasmError, WasmRuntime,
    MAX_MODULE_BYTES,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::MIB;

/// Every write the guest made, in arrival order, with its arrival time.
#[derive(Default)]
struct Recorder {
    writes: Mutex<Vec<(StdStream, Vec<u8>, Instant)>>,
    first_write: Mutex<Option<mpsc::Sender<()>>>,
}

impl OutputSink for Recorder {
    fn write(&self, stream: StdStream, data: &[u8]) {
        self.writes
            .lock()
            .unwrap()
            .push((stream, data.to_vec(), Instant::now()));
        if let Some(tx) = self.first_write.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

impl Recorder {
    fn text(&self, which: StdStream) -> String {
        let writes = self.writes.lock().unwrap();
        let bytes: Vec<u8> = writes
            .iter()
            .filter(|(s, _, _)| *s == which)
            .flat_map(|(_, d, _)| d.clone())
            .collect();
        String::from_utf8(bytes).expect("guest output is UTF-8")
    }

    /// Writes merged into runs of one stream (WASI p1 may split one guest
    /// `writev` into several host writes), each with its first arrival time.
    fn runs(&self) -> Vec<(StdStream, String, Instant)> {
        let mut runs: Vec<(StdStream, String, Instant)> = vec![];
        for (stream, data, at) in self.writes.lock().unwrap().iter() {
            let text = String::from_utf8(data.clone()).expect("guest output is UTF-8");
            match runs.last_mut() {
                Some((s, t, _)) if s == stream => t.push_str(&text),
                _ => runs.push((*stream, text, *at)),
            }
        }
        runs
    }

    fn stdout(&self) -> String {
        self.text(StdStream::Stdout)
    }
}

fn runtime_in(dir: &Path, max_instances: u32) -> WasmRuntime {
    support::wasm_runtime(dir, max_instances, 256 * MIB)
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 64 * MIB,
        cpu_time: Duration::from_secs(20),
        wall_time: Duration::from_secs(60),
    }
}

fn load(rt: &WasmRuntime, name: &str) -> LoadedModule {
    let bytes = guest_modules::bytes(name);
    rt.load(&ContentId::of(&bytes).hex(), &bytes)
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn load_wat(rt: &WasmRuntime, text: &str) -> Result<LoadedModule, WasmError> {
    let bytes = wat::parse_str(text).expect("test WAT parses");
    rt.load(&ContentId::of(&bytes).hex(), &bytes)
}

fn job(scratch: &Path, args: &[&str]) -> JobSpec {
    JobSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        stdin: vec![],
        scratch_dir: scratch.to_path_buf(),
        interrupt: None,
        raise: None,
    }
}

/// A runtime, a scratch dir and a helper to run one module in them.
struct Fixture {
    dir: tempfile::TempDir,
    rt: WasmRuntime,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("scratch")).unwrap();
        let rt = runtime_in(dir.path(), 16);
        Fixture { dir, rt }
    }

    fn scratch(&self) -> std::path::PathBuf {
        self.dir.path().join("scratch")
    }

    fn run(&self, name: &str, job: JobSpec, limits: Limits) -> (JobOutcome, Recorder) {
        let module = load(&self.rt, name);
        let sink = Recorder::default();
        let outcome = self
            .rt
            .run(&module, job, limits, &sink)
            .expect("job starts");
        (outcome, sink)
    }
}

#[test]
fn hello_sees_its_args_and_only_the_given_environment() {
    let f = Fixture::new();
    let mut spec = job(&f.scratch(), &["first", "second arg"]);
    spec.env = vec![
        ("GREETING".into(), "bonjour".into()),
        ("LEASE".into(), "K-12345678".into()),
    ];
    let (outcome, out) = f.run("hello", spec, limits());
    assert_eq!(outcome, JobOutcome::Exited(0));
    let text = out.stdout();
    let id = ContentId::of(&guest_modules::bytes("hello"));
    let expected = format!(
        "hello from wasm\narg[0]={}\narg[1]=first\narg[2]=second arg\nGREETING=bonjour\n\
         env:GREETING=bonjour\nenv:LEASE=K-12345678\n",
        id.short()
    );
    assert_eq!(text, expected, "host environment must not leak in");
}

#[test]
fn exit_status_is_reported() {
    let f = Fixture::new();
    let (outcome, _) = f.run("exitcode", job(&f.scratch(), &["42"]), limits());
    assert_eq!(outcome, JobOutcome::Exited(42));
    let (outcome, _) = f.run("exitcode", job(&f.scratch(), &["0"]), limits());
    assert_eq!(outcome, JobOutcome::Exited(0));
}

#[test]
fn proc_exit_and_falling_off_start_are_exits() {
    let f = Fixture::new();
    let exits = load_wat(
        &f.rt,
        r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 7))))"#,
    )
    .unwrap();
    let returns = load_wat(
        &f.rt,
        r#"(module (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .unwrap();
    let sink = Recorder::default();
    let spec = job(&f.scratch(), &[]);
    assert_eq!(
        f.rt.run(&exits, spec.clone(), limits(), &sink).unwrap(),
        JobOutcome::Exited(7)
    );
    assert_eq!(
        f.rt.run(&returns, spec, limits(), &sink).unwrap(),
        JobOutcome::Exited(0)
    );
}

#[test]
fn cat_copies_stdin_to_stdout() {
    let f = Fixture::new();
    let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut spec = job(&f.scratch(), &[]);
    spec.stdin = input.clone();
    let (outcome, out) = f.run("cat", spec, limits());
    assert_eq!(outcome, JobOutcome::Exited(0));
    assert_eq!(out.stdout().into_bytes(), input);
}

#[test]
fn stdout_and_stderr_arrive_interleaved_in_write_order() {
    let f = Fixture::new();
    let (outcome, out) = f.run("stderr", job(&f.scratch(), &[]), limits());
    assert_eq!(outcome, JobOutcome::Exited(0));
    let writes: Vec<(StdStream, String)> = out.runs().into_iter().map(|(s, t, _)| (s, t)).collect();
    let mut expected = vec![];
    for i in 0..3 {
        expected.push((StdStream::Stdout, format!("out {i}\n")));
        expected.push((StdStream::Stderr, format!("err {i}\n")));
    }
    assert_eq!(writes, expected);
}

#[test]
fn trap_is_reported_as_a_trap() {
    let f = Fixture::new();
    let (outcome, out) = f.run("trap", job(&f.scratch(), &[]), limits());
    match outcome {
        JobOutcome::Trapped { message } => {
            assert!(message.contains("unreachable"), "message: {message}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(out.stdout(), "about to trap\n");
}

/// C++ built with `-fwasm-exceptions` (as YoWASP's Yosys is) throws with
/// the exception-handling proposal, which wasmtime enables by default.
/// Its exception objects live in a GC heap that the pooling allocator
/// takes from the memory pool, so this runs in a one-slot runtime, as a
/// sandbox child's is.
#[test]
fn wasm_exceptions_are_thrown_and_caught_in_a_one_slot_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_in(dir.path(), 1);
    let module = load_wat(
        &rt,
        r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (tag $oops (param i32))
            (func $deep (param i32)
                (if (i32.eqz (local.get 0)) (then (throw $oops (i32.const 42))))
                (call $deep (i32.sub (local.get 0) (i32.const 1))))
            (func (export "_start")
                (block $caught (result i32)
                    (try_table (catch $oops $caught)
                        (call $deep (i32.const 100)))
                    (i32.const 0))
                (call $exit)))"#,
    )
    .unwrap();
    for _ in 0..2 {
        let outcome = rt
            .run(
                &module,
                job(dir.path(), &[]),
                limits(),
                &Recorder::default(),
            )
            .unwrap();
        assert_eq!(outcome, JobOutcome::Exited(42));
    }
    // An exception nobody catches ends the job as a trap.
    let uncaught = load_wat(
        &rt,
        r#"(module (tag $t) (memory (export "memory") 1)
            (func (export "_start") (throw $t)))"#,
    )
    .unwrap();
    let outcome = rt
        .run(
            &uncaught,
            job(dir.path(), &[]),
            limits(),
            &Recorder::default(),
        )
        .unwrap();
    assert!(matches!(outcome, JobOutcome::Trapped { .. }), "{outcome:?}");
}

#[test]
fn spinning_guest_is_stopped_by_its_cpu_limit_and_its_output_arrives_live() {
    let f = Fixture::new();
    let cpu = Duration::from_millis(1500);
    let limits = Limits {
        cpu_time: cpu,
        wall_time: Duration::from_secs(120),
        ..limits()
    };
    let (outcome, out) = f.run("spin", job(&f.scratch(), &[]), limits);
    let ended = Instant::now();
    assert_eq!(outcome, JobOutcome::CpuTimeExceeded);
    let runs = out.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].1, "spinning\n");
    // Buffered-until-exit output would arrive microseconds before the end;
    // streamed output arrives while the guest still has its CPU budget left.
    let lead = ended - runs[0].2;
    assert!(
        lead >= cpu / 2,
        "first write reached the sink only {lead:?} before the job ended"
    );
}

#[test]
fn spinning_guest_is_stopped_by_its_wall_clock_limit() {
    let f = Fixture::new();
    let limits = Limits {
        cpu_time: Duration::from_secs(120),
        wall_time: Duration::from_millis(300),
        ..limits()
    };
    let started = Instant::now();
    let (outcome, _) = f.run("spin", job(&f.scratch(), &[]), limits);
    assert_eq!(outcome, JobOutcome::WallTimeExceeded);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn setting_the_interrupt_flag_stops_a_running_guest() {
    let f = Fixture::new();
    let spin = load(&f.rt, "spin");
    let flag = Arc::new(AtomicBool::new(false));
    let mut spec = job(&f.scratch(), &[]);
    spec.interrupt = Some(flag.clone());
    let sink = Recorder::default();
    let (tx, rx) = mpsc::channel();
    *sink.first_write.lock().unwrap() = Some(tx);
    std::thread::scope(|s| {
        let runner = s.spawn(|| f.rt.run(&spin, spec, limits(), &sink).unwrap());
        rx.recv_timeout(Duration::from_secs(30))
            .expect("spin starts and writes");
        flag.store(true, Ordering::Relaxed);
        assert_eq!(runner.join().unwrap(), JobOutcome::Interrupted);
    });
}

#[test]
fn memory_bomb_is_stopped_at_its_memory_limit() {
    let f = Fixture::new();
    let limits = Limits {
        memory_bytes: 16 * MIB,
        ..limits()
    };
    let (outcome, out) = f.run("membomb", job(&f.scratch(), &[]), limits);
    assert_eq!(outcome, JobOutcome::MemoryExceeded { limit: 16 * MIB });
    let text = out.stdout();
    let mib: u64 = text
        .strip_prefix("malloc failed after ")
        .and_then(|t| t.strip_suffix(" MiB\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {text:?}"));
    assert!((8..16).contains(&mib), "got {mib} MiB under a 16 MiB limit");
}

#[test]
fn initial_memory_above_the_limit_is_memory_exceeded() {
    let f = Fixture::new();
    // 100 pages = 6.25 MiB requested up front.
    let module = load_wat(
        &f.rt,
        r#"(module (memory (export "memory") 100) (func (export "_start")))"#,
    )
    .unwrap();
    let limits = Limits {
        memory_bytes: MIB,
        ..limits()
    };
    let outcome =
        f.rt.run(
            &module,
            job(&f.scratch(), &[]),
            limits,
            &Recorder::default(),
        )
        .unwrap();
    assert_eq!(outcome, JobOutcome::MemoryExceeded { limit: MIB });
}

#[test]
fn guest_cannot_reach_files_outside_scratch() {
    let f = Fixture::new();
    let (outcome, out) = f.run("escape", job(&f.scratch(), &[]), limits());
    let text = out.stdout();
    assert!(!text.contains("ESCAPED"), "{text}");
    assert_eq!(text.matches("denied").count(), 6, "{text}");
    assert_eq!(outcome, JobOutcome::Exited(0), "{text}");
}

#[test]
fn scratch_is_writable_by_relative_and_absolute_paths() {
    let f = Fixture::new();
    let (outcome, out) = f.run("scratch", job(&f.scratch(), &[]), limits());
    assert_eq!(outcome, JobOutcome::Exited(0), "{}", out.stdout());
    let read = |name| std::fs::read_to_string(f.scratch().join(name)).unwrap();
    assert_eq!(read("relative.txt"), "written by relative path\n");
    assert_eq!(read("absolute.txt"), "written by absolute path\n");
}

#[test]
fn syscall_heavy_workload_completes() {
    let f = Fixture::new();
    let (outcome, out) = f.run("syscalls", job(&f.scratch(), &["200"]), limits());
    assert_eq!(outcome, JobOutcome::Exited(0));
    assert_eq!(out.stdout(), "rounds=200 bytes=1890\n");
}

#[test]
fn primes_counts_correctly() {
    let f = Fixture::new();
    let (outcome, out) = f.run("primes", job(&f.scratch(), &["100000"]), limits());
    assert_eq!(outcome, JobOutcome::Exited(0));
    assert_eq!(out.stdout(), "primes below 100000: 9592\n");
}

#[test]
fn bad_inputs_get_named_errors() {
    let f = Fixture::new();
    let load_raw = |bytes: &[u8]| f.rt.load(&ContentId::of(bytes).hex(), bytes);

    assert!(matches!(
        load_raw(b"MZ\x90\0 definitely not wasm"),
        Err(WasmError::NotWasm { .. })
    ));
    let component = wat::parse_str("(component)").unwrap();
    assert!(matches!(
        load_raw(&component),
        Err(WasmError::ComponentNotSupported)
    ));
    match load_wat(
        &f.rt,
        r#"(module (import "env" "foo" (func)) (func (export "_start")))"#,
    ) {
        Err(WasmError::ForbiddenImport { module, name }) => {
            assert_eq!((module.as_str(), name.as_str()), ("env", "foo"))
        }
        other => panic!("expected ForbiddenImport, got {other:?}"),
    }
    let huge = vec![0u8; MAX_MODULE_BYTES + 1];
    assert!(matches!(
        f.rt.load("00", &huge),
        Err(WasmError::TooLarge { len, max }) if len == MAX_MODULE_BYTES + 1 && max == MAX_MODULE_BYTES
    ));
    let hello = guest_modules::bytes("hello");
    let other = ContentId::of(b"another module").hex();
    assert!(matches!(
        f.rt.load(&other, &hello),
        Err(WasmError::IdMismatch { .. })
    ));
    assert!(matches!(
        load_wat(&f.rt, "(module (memory 1))"),
        Err(WasmError::NoStart)
    ));
    // Well-formed sections around an invalid opcode: passes the import scan,
    // fails compilation.
    let mut broken = wat::parse_str(r#"(module (func (export "_start") nop))"#).unwrap();
    let nop_end = broken.len() - 2;
    assert_eq!(&broken[nop_end..], &[0x01, 0x0b], "nop; end");
    broken[nop_end] = 0xff;
    assert!(matches!(load_raw(&broken), Err(WasmError::Invalid { .. })));
}

#[test]
fn job_limits_and_strings_are_checked() {
    let f = Fixture::new();
    let hello = load(&f.rt, "hello");
    let sink = Recorder::default();
    let too_much = Limits {
        memory_bytes: 512 * MIB,
        ..limits()
    };
    assert!(matches!(
        f.rt.run(&hello, job(&f.scratch(), &[]), too_much, &sink),
        Err(WasmError::MemoryLimitAboveCeiling { requested, max })
            if requested == 512 * MIB && max == 256 * MIB
    ));
    assert!(matches!(
        f.rt.run(&hello, job(&f.scratch(), &["a\0b"]), limits(), &sink),
        Err(WasmError::NulInJobString { .. })
    ));
    let mut spec = job(&f.scratch(), &[]);
    spec.env = vec![("A=B".into(), "c".into())];
    assert!(matches!(
        f.rt.run(&hello, spec, limits(), &sink),
        Err(WasmError::BadEnvName { .. })
    ));
    let missing = job(&f.dir.path().join("no-such-dir"), &[]);
    assert!(matches!(
        f.rt.run(&hello, missing, limits(), &sink),
        Err(WasmError::Scratch { .. })
    ));
    let other = Fixture::new();
    assert!(matches!(
        other
            .rt
            .run(&hello, job(&other.scratch(), &[]), limits(), &sink),
        Err(WasmError::ForeignModule)
    ));
}

#[test]
fn concurrent_jobs_do_not_interfere() {
    let f = Fixture::new();
    let cat = load(&f.rt, "cat");
    let hello = load(&f.rt, "hello");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (rt, cat, hello) = (&f.rt, &cat, &hello);
                let scratch = f.dir.path().join(format!("scratch-{i}"));
                std::fs::create_dir(&scratch).unwrap();
                s.spawn(move || {
                    let sink = Recorder::default();
                    if i % 2 == 0 {
                        let input = format!("job {i} says {}\n", "x".repeat(i * 1000));
                        let mut spec = job(&scratch, &[]);
                        spec.stdin = input.clone().into_bytes();
                        let outcome = rt.run(cat, spec, limits(), &sink).unwrap();
                        assert_eq!(outcome, JobOutcome::Exited(0));
                        assert_eq!(sink.stdout(), input);
                    } else {
                        let mut spec = job(&scratch, &[&format!("job-{i}")]);
                        spec.env = vec![("GREETING".into(), format!("hi-{i}"))];
                        let outcome = rt.run(hello, spec, limits(), &sink).unwrap();
                        assert_eq!(outcome, JobOutcome::Exited(0));
                        let text = sink.stdout();
                        assert!(text.contains(&format!("arg[1]=job-{i}\n")), "{text}");
                        assert!(text.contains(&format!("GREETING=hi-{i}\n")), "{text}");
                        assert_eq!(text.matches("env:").count(), 1, "{text}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("job thread");
        }
    });
}

#[test]
fn a_full_pool_refuses_more_jobs_until_one_ends() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime_in(dir.path(), 1);
    let spin = load(&rt, "spin");
    let hello = load(&rt, "hello");
    let spec = job(dir.path(), &[]);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let spinner = s.spawn(|| {
            let sink = Recorder::default();
            *sink.first_write.lock().unwrap() = Some(tx);
            let limits = Limits {
                wall_time: Duration::from_secs(2),
                ..limits()
            };
            rt.run(&spin, spec.clone(), limits, &sink).unwrap()
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("spin starts and writes");
        assert!(matches!(
            rt.probe_instantiate(&hello, &spec, limits()),
            Err(WasmError::PoolExhausted { max: 1 })
        ));
        assert_eq!(spinner.join().unwrap(), JobOutcome::WallTimeExceeded);
    });
    rt.probe_instantiate(&hello, &spec, limits())
        .expect("the slot is free again");
}

#[test]
fn compiled_modules_are_reused_from_memory_and_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = runtime_in(dir.path(), 2);
        load(&rt, "primes");
        load(&rt, "primes");
        let stats = rt.stats();
        assert_eq!(
            (stats.compiled, stats.loaded_from_disk, stats.memory_hits),
            (1, 0, 1)
        );
    }
    let rt = runtime_in(dir.path(), 2);
    let primes = load(&rt, "primes");
    let stats = rt.stats();
    assert_eq!(
        (stats.compiled, stats.loaded_from_disk, stats.memory_hits),
        (0, 1, 0),
        "second runtime must load the artifact, not compile"
    );
    let sink = Recorder::default();
    let outcome = rt
        .run(&primes, job(dir.path(), &["1000"]), limits(), &sink)
        .unwrap();
    assert_eq!(outcome, JobOutcome::Exited(0));
    assert_eq!(sink.stdout(), "primes below 1000: 168\n");
}
