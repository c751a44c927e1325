//! An adaptive concurrency limit per provider endpoint and role (AIMD, as in TCP congestion
//! control): a 429 halves the limit, each success adds 1/limit (about +1 per limit's worth of
//! successes), never above the ceiling the user set nor below one.
//!
//! Written by hand rather than with a crate: tokio's `Semaphore` cannot shrink, and the
//! tower/governor limiters shape request *rates*, not calls in flight, which is what a
//! provider's 429 is about.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::model::ModelRole;

/// Calls in flight to one endpoint in one role.
#[derive(Debug)]
pub struct AdaptiveLimit {
    state: Mutex<LimitState>,
    released: Notify,
    ceiling: usize,
}

#[derive(Debug)]
struct LimitState {
    limit: f64,
    in_flight: usize,
}

/// Holds one slot until dropped.
#[derive(Debug)]
pub struct LimitGuard<'a> {
    owner: &'a AdaptiveLimit,
}

impl Drop for LimitGuard<'_> {
    fn drop(&mut self) {
        self.owner.lock().in_flight -= 1;
        self.owner.released.notify_waiters();
    }
}

impl AdaptiveLimit {
    /// Starts at `ceiling` (at least 1).
    pub fn new(ceiling: usize) -> AdaptiveLimit {
        let ceiling = ceiling.max(1);
        AdaptiveLimit {
            state: Mutex::new(LimitState { limit: ceiling as f64, in_flight: 0 }),
            released: Notify::new(),
            ceiling,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a slot under the current limit.
    pub async fn acquire(&self) -> LimitGuard<'_> {
        loop {
            // Register for wake-ups before checking, so a release in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut state = self.lock();
                if (state.in_flight as f64) < state.limit.floor().max(1.0) {
                    state.in_flight += 1;
                    return LimitGuard { owner: self };
                }
            }
            released.await;
        }
    }

    /// The provider said "too many": halve the limit.
    pub fn on_rate_limited(&self) {
        let mut state = self.lock();
        state.limit = (state.limit / 2.0).max(1.0);
        tracing::warn!(limit = state.limit, "rate limited; concurrency cut");
    }

    /// A call succeeded: grow the limit slowly back towards the ceiling.
    pub fn on_success(&self) {
        let grew = {
            let mut state = self.lock();
            let before = state.limit.floor();
            state.limit = (state.limit + 1.0 / state.limit).min(self.ceiling as f64);
            state.limit.floor() > before
        };
        if grew {
            self.released.notify_waiters();
        }
    }

    /// The limit now (whole calls).
    pub fn current(&self) -> usize {
        self.lock().limit.floor().max(1.0) as usize
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }
}

/// One limit per (endpoint, role), so environment or judge traffic cannot starve the agent.
#[derive(Debug)]
pub struct Limits {
    ceiling: usize,
    by_endpoint: Mutex<HashMap<(String, ModelRole), Arc<AdaptiveLimit>>>,
}

impl Limits {
    pub fn new(ceiling: usize) -> Limits {
        Limits { ceiling, by_endpoint: Mutex::new(HashMap::new()) }
    }

    /// The limit of `endpoint` (a provider id, which names its base URL) in `role`.
    pub fn for_endpoint(&self, endpoint: &str, role: ModelRole) -> Arc<AdaptiveLimit> {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry((endpoint.to_owned(), role)).or_insert_with(|| Arc::new(AdaptiveLimit::new(self.ceiling))).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_halve_and_successes_grow_back() {
        let limit = AdaptiveLimit::new(8);
        limit.on_rate_limited();
        assert_eq!(limit.current(), 4);
        limit.on_rate_limited();
        limit.on_rate_limited();
        limit.on_rate_limited();
        assert_eq!(limit.current(), 1, "never below one");
        for _ in 0..200 {
            limit.on_success();
        }
        assert_eq!(limit.current(), 8, "never above the ceiling");
    }

    #[tokio::test]
    async fn no_more_than_the_limit_are_in_flight() {
        let limit = Arc::new(AdaptiveLimit::new(3));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (limit, peak) = (limit.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = limit.acquire().await;
                peak.fetch_max(limit.in_flight(), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(limit.in_flight(), 0);
    }

    #[test]
    fn each_role_of_an_endpoint_has_its_own_limit() {
        let limits = Limits::new(4);
        let agent = limits.for_endpoint("openai:x", ModelRole::Agent);
        let environment = limits.for_endpoint("openai:x", ModelRole::Environment);
        agent.on_rate_limited();
        assert_eq!((agent.current(), environment.current()), (2, 4));
        assert!(Arc::ptr_eq(&agent, &limits.for_endpoint("openai:x", ModelRole::Agent)));
    }
}
