//! The response cache, on its own connection to the store's file.
//!
//! Reads happen on the calling task (a primary-key lookup, microseconds); each write commits
//! on its own before the call returns, so an answer that arrived before a crash is on disk.
//! WAL mode lets this connection and the run's writer thread share the file; SQLite's busy
//! timeout serialises the rare simultaneous writes.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::chat::ChatResponse;
use crate::model::{ModelRole, ResponseCache};
use crate::store::{Store, StoreError};

/// A [`ResponseCache`] backed by the store's `response_cache` table.
pub struct StoreCache {
    connection: Mutex<Connection>,
}

impl std::fmt::Debug for StoreCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCache")
    }
}

impl StoreCache {
    /// Opens the cache of the store at `path` (migrating the store first if needed).
    pub fn open(path: &Path) -> Result<StoreCache, StoreError> {
        drop(Store::open(path)?);
        let shown = path.display().to_string();
        let sql = |source| StoreError::Sqlite { path: shown.clone(), source };
        let connection = Connection::open(path).map_err(sql)?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;")
            .map_err(sql)?;
        Ok(StoreCache { connection: Mutex::new(connection) })
    }

    /// How many responses the cache holds.
    pub fn len(&self) -> u64 {
        let connection = self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        connection
            .query_row("SELECT COUNT(*) FROM response_cache", [], |row| row.get::<_, i64>(0))
            .map_or(0, |count| count.max(0) as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResponseCache for StoreCache {
    fn get(&self, key: &str) -> Option<ChatResponse> {
        let connection = self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let text: Option<String> = connection
            .query_row("SELECT response FROM response_cache WHERE key = ?1", [key], |row| row.get(0))
            .optional()
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "response cache lookup failed; calling the model");
                None
            });
        text.and_then(|text| serde_json::from_str(&text).ok())
    }

    fn put(&self, key: &str, model: &str, role: ModelRole, response: &ChatResponse) {
        let Ok(text) = serde_json::to_string(response) else { return };
        let connection = self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = connection.execute(
            "INSERT OR IGNORE INTO response_cache (key, model, role, response, created_at) VALUES (?1, ?2, ?3, ?4, datetime('now'))",
            params![key, model, role.as_str(), text],
        ) {
            tracing::warn!(%error, "could not store a response in the cache");
        }
    }
}
