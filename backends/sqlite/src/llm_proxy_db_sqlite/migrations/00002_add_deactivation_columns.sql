-- +goose Up
-- When a project or token was deactivated (NULL while active).
ALTER TABLE projects ADD COLUMN deactivated_at DATETIME;
ALTER TABLE tokens ADD COLUMN deactivated_at DATETIME;

-- +goose Down
-- SQLite >= 3.35 drops columns that no index or constraint uses.
ALTER TABLE tokens DROP COLUMN deactivated_at;
ALTER TABLE projects DROP COLUMN deactivated_at;
