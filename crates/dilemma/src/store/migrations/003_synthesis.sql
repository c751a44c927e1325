-- Scenario synthesis (`dilemma synth`): batches, their candidates with verdicts, and every
-- round of every stage with its prompts, replies, parsed drafts and judgements.
CREATE TABLE synth_batches (
    id               TEXT PRIMARY KEY,
    config           TEXT NOT NULL,        -- SynthConfig, model ids, templates hash, JSON
    software_version TEXT NOT NULL,
    created_at       TEXT NOT NULL
);

CREATE TABLE synth_candidates (
    batch_id           TEXT NOT NULL REFERENCES synth_batches(id),
    candidate          INTEGER NOT NULL,   -- 1-based within the batch
    status             TEXT NOT NULL CHECK (status IN ('running', 'accepted', 'rejected', 'error')),
    reason             TEXT,               -- why rejected or errored
    scenario_id        TEXT,
    scenario           TEXT,               -- the compiled scenario, YAML (when stage 4 passed)
    path               TEXT,               -- where an accepted scenario was written
    nearest_id         TEXT,               -- the most similar known scenario
    nearest_similarity REAL,               -- its shingled-word Jaccard similarity
    started_at         TEXT NOT NULL,
    finished_at        TEXT,
    PRIMARY KEY (batch_id, candidate)
);

CREATE TABLE synth_rounds (
    batch_id         TEXT NOT NULL,
    candidate        INTEGER NOT NULL,
    stage            TEXT NOT NULL CHECK (stage IN ('story', 'evidence', 'tools', 'compiled')),
    round            INTEGER NOT NULL,     -- 1-based within the stage
    prompt           TEXT NOT NULL,        -- the synthesizer's messages, as text
    reply            TEXT,                 -- its reply text; NULL when the call failed
    output           TEXT,                 -- the parsed draft, JSON; NULL when unusable
    problems         TEXT NOT NULL,        -- what code found wrong, fed back instead of a judgement, JSON array
    judge_prompt     TEXT,                 -- the judge's messages, as text; NULL when not judged
    judge_reply      TEXT,
    score            REAL,
    feedback         TEXT,
    suggestion       TEXT,
    passed           INTEGER NOT NULL,
    synthesizer_call TEXT NOT NULL,        -- ModelCall, JSON: request, response with the raw reply, tokens, latency
    judge_call       TEXT,                 -- ModelCall, JSON
    recorded_at      TEXT NOT NULL,
    PRIMARY KEY (batch_id, candidate, stage, round),
    FOREIGN KEY (batch_id, candidate) REFERENCES synth_candidates(batch_id, candidate)
);
