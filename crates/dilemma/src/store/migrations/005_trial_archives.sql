-- Finished trials compacted into one compressed record each (see store/archive.rs): the
-- journal rows of a trial (turns, model_calls) move here when its outcome is committed.
CREATE TABLE trial_archives (
    run_id    TEXT NOT NULL,
    trial_key TEXT NOT NULL,
    turns     INTEGER NOT NULL,          -- turns in the archive
    calls     INTEGER NOT NULL,          -- model calls in the archive
    body      BLOB NOT NULL,             -- zlib-compressed JSON {"turns": [...], "calls": [...]}
    PRIMARY KEY (run_id, trial_key),
    FOREIGN KEY (run_id, trial_key) REFERENCES trials(run_id, key)
);

-- Cached responses an archive holds: a response_cache row moves here when the trial whose
-- call it answered is archived, so the response is stored once, compressed.
CREATE TABLE archived_responses (
    key     BLOB PRIMARY KEY,            -- the response cache's key, as its 32 bytes
    archive INTEGER NOT NULL,            -- trial_archives.rowid
    call    INTEGER NOT NULL             -- index into the archive's calls
) WITHOUT ROWID;
