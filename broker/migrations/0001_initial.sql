-- The broker's tables. This one file runs on both SQLite and PostgreSQL, so
-- it keeps to SQL both accept: BIGINT for every number (money is signed
-- 64-bit micro-credits; times are unix milliseconds), TEXT for the rest, no
-- AUTOINCREMENT/SERIAL (the broker assigns order and lease ids; the journal
-- takes its numbers from `counters`).

CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('buyer', 'seller', 'admin')),
    key_id      TEXT NULL,
    created_ms  BIGINT NOT NULL
);

-- Single-use enrollment tokens; only a hash of the secret is kept.
CREATE TABLE tokens (
    secret_hash TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    used_ms     BIGINT NULL
);

-- Double-entry ledger: current balances and the append-only journal.
CREATE TABLE balances (
    account     TEXT PRIMARY KEY,
    amount      BIGINT NOT NULL
);

CREATE TABLE journal (
    seq         BIGINT PRIMARY KEY,
    ts_ms       BIGINT NOT NULL,
    from_acct   TEXT NOT NULL,
    to_acct     TEXT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    memo        TEXT NOT NULL
);
CREATE INDEX journal_from ON journal (from_acct);
CREATE INDEX journal_to ON journal (to_acct);

-- Named monotonic counters, bumped inside the writing transaction.
CREATE TABLE counters (
    name        TEXT PRIMARY KEY,
    value       BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('journal', 0);

CREATE TABLE orders (
    id          BIGINT PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    side        TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    owner       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    cpus        BIGINT NOT NULL,
    mem_mib     BIGINT NOT NULL,
    instances   BIGINT NOT NULL,
    filled      BIGINT NOT NULL,
    minutes     BIGINT NOT NULL,
    min_minutes BIGINT NOT NULL,
    max_minutes BIGINT NOT NULL,
    price       BIGINT NOT NULL CHECK (price >= 0),
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('open', 'filled', 'cancelled', 'expired', 'closed')),
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NULL
);
CREATE INDEX orders_state ON orders (state);
CREATE INDEX orders_owner ON orders (owner);

CREATE TABLE leases (
    id              BIGINT PRIMARY KEY,
    key             TEXT NOT NULL UNIQUE,
    buy_order       BIGINT NOT NULL,
    sell_order      BIGINT NOT NULL,
    buyer           TEXT NOT NULL,
    seller          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    cpus            BIGINT NOT NULL,
    mem_mib         BIGINT NOT NULL,
    minutes         BIGINT NOT NULL,
    price           BIGINT NOT NULL CHECK (price >= 0),
    escrow          BIGINT NOT NULL CHECK (escrow >= 0),
    settled_minutes BIGINT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('starting', 'running', 'ended')),
    end_reason      TEXT NULL,
    exit_code       BIGINT NULL,
    started_ms      BIGINT NOT NULL,
    ended_ms        BIGINT NULL,
    cost            BIGINT NOT NULL CHECK (cost >= 0)
);
CREATE INDEX leases_state ON leases (state);
CREATE INDEX leases_buyer ON leases (buyer);
CREATE INDEX leases_seller ON leases (seller);

-- Seller reliability, fed by lease outcomes.
CREATE TABLE sellers (
    name            TEXT PRIMARY KEY,
    leases_done     BIGINT NOT NULL,
    leases_failed   BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL
);
