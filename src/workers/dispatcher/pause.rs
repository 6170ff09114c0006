//! Whether a receiver is down (or refuses everything), judged by its answers, so
//! that it gets one probe per pause instead of an attempt per delivery: backoff is
//! per delivery, so 150,000 pending deliveries to a closed port made 3,500 attempts
//! (and as many WARN lines) a second, and halved a healthy receiver's drain.
//!
//! After [`FAILURES_TO_PAUSE`] attempts in a row that found the receiver down (no
//! connection, no answer in time, 408, 429, 502, 503, 504), one that asked to wait
//! (`Retry-After`), or [`REFUSALS_TO_PAUSE`] attempts in a row that failed whatever
//! the answer (a URL that redirects, a secret the receiver does not take), its
//! deliveries are paused: none is claimed until the pause ends, then one, as a probe.
//! A probe that arrives resumes them; one that fails pauses them again, twice as long
//! (the deliveries' backoff: its base, doubling, up to its cap). With nothing due to
//! probe with (another replica sent it all), the pause ends too. A receiver that
//! answers 500 to one event type and 2xx to the others is not paused: it is up.
//! Each replica judges on its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::events::Backoff;

/// Attempts in a row that found a receiver down before its deliveries are paused:
/// one slow answer or a restart does not pause a receiver.
pub const FAILURES_TO_PAUSE: u32 = 5;

/// Attempts in a row that failed, whatever the answer, before its deliveries are
/// paused: a receiver that refuses one event type answers the others in between.
pub const REFUSALS_TO_PAUSE: u32 = 50;

/// What one attempt says about its receiver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// It took the event (or asked for no more of this one: 410).
    Up,
    /// Unreachable, silent or overloaded; `asked`: the wait of its `Retry-After`.
    Down { asked: Option<Duration> },
    /// It answered, and refused the event (another 4xx, a 3xx, 500).
    Refused,
    /// The attempt failed on attache's side (its body could not be made).
    Unknown,
}

/// Why a receiver's deliveries are paused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Why {
    Down,
    Refusing,
}

/// A change of a receiver's state, for the log and the gauge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// Its deliveries are paused for this long.
    Paused(Duration, Why),
    /// The probe failed: paused again, for this long.
    StillFailing(Duration),
    /// A delivery arrived (the probe, or one sent before the pause).
    Resumed,
    /// Nothing was due to probe with: nothing is held back.
    NothingDue,
}

/// How many deliveries the claim loop may claim for a receiver now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Room {
    /// As many as there are free slots.
    Free(usize),
    /// One, as the probe of a paused receiver.
    Probe,
    /// None: paused, or its probe is under way.
    None,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Taking deliveries; the last attempts, in a row, that found it `down` and that
    /// `failed` (down or refused).
    Taking { down: u32, failed: u32 },
    /// Taking none until `until`, then one probe (`probing` once it is sent);
    /// `pauses`: how many in a row.
    Paused {
        until: Instant,
        pauses: u32,
        why: Why,
        probing: bool,
    },
}

/// A receiver fresh from a pause whose probe found nothing due: one more failure
/// pauses it again at once.
const ON_PROBATION: State = State::Taking {
    down: FAILURES_TO_PAUSE - 1,
    failed: REFUSALS_TO_PAUSE - 1,
};

/// One receiver's state, shared by the claim loop and the deliveries in flight.
pub struct ReceiverPause {
    state: Mutex<State>,
    backoff: Backoff,
}

impl ReceiverPause {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            state: Mutex::new(State::Taking { down: 0, failed: 0 }),
            backoff,
        }
    }

    /// How many deliveries may be claimed now, of the `free` slots: all while it
    /// takes deliveries, none while paused, one (the probe) once the pause is over
    /// and nothing sent before it is still in flight.
    pub fn room(&self, free: usize, in_flight: usize, now: Instant) -> Room {
        match *self.lock() {
            State::Taking { .. } => Room::Free(free),
            State::Paused {
                until,
                probing: false,
                ..
            } if now >= until && in_flight == 0 && free > 0 => Room::Probe,
            State::Paused { .. } => Room::None,
        }
    }

    /// The claim for a probe came back: with the probe (`sent`), whose outcome
    /// decides, or empty.
    pub fn probed(&self, sent: bool) -> Option<Change> {
        let mut state = self.lock();
        let State::Paused { probing, .. } = &mut *state else {
            return None;
        };
        if sent {
            *probing = true;
            return None;
        }
        *state = ON_PROBATION;
        Some(Change::NothingDue)
    }

    /// Takes an attempt's verdict into account; the change it makes, if any.
    pub fn record(&self, verdict: Verdict, now: Instant) -> Option<Change> {
        let mut state = self.lock();
        let (next, change) = match (*state, verdict) {
            // The probe failed on attache's side: it says nothing of the receiver,
            // and another probe may go (left marked, none ever would).
            (
                State::Paused {
                    until,
                    pauses,
                    why,
                    probing: true,
                },
                Verdict::Unknown,
            ) => (
                State::Paused {
                    until,
                    pauses,
                    why,
                    probing: false,
                },
                None,
            ),
            (_, Verdict::Unknown) => return None,
            (State::Taking { .. }, Verdict::Up) => (State::Taking { down: 0, failed: 0 }, None),
            (State::Paused { .. }, Verdict::Up) => {
                (State::Taking { down: 0, failed: 0 }, Some(Change::Resumed))
            }
            (State::Taking { down, failed }, verdict) => {
                let failed = failed.saturating_add(1);
                let (down, asked) = match verdict {
                    Verdict::Down { asked } => (down.saturating_add(1), asked),
                    // It answered: whatever it refused, it is there.
                    _ => (0, None),
                };
                let why = if down >= FAILURES_TO_PAUSE || asked.is_some() {
                    Some(Why::Down)
                } else {
                    (failed >= REFUSALS_TO_PAUSE).then_some(Why::Refusing)
                };
                match why {
                    None => (State::Taking { down, failed }, None),
                    Some(why) => {
                        let pause = self.pause(1, asked);
                        let paused = State::Paused {
                            until: now + pause,
                            pauses: 1,
                            why,
                            probing: false,
                        };
                        (paused, Some(Change::Paused(pause, why)))
                    }
                }
            }
            // Paused for being down, the probe got an answer: it is there again.
            (
                State::Paused {
                    why: Why::Down,
                    probing: true,
                    ..
                },
                Verdict::Refused,
            ) => (State::Taking { down: 0, failed: 1 }, Some(Change::Resumed)),
            (
                State::Paused {
                    pauses,
                    why,
                    probing: true,
                    ..
                },
                verdict,
            ) => {
                let pauses = pauses.saturating_add(1);
                let asked = match verdict {
                    Verdict::Down { asked } => asked,
                    _ => None,
                };
                let pause = self.pause(pauses, asked);
                let paused = State::Paused {
                    until: now + pause,
                    pauses,
                    why,
                    probing: false,
                };
                (paused, Some(Change::StillFailing(pause)))
            }
            // A delivery sent before the pause: the pause stands.
            (paused @ State::Paused { .. }, _) => (paused, None),
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

    /// A receiver paused for being down, and when its pause is over.
    fn paused_for_a_second() -> (ReceiverPause, Instant) {
        let receiver = pause();
        let now = Instant::now();
        for _ in 0..FAILURES_TO_PAUSE {
            receiver.record(DOWN, now);
        }
        (receiver, now + Duration::from_secs(1))
    }

    #[test]
    fn the_fifth_failure_in_a_row_pauses_and_a_probe_resumes() {
        let receiver = pause();
        let now = Instant::now();
        for _ in 1..FAILURES_TO_PAUSE {
            assert_eq!(receiver.record(DOWN, now), None);
        }
        assert_eq!(receiver.room(16, 0, now), Room::Free(16));
        assert_eq!(
            receiver.record(DOWN, now),
            Some(Change::Paused(Duration::from_secs(1), Why::Down))
        );
        assert_eq!(receiver.room(16, 0, now), Room::None);
        // Deliveries sent before the pause end, even after it: it stands, and the
        // probe waits for them.
        let over = now + Duration::from_secs(1);
        assert_eq!(receiver.record(DOWN, over), None);
        assert_eq!(receiver.room(16, 3, over), Room::None);
        assert_eq!(receiver.room(16, 0, over), Room::Probe);
        assert_eq!(receiver.probed(true), None);
        assert_eq!(receiver.room(16, 1, over), Room::None);
        assert_eq!(
            receiver.record(DOWN, over),
            Some(Change::StillFailing(Duration::from_secs(2)))
        );
        let later = over + Duration::from_secs(2);
        assert_eq!(receiver.room(16, 0, later), Room::Probe);
        assert_eq!(receiver.probed(true), None);
        assert_eq!(receiver.record(Verdict::Up, later), Some(Change::Resumed));
        assert_eq!(receiver.room(16, 1, later), Room::Free(16));
    }

    /// A receiver that answers 500 (or 400) to one event type and 2xx to the others
    /// is up: its answers between the refusals start the count again.
    #[test]
    fn refusals_between_answers_pause_nothing() {
        let receiver = pause();
        let now = Instant::now();
        for _ in 0..20 {
            for _ in 1..REFUSALS_TO_PAUSE {
                assert_eq!(receiver.record(Verdict::Refused, now), None);
            }
            assert_eq!(receiver.record(Verdict::Up, now), None);
            assert_eq!(receiver.record(Verdict::Unknown, now), None);
        }
        assert_eq!(receiver.room(16, 0, now), Room::Free(16));
    }

    /// A URL that redirects, or a secret the receiver does not take: every attempt
    /// refused. Paused after 50; a probe still refused pauses it again.
    #[test]
    fn a_receiver_that_refuses_everything_is_paused_too() {
        let receiver = pause();
        let now = Instant::now();
        for _ in 1..REFUSALS_TO_PAUSE {
            assert_eq!(receiver.record(Verdict::Refused, now), None);
        }
        assert_eq!(
            receiver.record(Verdict::Refused, now),
            Some(Change::Paused(Duration::from_secs(1), Why::Refusing))
        );
        let over = now + Duration::from_secs(1);
        assert_eq!(receiver.room(16, 0, over), Room::Probe);
        receiver.probed(true);
        assert_eq!(
            receiver.record(Verdict::Refused, over),
            Some(Change::StillFailing(Duration::from_secs(2)))
        );
    }

    /// Paused for being down, a probe that gets any answer finds it there again.
    #[test]
    fn a_refused_probe_of_a_receiver_down_resumes_it() {
        let receiver = pause();
        let now = Instant::now();
        let asked = Verdict::Down {
            asked: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            receiver.record(asked, now),
            Some(Change::Paused(Duration::from_secs(30), Why::Down))
        );
        let over = now + Duration::from_secs(30);
        assert_eq!(
            receiver.room(16, 0, now + Duration::from_secs(29)),
            Room::None
        );
        assert_eq!(receiver.room(16, 0, over), Room::Probe);
        receiver.probed(true);
        assert_eq!(
            receiver.record(Verdict::Refused, over),
            Some(Change::Resumed)
        );
    }

    /// A probe whose body could not be made (the database slow) says nothing of the
    /// receiver: the next round sends another.
    #[test]
    fn a_probe_that_failed_on_our_side_is_sent_again() {
        let (receiver, over) = paused_for_a_second();
        assert_eq!(receiver.room(16, 0, over), Room::Probe);
        receiver.probed(true);
        assert_eq!(receiver.record(Verdict::Unknown, over), None);
        assert_eq!(receiver.room(16, 0, over), Room::Probe);
    }

    /// Nothing due to probe with (another replica sent it all): nothing is held back,
    /// and one more failure pauses it again at once.
    #[test]
    fn a_probe_with_nothing_due_ends_the_pause_on_probation() {
        let (receiver, over) = paused_for_a_second();
        assert_eq!(receiver.room(16, 0, over), Room::Probe);
        assert_eq!(receiver.probed(false), Some(Change::NothingDue));
        assert_eq!(receiver.room(16, 0, over), Room::Free(16));
        assert_eq!(
            receiver.record(DOWN, over),
            Some(Change::Paused(Duration::from_secs(1), Why::Down))
        );
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
            let Some(Change::Paused(pause, _) | Change::StillFailing(pause)) =
                receiver.record(DOWN, now)
            else {
                panic!("a failed probe pauses again");
            };
            pauses.push(pause.as_secs());
            now += pause;
            assert_eq!(receiver.room(16, 0, now), Room::Probe);
            receiver.probed(true);
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
    }
}
