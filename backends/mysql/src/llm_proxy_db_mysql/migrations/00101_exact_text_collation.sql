-- +goose Up
-- Exact keys: every text column of the three tables compares and sorts by code point,
-- as on every other backend. The Go schema's utf8mb4_unicode_ci folds case and pads with
-- spaces (PAD SPACE), so 'SK-ABCDEF' and 'sk-AbCdEf   ' would find a stored 'sk-AbCdEf':
-- a case variant of a real token would authenticate and spend its quota, and project
-- names 'acme' and 'Acme ' would collide. utf8mb4_nopad_bin is MariaDB's binary no-pad
-- collation (MySQL 8's counterpart, utf8mb4_0900_bin, is untested: this file names
-- MariaDB's). CONVERT TO also makes it the tables' default for columns added later.
--
-- A column a foreign key uses cannot change its collation, so the key from tokens to
-- projects is dropped first and added again last, under its name in the Go schema (InnoDB's
-- tokens_ibfk_1). DDL is not transactional here: each statement commits on its own, the
-- runner records how many completed and a re-run resumes after the last one; each
-- statement is also safe to repeat (IF [NOT] EXISTS, CONVERT TO a collation it has).
ALTER TABLE tokens DROP FOREIGN KEY IF EXISTS tokens_ibfk_1;
ALTER TABLE projects CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE tokens CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE tokens ADD CONSTRAINT tokens_ibfk_1 FOREIGN KEY IF NOT EXISTS (project_id)
    REFERENCES projects(id) ON DELETE CASCADE;
ALTER TABLE audit_events CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;

-- +goose Down
-- Back to the Go schema's utf8mb4_unicode_ci. Fails (a duplicate key) where values that
-- are distinct by code point are equal under it, such as project names 'acme' and 'Acme'.
ALTER TABLE audit_events CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE tokens DROP FOREIGN KEY IF EXISTS tokens_ibfk_1;
ALTER TABLE tokens CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE projects CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE tokens ADD CONSTRAINT tokens_ibfk_1 FOREIGN KEY IF NOT EXISTS (project_id)
    REFERENCES projects(id) ON DELETE CASCADE;
