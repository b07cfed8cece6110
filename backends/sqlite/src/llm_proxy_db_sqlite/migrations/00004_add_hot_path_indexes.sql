-- +goose Up
-- Indexes matching the WHERE + ORDER BY of the hot queries (newest first, with the
-- primary key as the tiebreak), so no query sorts or scans a whole table:
-- a project's audit events: WHERE project_id = ? ORDER BY timestamp DESC, id DESC
CREATE INDEX IF NOT EXISTS idx_audit_project_timestamp ON audit_events(project_id, timestamp, id);
-- all audit events, newest first, and time-range filters and retention deletes
CREATE INDEX IF NOT EXISTS idx_audit_timestamp_id ON audit_events(timestamp, id);
-- a project's tokens: WHERE project_id = ? ORDER BY created_at DESC, token DESC
CREATE INDEX IF NOT EXISTS idx_tokens_project_created ON tokens(project_id, created_at, token);

-- +goose Down
DROP INDEX IF EXISTS idx_tokens_project_created;
DROP INDEX IF EXISTS idx_audit_timestamp_id;
DROP INDEX IF EXISTS idx_audit_project_timestamp;
