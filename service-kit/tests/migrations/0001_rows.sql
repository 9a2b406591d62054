-- Schema of service-kit's own SQLite tests.
CREATE TABLE rows (n INTEGER PRIMARY KEY NOT NULL);
