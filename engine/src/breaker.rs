//! A circuit breaker per backend: after `threshold` failed calls in a row it opens and calls fail
//! at once (so the episode can use the backend's fallback alias) instead of piling up retries on a
//! server that is down. After `cooldown` it lets one probe call through: success closes it, failure
//! opens it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is out; everyone else waits for its verdict.
    Probing,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    /// Set while the state is not closed: callers on the hot path read only this.
    tripped: AtomicBool,
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            tripped: AtomicBool::new(false),
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Whether a call may go to the backend now.
    pub(crate) fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    pub(crate) fn allow_at(&self, now: Instant) -> bool {
        if !self.tripped.load(Ordering::Acquire) {
            return true;
        }
        let mut s = self.state.lock();
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *s = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => false,
        }
    }

    /// Whether the breaker is open now, with no probe due: calls that passed [`Breaker::allow`]
    /// before it opened and have not been sent yet are refused. A probe in flight does not make it
    /// open here: that probe is a call being let through.
    pub(crate) fn is_open(&self) -> bool {
        self.is_open_at(Instant::now())
    }

    pub(crate) fn is_open_at(&self, now: Instant) -> bool {
        if !self.tripped.load(Ordering::Acquire) {
            return false;
        }
        matches!(*self.state.lock(), State::Open { until } if now < until)
    }

    /// Records a call's outcome; returns true when this outcome opened the breaker.
    pub(crate) fn record(&self, ok: bool) -> bool {
        self.record_at(ok, Instant::now())
    }

    pub(crate) fn record_at(&self, ok: bool, now: Instant) -> bool {
        let mut s = self.state.lock();
        if ok {
            *s = State::Closed { failures: 0 };
            self.tripped.store(false, Ordering::Release);
            return false;
        }
        match *s {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                *s = State::Open {
                    until: now + self.cooldown,
                };
                self.tripped.store(true, Ordering::Release);
                true
            }
            State::Closed { failures } => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Probing => {
                *s = State::Open {
                    until: now + self.cooldown,
                };
                self.tripped.store(true, Ordering::Release);
                true
            }
            // A call that was already in flight when the breaker opened.
            State::Open { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_failures_in_a_row() {
        let b = Breaker::new(3, Duration::from_secs(5));
        let t = Instant::now();
        assert!(!b.record_at(false, t));
        assert!(!b.record_at(true, t), "a success resets the count");
        assert!(!b.record_at(false, t));
        assert!(!b.record_at(false, t));
        assert!(b.allow_at(t));
        assert!(b.record_at(false, t), "third failure in a row opens");
        assert!(!b.allow_at(t + Duration::from_secs(1)));
    }

    #[test]
    fn is_open_only_while_no_probe_is_due() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t = Instant::now();
        assert!(!b.is_open_at(t));
        assert!(b.record_at(false, t));
        assert!(b.is_open_at(t + Duration::from_secs(1)));
        let later = t + Duration::from_secs(5);
        assert!(!b.is_open_at(later), "a probe is due");
        assert!(b.allow_at(later));
        assert!(!b.is_open_at(later), "the probe is out");
    }

    #[test]
    fn lets_one_probe_through_after_the_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t = Instant::now();
        assert!(b.record_at(false, t));
        let later = t + Duration::from_secs(5);
        assert!(b.allow_at(later), "the probe");
        assert!(!b.allow_at(later), "only one probe");
        assert!(b.record_at(false, later), "a failed probe opens again");
        assert!(!b.allow_at(later + Duration::from_secs(1)));
        let again = later + Duration::from_secs(5);
        assert!(b.allow_at(again));
        assert!(!b.record_at(true, again));
        assert!(
            b.allow_at(again) && b.allow_at(again),
            "closed after a good probe"
        );
    }
}
