-- A header comment before the Up annotation is fine.

-- +goose Up
-- Comment-only lines between statements are dropped.
CREATE TABLE things (
	id TEXT PRIMARY KEY, -- an inline comment stays with its line
	-- a comment-only line inside a statement is dropped, as goose does

	note TEXT
);
INSERT INTO things (id, note) VALUES ('a;b', 'semicolon inside a string; mid-line');   
INSERT INTO things (id, note) VALUES ('c', 'ends at the semicolon before a comment'); -- done
    -- an indented comment-only line
SELECT 'x;' ||
	'y';

-- +goose Down
DROP TABLE things;
