-- KSeF invoices (issue 22): one FA(3) document per tenant and closed month, and a
-- correcting invoice (KOR) for what arrived after the close. A draft is never
-- changed or deleted once stored: its number is taken for good, its XML and the
-- hash of that XML are what KSeF receives. Only the controller reads or writes
-- these tables.

-- Numbers run per billed month without gaps: `seq` is taken under the month's row
-- lock, and (month, seq) and `number` are unique.
CREATE TABLE invoices (
    id               BIGSERIAL PRIMARY KEY,
    month            DATE NOT NULL REFERENCES billing_closes (month) CHECK (extract(day FROM month) = 1),
    seq              INTEGER NOT NULL CHECK (seq > 0),
    number           TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL CHECK (kind IN ('VAT', 'KOR')),
    -- For a KOR: the invoice it corrects.
    corrects         BIGINT REFERENCES invoices (id),
    tenant_id        TEXT NOT NULL,
    buyer_nip        TEXT NOT NULL,
    buyer_name       TEXT NOT NULL,
    issue_date       DATE NOT NULL,
    currency         TEXT NOT NULL CHECK (currency IN ('PLN', 'USD')),
    vat_rate         INTEGER NOT NULL,
    net              NUMERIC(16, 2) NOT NULL,
    vat              NUMERIC(16, 2) NOT NULL,
    gross            NUMERIC(16, 2) NOT NULL CHECK (gross = net + vat),
    -- A USD invoice: NBP table A mid of the day before the tax point, and VAT in PLN.
    rate             NUMERIC(10, 4),
    rate_date        DATE,
    rate_table_no    TEXT,
    vat_pln          NUMERIC(16, 2),
    xml              TEXT NOT NULL,
    xml_sha256       TEXT NOT NULL,
    -- draft: not sent; sending: handed to KSeF, status pending; accepted: KSeF
    -- number and receipt kept; rejected: KSeF refused it (its code and text kept).
    state            TEXT NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'sending', 'accepted', 'rejected')),
    ksef_session     TEXT,
    ksef_reference   TEXT,
    ksef_number      TEXT UNIQUE,
    ksef_code        INTEGER,
    ksef_text        TEXT,
    upo              TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by       TEXT NOT NULL,
    sent_at          TIMESTAMPTZ,
    accepted_at      TIMESTAMPTZ,
    UNIQUE (month, seq),
    CHECK (kind = 'VAT' OR corrects IS NOT NULL)
);
CREATE INDEX invoices_by_tenant ON invoices (month, tenant_id);
-- One plain invoice per tenant and month; the rest are corrections.
CREATE UNIQUE INDEX invoices_one_vat ON invoices (month, tenant_id) WHERE kind = 'VAT';
