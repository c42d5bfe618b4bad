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
    let _s1 = Seller::start(&broker, "bench-a", 16, "0.001");
    let _s2 = Seller::start(&broker, "bench-b", 16, "0.001");
    let buyer = Buyer::login(&broker, "bench", "1000000");

    // Warm up: upload the module and let both sellers compile it.
    let warm = buyer.run(&["run", hello.to_str().unwrap(), "--instances", "2"]);
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let image = ContentId::of(&std::fs::read(&hello).unwrap());

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
