//! The browser URLs made lately, handed out again for a while: a URL signed anew at
//! every query (a new `expires` or `X-Amz-Date` each second) is a new URL to a
//! browser, which then downloads the file whole again: an invoice list that shows
//! each invoice's logo fetched every logo at every visit, though the file had not
//! changed and its ETag said so.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Independent maps, so that requests on many cores rarely wait for one another.
const SHARDS: usize = 16;

/// URLs kept per shard; past it, those no longer handed out go, and all of them if
/// none has.
const MAX_PER_SHARD: usize = 1024;

/// The longest a URL is handed out again: a tenth of its lifetime, and at most this,
/// so that it is still valid for nine tenths of the lifetime asked for.
const MOST_REUSE: Duration = Duration::from_secs(300);

type Shard = HashMap<(Uuid, u64), (String, Instant)>;

/// Per attachment and lifetime, the last URL made and until when it is handed out.
#[derive(Default)]
pub struct RecentUrls {
    shards: [Mutex<Shard>; SHARDS],
}

impl RecentUrls {
    /// The URL of `id` for `ttl` made lately, or `make`'s, which is then kept; a
    /// lifetime under 10 s is always made anew.
    pub async fn get_or_make<F, E>(&self, id: Uuid, ttl: Duration, make: F) -> Result<String, E>
    where
        F: Future<Output = Result<String, E>>,
    {
        let reuse = (ttl / 10).min(MOST_REUSE);
        if reuse < Duration::from_secs(1) {
            return make.await;
        }
        let key = (id, ttl.as_secs());
        let shard = self.shard(id);
        let now = Instant::now();
        if let Some((url, until)) = lock(shard).get(&key)
            && *until > now
        {
            return Ok(url.clone());
        }
        let url = make.await?;
        let mut urls = lock(shard);
        if urls.len() >= MAX_PER_SHARD {
            urls.retain(|_, (_, until)| *until > now);
            if urls.len() >= MAX_PER_SHARD {
                urls.clear();
            }
        }
        urls.insert(key, (url.clone(), now + reuse));
        Ok(url)
    }

    fn shard(&self, id: Uuid) -> &Mutex<Shard> {
        // The low bits of a UUIDv7 are random.
        let index = usize::from(id.as_bytes()[15]) % SHARDS;
        &self.shards[index]
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A map of copies, each written whole: a panic cannot leave it torn.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn url(recent: &RecentUrls, id: Uuid, ttl: u64, made: &str) -> String {
        let made = made.to_owned();
        let made = async move { Ok::<_, ()>(made) };
        recent
            .get_or_make(id, Duration::from_secs(ttl), made)
            .await
            .expect("made")
    }

    #[tokio::test]
    async fn a_url_is_handed_out_again_for_a_tenth_of_its_lifetime() {
        let recent = RecentUrls::default();
        let id = Uuid::now_v7();
        assert_eq!(url(&recent, id, 3600, "first").await, "first");
        assert_eq!(url(&recent, id, 3600, "second").await, "first");
        assert_eq!(url(&recent, id, 60, "a minute").await, "a minute");
        assert_eq!(url(&recent, Uuid::now_v7(), 3600, "other").await, "other");
        // Under 10 s: made every time.
        assert_eq!(url(&recent, id, 5, "one").await, "one");
        assert_eq!(url(&recent, id, 5, "two").await, "two");
    }

    #[tokio::test]
    async fn a_full_shard_makes_room() {
        let recent = RecentUrls::default();
        for _ in 0..SHARDS * MAX_PER_SHARD * 2 {
            url(&recent, Uuid::now_v7(), 3600, "u").await;
        }
        for shard in &recent.shards {
            assert!(lock(shard).len() <= MAX_PER_SHARD);
        }
    }
}
