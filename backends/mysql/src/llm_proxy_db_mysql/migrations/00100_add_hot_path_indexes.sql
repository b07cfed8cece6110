-- +goose Up
-- Version 100, not 4: versions 1-3 are the Go llm-proxy's own, and its later migrations
-- number on from 4; this package's own migrations number from 100 so the two never share a
-- version (see README, "Interoperability with the Go llm-proxy").
--
-- Indexes matching the WHERE + ORDER BY of the hot queries (newest first, with the
-- primary key as the tiebreak), so no query sorts or scans a whole table. The text
-- columns compare by code point from version 101 on (utf8mb4_nopad_bin), the order SQLite
-- and PostgreSQL's COLLATE "C" give; these indexes follow the columns' collation.
-- DDL is not transactional on MySQL: each statement commits on its own, so each says
-- IF NOT EXISTS (MariaDB syntax) and a re-run after a crash finds it done.
-- a project's audit events: WHERE project_id = ? ORDER BY timestamp DESC, id DESC
CREATE INDEX IF NOT EXISTS idx_audit_project_timestamp
    ON audit_events(project_id, timestamp, id);
-- all audit events, newest first, and time-range filters and retention deletes
CREATE INDEX IF NOT EXISTS idx_audit_timestamp_id ON audit_events(timestamp, id);
-- a project's tokens: WHERE project_id = ? ORDER BY created_at DESC, token DESC
CREATE INDEX IF NOT EXISTS idx_tokens_project_created ON tokens(project_id, created_at, token);

-- +goose Down
DROP INDEX IF EXISTS idx_tokens_project_created ON tokens;
DROP INDEX IF EXISTS idx_audit_timestamp_id ON audit_events;
DROP INDEX IF EXISTS idx_audit_project_timestamp ON audit_events;
