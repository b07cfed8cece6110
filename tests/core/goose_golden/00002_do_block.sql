-- +goose Up
ALTER TABLE projects ADD COLUMN api_key TEXT;

-- +goose StatementBegin
DO $$
BEGIN
  -- comments inside a block are kept
  IF EXISTS (SELECT 1 FROM information_schema.columns
             WHERE table_name = 'projects' AND column_name = 'openai_api_key') THEN
    UPDATE projects SET api_key = openai_api_key;

    ALTER TABLE projects DROP COLUMN openai_api_key;
  END IF;
END
$$;
-- +goose StatementEnd
CREATE INDEX idx_projects_api_key ON projects(api_key);

-- +goose Down
-- +goose StatementBegin
DO $$ BEGIN
  ALTER TABLE projects RENAME COLUMN api_key TO openai_api_key;
END $$;
-- +goose StatementEnd
DROP INDEX IF EXISTS idx_projects_api_key;
