-- +goose Up
-- Requests answered from the proxy's cache, per token.
ALTER TABLE tokens ADD COLUMN cache_hit_count INTEGER NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE tokens DROP COLUMN cache_hit_count;
