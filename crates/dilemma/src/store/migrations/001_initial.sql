-- Runs, their planned trials, turns as they happen, and every model call.
CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    plan_hash        TEXT NOT NULL,
    config           TEXT NOT NULL,        -- frozen configuration, JSON
    software_version TEXT NOT NULL,
    status           TEXT NOT NULL,        -- running | finished | stopped
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);

CREATE TABLE trials (
    run_id           TEXT NOT NULL REFERENCES runs(id),
    key              TEXT NOT NULL,
    scenario_id      TEXT NOT NULL,
    scenario_version INTEGER NOT NULL,
    scenario_hash    TEXT NOT NULL,
    domain           TEXT NOT NULL,
    motivation       TEXT,
    agent_model      TEXT NOT NULL,
    epoch            INTEGER NOT NULL,
    factors          TEXT NOT NULL,        -- factor levels, JSON object
    status           TEXT NOT NULL CHECK (status IN ('planned', 'running', 'finished')),
    outcome          TEXT,                 -- Outcome, JSON; set once, when finished
    outcome_status   TEXT,                 -- completed | protocol_error | infrastructure_error
    class            TEXT,                 -- strategic | direct | failed | robust
    started_at       TEXT,
    finished_at      TEXT,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE turns (
    run_id      TEXT NOT NULL,
    trial_key   TEXT NOT NULL,
    turn_index  INTEGER NOT NULL,
    body        TEXT NOT NULL,             -- Turn without its model calls, JSON
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (run_id, trial_key, turn_index),
    FOREIGN KEY (run_id, trial_key) REFERENCES trials(run_id, key)
);

CREATE TABLE model_calls (
    id                INTEGER PRIMARY KEY,
    run_id            TEXT NOT NULL,
    trial_key         TEXT NOT NULL,
    turn_index        INTEGER NOT NULL,
    seq               INTEGER NOT NULL,    -- order within the turn
    role              TEXT NOT NULL,
    model             TEXT NOT NULL,
    request           TEXT NOT NULL,       -- ChatRequest, JSON
    response          TEXT,                -- ChatResponse with the provider's raw reply, JSON
    error             TEXT,                -- ModelError, JSON, when the call failed
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    failed_attempts   TEXT NOT NULL,       -- retried attempts, JSON array
    recorded_at       TEXT NOT NULL,
    UNIQUE (run_id, trial_key, turn_index, seq),
    FOREIGN KEY (run_id, trial_key) REFERENCES trials(run_id, key)
);

CREATE INDEX trials_by_status ON trials(run_id, status);
