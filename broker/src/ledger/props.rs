//! Property test: random money flows keep the books balanced.

use super::*;
use proptest::prelude::*;

const USERS: [&str; 3] = ["ann", "bob", "sam"];
const KEYS: [&str; 3] = ["K1", "K2", "K3"];

#[derive(Debug, Clone)]
enum Op {
    Deposit(usize, u64),
    Reserve(usize, usize, u64),
    Open(usize, usize, u64),
    ReleaseHold(usize, usize, u64),
    Settle(usize, usize, u64, u32),
    Refund(usize, usize, u64),
    /// A renewal: buyer -> a lease's escrow.
    TopUp(usize, usize, u64),
    /// Any transfer between any two accounts of the pool, maybe invalid.
    Raw(usize, usize, u64),
    /// Two ops in one batch: must apply both or neither.
    Pair(Box<Op>, Box<Op>),
}

fn pool() -> Vec<Account> {
    let mut p: Vec<Account> = USERS.iter().map(|u| user(u)).collect();
    p.extend(KEYS.iter().map(|k| hold(k)));
    p.extend(KEYS.iter().map(|k| escrow(k)));
    p.push(FEES.to_string());
    p.push(WORLD.to_string());
    p
}

fn single() -> impl Strategy<Value = Op> {
    let amount = 0..3_000u64;
    prop_oneof![
        (0..3usize, amount.clone()).prop_map(|(u, a)| Op::Deposit(u, a)),
        (0..3usize, 0..3usize, amount.clone()).prop_map(|(u, k, a)| Op::Reserve(u, k, a)),
        (0..3usize, 0..3usize, amount.clone()).prop_map(|(o, l, a)| Op::Open(o, l, a)),
        (0..3usize, 0..3usize, amount.clone()).prop_map(|(k, u, a)| Op::ReleaseHold(k, u, a)),
        (0..3usize, 0..3usize, amount.clone(), 0..3_000u32)
            .prop_map(|(l, u, a, f)| Op::Settle(l, u, a, f)),
        (0..3usize, 0..3usize, amount.clone()).prop_map(|(l, u, a)| Op::Refund(l, u, a)),
        (0..3usize, 0..3usize, amount.clone()).prop_map(|(u, l, a)| Op::TopUp(u, l, a)),
        (0..11usize, 0..11usize, amount).prop_map(|(f, t, a)| Op::Raw(f, t, a)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => single(),
        1 => (single(), single()).prop_map(|(a, b)| Op::Pair(Box::new(a), Box::new(b))),
    ]
}

fn postings(op: &Op) -> Vec<Transfer> {
    match op {
        Op::Deposit(u, a) => vec![deposit(USERS[*u], Micros(*a))],
        Op::Reserve(u, k, a) => reserve_order(USERS[*u], KEYS[*k], Micros(*a)),
        Op::Open(o, l, a) => open_lease(KEYS[*o], KEYS[*l], Micros(*a)),
        Op::ReleaseHold(k, u, a) => release_hold(KEYS[*k], USERS[*u], Micros(*a)),
        Op::Settle(l, u, a, f) => settle(KEYS[*l], USERS[*u], Micros(*a), *f),
        Op::Refund(l, u, a) => refund(KEYS[*l], USERS[*u], Micros(*a)),
        Op::TopUp(u, l, a) => top_up(USERS[*u], KEYS[*l], Micros(*a)),
        Op::Raw(f, t, a) => {
            let p = pool();
            vec![Transfer {
                from: p[*f].clone(),
                to: p[*t].clone(),
                amount: Micros(*a),
                memo: "raw".into(),
            }]
        }
        Op::Pair(a, b) => {
            let mut v = postings(a);
            v.extend(postings(b));
            v
        }
    }
}

/// What a batch should do, worked out transfer by transfer on a copy of
/// the balances: the new balances, or `None` if any transfer is invalid.
fn predict(balances: &[(Account, i128)], batch: &[Transfer]) -> Option<Vec<(Account, i128)>> {
    let mut b = balances.to_vec();
    for t in batch {
        if t.amount.0 == 0 || t.from == t.to {
            return None;
        }
        let a = i128::from(t.amount.0);
        let from = b.iter().position(|(n, _)| *n == t.from)?;
        if t.from != WORLD && b[from].1 < a {
            return None;
        }
        b[from].1 -= a;
        let to = b.iter().position(|(n, _)| *n == t.to)?;
        b[to].1 += a;
    }
    Some(b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn money_is_conserved_and_failed_batches_change_nothing(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut ledger = Ledger::new();
        let mut deposited: i128 = 0;
        for op in &ops {
            let batch = postings(op);
            let before: Vec<(Account, i128)> =
                pool().into_iter().map(|a| { let b = ledger.balance(&a); (a, b) }).collect();
            let expected = predict(&before, &batch);
            let result = ledger.apply(&batch);
            let after: Vec<(Account, i128)> =
                pool().into_iter().map(|a| { let b = ledger.balance(&a); (a, b) }).collect();
            match (&result, expected) {
                (Ok(()), Some(want)) => {
                    prop_assert_eq!(&after, &want);
                    deposited += batch
                        .iter()
                        .filter(|t| t.from == WORLD)
                        .map(|t| i128::from(t.amount.0))
                        .sum::<i128>();
                    deposited -= batch
                        .iter()
                        .filter(|t| t.to == WORLD)
                        .map(|t| i128::from(t.amount.0))
                        .sum::<i128>();
                }
                (Err(_), None) => prop_assert_eq!(&after, &before, "failed batch changed balances"),
                (r, e) => prop_assert!(false, "ledger said {:?}, model expected {:?}", r, e),
            }
            prop_assert_eq!(ledger.total(), 0);
            let non_world: i128 = after.iter().filter(|(a, _)| a != WORLD).map(|(_, b)| b).sum();
            prop_assert_eq!(non_world, deposited);
            prop_assert_eq!(non_world, -ledger.balance(WORLD));
            for (account, balance) in ledger.balances() {
                prop_assert!(account == WORLD || balance >= 0, "{} went negative", account);
            }
        }
    }
}
