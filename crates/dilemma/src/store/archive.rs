//! Finished trials, compacted: one compressed record per trial instead of a row per turn and
//! per call.
//!
//! While a trial runs, every turn is journaled as its own rows (`turns`, `model_calls`), so a
//! crash loses nothing that finished. Once its outcome is committed those rows have done
//! their job, and they repeat each other heavily (the same tool names, ids and observations
//! in the turn bodies, the requests and the providers' raw replies). In the same transaction
//! that finishes the trial, the writer moves them into one zlib-compressed JSON document in
//! `trial_archives` (a 7-call trial: about 13 KB of rows, about 2 KB archived), and the
//! response cache's rows for the trial's calls move to `archived_responses`, which points
//! into the archive instead of holding a second copy. Reading a transcript, a cached response,
//! or resuming with `--retry-errors` all understand both forms; stores written before
//! migration 005 simply have no archives.
//!
//! The document: `{"turns": [turn body, ...], "calls": [ArchivedCall, ...]}`, turn bodies as
//! the `turns` table stores them and calls in journal order. zlib, so that any tool can read
//! it (Python: `json.loads(zlib.decompress(body))`).

use std::io::{Read, Write};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::StoreError;

/// One model call as archived: the `model_calls` row, with the response inline. JSON columns
/// are carried as raw JSON text: archiving copies them into the document without parsing
/// them (a busy writer archives hundreds of trials a second).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ArchivedCall {
    pub turn: u32,
    pub seq: u32,
    pub role: String,
    pub model: String,
    /// The stored request (see `calls`): its format, inherited messages and JSON.
    pub format: i64,
    #[serde(default)]
    pub inherited: usize,
    pub request: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Box<RawValue>>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms: i64,
    /// A JSON array of the retried attempts.
    pub failed_attempts: Box<RawValue>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Archive {
    pub turns: Vec<Box<RawValue>>,
    pub calls: Vec<ArchivedCall>,
}

/// Deflate's fastest level: about 8% larger than the default level for half its time, and an
/// archive of a typical trial fills one 4 KB page either way.
fn compress(archive: &Archive) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(archive)?;
    ENCODER.with_borrow_mut(|encoder| {
        encoder.reset(Vec::with_capacity(json.len() / 3)).map_err(StoreError::Archive)?;
        encoder.write_all(&json).map_err(StoreError::Archive)?;
        encoder.try_finish().map_err(StoreError::Archive)?;
        encoder.reset(Vec::new()).map_err(StoreError::Archive)
    })
}

thread_local! {
    /// One deflate state per thread that archives (the run's writer): a new one allocates and
    /// zeroes a few hundred KB of tables, which cost more than compressing a typical archive.
    static ENCODER: std::cell::RefCell<flate2::write::ZlibEncoder<Vec<u8>>> =
        std::cell::RefCell::new(flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast()));
}

fn decompress(body: &[u8]) -> Result<Archive, StoreError> {
    let mut json = Vec::with_capacity(body.len() * 6);
    flate2::read::ZlibDecoder::new(body).read_to_end(&mut json).map_err(StoreError::Archive)?;
    Ok(serde_json::from_slice(&json)?)
}

/// Moves a finished trial's journal rows into its archive; call it inside a transaction. A
/// trial with no journal rows (nothing ran) gets no archive.
pub(super) fn archive_trial(connection: &Connection, run: &str, trial: &str) -> rusqlite::Result<()> {
    let mut archive = Archive { turns: Vec::new(), calls: Vec::new() };
    {
        let mut bodies =
            connection.prepare_cached("SELECT body FROM turns WHERE run_id = ?1 AND trial_key = ?2 ORDER BY turn_index")?;
        for body in bodies.query_map(params![run, trial], |row| row.get::<_, String>(0))? {
            archive.turns.push(RawValue::from_string(body?).map_err(json_error)?);
        }
    }
    {
        let mut calls = connection.prepare_cached(
            "SELECT m.turn_index, m.seq, m.role, m.model, m.request_format, m.inherited_messages, m.request, \
             COALESCE(m.response, c.response), m.error, m.prompt_tokens, m.completion_tokens, m.latency_ms, \
             m.failed_attempts, m.cached, m.cache_key \
             FROM model_calls m LEFT JOIN response_cache c ON m.response IS NULL AND m.error IS NULL AND c.key = m.cache_key \
             WHERE m.run_id = ?1 AND m.trial_key = ?2 ORDER BY m.turn_index, m.seq",
        )?;
        let rows = calls.query_map(params![run, trial], |row| {
            let json = |index: usize| -> rusqlite::Result<Option<Box<RawValue>>> {
                row.get::<_, Option<String>>(index)?.map(|text| RawValue::from_string(text).map_err(json_error)).transpose()
            };
            Ok(ArchivedCall {
                turn: row.get(0)?,
                seq: row.get(1)?,
                role: row.get(2)?,
                model: row.get(3)?,
                format: row.get(4)?,
                inherited: row.get::<_, i64>(5)?.max(0) as usize,
                request: json(6)?.map_or_else(null, Ok)?,
                response: json(7)?,
                error: json(8)?,
                prompt_tokens: row.get(9)?,
                completion_tokens: row.get(10)?,
                latency_ms: row.get(11)?,
                failed_attempts: json(12)?.map_or_else(null, Ok)?,
                cached: row.get(13)?,
                cache_key: row.get(14)?,
            })
        })?;
        for call in rows {
            let mut call = call?;
            if let (None, None, Some(key)) = (&call.response, &call.error, &call.cache_key) {
                // Answered from a cache entry that an earlier trial's archive holds.
                call.response = cached_response(connection, key)?.map(RawValue::from_string).transpose().map_err(json_error)?;
            }
            archive.calls.push(call);
        }
    }
    if archive.turns.is_empty() && archive.calls.is_empty() {
        return Ok(());
    }
    let body = compress(&archive).map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))?;
    let (turns, calls) = (archive.turns.len() as i64, archive.calls.len() as i64);
    connection
        .prepare_cached("INSERT INTO trial_archives (run_id, trial_key, turns, calls, body) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![run, trial, turns, calls, body])?;
    let archive_id = connection.last_insert_rowid();
    {
        // The cache gives up its copy of each response the archive now holds. A response that
        // another archive already holds (the same request answered from the cache in an
        // earlier run) stays where it is.
        let mut point = connection.prepare_cached(
            "INSERT OR IGNORE INTO archived_responses (key, archive, call) \
             SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM response_cache WHERE key = ?4)",
        )?;
        let mut remove = connection.prepare_cached("DELETE FROM response_cache WHERE key = ?1")?;
        for (index, call) in archive.calls.iter().enumerate() {
            if let (Some(key), Some(_)) = (&call.cache_key, &call.response)
                && let Ok(bytes) = hex::decode(key)
                && point.execute(params![bytes, archive_id, index as i64, key])? > 0
            {
                remove.execute([key])?;
            }
        }
    }
    connection.prepare_cached("DELETE FROM model_calls WHERE run_id = ?1 AND trial_key = ?2")?.execute(params![run, trial])?;
    connection.prepare_cached("DELETE FROM turns WHERE run_id = ?1 AND trial_key = ?2")?.execute(params![run, trial])?;
    Ok(())
}

/// A response from the response cache, wherever it lives: in the cache's own table, or in
/// the archive that took it over.
pub(super) fn cached_response(connection: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    let pending: Option<String> = connection
        .prepare_cached("SELECT response FROM response_cache WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?;
    if pending.is_some() {
        return Ok(pending);
    }
    let Ok(bytes) = hex::decode(key) else { return Ok(None) };
    let archived: Option<(Vec<u8>, i64)> = connection
        .prepare_cached(
            "SELECT a.body, r.call FROM archived_responses r JOIN trial_archives a ON a.rowid = r.archive WHERE r.key = ?1",
        )?
        .query_row([bytes], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((body, index)) = archived else { return Ok(None) };
    let archive = decompress(&body)
        .map_err(|error| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(error)))?;
    let call = usize::try_from(index).ok().and_then(|index| archive.calls.get(index));
    Ok(call.and_then(|call| call.response.as_ref()).map(|response| response.get().to_owned()))
}

/// How many responses the cache holds, in its own table and in archives.
pub(super) fn cached_responses(connection: &Connection) -> rusqlite::Result<u64> {
    connection.query_row(
        "SELECT (SELECT COUNT(*) FROM response_cache) + (SELECT COUNT(*) FROM archived_responses)",
        [],
        |row| row.get::<_, i64>(0).map(|count| count.max(0) as u64),
    )
}

/// The 64-bit prefixes of every key the cache holds, in its own table and in archives.
pub(super) fn cached_key_prefixes(connection: &Connection) -> rusqlite::Result<std::collections::HashSet<u64>> {
    let mut prefixes = std::collections::HashSet::new();
    let mut pending = connection.prepare("SELECT key FROM response_cache")?;
    for key in pending.query_map([], |row| row.get::<_, String>(0))? {
        prefixes.insert(super::cache::key_prefix(&key?));
    }
    // Archived keys are the hex-decoded digests: their first eight bytes read big-endian are
    // the prefix of the hex text.
    let mut archived = connection.prepare("SELECT substr(key, 1, 8) FROM archived_responses")?;
    for key in archived.query_map([], |row| row.get::<_, Vec<u8>>(0))? {
        if let Ok(head) = <[u8; 8]>::try_from(key?.as_slice()) {
            prefixes.insert(u64::from_be_bytes(head));
        }
    }
    Ok(prefixes)
}

/// The archive of a trial, if it has one, with its row id.
pub(super) fn load(connection: &Connection, path: &str, run: &str, trial: &str) -> Result<Option<(i64, Archive)>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = connection
        .prepare_cached("SELECT rowid, body FROM trial_archives WHERE run_id = ?1 AND trial_key = ?2")
        .and_then(|mut statement| statement.query_row(params![run, trial], |row| Ok((row.get(0)?, row.get(1)?))).optional())
        .map_err(|source| StoreError::Sqlite { path: path.to_owned(), source })?;
    row.map(|(id, body)| Ok((id, decompress(&body)?))).transpose()
}

/// Undoes [`archive_trial`] for a trial that runs again (`--retry-errors`) or, in tests, is
/// put back into a crashed state: gives the response cache its copies back and, with
/// `restore_journal`, writes the journal rows back.
pub(super) fn unarchive(connection: &Connection, path: &str, run: &str, trial: &str, restore_journal: bool) -> Result<(), StoreError> {
    let sql = |source| StoreError::Sqlite { path: path.to_owned(), source };
    let Some((archive_id, archive)) = load(connection, path, run, trial)? else { return Ok(()) };
    {
        let mut release =
            connection.prepare_cached("DELETE FROM archived_responses WHERE key = ?1 AND archive = ?2").map_err(sql)?;
        let mut give_back = connection
            .prepare_cached("INSERT OR IGNORE INTO response_cache (key, model, role, response, created_at) VALUES (?1, ?2, ?3, ?4, datetime('now'))")
            .map_err(sql)?;
        for call in &archive.calls {
            if let (Some(key), Some(response)) = (&call.cache_key, &call.response)
                && let Ok(bytes) = hex::decode(key)
                && release.execute(params![bytes, archive_id]).map_err(sql)? > 0
            {
                give_back.execute(params![key, call.model, call.role, response.get()]).map_err(sql)?;
            }
        }
    }
    if restore_journal {
        #[derive(Deserialize)]
        struct Index {
            index: u32,
        }
        for body in &archive.turns {
            let index = serde_json::from_str::<Index>(body.get())?.index;
            connection
                .prepare_cached("INSERT INTO turns (run_id, trial_key, turn_index, body, recorded_at) VALUES (?1, ?2, ?3, ?4, datetime('now'))")
                .and_then(|mut statement| statement.execute(params![run, trial, index, body.get()]))
                .map_err(sql)?;
        }
        for call in &archive.calls {
            connection
                .prepare_cached("INSERT INTO model_calls (run_id, trial_key, turn_index, seq, role, model, request, response, error, prompt_tokens, completion_tokens, latency_ms, failed_attempts, cached, recorded_at, request_format, inherited_messages, cache_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, datetime('now'), ?15, ?16, ?17)")
                .and_then(|mut statement| {
                    statement.execute(params![
                        run,
                        trial,
                        call.turn,
                        call.seq,
                        call.role,
                        call.model,
                        call.request.get(),
                        call.response.as_ref().map(|response| response.get()),
                        call.error.as_ref().map(|error| error.get()),
                        call.prompt_tokens,
                        call.completion_tokens,
                        call.latency_ms,
                        call.failed_attempts.get(),
                        call.cached,
                        call.format,
                        call.inherited as i64,
                        call.cache_key,
                    ])
                })
                .map_err(sql)?;
        }
    }
    connection.execute("DELETE FROM trial_archives WHERE rowid = ?1", [archive_id]).map_err(sql)?;
    Ok(())
}

/// `null`, for a column that was NULL where the document wants JSON.
fn null() -> rusqlite::Result<Box<RawValue>> {
    RawValue::from_string("null".to_owned()).map_err(json_error)
}

fn json_error(error: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(error))
}
