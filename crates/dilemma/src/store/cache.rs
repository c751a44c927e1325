//! The response cache: reads on the calling task, writes grouped on one writer thread.
//!
//! A lookup is a primary-key read on its own connection (microseconds; in WAL mode a reader
//! never waits for a writer), so it runs on the async worker that asks. Writes go to a thread
//! that owns a second connection and commits whatever has queued up in one transaction: at
//! hundreds of calls in flight, one commit serves dozens of answers instead of each answer
//! paying for its own. Each `put` resolves only after the commit that holds its answer, so an
//! answer is durable before the call returns to the trial, as the crash test requires.

use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc;

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use crate::chat::ChatResponse;
use crate::model::{BoxFuture, ModelRole, ResponseCache};
use crate::store::{Store, StoreError};

/// Answers committed together at most; a bound so one group never holds the lock for long.
const MAX_GROUP: usize = 512;

struct Pending {
    key: String,
    model: String,
    role: ModelRole,
    response: ChatResponse,
    durable: oneshot::Sender<bool>,
}

/// A [`ResponseCache`] backed by the store's `response_cache` table.
pub struct StoreCache {
    reader: Mutex<Connection>,
    writer: Mutex<Option<mpsc::Sender<Pending>>>,
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
        let shown = path.display().to_string();
        let sql = |source| StoreError::Sqlite { path: shown.clone(), source };
        let reader = Connection::open(path).map_err(sql)?;
        reader.execute_batch("PRAGMA busy_timeout = 10000;").map_err(sql)?;
        let (sender, receiver) = mpsc::channel::<Pending>();
        let thread = std::thread::Builder::new()
            .name("dilemma-cache-writer".into())
            .spawn(move || write_groups(store, &receiver))
            .map_err(StoreError::Thread)?;
        Ok(StoreCache { reader: Mutex::new(reader), writer: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)) })
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
        let connection = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let text: Option<String> = super::archive::cached_response(&connection, key).unwrap_or_else(|error| {
                tracing::warn!(%error, "response cache lookup failed; calling the model");
                None
            });
        text.and_then(|text| serde_json::from_str(&text).ok())
    }

    fn put(&self, key: &str, model: &str, role: ModelRole, response: &ChatResponse) -> BoxFuture<'static, bool> {
        let (durable, committed) = oneshot::channel();
        let pending =
            Pending { key: key.to_owned(), model: model.to_owned(), role, response: response.clone(), durable };
        let sent = match self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
            Some(writer) => writer.send(pending).is_ok(),
            None => false,
        };
        Box::pin(async move { sent && committed.await.unwrap_or(false) })
    }
}

/// The writer thread: takes every answer that has queued up, commits them in one
/// transaction, then tells each caller whether its answer is on disk.
fn write_groups(mut store: Store, receiver: &mpsc::Receiver<Pending>) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(pending) => group.push(pending),
                Err(_) => break,
            }
        }
        let stored = store.put_cached_responses(group.iter().map(|pending| {
            (pending.key.as_str(), pending.model.as_str(), pending.role.as_str(), &pending.response)
        }));
        if let Err(error) = &stored {
            tracing::warn!(%error, answers = group.len(), "could not store answers in the response cache");
        }
        for pending in group {
            let _ = pending.durable.send(stored.is_ok());
        }
    }
}

impl Store {
    /// Commits answers to the response cache in one transaction (an answer already there is
    /// kept as it is).
    pub(crate) fn put_cached_responses<'a>(
        &mut self,
        answers: impl Iterator<Item = (&'a str, &'a str, &'a str, &'a ChatResponse)>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite { path: path.clone(), source };
        let transaction = self.connection.transaction().map_err(sql)?;
        {
            let mut insert = transaction
                .prepare_cached("INSERT OR IGNORE INTO response_cache (key, model, role, response, created_at) VALUES (?1, ?2, ?3, ?4, datetime('now'))")
                .map_err(sql)?;
            for (key, model, role, response) in answers {
                insert.execute(params![key, model, role, serde_json::to_string(response)?]).map_err(sql)?;
            }
        }
        transaction.commit().map_err(sql)
    }
}
