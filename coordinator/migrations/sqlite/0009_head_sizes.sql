-- What each version added to its store (its data and index packs, from the signed head's
-- list of recent packs) and the size of its delta from the version before (if the head
-- lists one): a tree page's sizes.
ALTER TABLE heads ADD COLUMN added_bytes INTEGER;
ALTER TABLE heads ADD COLUMN delta_bytes INTEGER;
