//! Databases made by earlier releases start under this one (issue 20): three
//! migrations were edited after they landed, and sqlx refuses a database whose
//! recorded checksum differs from the text it would run. `controller migrate` brings
//! such a database to what the current texts make, on the real PostgreSQL.

use mai_fleet_e2e::{require_services, workspace_root, Fleet};
use sha2::Digest;

fn sha384_hex(text: &[u8]) -> String {
    sha2::Sha384::digest(text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The migration file `name` as this checkout has it.
fn migration(name: &str) -> Vec<u8> {
    std::fs::read(workspace_root().join("controller/migrations").join(name)).unwrap()
}

/// sqlx's own table, as its releases make it.
const SQLX_TABLE: &str = "CREATE TABLE _sqlx_migrations (
    version BIGINT PRIMARY KEY, description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)";

const OLD_0003: &str = "553b1853da53c2ce3782e0541b9e0550f5720c6ef70c7a0d34dde64d166b1a2344248c1627d9204d367717ae0b79601a";
const OLD_0009: &str = "3a0fd67ac907f49435cfce1d191fe4efec7e74e57cb987b32deb4786b8bcf7721f0bc9639c7303d6fe39eeb6afb01717";

#[test]
fn databases_made_by_earlier_releases_still_migrate() {
    if !require_services() {
        return;
    }
    // A database of the release whose 0002 had no `host` columns, with usage in it.
    let f = Fleet::new("oldschema");
    let old_0002 =
        std::fs::read(workspace_root().join("tests/e2e/fixtures/0002_usage.released-5109c71.sql"))
            .unwrap();
    let sql_0001 = migration("0001_fleet.sql");
    f.psql(std::str::from_utf8(&sql_0001).unwrap());
    f.psql(std::str::from_utf8(&old_0002).unwrap());
    f.psql(SQLX_TABLE);
    f.psql(&format!(
        "INSERT INTO _sqlx_migrations VALUES
           (1, 'fleet', now(), true, decode('{}', 'hex'), 1),
           (2, 'usage', now(), true, decode('{}', 'hex'), 1)",
        sha384_hex(&sql_0001),
        sha384_hex(&old_0002)
    ));
    let out = f.controller(&["migrate"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        f.psql("SELECT string_agg(DISTINCT is_nullable, ',') FROM information_schema.columns WHERE column_name = 'host' AND table_name IN ('usage_daily', 'usage_user_daily', 'usage_model_daily', 'usage_live_counters', 'usage_generations', 'agent_watermarks')"),
        "NO"
    );
    let applied = f.psql("SELECT count(*) FROM _sqlx_migrations");
    let files = std::fs::read_dir(workspace_root().join("controller/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count();
    assert_eq!(applied, files.to_string());
    drop(f);

    // A database that ran the earlier 0003 and 0009 (without the ledger's day table).
    let f = Fleet::new("oldledger");
    let out = f.controller(&["migrate"]);
    assert_eq!(out.code, 0, "{}", out.all());
    f.psql(&format!(
        "DROP TABLE openrouter_activity_days;
         UPDATE _sqlx_migrations SET checksum = decode('{OLD_0003}', 'hex') WHERE version = 3;
         UPDATE _sqlx_migrations SET checksum = decode('{OLD_0009}', 'hex') WHERE version = 9"
    ));
    let out = f.controller(&["migrate"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        f.psql("SELECT to_regclass('openrouter_activity_days') IS NOT NULL"),
        "t"
    );
    assert_eq!(
        f.psql("SELECT encode(checksum, 'hex') FROM _sqlx_migrations WHERE version = 9"),
        sha384_hex(&migration("0009_openrouter_keys.sql"))
    );
    // And the next start finds nothing to do.
    let out = f.controller(&["migrate"]);
    assert_eq!(out.code, 0, "{}", out.all());
}
