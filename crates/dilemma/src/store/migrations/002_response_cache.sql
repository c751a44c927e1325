-- Finished model responses by cache key, so reruns and resumed runs never pay twice.
CREATE TABLE response_cache (
    key        TEXT PRIMARY KEY,
    model      TEXT NOT NULL,
    role       TEXT NOT NULL,
    response   TEXT NOT NULL,              -- ChatResponse, JSON
    created_at TEXT NOT NULL
);

ALTER TABLE model_calls ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
