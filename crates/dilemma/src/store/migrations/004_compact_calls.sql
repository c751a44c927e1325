-- Model calls stored without repeating what the store already holds (see store/calls.rs):
-- a request keeps only the messages the same trial's previous call in its role did not send,
-- long texts and tool lists live once in `texts`, and a response held by the response cache
-- is referred to by its key instead of being stored a second time.
ALTER TABLE model_calls ADD COLUMN request_format INTEGER NOT NULL DEFAULT 1;  -- 1: ChatRequest JSON; 2: StoredRequest JSON
ALTER TABLE model_calls ADD COLUMN inherited_messages INTEGER NOT NULL DEFAULT 0;  -- format 2: leading messages taken from the previous call
ALTER TABLE model_calls ADD COLUMN cache_key TEXT;  -- when response is NULL and error is NULL: response_cache.response of this key

CREATE TABLE texts (
    hash TEXT PRIMARY KEY,    -- SHA-256 of body, first 16 bytes as hex
    body TEXT NOT NULL
) WITHOUT ROWID;
