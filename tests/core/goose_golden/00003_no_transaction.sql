-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_tokens_last_used ON tokens(last_used_at);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS idx_tokens_last_used;
