//! Order-book matching throughput on one core.
//!
//! (a) `one_sell`: each buy crosses the single resting sell; releasing the
//!     lease right after keeps the capacity steady.
//! (b) `1000_sells`: 1,000 resting sells at varied prices; each buy takes
//!     the cheapest, and its release puts the capacity back.
//!
//! Prints matches per second (plain line) besides criterion's throughput.

use cpushare_broker::book::{Book, BuyOrder, OrderId, SandboxKind, SellOrder};
use cpushare_proto::money::Micros;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::time::Instant;

const BATCH: u64 = 10_000;

/// A book plus the next free order id.
struct Market {
    book: Book,
    next_id: u64,
}

impl Market {
    fn with_sells(count: u64) -> Market {
        let mut book = Book::new();
        for i in 0..count {
            let order = SellOrder {
                id: OrderId(i),
                seller: format!("seller-{i}"),
                cpus: 4,
                mem_mib: 4096,
                kinds: vec![SandboxKind::Wasm, SandboxKind::Vm],
                // Prices spread over 1,000 levels in a scrambled order.
                price: Micros(1_000 + (i * 7_919) % 1_000),
                min_minutes: 1,
                max_minutes: 600,
                expires_at_ms: None,
            };
            book.add_sell(order, 0)
                .expect("bench sells are well formed");
        }
        Market {
            book,
            next_id: count,
        }
    }

    /// One buy that crosses, then the release of its lease; returns matches.
    fn buy_and_release(&mut self) -> u64 {
        let id = OrderId(self.next_id);
        self.next_id += 1;
        let order = BuyOrder {
            id,
            buyer: String::from("buyer"),
            instances: 1,
            cpus: 1,
            mem_mib: 512,
            minutes: 30,
            max_price: Micros(1_000_000),
            kind: SandboxKind::Wasm,
            expires_at_ms: None,
        };
        let fills = self
            .book
            .add_buy(order, 1)
            .expect("bench buys are well formed");
        let mut matches = fills.len() as u64;
        for fill in fills {
            let again = self.book.release(fill.sell, fill.cpus, fill.mem_mib, 1);
            matches += again.map_or(0, |f| f.len() as u64);
        }
        matches
    }
}

/// Plain figure: runs `n` buy+release rounds and prints matches per second.
fn print_rate(name: &str, market: &mut Market, n: u64) {
    let start = Instant::now();
    let mut matches = 0;
    for _ in 0..n {
        matches += market.buy_and_release();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "book/{name}: {matches} matches in {secs:.3} s = {:.0} matches/s (incl. release)",
        matches as f64 / secs
    );
}

fn bench_book(c: &mut Criterion) {
    print_rate("one_sell", &mut Market::with_sells(1), 2_000_000);
    print_rate("1000_sells", &mut Market::with_sells(1_000), 2_000_000);

    let mut group = c.benchmark_group("book");
    group.throughput(Throughput::Elements(BATCH));
    for (name, sells) in [("one_sell", 1), ("1000_sells", 1_000)] {
        let mut market = Market::with_sells(sells);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut matches = 0;
                for _ in 0..BATCH {
                    matches += market.buy_and_release();
                }
                black_box(matches)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_book);
criterion_main!(benches);
