//! The market over a real SQLite store, driven tick by tick with made-up
//! times: sticky renewal from the decision to the ledger.

use super::{Market, MarketConfig, SellerSession};
use crate::ledger::{accounts, postings};
use crate::store::Store;
use cpushare_proto::id::ContentId;
use cpushare_proto::money::Micros;
use cpushare_proto::msg::{
    BrokerMsg, BuyRequest, JobSpec, LeaseEnd, Response, SandboxKind, SellOffer,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const T0: u64 = 1_700_000_000_000;
const PRICE: Micros = Micros(1_000);

/// A market with a seller `sam` (1 vCPU at [`PRICE`]) and a buyer `ann`
/// holding `credit`, whose one-minute wasm order (cap 2x the price,
/// `renew_up_to`) has matched and whose lease runs from `T0 + 1000`.
struct Fixture {
    market: Market,
    _dir: tempfile::TempDir,
    session: SellerSession,
    seller: UnboundedReceiver<BrokerMsg>,
    buyer: UnboundedReceiver<Response>,
    lease: String,
    credit: u64,
    started: u64,
}

impl Fixture {
    async fn new(credit: u64, renew_up_to: Option<u32>) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let store = Store::open(&url).await.expect("open store");
        let mut tx = store.begin().await.expect("begin");
        tx.apply_transfers(&[postings::deposit("ann", Micros(credit))], T0)
            .await
            .expect("deposit");
        tx.commit().await.expect("commit");
        let mut market = Market::open(store, MarketConfig::default(), T0)
            .await
            .expect("open market");
        let (to_seller, mut seller) = unbounded_channel();
        let offer = SellOffer {
            cpus: 1,
            mem_mib: 1024,
            kinds: vec![SandboxKind::Wasm],
            price: PRICE,
            min_minutes: 1,
            max_minutes: 60,
        };
        let session = market
            .open_session("sam", offer, to_seller, T0)
            .await
            .expect("sell");
        let (to_buyer, buyer) = unbounded_channel();
        let req = BuyRequest {
            kind: SandboxKind::Wasm,
            image: ContentId::of(b"module"),
            instances: 1,
            cpus: 1,
            mem_mib: 64,
            minutes: 1,
            max_price: Micros(2 * PRICE.0),
            job: JobSpec::default(),
            wait_secs: Some(60),
            follow: true,
            renew_up_to,
        };
        market
            .place_buy("ann", req, 6, Some(to_buyer), T0)
            .await
            .expect("buy");
        let lease = loop {
            match seller.try_recv().expect("a Start for the seller") {
                BrokerMsg::Start(spec) => break spec.lease,
                _ => continue,
            }
        };
        let started = T0 + 1_000;
        market
            .lease_started("sam", &lease, started)
            .await
            .expect("started");
        Fixture {
            market,
            _dir: dir,
            session,
            seller,
            buyer,
            lease,
            credit,
            started,
        }
    }

    /// Ticks (and heartbeats) every second up to `secs` after the start,
    /// checking the ledger after each tick.
    async fn run_until(&mut self, secs: u64) {
        let mut now = self.started;
        while now < self.started + secs * 1000 {
            now += 1000;
            self.market.heartbeat(&self.session, now);
            self.market.tick(now).await.expect("tick");
            self.books_balance().await;
        }
    }

    /// Sum of all balances is zero and ann's deposit is all there is.
    async fn books_balance(&self) {
        let balances = self.market.store().balances().await.expect("balances");
        let sum: i64 = balances.iter().map(|(_, b)| b).sum();
        assert_eq!(sum, 0, "{balances:?}");
        let outside: i64 = balances
            .iter()
            .filter(|(a, _)| a != accounts::WORLD)
            .map(|(_, b)| b)
            .sum();
        assert_eq!(outside, self.credit as i64, "only deposits add money");
    }

    async fn end(&mut self, secs: u64, end: LeaseEnd) {
        let now = self.started + secs * 1000;
        self.market
            .seller_ended("sam", &self.lease, end, now)
            .await
            .expect("end");
        self.books_balance().await;
    }

    fn seller_msgs(&mut self) -> Vec<BrokerMsg> {
        std::iter::from_fn(|| self.seller.try_recv().ok()).collect()
    }

    fn buyer_msgs(&mut self) -> Vec<Response> {
        std::iter::from_fn(|| self.buyer.try_recv().ok()).collect()
    }

    async fn balance(&self, account: &str) -> i64 {
        self.market.store().balance(account).await.expect("balance")
    }

    /// What the buyer paid for the lease, from the ledger.
    async fn paid(&self) -> i64 {
        self.credit as i64 - self.balance(&accounts::user("ann")).await
    }
}

fn extends(msgs: &[BrokerMsg]) -> Vec<u32> {
    msgs.iter()
        .filter_map(|m| match m {
            BrokerMsg::Extend { minutes, .. } => Some(*minutes),
            _ => None,
        })
        .collect()
}

fn renewals(msgs: &[Response]) -> Vec<u32> {
    msgs.iter()
        .filter_map(|m| match m {
            Response::LeaseRenewed { minutes, .. } => Some(*minutes),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_lease_renews_up_to_the_allowance_and_bills_the_minutes_it_ran() {
    let mut f = Fixture::new(1_000_000, Some(3)).await;
    f.run_until(39).await;
    assert!(extends(&f.seller_msgs()).is_empty(), "too early to renew");
    f.run_until(40).await;
    assert_eq!(extends(&f.seller_msgs()), [2], "20 s before its end");
    assert_eq!(renewals(&f.buyer_msgs()), [2]);
    let row = f
        .market
        .store()
        .lease_by_key(&f.lease)
        .await
        .expect("read")
        .expect("lease");
    assert_eq!((row.minutes, row.escrow), (2, Micros(2 * PRICE.0)));
    f.run_until(170).await;
    let msgs = f.seller_msgs();
    assert_eq!(extends(&msgs), [3], "then once more, to the allowance");
    assert!(
        !msgs.iter().any(|m| matches!(m, BrokerMsg::Stop { .. })),
        "not stopped within its renewed minutes plus grace: {msgs:?}"
    );
    f.end(170, LeaseEnd::Exited { code: 0 }).await;
    assert_eq!(f.paid().await, 3 * PRICE.0 as i64, "3 minutes started");
    assert_eq!(
        f.balance(&accounts::user("sam")).await + f.balance(accounts::FEES).await,
        3 * PRICE.0 as i64
    );
    assert_eq!(f.balance(&accounts::escrow(&f.lease)).await, 0);
    let ended = f.buyer_msgs();
    assert!(
        ended.iter().any(|m| matches!(
            m,
            Response::LeaseEnded { cost, .. } if *cost == Micros(3 * PRICE.0)
        )),
        "{ended:?}"
    );
}

#[tokio::test]
async fn without_an_allowance_a_lease_is_stopped_after_its_minutes_and_grace() {
    let mut f = Fixture::new(1_000_000, None).await;
    f.run_until(90).await;
    assert!(extends(&f.seller_msgs()).is_empty());
    f.run_until(91).await;
    let msgs = f.seller_msgs();
    assert!(
        msgs.iter().any(|m| matches!(m, BrokerMsg::Stop { .. })),
        "stopped 30 s after its minute: {msgs:?}"
    );
    f.end(92, LeaseEnd::Cancelled).await;
    assert_eq!(f.paid().await, PRICE.0 as i64, "one minute");
}

#[tokio::test]
async fn a_buyer_who_cannot_pay_the_next_renewal_keeps_what_was_paid() {
    // 2000 is held for the order (cap 2x price); 1000 returns at the fill,
    // which pays exactly one renewal and no second.
    let mut f = Fixture::new(2 * PRICE.0, Some(5)).await;
    f.run_until(45).await;
    assert_eq!(extends(&f.seller_msgs()), [2]);
    assert_eq!(f.balance(&accounts::user("ann")).await, 0);
    f.run_until(151).await;
    let msgs = f.seller_msgs();
    assert!(extends(&msgs).is_empty(), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| matches!(m, BrokerMsg::Stop { .. })),
        "stopped after its 2 paid minutes and grace: {msgs:?}"
    );
    f.end(152, LeaseEnd::Cancelled).await;
    assert_eq!(f.paid().await, 2 * PRICE.0 as i64);
}

#[tokio::test]
async fn a_buyer_whose_renewal_is_refused_is_told_why() {
    // As above: the first renewal is paid, the second cannot be.
    let mut f = Fixture::new(2 * PRICE.0, Some(5)).await;
    f.run_until(45).await;
    let msgs = f.buyer_msgs();
    assert_eq!(renewals(&msgs), [2]);
    assert!(
        !msgs
            .iter()
            .any(|m| matches!(m, Response::LeaseNotRenewed { .. })),
        "{msgs:?}"
    );
    f.run_until(105).await;
    let refusals: Vec<_> = f
        .buyer_msgs()
        .into_iter()
        .filter_map(|m| match m {
            Response::LeaseNotRenewed {
                lease,
                minutes,
                reason,
            } => Some((lease, minutes, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), 1, "told once: {refusals:?}");
    let (lease, minutes, reason) = &refusals[0];
    assert_eq!((lease.as_str(), *minutes), (f.lease.as_str(), 2));
    assert!(reason.contains("balance"), "{reason}");
    // The lease then ends as any other at its paid minutes.
    f.run_until(151).await;
    f.end(152, LeaseEnd::Cancelled).await;
    assert_eq!(f.paid().await, 2 * PRICE.0 as i64);
    assert!(f
        .buyer_msgs()
        .iter()
        .any(|m| matches!(m, Response::LeaseEnded { .. })));
}

#[tokio::test]
async fn a_lease_stopped_by_its_buyer_is_not_renewed() {
    let mut f = Fixture::new(1_000_000, Some(10)).await;
    f.run_until(10).await;
    let key = f
        .market
        .store()
        .lease_by_key(&f.lease)
        .await
        .expect("read")
        .expect("lease")
        .buy_order;
    let order_key = f
        .market
        .store()
        .orders_of("ann")
        .await
        .expect("orders")
        .into_iter()
        .find(|o| o.id == key)
        .expect("order")
        .key;
    f.market
        .cancel("ann", &order_key, f.started + 10_000)
        .await
        .expect("cancel");
    f.run_until(59).await;
    assert!(extends(&f.seller_msgs()).is_empty());
    f.end(59, LeaseEnd::Cancelled).await;
    assert_eq!(f.paid().await, PRICE.0 as i64);
}
