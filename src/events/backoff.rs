//! Exponential backoff with jitter between the attempts of one delivery: base, 2 x
//! base, 4 x base, ... capped, each shortened by up to a fifth at random so that
//! retries of many deliveries spread out instead of arriving together.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// The largest share of a delay that jitter takes off.
const JITTER: f64 = 0.2;

/// The shortest wait a receiver's `Retry-After` gets: a `0` would be sent again at
/// every poll.
const SHORTEST_ASKED: Duration = Duration::from_secs(1);

impl Backoff {
    /// The delay after the `failures`-th failed attempt (1 for the first), without jitter.
    pub fn nominal(&self, failures: u32) -> Duration {
        let factor = 2u32
            .checked_pow(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay after the `failures`-th failure, shortened by jitter in `[0, 1)`.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        self.nominal(failures)
            .mul_f64(1.0 - JITTER * jitter.clamp(0.0, 1.0))
    }

    /// The wait a receiver asked for with `Retry-After`, from 1 s to the cap.
    pub fn asked(&self, retry_after: Duration) -> Duration {
        retry_after.max(SHORTEST_ASKED).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        };
        let delays: Vec<u64> = (1..=12).map(|n| backoff.nominal(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn jitter_shortens_by_at_most_a_fifth() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        };
        assert_eq!(backoff.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(3, 1.0), Duration::from_millis(3200));
        assert!(backoff.delay(20, 0.5) <= Duration::from_secs(600));
    }

    #[test]
    fn a_receiver_asks_for_one_second_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(60),
            max: Duration::from_secs(600),
        };
        assert_eq!(backoff.asked(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            backoff.asked(Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            backoff.asked(Duration::from_secs(86_400)),
            Duration::from_secs(600)
        );
    }
}
