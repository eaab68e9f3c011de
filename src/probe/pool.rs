//! The prober's own keep-alive pool: per engine address, the idle connections and the
//! slots that bound them, tied to the descriptor budget (`limits.rs` sizes `budget`).
//!
//! Slots are handed out by demand, at most `budget` in all. An address gets one slot per
//! probe of it in flight at once, up to the budget, and keeps its slots while it is probed,
//! so the set is stable from tick to tick: engines at distinct addresses hold one each,
//! games sharing one address (one engine process or gateway for many games) hold as many as
//! are probed at once. An address not probed for the idle timeout gives its slots and its
//! idle connections up. A probe keeps its connection for the next one only while it holds
//! a slot, so each address holds at most its slots in idle connections, and the pool at
//! most `budget`.
//!
//! What an idle connection keeps beside its socket (and TLS session) is the prober's
//! choice; the pool tells it whether the address is shared ([`SlotHold::shared`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use url::Url;

pub(crate) struct KeepAlive<T> {
    budget: usize,
    idle_timeout: Duration,
    table: Mutex<SlotTable<T>>,
}

struct SlotTable<T> {
    /// By a hash of scheme, host and port: a collision only makes two addresses share
    /// slots (and connections: the key includes the scheme, so a plain socket never meets
    /// a TLS probe, and hash collisions of distinct addresses are 2^-64 events), and a `u64`
    /// costs no allocation per probe.
    addresses: HashMap<u64, AddressSlots<T>>,
    /// The sum of every address's `slots`.
    slots: usize,
    last_purge: Instant,
}

struct AddressSlots<T> {
    slots: usize,
    in_flight: usize,
    last_used: Instant,
    /// Idle connections and when each was put back; the most recent last.
    idle: Vec<(T, Instant)>,
}

/// A full slot table is swept for addresses gone quiet at most this often, so a fleet
/// beyond the budget costs one sweep per second rather than one per probe.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// A probe's hold on one of its address's slots, given back when the probe ends (or is
/// dropped half-way).
pub(crate) struct SlotHold<'a, T> {
    keep_alive: &'a KeepAlive<T>,
    key: u64,
    shared: bool,
}

impl<T> Drop for SlotHold<'_, T> {
    fn drop(&mut self) {
        let mut table = self.keep_alive.lock();
        if let Some(address) = table.addresses.get_mut(&self.key) {
            address.in_flight = address.in_flight.saturating_sub(1);
        }
    }
}

impl<T> SlotHold<'_, T> {
    /// Whether the address held more than one slot when this hold was taken: several
    /// probes of it run at once (games behind one engine process or gateway), so its idle
    /// connections are reused within a tick rather than once per interval.
    pub(crate) fn shared(&self) -> bool {
        self.shared
    }

    /// The most recently used idle connection of this address that has not been idle for
    /// longer than the idle timeout; older ones are closed on the way.
    pub(crate) fn take_idle(&mut self) -> Option<T> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut table = self.keep_alive.lock();
            let address = table.addresses.get_mut(&self.key)?;
            let mut found = None;
            while let Some((connection, since)) = address.idle.pop() {
                if now.duration_since(since) < self.keep_alive.idle_timeout {
                    found = Some(connection);
                    break;
                }
                expired.push(connection);
            }
            found
        };
        drop(expired); // closed outside the lock
        found
    }

    /// Puts a connection that is fit for another request back, for the address's next
    /// probe; the slot is given back with it.
    pub(crate) fn check_in(self, connection: T) {
        let mut table = self.keep_alive.lock();
        if let Some(address) = table.addresses.get_mut(&self.key) {
            address.idle.push((connection, Instant::now()));
        }
        // `self` drops here, after the connection is in: the slot and its connection come
        // back together.
    }
}

impl<T> KeepAlive<T> {
    pub(crate) fn new(budget: usize, idle_timeout: Duration) -> Self {
        Self {
            budget,
            idle_timeout,
            table: Mutex::new(SlotTable {
                addresses: HashMap::new(),
                slots: 0,
                last_purge: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotTable<T>> {
        // A std mutex: held for a map lookup, never across an await. A panic while it is
        // held leaves a table that is still consistent enough to use.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn key(url: &Url) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        url.scheme().hash(&mut hasher);
        url.host_str().hash(&mut hasher);
        url.port_or_known_default().hash(&mut hasher);
        hasher.finish()
    }

    /// A slot for a probe of `url` now, or `None`: that probe connects, asks and closes.
    pub(crate) fn hold(&self, url: &Url) -> Option<SlotHold<'_, T>> {
        if self.budget == 0 {
            return None;
        }
        let key = Self::key(url);
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut guard = self.lock();
        let table = &mut *guard;
        if table.slots >= self.budget && now.duration_since(table.last_purge) >= PURGE_EVERY {
            let idle_timeout = self.idle_timeout;
            let mut freed = 0;
            table.addresses.retain(|_, address| {
                let keep =
                    address.in_flight > 0 || now.duration_since(address.last_used) < idle_timeout;
                if !keep {
                    freed += address.slots;
                    gone.append(&mut address.idle);
                }
                keep
            });
            table.slots -= freed;
            table.last_purge = now;
        }
        let has_room = table.slots < self.budget;
        let hold = 'hold: {
            let address = match table.addresses.get_mut(&key) {
                Some(address) => address,
                None if has_room => table.addresses.entry(key).or_insert(AddressSlots {
                    slots: 0,
                    in_flight: 0,
                    last_used: now,
                    idle: Vec::new(),
                }),
                None => break 'hold None,
            };
            address.last_used = now;
            if address.in_flight >= address.slots {
                if !has_room {
                    break 'hold None;
                }
                address.slots += 1;
                table.slots += 1;
            }
            address.in_flight += 1;
            Some(SlotHold {
                keep_alive: self,
                key,
                shared: address.slots > 1,
            })
        };
        drop(guard);
        drop(gone); // closed outside the lock
        hold
    }

    /// Idle connections held now (tests, benchmarks).
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.lock().addresses.values().map(|a| a.idle.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::healthz_url;

    fn slots(budget: usize) -> KeepAlive<u32> {
        KeepAlive::new(budget, Duration::from_secs(90))
    }

    #[test]
    fn one_address_gets_a_slot_per_probe_in_flight_and_keeps_them() {
        let keep_alive = slots(100);
        let url = healthz_url("http://127.0.0.1:8080/e/1").unwrap();
        let other_game = healthz_url("http://127.0.0.1:8080/e/2").unwrap();
        let holds: Vec<_> = (0..3)
            .map(|_| keep_alive.hold(&url).expect("room"))
            .collect();
        assert!(keep_alive.hold(&other_game).is_some(), "same address");
        assert_eq!(keep_alive.lock().slots, 4, "one per probe in flight");
        assert_eq!(
            holds.iter().map(SlotHold::shared).collect::<Vec<_>>(),
            [false, true, true],
            "shared once the address holds a second slot"
        );
        drop(holds);
        // Sequential probes reuse the slots the address already holds.
        for _ in 0..10 {
            assert!(keep_alive.hold(&url).is_some_and(|hold| hold.shared()));
        }
        assert_eq!(keep_alive.lock().slots, 4);
        assert_eq!(keep_alive.lock().addresses.len(), 1);
        let distinct = healthz_url("http://127.0.0.9:8080").unwrap();
        for _ in 0..3 {
            assert!(!keep_alive.hold(&distinct).unwrap().shared(), "one slot");
        }
    }

    #[test]
    fn slots_never_exceed_the_budget() {
        let keep_alive = slots(3);
        let urls: Vec<Url> = (0..5)
            .map(|i| healthz_url(&format!("http://127.0.0.{}:80", i + 1)).unwrap())
            .collect();
        let admitted: Vec<bool> = urls.iter().map(|u| keep_alive.hold(u).is_some()).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        // A held address cannot grow past the budget either.
        let first = keep_alive.hold(&urls[0]).expect("its slot is free again");
        assert!(
            keep_alive.hold(&urls[0]).is_none(),
            "no room for a second slot"
        );
        drop(first);
        assert_eq!(keep_alive.lock().slots, 3);
        assert!(slots(0).hold(&urls[0]).is_none(), "budget 0: never");
    }

    #[test]
    fn quiet_addresses_give_their_slots_and_connections_up() {
        let keep_alive = slots(2);
        let a = healthz_url("http://127.0.0.1:80").unwrap();
        let b = healthz_url("http://127.0.0.2:80").unwrap();
        let c = healthz_url("http://127.0.0.3:80").unwrap();
        let held_b = keep_alive.hold(&b).unwrap();
        keep_alive.hold(&a).unwrap().check_in(1);
        assert_eq!(keep_alive.idle(), 1);
        assert!(keep_alive.hold(&c).is_none(), "full");
        {
            let mut table = keep_alive.lock();
            let long_ago = Instant::now() - Duration::from_secs(600);
            table.last_purge = long_ago;
            for address in table.addresses.values_mut() {
                address.last_used = long_ago;
            }
        }
        assert!(keep_alive.hold(&c).is_some(), "a's slot was freed");
        assert_eq!(keep_alive.idle(), 0, "with its connection");
        assert!(
            keep_alive
                .lock()
                .addresses
                .contains_key(&KeepAlive::<u32>::key(&b)),
            "b is in flight: it keeps its slot however long ago it started"
        );
        drop(held_b);
    }

    #[test]
    fn idle_connections_come_back_most_recent_first_and_expire() {
        let keep_alive = slots(10);
        let url = healthz_url("http://127.0.0.1:80").unwrap();
        let (first, second) = (
            keep_alive.hold(&url).unwrap(),
            keep_alive.hold(&url).unwrap(),
        );
        first.check_in(1);
        second.check_in(2);
        let mut hold = keep_alive.hold(&url).unwrap();
        assert_eq!(hold.take_idle(), Some(2));
        assert_eq!(hold.take_idle(), Some(1));
        assert_eq!(hold.take_idle(), None);
        hold.check_in(3);
        {
            let mut table = keep_alive.lock();
            for address in table.addresses.values_mut() {
                for (_, since) in &mut address.idle {
                    *since -= Duration::from_secs(600);
                }
            }
        }
        let mut hold = keep_alive.hold(&url).unwrap();
        assert_eq!(
            hold.take_idle(),
            None,
            "idle too long: closed, not handed out"
        );
        assert_eq!(keep_alive.idle(), 0);
        drop(hold);
    }
}
