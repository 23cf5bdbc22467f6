//! Data behind the pages, kept until the fleet database says it changed.
//!
//! Every write to a table the dashboard reads sends `NOTIFY mai_fleet_changed`
//! (migration 0005). A listener bumps a generation on each notification; an entry
//! is served only while its generation is current and it is younger than the TTL
//! (ages and "today" move with the clock). Without a live listener nothing is
//! cached, so a missed notification can never show stale money.

use mai_fleet_core::Invalid;
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;

pub const CHANNEL: &str = "mai_fleet_changed";
const MAX_ENTRIES: usize = 512;

type Entry = (u64, Instant, Arc<dyn Any + Send + Sync>);

pub struct PageCache {
    ttl: Duration,
    generation: AtomicU64,
    live: AtomicBool,
    entries: Mutex<HashMap<String, Entry>>,
}

impl PageCache {
    /// `ttl` zero: never cache.
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The TTL from `MAI_FLEET_PAGE_CACHE` (`5s` by default, `off` or `0` to disable).
    pub fn ttl_from_env() -> Result<Duration, Invalid> {
        match crate::env::text("MAI_FLEET_PAGE_CACHE") {
            Some(v) if v.trim() == "off" => Ok(Duration::ZERO),
            Some(v) => crate::duration::parse(&v)
                .map_err(|e| Invalid(format!("MAI_FLEET_PAGE_CACHE: {e}"))),
            _ => Ok(Duration::from_secs(5)),
        }
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut e) = self.entries.lock() {
            e.clear();
        }
    }

    /// The cached value of `key`, or what `load` gives (then kept).
    pub async fn get_or_load<T, E, F, Fut>(&self, key: String, load: F) -> Result<T, E>
    where
        T: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if self.ttl.is_zero() || !self.live.load(Ordering::SeqCst) {
            return load().await;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        if let Ok(entries) = self.entries.lock() {
            if let Some((g, at, value)) = entries.get(&key) {
                if *g == generation && at.elapsed() < self.ttl {
                    if let Some(v) = value.downcast_ref::<T>() {
                        return Ok(v.clone());
                    }
                }
            }
        }
        let value = load().await?;
        // Kept only if nothing changed while it was read.
        if self.generation.load(Ordering::SeqCst) == generation {
            if let Ok(mut entries) = self.entries.lock() {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(key, (generation, Instant::now(), Arc::new(value.clone())));
            }
        }
        Ok(value)
    }

    /// Listens for changes for as long as the server runs; reconnects after a lost
    /// connection (caching stays off until it is back).
    pub async fn listen(
        self: Arc<Self>,
        pool: PgPool,
        ctx: crate::supervisor::JobContext,
    ) -> Result<(), crate::supervisor::JobError> {
        if self.ttl.is_zero() {
            ctx.cancelled().await;
            return Ok(());
        }
        let failures = mai_fleet_core::log::Repeats::new(Duration::from_secs(300));
        loop {
            let connected = tokio::select! {
                c = PgListener::connect_with(&pool) => c,
                _ = ctx.cancelled() => return Ok(()),
            };
            match connected {
                Ok(mut listener) => {
                    if listener.listen(CHANNEL).await.is_ok() {
                        if failures.clear("listen") {
                            tracing::info!("page cache on again");
                        }
                        self.invalidate();
                        self.live.store(true, Ordering::SeqCst);
                        // Ok(None): the connection was lost and remade; notifications
                        // may have been missed in between.
                        loop {
                            tokio::select! {
                                r = listener.try_recv() => match r {
                                    Ok(_) => self.invalidate(),
                                    Err(_) => break,
                                },
                                _ = ctx.cancelled() => return Ok(()),
                            }
                        }
                    }
                }
                Err(e) => {
                    if let Some(held_back) = failures.check("listen") {
                        tracing::warn!(held_back, error = %e, "page cache off: cannot listen for changes");
                    }
                }
            }
            self.live.store(false, Ordering::SeqCst);
            self.invalidate();
            if !ctx.sleep(Duration::from_secs(1)).await {
                return Ok(());
            }
        }
    }
}
