//! The counts (`totalCount`) of one tenant run at most [`PER_TENANT`] at once. A
//! count reads every row of its scope (a million rows: some 180 ms of a database
//! connection), and one request may ask for ten through aliases: eight such
//! requests of one tenant held every connection of the pool, and every other
//! tenant's uploads, listings and downloads waited seconds for one. A tenant's
//! counts past its share wait for its own, holding no connection meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

/// Counts of one tenant at once: the pool keeps the rest for other work.
pub const PER_TENANT: usize = 2;

/// Tenants kept; past it, those whose counts are all done go.
const MOST_TENANTS: usize = 10_000;

#[derive(Default)]
pub struct CountSlots {
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl CountSlots {
    /// Runs `count` in one of `tenant`'s slots, once one is free.
    pub async fn run<T>(&self, tenant: &str, count: impl Future<Output = T>) -> T {
        let slots = {
            let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
            if tenants.len() >= MOST_TENANTS {
                tenants.retain(|_, slots| Arc::strong_count(slots) > 1);
            }
            let slots = tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(PER_TENANT)));
            Arc::clone(slots)
        };
        // Never closed: a permit comes, however long the tenant's own counts take.
        let _slot = slots.acquire().await;
        count.await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Ten counts of one tenant at once run two at a time; another tenant's count
    /// does not wait for them.
    #[tokio::test]
    async fn a_tenant_s_counts_wait_for_its_own() {
        let slots = Arc::new(CountSlots::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut counts = Vec::new();
        for _ in 0..10 {
            let (slots, running, most) = (slots.clone(), running.clone(), most.clone());
            counts.push(tokio::spawn(async move {
                slots
                    .run("noisy", async {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let quiet = tokio::time::timeout(Duration::from_millis(20), slots.run("quiet", async {}));
        assert!(quiet.await.is_ok(), "another tenant's count ran at once");
        for count in counts {
            count.await.expect("join");
        }
        assert_eq!(most.load(Ordering::SeqCst), PER_TENANT);
    }
}
