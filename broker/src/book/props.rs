//! Property tests of the book against a model of outstanding leases.

use super::order::instances_fitting;
use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

const NAMES: [&str; 3] = ["ann", "bob", "cid"];

#[derive(Debug, Clone)]
enum Op {
    Sell {
        who: usize,
        cpus: u32,
        mem_blocks: u64,
        kinds: u8,
        price: u64,
        min_minutes: u32,
        span: u32,
        ttl: Option<u64>,
    },
    Buy {
        who: usize,
        instances: u32,
        cpus: u32,
        mem_blocks: u64,
        minutes: u32,
        max_price: u64,
        vm: bool,
        ttl: Option<u64>,
    },
    Cancel(usize),
    Release(usize),
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 1..9u32, 0..5u64, 1..4u8, 1..10u64, 1..5u32, 0..30u32,
              proptest::option::of(0..400u64))
            .prop_map(|(who, cpus, mem_blocks, kinds, price, min_minutes, span, ttl)| Op::Sell {
                who, cpus, mem_blocks, kinds, price, min_minutes, span, ttl
            }),
        4 => (0..3usize, 1..5u32, 1..4u32, 0..3u64, 1..40u32, 1..10u64, any::<bool>(),
              proptest::option::of(0..400u64))
            .prop_map(|(who, instances, cpus, mem_blocks, minutes, max_price, vm, ttl)| Op::Buy {
                who, instances, cpus, mem_blocks, minutes, max_price, vm, ttl
            }),
        1 => any::<usize>().prop_map(Op::Cancel),
        3 => any::<usize>().prop_map(Op::Release),
        1 => Just(Op::Expire),
    ]
}

/// What the test remembers independently of the book.
#[derive(Default)]
struct Model {
    sells: HashMap<OrderId, SellOrder>,
    buys: HashMap<OrderId, BuyOrder>,
    /// Instances filled so far per buy.
    filled: HashMap<OrderId, u32>,
    /// Buys that left the book by cancel or expiry, with what was left.
    removed_buys: HashMap<OrderId, u32>,
    /// Leases not yet released: (sell, cpus, mem).
    leases: Vec<(OrderId, u32, u64)>,
    ids: Vec<OrderId>,
}

impl Model {
    fn record(&mut self, fills: &[Fill]) -> Result<(), TestCaseError> {
        for f in fills {
            let buy = &self.buys[&f.buy];
            let sell = &self.sells[&f.sell];
            prop_assert_eq!(f.price, sell.price, "pay-as-ask");
            prop_assert!(f.price <= buy.max_price);
            prop_assert_eq!(
                (f.cpus, f.mem_mib, f.minutes),
                (buy.cpus, buy.mem_mib, buy.minutes)
            );
            prop_assert_eq!((&f.buyer, &f.seller), (&buy.buyer, &sell.seller));
            prop_assert_ne!(&f.buyer, &f.seller);
            prop_assert!(sell.offers(f.kind) && f.kind == buy.kind);
            prop_assert!((sell.min_minutes..=sell.max_minutes).contains(&f.minutes));
            *self.filled.entry(f.buy).or_default() += 1;
            self.leases.push((f.sell, f.cpus, f.mem_mib));
        }
        Ok(())
    }

    fn check(&self, book: &Book, now: u64) -> Result<(), TestCaseError> {
        for s in book.sells() {
            for b in book.buys() {
                let n = instances_fitting(
                    &s.order,
                    s.remaining_cpus,
                    s.remaining_mem_mib,
                    &b.order,
                    now,
                );
                prop_assert_eq!(n, 0, "crossed book: buy {:?} fits sell {:?}", b, s);
            }
            let (mut cpus, mut mem) = (0u64, 0u64);
            for &(id, c, m) in &self.leases {
                if id == s.order.id {
                    cpus += u64::from(c);
                    mem += m;
                }
            }
            prop_assert!(
                cpus <= u64::from(s.order.cpus),
                "cpus oversold on {:?}",
                s.order.id
            );
            prop_assert!(
                mem <= s.order.mem_mib,
                "memory oversold on {:?}",
                s.order.id
            );
            prop_assert_eq!(u64::from(s.remaining_cpus) + cpus, u64::from(s.order.cpus));
            prop_assert_eq!(s.remaining_mem_mib + mem, s.order.mem_mib);
        }
        for (id, order) in &self.buys {
            let filled = self.filled.get(id).copied().unwrap_or(0);
            let left = match (book.buy(*id), self.removed_buys.get(id)) {
                (Some(b), _) => b.remaining_instances,
                (None, Some(&left)) => left,
                (None, None) => 0,
            };
            prop_assert_eq!(
                filled + left,
                order.instances,
                "buy {:?} lost instances",
                id
            );
        }
        Ok(())
    }
}

fn run(ops: Vec<(Op, u64)>) -> Result<(), TestCaseError> {
    let mut book = Book::new();
    let mut model = Model::default();
    let mut now = 0u64;
    for (i, (op, dt)) in ops.into_iter().enumerate() {
        now += dt;
        let id = OrderId(i as u64 + 1);
        match op {
            Op::Sell {
                who,
                cpus,
                mem_blocks,
                kinds,
                price,
                min_minutes,
                span,
                ttl,
            } => {
                let kinds = SandboxKind::ALL
                    .into_iter()
                    .enumerate()
                    .filter(|(k, _)| kinds & (1 << k) != 0)
                    .map(|(_, kind)| kind)
                    .collect();
                let order = SellOrder {
                    id,
                    seller: NAMES[who].into(),
                    cpus,
                    mem_mib: mem_blocks * 512,
                    kinds,
                    price: Micros(price),
                    min_minutes,
                    max_minutes: min_minutes + span,
                    expires_at_ms: ttl.map(|t| now + t),
                };
                model.sells.insert(id, order.clone());
                model.ids.push(id);
                let fills = book
                    .add_sell(order, now)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.record(&fills)?;
            }
            Op::Buy {
                who,
                instances,
                cpus,
                mem_blocks,
                minutes,
                max_price,
                vm,
                ttl,
            } => {
                let order = BuyOrder {
                    id,
                    buyer: NAMES[who].into(),
                    instances,
                    cpus,
                    mem_mib: mem_blocks * 512,
                    minutes,
                    max_price: Micros(max_price),
                    kind: if vm {
                        SandboxKind::Vm
                    } else {
                        SandboxKind::Wasm
                    },
                    expires_at_ms: ttl.map(|t| now + t),
                };
                model.buys.insert(id, order.clone());
                model.ids.push(id);
                let fills = book
                    .add_buy(order, now)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.record(&fills)?;
            }
            Op::Cancel(pick) => {
                if model.ids.is_empty() {
                    continue;
                }
                let id = model.ids[pick % model.ids.len()];
                let was_there = book.sell(id).is_some() || book.buy(id).is_some();
                let got = book.cancel(id);
                prop_assert_eq!(got.is_some(), was_there);
                if let Some(Cancelled::Buy {
                    remaining_instances,
                    ..
                }) = got
                {
                    model.removed_buys.insert(id, remaining_instances);
                }
                prop_assert!(book.sell(id).is_none() && book.buy(id).is_none());
            }
            Op::Release(pick) => {
                if model.leases.is_empty() {
                    continue;
                }
                let (sell, cpus, mem) = model.leases.swap_remove(pick % model.leases.len());
                let in_book = book.sell(sell).is_some();
                let fills = book.release(sell, cpus, mem, now);
                prop_assert_eq!(fills.is_some(), in_book);
                model.record(&fills.unwrap_or_default())?;
            }
            Op::Expire => {
                let resting: Vec<(OrderId, u32)> = book
                    .buys()
                    .map(|b| (b.order.id, b.remaining_instances))
                    .collect();
                let gone = book.expire(now);
                for id in &gone {
                    let sell_ttl = model.sells.get(id).and_then(|s| s.expires_at_ms);
                    let buy_ttl = model.buys.get(id).and_then(|b| b.expires_at_ms);
                    prop_assert!(sell_ttl.or(buy_ttl).is_some_and(|t| t <= now));
                    if let Some(&(_, left)) = resting.iter().find(|(b, _)| b == id) {
                        model.removed_buys.insert(*id, left);
                    }
                }
                let mut ttls = book
                    .sells()
                    .map(|s| s.order.expires_at_ms)
                    .chain(book.buys().map(|b| b.order.expires_at_ms));
                prop_assert!(
                    ttls.all(|ttl| ttl.is_none_or(|t| t > now)),
                    "expire left a due order"
                );
            }
        }
        model.check(&book, now)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn book_never_crosses_oversells_or_loses_quantity(
        ops in proptest::collection::vec((op(), 0..60u64), 1..120)
    ) {
        run(ops)?;
    }
}
