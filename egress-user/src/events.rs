//! Drains the denied-destination ring buffer: one structured log line per destination per
//! interval (the kernel already rate-limits per CPU) naming the name that last resolved to it,
//! a count per destination in the `DENIED` record (for `egress suggest`), and counters.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use egress_common::maps::{DenyEvent, TlsDenyEvent, action, family, reason, v4_of_mapped};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::datapath::Datapath;

/// A destination is logged at most once per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Destinations remembered for de-duplication before the memory is reset.
const MAX_REMEMBERED: usize = 16_384;

/// Counts of events received from the kernel.
#[derive(Debug, Default)]
pub struct EventStats {
    pub dropped: AtomicU64,
    pub audited: AtomicU64,
    /// Denied destinations not recorded for `egress suggest` because its record is full.
    pub unrecorded: AtomicU64,
}

/// Decoded destination of an event.
pub fn destination(ev: &DenyEvent) -> Option<IpAddr> {
    match ev.family {
        family::V4 => Some(IpAddr::from(v4_of_mapped(&ev.daddr))),
        family::V6 => Some(IpAddr::from(ev.daddr)),
        _ => None,
    }
}

/// How often the agent reads `DNS_EVENTS` without being woken: the kernel wakes it only for
/// copies it must act on at once (`dns_flag::urgent`), or when the ring is a quarter full; the
/// rest (answers learned whole in the kernel, answers for names not allowed) only feed the
/// records (`egress status`, log lines, `egress suggest`) and are read this often.
pub const DNS_READ_PERIOD: Duration = Duration::from_millis(50);

/// Records handled before a drain lets other tasks of the runtime run.
const YIELD_EVERY: usize = 256;

/// Hands every record of `ring` to `handle` as it arrives (when the kernel wakes the agent) and,
/// with `period`, also at least that often (for records committed without a wake-up), until
/// `cancel`.
pub async fn drain_ring(
    ring: RingBuf<MapData>,
    cancel: CancellationToken,
    period: Option<Duration>,
    mut handle: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd for as long as it lives, and the `AsyncFd` owns
    // the ring buffer, so the descriptor stays open and the same until the `AsyncFd` drops.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
    let mut tick = period.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let woken = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            guard = fd.readable_mut() => Some(guard?),
            _ = async {
                match tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        // Readiness is cleared before reading, so a wake-up that comes while the records are
        // handled is not lost; a timed read leaves it alone.
        if let Some(mut guard) = woken {
            guard.clear_ready();
        }
        let ring = fd.get_mut();
        let mut handled = 0usize;
        while let Some(item) = ring.next() {
            handle(&item);
            handled += 1;
            if handled.is_multiple_of(YIELD_EVERY) {
                // A backlog (tens of thousands of copies after a stall) must not hold this
                // worker thread: the metrics and health endpoints share the runtime.
                drop(item);
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Reads a plain-data record from the front of a ring buffer item.
pub fn read_record<T: aya::Pod>(item: &[u8]) -> Option<T> {
    if item.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `T: Pod` is plain data valid for any bits, the length is checked above, and
    // `read_unaligned` copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) })
}

/// Drains denied-destination events: counts them and logs each destination at most once per
/// [`LOG_INTERVAL`].
pub async fn drain(
    ring: RingBuf<MapData>,
    stats: &EventStats,
    dp: Arc<Mutex<Datapath>>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut last_logged: HashMap<LogKey, Instant> = HashMap::new();
    drain_ring(ring, cancel, None, |item| {
        if let Some(ev) = read_record::<DenyEvent>(item) {
            let sni = server_name(item);
            let mut dp = dp.lock().unwrap_or_else(|p| p.into_inner());
            record(&ev, sni, stats, &mut last_logged, &mut dp);
        }
    })
    .await
}

/// What a destination is logged under: address, port, protocol and, for a denied ClientHello,
/// the server name (one line per name on a shared address).
type LogKey = (Option<IpAddr>, u16, u8, Option<String>);

/// The server name of a denied ClientHello's record (a [`TlsDenyEvent`]), as text with anything
/// unprintable escaped: it comes from the workload, not from a resolver.
pub fn server_name(item: &[u8]) -> Option<String> {
    let ev = read_record::<TlsDenyEvent>(item)?;
    let len = usize::from(ev.name_len).min(ev.name.len());
    (ev.event.reason == reason::TLS_SNI && len > 0).then(|| {
        ev.name[..len]
            .escape_ascii()
            .to_string()
            .to_ascii_lowercase()
    })
}

fn record(
    ev: &DenyEvent,
    sni: Option<String>,
    stats: &EventStats,
    last_logged: &mut HashMap<LogKey, Instant>,
    dp: &mut Datapath,
) {
    let audited = ev.action == action::AUDITED;
    if audited {
        stats.audited.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
    let dst = destination(ev);
    let name = dst.and_then(|d| dp.answer_name(d));
    // A denied server name is what `egress suggest` proposes, not the allowed name whose
    // address it shares; a TLS connection refused for anything else (no name, not TLS, QUIC)
    // is recorded under its address, whose name is already allowed (a CIDR is the remedy).
    let by_address = matches!(
        ev.reason,
        reason::TLS_NO_SNI
            | reason::TLS_NOT_HELLO
            | reason::TLS_MALFORMED
            | reason::TLS_UNKNOWN
            | reason::QUIC
    );
    if let Some(key) = sni
        .clone()
        .or_else(|| name.clone().filter(|_| !by_address))
        .or_else(|| dst.map(|d| d.to_string()))
        && !dp.record_denied(&key, ev.dport(), ev.proto, audited, sni.is_some())
    {
        stats.unrecorded.fetch_add(1, Ordering::Relaxed);
    }
    let key = (dst, ev.dport(), ev.proto, sni.clone());
    let now = Instant::now();
    if last_logged
        .get(&key)
        .is_some_and(|t| now.duration_since(*t) < LOG_INTERVAL)
    {
        return;
    }
    if last_logged.len() >= MAX_REMEMBERED {
        last_logged.clear();
    }
    last_logged.insert(key, now);
    let proto = egress_common::packet::proto_name(ev.proto);
    let why = match ev.reason {
        reason::MALFORMED => "unparsable headers",
        reason::NOT_ALLOWED => "not allowed",
        other => reason::name(other),
    };
    let dst = dst.map_or_else(|| "unknown".to_owned(), |d| d.to_string());
    // The name that last resolved to the address, if any answer did ("-" otherwise).
    let name = name.as_deref().unwrap_or("-");
    let sni = sni.as_deref().unwrap_or("-");
    if audited {
        tracing::warn!(%dst, port = ev.dport(), proto, sni, name, reason = why, "audit: would drop");
    } else {
        tracing::info!(%dst, port = ev.dport(), proto, sni, name, reason = why, "dropped");
    }
}
