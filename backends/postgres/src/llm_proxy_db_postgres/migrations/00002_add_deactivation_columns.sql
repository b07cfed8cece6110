-- +goose Up
-- When a project or token was deactivated (NULL while active).
ALTER TABLE projects ADD COLUMN IF NOT EXISTS deactivated_at TIMESTAMP;
ALTER TABLE tokens ADD COLUMN IF NOT EXISTS deactivated_at TIMESTAMP;

-- +goose Down
ALTER TABLE tokens DROP COLUMN IF EXISTS deactivated_at;
ALTER TABLE projects DROP COLUMN IF EXISTS deactivated_at;
