//! The response cache: reads on the calling task, writes grouped on one writer thread.
//!
//! A lookup is a primary-key read on its own connection (microseconds; in WAL mode a reader
//! never waits for a writer), so it runs on the async worker that asks. Writes go to a thread
//! that owns a second connection and commits whatever has queued up in one transaction: at
//! hundreds of calls in flight, one commit serves dozens of answers instead of each answer
//! paying for its own. Each `put` resolves only after the commit that holds its answer, so an
//! answer is durable before the call returns to the trial, as the crash test requires.
//! While a run executes on the same store, its writer takes the answers instead
//! ([`ResponseCache::share_writer`]): one connection then writes the file, with no turns
//! taken at its lock and no page cache emptied by the other's commits.
//!
//! Most lookups of a first run miss, and a miss on SQLite is not cheap here: in WAL mode a
//! connection empties its page cache whenever another connection has committed since its last
//! read, which the run's writers do many times a second, so every lookup re-reads the index
//! pages of two tables. The cache therefore keeps the 64-bit prefixes of the keys the store
//! holds (loaded by the writer thread when it starts, plus every key put since) and answers a
//! key it has never seen without asking SQLite. Keys are SHA-256 digests, so a prefix is
//! already a uniform hash; a prefix collision only costs the SQL lookup it would have paid
//! anyway. A key another process stores after the load is not seen, which costs at most a
//! repeated call, never a wrong answer.

use std::path::Path;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::sync::mpsc;

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use crate::chat::ChatResponse;
use crate::model::{BoxFuture, CacheWrite, CacheWriteRoute, ModelRole, ResponseCache};
use crate::store::{Store, StoreError};

/// Answers committed together at most; a bound so one group never holds the lock for long.
const MAX_GROUP: usize = 512;

/// A [`ResponseCache`] backed by the store's `response_cache` table.
pub struct StoreCache {
    reader: Mutex<Connection>,
    known: Arc<KnownKeys>,
    /// The store's path as [`Store::path`] names it, to recognise a run on the same store.
    path: String,
    /// A run's writer, while one runs on this store (see [`ResponseCache::share_writer`]).
    shared_writer: Mutex<Option<CacheWriteRoute>>,
    writer: Mutex<Option<mpsc::Sender<CacheWrite>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for StoreCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCache")
    }
}

impl StoreCache {
    /// Opens the cache of the store at `path` (migrating the store first if needed).
    pub fn open(path: &Path) -> Result<StoreCache, StoreError> {
        let store = Store::open(path)?;
        let store_path = store.path.clone();
        let shown = path.display().to_string();
        let sql = |source| StoreError::Sqlite { path: shown.clone(), source };
        let reader = Connection::open(path).map_err(sql)?;
        reader.execute_batch("PRAGMA busy_timeout = 10000;").map_err(sql)?;
        super::stable_plans(&reader).map_err(sql)?;
        let (sender, receiver) = mpsc::channel::<CacheWrite>();
        let known = Arc::new(KnownKeys::default());
        let loader = Arc::clone(&known);
        let thread = std::thread::Builder::new()
            .name("dilemma-cache-writer".into())
            .spawn(move || {
                // Loaded here rather than in `open` so that a large store does not delay the
                // first call; until it is loaded every lookup asks SQLite.
                match store.cached_key_prefixes() {
                    Ok(prefixes) => {
                        let _ = loader.stored.set(prefixes);
                    }
                    Err(error) => tracing::warn!(%error, "could not list the cached keys; every lookup asks the store"),
                }
                write_groups(store, &receiver)
            })
            .map_err(StoreError::Thread)?;
        Ok(StoreCache {
            reader: Mutex::new(reader),
            known,
            path: store_path,
            shared_writer: Mutex::new(None),
            writer: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// How many responses the cache holds.
    pub fn len(&self) -> u64 {
        let connection = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        super::archive::cached_responses(&connection).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys the store may hold, as 64-bit prefixes (see the module docs).
#[derive(Default)]
struct KnownKeys {
    /// What the store held when the writer thread started.
    stored: OnceLock<HashSet<u64>>,
    /// Every key put through this cache since it opened.
    added: Mutex<HashSet<u64>>,
}

impl KnownKeys {
    /// False only when the key is certainly not in the store.
    fn may_hold(&self, key: &str) -> bool {
        let Some(stored) = self.stored.get() else { return true };
        let prefix = key_prefix(key);
        stored.contains(&prefix) || self.added.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&prefix)
    }
}

/// The first 64 bits of a hex digest key; any other key (none are written today) is hashed.
pub(super) fn key_prefix(key: &str) -> u64 {
    match key.get(..16).map(|head| u64::from_str_radix(head, 16)) {
        Some(Ok(prefix)) => prefix,
        _ => {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            hasher.finish()
        }
    }
}

impl Drop for StoreCache {
    /// Lets the writer commit what is queued, then waits for it.
    fn drop(&mut self) {
        drop(self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl ResponseCache for StoreCache {
    fn get(&self, key: &str) -> Option<ChatResponse> {
        if !self.known.may_hold(key) {
            return None;
        }
        let connection = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let text: Option<String> = super::archive::cached_response(&connection, key).unwrap_or_else(|error| {
                tracing::warn!(%error, "response cache lookup failed; calling the model");
                None
            });
        text.and_then(|text| serde_json::from_str(&text).ok())
    }

    fn put(&self, key: &str, model: &str, role: ModelRole, response: &ChatResponse) -> BoxFuture<'static, bool> {
        let (durable, committed) = oneshot::channel();
        self.known.added.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key_prefix(key));
        let mut write =
            Box::new(CacheWrite { key: key.to_owned(), model: model.to_owned(), role, response: response.clone(), durable });
        let shared = self.shared_writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if let Some(route) = shared {
            match route(write) {
                Ok(()) => return Box::pin(async move { committed.await.unwrap_or(false) }),
                Err(returned) => write = returned,
            }
        }
        let sent = match self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
            Some(writer) => writer.send(*write).is_ok(),
            None => false,
        };
        Box::pin(async move { sent && committed.await.unwrap_or(false) })
    }

    fn share_writer(&self, store: &str, writer: Option<CacheWriteRoute>) -> bool {
        if store != self.path {
            return false;
        }
        *self.shared_writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = writer;
        true
    }
}

/// The writer thread: takes every answer that has queued up, commits them in one
/// transaction, then tells each caller whether its answer is on disk.
fn write_groups(mut store: Store, receiver: &mpsc::Receiver<CacheWrite>) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(pending) => group.push(pending),
                Err(_) => break,
            }
        }
        let stored = store.put_cached_responses(group.iter());
        if let Err(error) = &stored {
            tracing::warn!(%error, answers = group.len(), "could not store answers in the response cache");
        }
        for pending in group {
            let _ = pending.durable.send(stored.is_ok());
        }
    }
}

impl Store {
    /// The prefixes of every key the cache holds (see [`KnownKeys`]).
    fn cached_key_prefixes(&self) -> Result<HashSet<u64>, StoreError> {
        super::archive::cached_key_prefixes(&self.connection)
            .map_err(|source| StoreError::Sqlite { path: self.path.clone(), source })
    }

    /// Commits answers to the response cache in one transaction (an answer already there is
    /// kept as it is).
    pub(crate) fn put_cached_responses<'a>(&mut self, mut answers: impl Iterator<Item = &'a CacheWrite>) -> Result<(), StoreError> {
        // The run writer's cached BEGIN/COMMIT, not rusqlite's `transaction()`, which parses
        // its BEGIN and COMMIT anew every time.
        self.begin_group()?;
        let written = answers.try_for_each(|answer| self.put_cached_response(answer));
        match written {
            Ok(()) => self.commit_group(),
            Err(error) => {
                self.rollback_group();
                Err(error)
            }
        }
    }

    /// Writes one answer to the response cache (an answer already there is kept as it is);
    /// inside a group, it commits with the group.
    pub(crate) fn put_cached_response(&mut self, answer: &CacheWrite) -> Result<(), StoreError> {
        let json = serde_json::to_string(&answer.response)?;
        let inserted = self
            .connection
            .prepare_cached("INSERT OR IGNORE INTO response_cache (key, model, role, response, created_at) VALUES (?1, ?2, ?3, ?4, datetime('now'))")
            .and_then(|mut insert| insert.execute(params![answer.key, answer.model, answer.role.as_str(), json]));
        self.sql(inserted).map(drop)
    }
}
