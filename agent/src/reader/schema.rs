//! Which schema a store has: the tables and columns the agent reads (required, and
//! the optional live counters and processed generations), each a plain table, and
//! the variant named (the app's migration or its ad-hoc scripts).

use rusqlite::Connection;

use super::{ReadError, DAILY, GENERATIONS, LIVE, MODEL, USER};
use crate::tables::{store_required, DailyRow, ModelRow, UserRow};

pub(super) const ORGS: &str = "client_organizations";

/// Tables a store must have, with the columns the agent reads; a store lacking one is
/// of an unknown schema.
pub(super) fn required() -> [(&'static str, Vec<&'static str>); 4] {
    [
        (DAILY, store_required::<DailyRow>()),
        (USER, store_required::<UserRow>()),
        (MODEL, store_required::<ModelRow>()),
        (ORGS, vec!["id"]),
    ]
}

const OPTIONAL: &[(&str, &[&str])] = &[
    (
        LIVE,
        &[
            "client_org_id",
            "current_date",
            "today_tokens",
            "today_requests",
            "today_raw_cost",
            "today_markup_cost",
            "last_updated",
        ],
    ),
    (
        GENERATIONS,
        &[
            "id",
            "client_org_id",
            "generation_date",
            "processed_at",
            "total_cost",
            "total_tokens",
        ],
    ),
];

/// What [`variant`] found.
pub(super) struct Schema {
    pub name: String,
    pub has_live: bool,
    pub has_generations: bool,
}

/// Names the schema variant, or says what is missing.
pub(super) fn variant(conn: &Connection) -> Result<Schema, ReadError> {
    let columns = |table: &str| -> Result<Vec<String>, rusqlite::Error> {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect();
        names
    };
    // Only plain tables are read: a view or a virtual table named like a usage table
    // runs the tenant's code (a recursive view never ends).
    let required = required();
    for table in required
        .iter()
        .map(|(t, _)| *t)
        .chain(OPTIONAL.iter().map(|(t, _)| *t))
    {
        mai_fleet_core::store::plain_table(conn, table)?
            .map_err(|why| ReadError::Refused(why.0))?;
    }
    // A table: absent (None), or the wanted columns it lacks.
    let lacking = |table: &str, wanted: &[&str]| -> Result<Option<Vec<String>>, rusqlite::Error> {
        let have = columns(table)?;
        Ok((!have.is_empty()).then(|| {
            wanted
                .iter()
                .filter(|c| !have.iter().any(|h| h == *c))
                .map(|c| c.to_string())
                .collect()
        }))
    };
    let mut problems = Vec::new();
    for (table, wanted) in &required {
        match lacking(table, wanted)? {
            None => problems.push(format!("table {table} is missing")),
            Some(missing) if !missing.is_empty() => {
                problems.push(format!("{table} lacks {}", missing.join(", ")))
            }
            Some(_) => {}
        }
    }
    let mut present = [false; 2];
    for (i, (table, wanted)) in OPTIONAL.iter().enumerate() {
        match lacking(table, wanted)? {
            None => {}
            Some(missing) if missing.is_empty() => present[i] = true,
            Some(missing) => problems.push(format!("{table} lacks {}", missing.join(", "))),
        }
    }
    if !problems.is_empty() {
        return Err(ReadError::UnknownSchema(problems.join("; ")));
    }
    // The app's ad-hoc scripts declare foreign keys; its Alembic migration does not.
    let has_fk: bool = conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM pragma_foreign_key_list('{DAILY}'))"),
        [],
        |r| r.get(0),
    )?;
    let mut variant = String::from(if has_fk { "scripts" } else { "migration" });
    if !present[0] {
        variant.push_str("-no-live-counters");
    }
    if !present[1] {
        variant.push_str("-no-generations");
    }
    Ok(Schema {
        name: variant,
        has_live: present[0],
        has_generations: present[1],
    })
}
