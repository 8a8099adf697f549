-- The key each site's certificate carried when it first connected (BLAKE3 of its
-- SubjectPublicKeyInfo): another certificate with the same name but another key is not
-- that site until an admin enrols it again.
CREATE TABLE enrolment (
    site TEXT PRIMARY KEY,
    spki TEXT NOT NULL,
    enrolled INTEGER NOT NULL
);
