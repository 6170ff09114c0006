//! The `MAX_CONCURRENT_UPLOADS` slots, shared among tenants. A quarter of them is
//! kept for tenants that hold none: a tenant takes a free slot at once while more
//! than that quarter is free, or whenever it holds none. When it cannot, it waits,
//! and a slot given back goes to the waiting tenant that holds the fewest (the
//! longest waiting among equals). With one queue for all, a tenant that sent a burst
//! of large uploads made every other tenant wait behind the whole burst, up to
//! `UPLOAD_QUEUE_TIMEOUT_SECONDS` and then "busy"; and since a slot cannot be taken
//! back, eight slow bodies of one tenant (a body may take `BODY_TIMEOUT_SECONDS`)
//! held every slot while other tenants' uploads ran out of patience.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// The slots and who holds or waits for them.
pub struct UploadSlots {
    state: Mutex<State>,
}

struct State {
    free: usize,
    /// Free slots only a tenant that holds none may take.
    reserved: usize,
    /// Slots held, per tenant holding any.
    held: HashMap<Arc<str>, usize>,
    /// In the order they came; a waiter that gave up removes itself.
    waiting: VecDeque<Waiter>,
    next_waiter: u64,
}

struct Waiter {
    id: u64,
    tenant: Arc<str>,
    grant: oneshot::Sender<UploadSlot>,
}

/// One slot, free once every holder is gone: the request that took it, and each
/// store it started, which runs on when its client disconnects (a slot freed with
/// the request let a client that hangs up after each body start stores without
/// bound).
#[derive(Clone)]
pub struct UploadSlot {
    _held: Arc<Held>,
}

/// Gives its slot back when dropped.
struct Held {
    slots: Arc<UploadSlots>,
    tenant: Arc<str>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slots.give_back(&self.tenant);
    }
}

/// A waiter's place in the queue, removed however its wait ends (a grant, the
/// timeout, or the request dropped because its client left).
struct Place<'a> {
    slots: &'a UploadSlots,
    id: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        if let Some(index) = state.waiting.iter().position(|waiter| waiter.id == self.id) {
            state.waiting.remove(index);
        }
    }
}

impl UploadSlots {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: slots,
                reserved: slots / 4,
                held: HashMap::new(),
                waiting: VecDeque::new(),
                next_waiter: 0,
            }),
        })
    }

    /// A slot for `tenant`, at once when one is free, else when one is given back
    /// to it; `None` after waiting `patience`.
    pub async fn take(self: &Arc<Self>, tenant: &str, patience: Duration) -> Option<UploadSlot> {
        let tenant: Arc<str> = Arc::from(tenant);
        let (grant, granted) = oneshot::channel();
        let place = {
            let mut state = self.lock();
            if state.may_take(&tenant, state.free) {
                state.free -= 1;
                *state.held.entry(Arc::clone(&tenant)).or_default() += 1;
                drop(state);
                return Some(self.slot(tenant));
            }
            state.next_waiter += 1;
            let id = state.next_waiter;
            state.waiting.push_back(Waiter { id, tenant, grant });
            Place { slots: self, id }
        };
        // A slot granted as the wait runs out is dropped with the channel, and so
        // given back.
        let slot = tokio::time::timeout(patience, granted).await.ok()?.ok();
        drop(place);
        slot
    }

    /// The slot `tenant` held goes to the waiting tenant that holds the fewest, or
    /// back among the free ones.
    fn give_back(self: &Arc<Self>, tenant: &Arc<str>) {
        let mut state = self.lock();
        state.release(tenant);
        let Some(waiter) = state.next_waiter() else {
            state.free += 1;
            return;
        };
        *state.held.entry(Arc::clone(&waiter.tenant)).or_default() += 1;
        let granted = waiter.grant.send(self.slot(Arc::clone(&waiter.tenant)));
        drop(state);
        // A waiter that left as its slot was sent: the slot is dropped now, outside
        // the lock, and so given back to the next one.
        drop(granted);
    }

    /// The slots no one holds.
    pub fn free(&self) -> usize {
        self.lock().free
    }

    fn slot(self: &Arc<Self>, tenant: Arc<str>) -> UploadSlot {
        UploadSlot {
            _held: Arc::new(Held {
                slots: Arc::clone(self),
                tenant,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is made whole under the lock: a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Whether `tenant` may take one of `free` slots: any while more than the reserve
    /// is free, the reserve only when it holds none.
    fn may_take(&self, tenant: &Arc<str>, free: usize) -> bool {
        free > self.reserved || (free > 0 && !self.held.contains_key(tenant))
    }

    fn release(&mut self, tenant: &Arc<str>) {
        if let Some(held) = self.held.get_mut(tenant) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(tenant);
            }
        }
    }

    /// Out of the queue, the waiter to give a slot coming back to: that of the
    /// tenant that holds the fewest, the first to come among equals, if it may take
    /// it (if it may not, none may: the slot goes back among the free ones, and the
    /// waiter keeps its place). Waiters that left are passed over (and dropped).
    fn next_waiter(&mut self) -> Option<Waiter> {
        self.waiting.retain(|waiter| !waiter.grant.is_closed());
        let held = |waiter: &Waiter| self.held.get(&waiter.tenant).copied().unwrap_or(0);
        let (index, first) = self
            .waiting
            .iter()
            .enumerate()
            .min_by_key(|(index, waiter)| (held(waiter), *index))?;
        if !self.may_take(&first.tenant, self.free + 1) {
            return None;
        }
        self.waiting.remove(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(5);

    /// A take of `tenant` waiting on its own task, queued before this returns.
    async fn waiting(
        slots: &Arc<UploadSlots>,
        tenant: &'static str,
    ) -> tokio::task::JoinHandle<Option<UploadSlot>> {
        let slots = Arc::clone(slots);
        let waiting = tokio::spawn(async move { slots.take(tenant, PATIENCE).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting
    }

    /// A quarter of three is none: nothing is kept back.
    #[tokio::test]
    async fn under_four_slots_one_tenant_takes_them_all() {
        let slots = UploadSlots::new(3);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(slots.take("acme", PATIENCE).await.expect("a free slot"));
        }
        assert!(
            slots
                .take("acme", Duration::from_millis(50))
                .await
                .is_none()
        );
        drop(held);
        assert_eq!(slots.free(), 3);
        assert!(slots.lock().held.is_empty() && slots.lock().waiting.is_empty());
    }

    /// Eight slots: one tenant takes six at once, the last two go to tenants that
    /// hold none, and a slot given back goes to the waiting tenant that holds none.
    #[tokio::test]
    async fn a_quarter_is_kept_for_tenants_that_hold_none() {
        let slots = UploadSlots::new(8);
        let mut burst = Vec::new();
        for _ in 0..6 {
            burst.push(slots.take("burst", PATIENCE).await.expect("a free slot"));
        }
        let seventh = waiting(&slots, "burst").await;
        assert!(!seventh.is_finished(), "the reserve is not for it");
        let quiet = slots
            .take("quiet", PATIENCE)
            .await
            .expect("a reserved slot");
        let other = slots.take("other", PATIENCE).await.expect("the last one");
        let fourth = waiting(&slots, "fourth").await;
        drop(burst.pop());
        let fourth = fourth
            .await
            .expect("join")
            .expect("the tenant holding none");
        assert!(!seventh.is_finished());
        drop((quiet, other, fourth));
        assert!(seventh.await.expect("join").is_some());
        drop(burst);
        assert_eq!(slots.free(), 8);
    }

    /// Among waiting tenants that hold as many, the first to come is served first,
    /// also after a slot the reserve kept from them (it was put back at the front).
    #[tokio::test]
    async fn equals_are_served_in_the_order_they_came() {
        let slots = UploadSlots::new(8);
        let take = |tenant: &'static str, count: usize| {
            let slots = Arc::clone(&slots);
            async move {
                let mut held = Vec::new();
                for _ in 0..count {
                    held.push(slots.take(tenant, PATIENCE).await.expect("a free slot"));
                }
                held
            }
        };
        // Two of the reserve taken by tenants that held none: one slot is free.
        let (mut first, _second) = (take("y", 3).await, take("x", 2).await);
        let (_z, mut w) = (take("z", 1).await, take("w", 1).await);
        let came_first = waiting(&slots, "y").await;
        let came_second = waiting(&slots, "x").await;
        drop(w.pop());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !came_first.is_finished() && !came_second.is_finished(),
            "kept in reserve"
        );
        drop(first.pop());
        assert!(
            came_first.await.expect("join").is_some(),
            "y holds 2 as x does, and came first"
        );
        assert!(!came_second.is_finished());
    }

    #[tokio::test]
    async fn a_slot_given_back_goes_to_the_tenant_holding_fewest() {
        let slots = UploadSlots::new(2);
        let first = slots.take("burst", PATIENCE).await.expect("slot");
        let _second = slots.take("burst", PATIENCE).await.expect("slot");
        let burst = waiting(&slots, "burst").await;
        let other = waiting(&slots, "other").await;
        drop(first);
        let other = other.await.expect("join").expect("the other tenant first");
        assert!(!burst.is_finished(), "the burst waits for its own slots");
        drop(other);
        assert!(burst.await.expect("join").is_some());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_trace() {
        let slots = UploadSlots::new(1);
        let held = slots.take("acme", PATIENCE).await.expect("slot");
        let gave_up = waiting(&slots, "other").await;
        gave_up.abort();
        let _ = gave_up.await;
        assert!(slots.lock().waiting.is_empty());
        assert!(
            slots
                .take("other", Duration::from_millis(20))
                .await
                .is_none()
        );
        drop(held);
        assert_eq!(slots.free(), 1);
        assert!(slots.lock().held.is_empty());
    }
}
