//! Whether a receiver is down, judged by its answers, so that a dead receiver gets
//! one probe per pause instead of an attempt per delivery: backoff is per delivery,
//! so 150,000 pending deliveries to a closed port made 3,500 attempts (and as many
//! WARN lines) a second, and halved a healthy receiver's drain.
//!
//! After [`FAILURES_TO_PAUSE`] attempts in a row that found the receiver down (no
//! connection, no answer in time, 408, 429 or a 5xx), or one that asked to wait
//! (`Retry-After`), its deliveries are paused: none is claimed until the pause ends,
//! then one, as a probe. A probe that arrives resumes them; one that fails pauses
//! them again, twice as long (the deliveries' backoff: its base, doubling, up to its
//! cap). Deliveries that are not sent keep their attempts. Each replica judges on
//! its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::events::Backoff;

/// Attempts in a row that found a receiver down before its deliveries are paused:
/// one slow answer or a restart does not pause a receiver.
pub const FAILURES_TO_PAUSE: u32 = 5;

/// What one attempt says about its receiver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// It answered (even a refusal of this one event: it is there).
    Up,
    /// Unreachable, silent or overloaded; `asked`: the wait of its `Retry-After`.
    Down { asked: Option<Duration> },
    /// The attempt failed on attache's side (its body could not be made).
    Unknown,
}

/// A change of a receiver's state, for the log and the gauge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// Its deliveries are paused for this long.
    Paused(Duration),
    /// The probe failed: paused again, for this long.
    StillDown(Duration),
    /// The probe (or a delivery sent before the pause) arrived.
    Resumed,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Taking deliveries; `failures`: the last attempts that found it down, in a row.
    Taking { failures: u32 },
    /// Taking none until `until`, then one probe; `pauses`: how many in a row.
    Paused { until: Instant, pauses: u32 },
}

/// One receiver's state, shared by the claim loop and the deliveries in flight.
pub struct ReceiverPause {
    state: Mutex<State>,
    backoff: Backoff,
}

impl ReceiverPause {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            state: Mutex::new(State::Taking { failures: 0 }),
            backoff,
        }
    }

    /// How many deliveries may be claimed now, of the `free` slots: all while it
    /// takes deliveries, none while paused, one (the probe) once the pause is over
    /// and nothing sent before it is still in flight.
    pub fn room(&self, free: usize, in_flight: usize, now: Instant) -> usize {
        match *self.lock() {
            State::Taking { .. } => free,
            State::Paused { until, .. } if now >= until && in_flight == 0 => free.min(1),
            State::Paused { .. } => 0,
        }
    }

    /// Takes an attempt's verdict into account; the change it makes, if any.
    pub fn record(&self, verdict: Verdict, now: Instant) -> Option<Change> {
        let mut state = self.lock();
        let (next, change) = match (*state, verdict) {
            (_, Verdict::Unknown) => return None,
            (State::Taking { .. }, Verdict::Up) => (State::Taking { failures: 0 }, None),
            (State::Paused { .. }, Verdict::Up) => {
                (State::Taking { failures: 0 }, Some(Change::Resumed))
            }
            (State::Taking { failures }, Verdict::Down { asked }) => {
                let failures = failures.saturating_add(1);
                if failures < FAILURES_TO_PAUSE && asked.is_none() {
                    (State::Taking { failures }, None)
                } else {
                    let pause = self.pause(1, asked);
                    let until = now + pause;
                    (
                        State::Paused { until, pauses: 1 },
                        Some(Change::Paused(pause)),
                    )
                }
            }
            // The probe: sent once the pause was over.
            (State::Paused { until, pauses }, Verdict::Down { asked }) if now >= until => {
                let pauses = pauses.saturating_add(1);
                let pause = self.pause(pauses, asked);
                let until = now + pause;
                (
                    State::Paused { until, pauses },
                    Some(Change::StillDown(pause)),
                )
            }
            // A delivery sent before the pause: the pause stands.
            (paused @ State::Paused { .. }, Verdict::Down { .. }) => (paused, None),
        };
        *state = next;
        change
    }

    /// The `pauses`-th pause in a row: what the receiver asked for, or the backoff.
    fn pause(&self, pauses: u32, asked: Option<Duration>) -> Duration {
        asked.map_or_else(
            || self.backoff.nominal(pauses),
            |asked| self.backoff.asked(asked),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a copy written whole: a panic elsewhere cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause() -> ReceiverPause {
        ReceiverPause::new(Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        })
    }

    const DOWN: Verdict = Verdict::Down { asked: None };

    #[test]
    fn the_fifth_failure_in_a_row_pauses_and_a_probe_resumes() {
        let receiver = pause();
        let now = Instant::now();
        for _ in 1..FAILURES_TO_PAUSE {
            assert_eq!(receiver.record(DOWN, now), None);
        }
        assert_eq!(receiver.room(16, 0, now), 16);
        assert_eq!(
            receiver.record(DOWN, now),
            Some(Change::Paused(Duration::from_secs(1)))
        );
        assert_eq!(receiver.room(16, 0, now), 0);
        // Deliveries sent before the pause end: it stands, and the probe waits for them.
        assert_eq!(receiver.record(DOWN, now), None);
        let over = now + Duration::from_secs(1);
        assert_eq!(receiver.room(16, 3, over), 0);
        assert_eq!(receiver.room(16, 0, over), 1);
        assert_eq!(
            receiver.record(DOWN, over),
            Some(Change::StillDown(Duration::from_secs(2)))
        );
        let later = over + Duration::from_secs(2);
        assert_eq!(receiver.room(16, 0, later), 1);
        assert_eq!(receiver.record(Verdict::Up, later), Some(Change::Resumed));
        assert_eq!(receiver.room(16, 1, later), 16);
    }

    #[test]
    fn an_answer_between_failures_starts_the_count_again() {
        let receiver = pause();
        let now = Instant::now();
        for _ in 0..3 {
            for _ in 1..FAILURES_TO_PAUSE {
                assert_eq!(receiver.record(DOWN, now), None);
            }
            assert_eq!(receiver.record(Verdict::Up, now), None);
            assert_eq!(receiver.record(Verdict::Unknown, now), None);
        }
        assert_eq!(receiver.room(16, 0, now), 16);
    }

    #[test]
    fn retry_after_pauses_at_once_for_what_it_asks() {
        let receiver = pause();
        let now = Instant::now();
        let asked = Verdict::Down {
            asked: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            receiver.record(asked, now),
            Some(Change::Paused(Duration::from_secs(30)))
        );
        assert_eq!(receiver.room(16, 0, now + Duration::from_secs(29)), 0);
        assert_eq!(receiver.room(16, 0, now + Duration::from_secs(30)), 1);
    }

    #[test]
    fn pauses_double_up_to_the_backoff_cap() {
        let receiver = pause();
        let mut now = Instant::now();
        for _ in 1..FAILURES_TO_PAUSE {
            receiver.record(DOWN, now);
        }
        let mut pauses = Vec::new();
        for _ in 0..12 {
            let Some(Change::Paused(pause) | Change::StillDown(pause)) = receiver.record(DOWN, now)
            else {
                panic!("a failed probe pauses again");
            };
            pauses.push(pause.as_secs());
            now += pause;
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
    }
}
