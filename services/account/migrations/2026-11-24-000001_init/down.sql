DROP TABLE sessions;
DROP TABLE outbox;
DROP TABLE users;
