-- Outputs packed as float32 (shared/vectors.py): a result row written from now on has its
-- vectors, little-endian, one after another, and their length. A row written before keeps its
-- jsonb outputs; the readers (ingest, notify) take whichever the row has. Not converted here:
-- rewriting every result would hold the table for as long as it is large.
ALTER TABLE results
    ADD COLUMN vectors bytea,
    ADD COLUMN dimensions integer,
    ADD CONSTRAINT results_vectors_whole CHECK (
        (vectors IS NULL AND dimensions IS NULL)
        OR (dimensions > 0 AND octet_length(vectors) > 0
            AND octet_length(vectors) % (4 * dimensions) = 0)
    );
