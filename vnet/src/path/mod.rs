//! Path choice for one peer: direct UDP when a probe round-trips, otherwise
//! through the relay member; back to direct as soon as a later probe succeeds.
//!
//! Both sides probe every candidate endpoint at the same time (simultaneous
//! open), so a NAT on either side sees outbound traffic first and lets the
//! other side's probes in. Probes are encrypted transport messages on the
//! peer's session: a reply proves the peer itself answered from that address.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Probe interval while no direct path is known.
pub const SEARCH_INTERVAL: Duration = Duration::from_secs(5);
/// Probe (keepalive) interval on a working direct path: holds NAT mappings,
/// which typically expire after 30 s or more of silence.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
/// Probe interval once a direct probe went unanswered.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered direct probes after which the direct path is declared dead.
pub const MAX_MISSED_PROBES: u32 = 3;
/// If we keep sending directly but have heard nothing back for this long,
/// probe at once instead of waiting for the keepalive.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(5);
/// Most endpoint candidates kept per peer (told plus learnt).
pub const MAX_CANDIDATES: usize = 24;
/// Outstanding probes remembered per peer.
const MAX_OUTSTANDING: usize = 16;

/// How a probe (or any message) travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Straight to this UDP endpoint.
    Direct(SocketAddr),
    /// Wrapped through the relay member.
    Relay,
}

/// Where to send the next message for this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A confirmed direct endpoint.
    Direct(SocketAddr),
    /// Through the relay member.
    Relay,
    /// No confirmed path and no relay: try every candidate.
    Spray,
    /// Nothing known at all.
    Unreachable,
}

/// Path kind shown in status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Direct UDP.
    Direct,
    /// Session up, sending to every candidate until a probe confirms one.
    Unconfirmed,
    /// Through the relay member.
    Relayed,
    /// No working path.
    Unreachable,
}

/// Per-peer status for `cpushare net status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer id (hex).
    pub peer: String,
    /// Virtual address.
    pub address: String,
    /// Current path.
    pub path: PathKind,
    /// Direct endpoint in use, if any.
    pub endpoint: Option<SocketAddr>,
    /// Smoothed probe round-trip time in microseconds.
    pub rtt_us: Option<u64>,
    /// Payload bytes received from the peer.
    pub bytes_in: u64,
    /// Payload bytes sent to the peer.
    pub bytes_out: u64,
    /// Whether a transport session is established.
    pub session: bool,
    /// Seconds since the current session's handshake.
    pub session_age_s: Option<u64>,
    /// Times the direct path was lost and traffic fell back to the relay.
    pub fallbacks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    id: u64,
    via: Via,
    sent: Instant,
}

/// Path state of one peer.
#[derive(Debug, Clone)]
pub struct Path {
    candidates: Vec<SocketAddr>,
    direct: Option<SocketAddr>,
    srtt: Option<Duration>,
    probes: Vec<Probe>,
    next_probe: Instant,
    next_id: u64,
    missed: u32,
    last_probe: Instant,
    probe_now: bool,
    last_direct_rx: Option<Instant>,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Direct-path losses so far.
    pub fallbacks: u64,
}

impl Path {
    /// A path that starts probing `candidates` at once.
    pub fn new(candidates: Vec<SocketAddr>, now: Instant) -> Self {
        Self {
            candidates,
            direct: None,
            srtt: None,
            probes: Vec::new(),
            next_probe: now,
            next_id: 1,
            missed: 0,
            last_probe: now,
            probe_now: false,
            last_direct_rx: None,
            bytes_in: 0,
            bytes_out: 0,
            fallbacks: 0,
        }
    }

    /// Replaces the endpoint candidates (new rendezvous information).
    /// Addresses the peer was heard from (learnt, not told) are kept, up to
    /// [`MAX_CANDIDATES`], so a hard NAT's real mapping survives updates.
    pub fn set_candidates(&mut self, mut candidates: Vec<SocketAddr>, now: Instant) {
        for old in &self.candidates {
            if !candidates.contains(old) && candidates.len() < MAX_CANDIDATES {
                candidates.push(*old);
            }
        }
        self.candidates = candidates;
        if self.direct.is_none() {
            self.next_probe = now;
        }
    }

    /// The candidates currently probed.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// The confirmed direct endpoint.
    pub fn direct(&self) -> Option<SocketAddr> {
        self.direct
    }

    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Where to send now; `relay_usable` says whether the relay member itself is reachable.
    pub fn route(&self, relay_usable: bool) -> Route {
        match self.direct {
            Some(a) => Route::Direct(a),
            None if relay_usable => Route::Relay,
            None if !self.candidates.is_empty() => Route::Spray,
            None => Route::Unreachable,
        }
    }

    /// When [`Path::poll_probe`] next wants to run.
    pub fn poll_timeout(&self) -> Instant {
        self.next_probe
    }

    /// If a probe round is due, returns its id and where to send it.
    /// `relay_usable` adds a probe through the relay to measure its RTT.
    pub fn poll_probe(
        &mut self,
        now: Instant,
        relay_usable: bool,
        out: &mut Vec<Via>,
    ) -> Option<u64> {
        if now < self.next_probe {
            return None;
        }
        out.clear();
        if let Some(d) = self.direct {
            // Each direct probe is checked RETRY_INTERVAL after it was sent.
            if self.probes.iter().any(|p| p.via == Via::Direct(d)) {
                self.missed += 1;
                if self.missed >= MAX_MISSED_PROBES {
                    self.lose_direct();
                    return self.poll_probe(now, relay_usable, out);
                }
            } else if self.missed == 0
                && !self.probe_now
                && now < self.last_probe + KEEPALIVE_INTERVAL
            {
                self.next_probe = self.last_probe + KEEPALIVE_INTERVAL;
                return None;
            }
            out.push(Via::Direct(d));
            self.probe_now = false;
            self.last_probe = now;
            self.next_probe = now + RETRY_INTERVAL;
        } else {
            out.extend(self.candidates.iter().map(|a| Via::Direct(*a)));
            if relay_usable {
                out.push(Via::Relay);
            }
            self.next_probe = now + SEARCH_INTERVAL;
        }
        if out.is_empty() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.probes
            .retain(|p| now.saturating_duration_since(p.sent) < SEARCH_INTERVAL * 3);
        for via in out.iter() {
            if self.probes.len() >= MAX_OUTSTANDING {
                self.probes.remove(0);
            }
            self.probes.push(Probe {
                id,
                via: *via,
                sent: now,
            });
        }
        Some(id)
    }

    fn lose_direct(&mut self) {
        self.direct = None;
        self.missed = 0;
        self.srtt = None;
        self.fallbacks += 1;
        self.probes.clear();
    }

    fn sample_rtt(&mut self, rtt: Duration) {
        // RFC 6298 smoothing, alpha = 1/8.
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    /// A probe reply arrived; a direct reply confirms (or switches to) that endpoint.
    pub fn on_probe_reply(&mut self, now: Instant, id: u64, via: Via) {
        let Some(i) = self.probes.iter().position(|p| p.id == id && p.via == via) else {
            return;
        };
        let p = self.probes.swap_remove(i);
        let rtt = now.saturating_duration_since(p.sent);
        match via {
            Via::Direct(a) => {
                if self.direct != Some(a) {
                    self.srtt = None;
                    self.last_probe = now;
                    self.next_probe = now + KEEPALIVE_INTERVAL;
                }
                self.direct = Some(a);
                self.missed = 0;
                self.last_direct_rx = Some(now);
                self.probes.retain(|p| p.via != Via::Direct(a));
                self.sample_rtt(rtt);
            }
            Via::Relay if self.direct.is_none() => self.sample_rtt(rtt),
            Via::Relay => {}
        }
    }

    /// A handshake response arrived directly from `from`: as good as a probe reply.
    pub fn on_handshake_direct(&mut self, now: Instant, from: SocketAddr, rtt: Duration) {
        if self.direct != Some(from) {
            self.srtt = None;
            self.last_probe = now;
            self.next_probe = now + KEEPALIVE_INTERVAL;
        }
        self.direct = Some(from);
        self.missed = 0;
        self.last_direct_rx = Some(now);
        self.sample_rtt(rtt);
    }

    /// Any authenticated message arrived directly from `from`.
    pub fn on_direct_rx(&mut self, now: Instant, from: SocketAddr) {
        match self.direct {
            Some(d) if d == from => self.last_direct_rx = Some(now),
            Some(_) => {
                // The peer roamed (new NAT mapping): follow it, as WireGuard does.
                self.direct = Some(from);
                self.last_direct_rx = Some(now);
                self.srtt = None;
            }
            None => {
                if !self.candidates.contains(&from) && self.candidates.len() < MAX_CANDIDATES {
                    self.candidates.push(from);
                }
                // The peer reaches us from there: check the way back soon.
                self.next_probe = self.next_probe.min(now + RETRY_INTERVAL);
            }
        }
    }

    /// We sent a message on the direct path: if the peer has been silent for
    /// a while, probe now rather than at the next keepalive.
    pub fn on_direct_tx(&mut self, now: Instant) {
        if self.direct.is_some()
            && self.missed == 0
            && self
                .last_direct_rx
                .is_some_and(|t| now.saturating_duration_since(t) > SUSPECT_AFTER)
            && !self.probe_now
        {
            self.probe_now = true;
            self.next_probe = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], p))
    }

    #[test]
    fn probe_reply_makes_path_direct_with_rtt() {
        let t0 = Instant::now();
        let mut p = Path::new(vec![addr(1), addr(2)], t0);
        assert_eq!(p.route(true), Route::Relay);
        assert_eq!(p.route(false), Route::Spray);
        let mut via = Vec::new();
        let id = p.poll_probe(t0, true, &mut via).unwrap();
        assert_eq!(
            via,
            vec![Via::Direct(addr(1)), Via::Direct(addr(2)), Via::Relay]
        );
        p.on_probe_reply(t0 + Duration::from_millis(3), id, Via::Relay);
        assert_eq!(p.rtt(), Some(Duration::from_millis(3)));
        assert_eq!(p.route(true), Route::Relay);
        p.on_probe_reply(t0 + Duration::from_millis(1), id, Via::Direct(addr(2)));
        assert_eq!(p.route(true), Route::Direct(addr(2)));
        assert_eq!(p.rtt(), Some(Duration::from_millis(1)));
    }

    #[test]
    fn unknown_probe_ids_are_ignored() {
        let t0 = Instant::now();
        let mut p = Path::new(vec![addr(1)], t0);
        p.on_probe_reply(t0, 99, Via::Direct(addr(1)));
        assert_eq!(p.direct(), None);
        let mut via = Vec::new();
        let id = p.poll_probe(t0, false, &mut via).unwrap();
        p.on_probe_reply(t0, id, Via::Direct(addr(7)));
        assert_eq!(p.direct(), None, "reply from an address we did not probe");
    }

    #[test]
    fn silent_direct_path_falls_back_to_relay_then_recovers() {
        let t0 = Instant::now();
        let mut p = Path::new(vec![addr(1)], t0);
        let mut via = Vec::new();
        let id = p.poll_probe(t0, true, &mut via).unwrap();
        p.on_probe_reply(t0, id, Via::Direct(addr(1)));
        assert_eq!(p.route(true), Route::Direct(addr(1)));
        // Keepalive probes go unanswered: one miss per probe after the first.
        let mut t = p.poll_timeout();
        assert_eq!(t, t0 + KEEPALIVE_INTERVAL);
        // A check before the keepalive is due sends nothing.
        assert_eq!(
            p.poll_probe(t0 + Duration::from_secs(3), true, &mut via),
            None
        );
        let mut rounds = 0;
        while p.direct().is_some() {
            p.poll_probe(t, true, &mut via);
            t = p.poll_timeout();
            rounds += 1;
            assert!(rounds < 10);
        }
        assert_eq!(p.route(true), Route::Relay);
        assert_eq!(p.fallbacks, 1);
        assert!(t <= t0 + KEEPALIVE_INTERVAL + RETRY_INTERVAL * 4 + SEARCH_INTERVAL);
        // A later search probe succeeds: back to direct.
        let now = p.poll_timeout();
        let id = p.poll_probe(now, true, &mut via).unwrap();
        assert!(via.contains(&Via::Direct(addr(1))));
        p.on_probe_reply(now, id, Via::Direct(addr(1)));
        assert_eq!(p.route(true), Route::Direct(addr(1)));
    }

    #[test]
    fn relay_death_leaves_spray_or_unreachable() {
        let t0 = Instant::now();
        let p = Path::new(vec![addr(1)], t0);
        assert_eq!(p.route(false), Route::Spray);
        let q = Path::new(vec![], t0);
        assert_eq!(q.route(false), Route::Unreachable);
        assert_eq!(q.route(true), Route::Relay);
    }

    #[test]
    fn roaming_and_learned_candidates() {
        let t0 = Instant::now();
        let mut p = Path::new(vec![], t0);
        p.on_direct_rx(t0, addr(5));
        assert_eq!(p.candidates(), &[addr(5)]);
        p.on_handshake_direct(t0, addr(5), Duration::from_micros(50));
        p.on_direct_rx(t0, addr(6));
        assert_eq!(p.direct(), Some(addr(6)));
    }

    #[test]
    fn sending_into_silence_triggers_early_probe() {
        let t0 = Instant::now();
        let mut p = Path::new(vec![addr(1)], t0);
        p.on_handshake_direct(t0, addr(1), Duration::from_micros(50));
        assert_eq!(p.poll_timeout(), t0 + KEEPALIVE_INTERVAL);
        p.on_direct_tx(t0 + Duration::from_secs(1));
        assert_eq!(p.poll_timeout(), t0 + KEEPALIVE_INTERVAL);
        let t = t0 + SUSPECT_AFTER + Duration::from_secs(1);
        p.on_direct_tx(t);
        assert_eq!(p.poll_timeout(), t);
        let mut via = Vec::new();
        assert!(p.poll_probe(t, false, &mut via).is_some());
        assert_eq!(via, vec![Via::Direct(addr(1))]);
    }
}
