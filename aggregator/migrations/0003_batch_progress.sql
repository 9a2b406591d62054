-- How far a stored batch has got (message count, closed), so the writer can
-- refuse a backwards write without parsing the stored state. NULL in rows
-- written before this migration: the state is parsed for those.
ALTER TABLE batches ADD COLUMN count INTEGER;
ALTER TABLE batches ADD COLUMN closed INTEGER;
