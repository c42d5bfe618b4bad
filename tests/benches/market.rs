//! End-to-end market throughput and latency on loopback: a broker
//! (SQLite), two sellers and one buyer, tiny wasm jobs.
//!
//! Prints: jobs per second with many jobs in flight over one buyer
//! connection; p50/p99 from order to first output byte in that run; and
//! p50/p99 of whole `cpushare run` invocations (process start, handshake,
//! order, first output byte) run one after another.
//!
//!   cargo bench -p cpushare-tests --bench market [-- JOBS CONCURRENCY]

use cpushare_proto::client::Home;
use cpushare_proto::frame;
use cpushare_proto::id::ContentId;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{BuyRequest, JobSpec, Request, Response, SandboxKind};
use cpushare_tests::{bin, wasm_modules, Broker, Buyer, Seller};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU time (user + system) a process used, with that of its reaped
/// children (a seller's sandboxes) and of its living descendants (a
/// seller's sandbox zygote, which is not reaped while it runs), in
/// milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    tree_ms(pid).expect("stat of a benchmarked process")
}

/// [`cpu_ms`], or `None` if the process is gone.
fn tree_ms(pid: u32) -> Option<f64> {
    let own = own_and_reaped_ms(pid)?;
    let children: f64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        // A child that exits meanwhile is counted once it is reaped.
        .filter_map(tree_ms)
        .sum();
    Some(own + children)
}

/// A process's own CPU time and its reaped children's, if it still exists.
fn own_and_reaped_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime..cstime are 14..17.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<f64>().expect("ticks"))
        .sum();
    // SAFETY: sysconf with a constant name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks * 1000.0 / hz)
}

/// CPU time of this (the buyer's) process so far, milliseconds.
fn own_cpu_ms() -> f64 {
    // Not its living children: those are the broker and the sellers.
    own_and_reaped_ms(std::process::id()).expect("own stat")
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn one_job(
    client: &cpushare_proto::client::Client,
    image: ContentId,
) -> (Duration, Duration) {
    let t0 = Instant::now();
    let (mut send, mut recv) = client.open().await.expect("stream");
    let req = BuyRequest {
        kind: SandboxKind::Wasm,
        image,
        instances: 1,
        cpus: 1,
        mem_mib: 16,
        minutes: 1,
        max_price: Micros(10_000),
        job: JobSpec::default(),
        wait_secs: Some(60),
        follow: true,
        renew_up_to: None,
    };
    frame::write(&mut send, &Request::Buy(req))
        .await
        .expect("send");
    send.finish().expect("finish");
    let mut first = None;
    while let Some(msg) = frame::read::<Response, _>(&mut recv).await.expect("read") {
        match msg {
            Response::Output { .. } => {
                first.get_or_insert_with(|| t0.elapsed());
            }
            Response::OrderClosed { .. } => break,
            Response::Error(e) => panic!("job refused: {e}"),
            _ => {}
        }
    }
    (first.expect("the job printed"), t0.elapsed())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let jobs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let wasm = wasm_modules();
    let hello = wasm.join("hello.wasm");
    let broker = Broker::start(None);
    let s1 = Seller::start(&broker, "bench-a", 16, "0.001");
    let s2 = Seller::start(&broker, "bench-b", 16, "0.001");
    let buyer = Buyer::login(&broker, "bench", "1000000");

    // Warm up: upload the module and let both sellers compile it.
    let warm = buyer.run(&["run", hello.to_str().unwrap(), "--instances", "2"]);
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let image = ContentId::of(&std::fs::read(&hello).unwrap());

    let pids = [broker.proc.pid(), s1.proc.pid(), s2.proc.pid()];
    let cpu_before: Vec<f64> = pids.iter().map(|&p| cpu_ms(p)).collect();
    let own_before = own_cpu_ms();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (firsts, elapsed) = rt.block_on(async {
        let client = Arc::new(
            Home::new(buyer.home.path())
                .connect()
                .await
                .expect("connect"),
        );
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let client = client.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut firsts = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                    firsts.push(one_job(&client, image).await.0);
                }
                firsts
            }));
        }
        let mut firsts = Vec::new();
        for t in tasks {
            firsts.extend(t.await.unwrap());
        }
        (firsts, t0.elapsed())
    });
    // Sandboxes are reaped within moments of their lease's end.
    std::thread::sleep(Duration::from_millis(500));
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, b)| (cpu_ms(p) - b) / jobs as f64)
        .collect();
    let own = (own_cpu_ms() - own_before) / jobs as f64;
    let mut firsts = firsts;
    firsts.sort();
    println!("market e2e, {jobs} tiny wasm jobs (hello.wasm), {concurrency} in flight, broker on SQLite, 2 sellers, loopback");
    println!(
        "  throughput           {:.0} jobs/s (goal >= 200)",
        jobs as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  order->first output  p50 {}  p99 {}",
        ms(percentile(&firsts, 0.5)),
        ms(percentile(&firsts, 0.99))
    );

    let total = cpu[0] + cpu[1] + cpu[2] + own;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "  CPU per job          {total:.2} ms: broker {:.2}, sellers with their sandboxes {:.2}, buyer {:.2}",
        cpu[0],
        cpu[1] + cpu[2],
        own
    );
    println!(
        "  CPU-bound ceiling    {:.0} jobs/s on {cores} cores (what the run would reach with nothing else on the machine)",
        cores * 1000.0 / total
    );

    // Whole `cpushare run` invocations, one after another.
    let runs = 50;
    let mut lat = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut child = Command::new(bin("cpushare"))
            .arg("--home")
            .arg(buyer.home.path())
            .args(["run", hello.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut byte = [0u8; 1];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut byte)
            .unwrap();
        lat.push(t0.elapsed());
        assert!(child.wait().unwrap().success());
    }
    lat.sort();
    println!(
        "  `cpushare run` start->first stdout byte  p50 {}  p99 {}  ({runs} sequential runs)",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    broker.ledger();
}
