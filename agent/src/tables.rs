//! The usage tables the agent mirrors, each described once: its row type, its table
//! in the tenant's store and in the fleet Postgres, its natural key, and how each
//! column is checked when read. The store read (`reader`) and the fleet upsert
//! (`sink`) are generated from these descriptions, so a column is added in one place.

use chrono::NaiveDate;
use rusqlite::types::ValueRef;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::checks::{Check, RowError};

/// One mirrored usage table.
pub trait UsageTable: Sized + Clone {
    /// The table in the tenant's store.
    const STORE: &'static str;
    /// The table in the fleet Postgres.
    const FLEET: &'static str;
    /// Every column, in the row type's order: (store column, Postgres array type).
    const COLUMNS: &'static [(&'static str, &'static str)];
    /// The natural key (with the tenant): what `ON CONFLICT` names.
    const KEY: &'static [&'static str];

    /// One store row (selected as [`UsageTable::COLUMNS`], in order), checked.
    fn from_store(r: &rusqlite::Row<'_>, check: &Check) -> Result<Self, RowError>;

    /// [`fleet_upsert`] of this table, built once.
    fn upsert_sql() -> &'static str;

    /// Binds the rows column by column, as the arrays the upsert unnests.
    fn bind_columns<'q>(
        rows: &'q [Self],
        q: sqlx::query::QueryAs<
            'q,
            sqlx::Postgres,
            (i64, Vec<String>),
            sqlx::postgres::PgArguments,
        >,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, Vec<String>), sqlx::postgres::PgArguments>;
}

/// A whole number of tokens.
pub struct Tokens;
/// A whole number of requests.
pub struct Requests;

macro_rules! usage_table {
    (
        $(#[$meta:meta])*
        pub struct $row:ident in $store:literal => $fleet:literal key [$($key:ident),+] {
            $($(#[$fmeta:meta])* $field:ident: $ty:ty = $kind:ident as $pg:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $row {
            $($(#[$fmeta])* pub $field: $ty),+
        }

        impl UsageTable for $row {
            const STORE: &'static str = $store;
            const FLEET: &'static str = $fleet;
            const COLUMNS: &'static [(&'static str, &'static str)] = &[$((stringify!($field), $pg)),+];
            const KEY: &'static [&'static str] = &[$(stringify!($key)),+];

            fn from_store(r: &rusqlite::Row<'_>, check: &Check) -> Result<Self, RowError> {
                let mut i = 0usize..;
                Ok($row {
                    $($field: <$kind as Kind<$ty>>::read(
                        check,
                        r.get_ref(i.next().unwrap_or_default())?,
                        stringify!($field),
                    )?),+
                })
            }

            fn upsert_sql() -> &'static str {
                static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                SQL.get_or_init(fleet_upsert::<$row>)
            }

            fn bind_columns<'q>(
                rows: &'q [Self],
                q: sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, Vec<String>), sqlx::postgres::PgArguments>,
            ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, Vec<String>), sqlx::postgres::PgArguments> {
                $(let q = q.bind(rows.iter().map(|r| r.$field.clone()).collect::<Vec<$ty>>());)+
                q
            }
        }
    };
}

/// A column kind: reads a value of type `T` with the checks of that kind.
pub trait Kind<T> {
    fn read(check: &Check, v: ValueRef<'_>, column: &str) -> Result<T, RowError>;
}

/// The value as the app wrote it (an id, a name): only its type is checked.
pub struct Plain;
/// A day, `YYYY-MM-DD`.
pub struct Day;
/// Dollars, to 6 places.
pub struct Money;
/// A time stamp, not in the future.
pub struct Stamp;
/// A count of distinct users.
pub struct Users;

impl<T: rusqlite::types::FromSql> Kind<T> for Plain {
    fn read(_: &Check, v: ValueRef<'_>, _: &str) -> Result<T, RowError> {
        T::column_result(v).map_err(|_| {
            RowError::Refused(format!(
                "a value of type {} where the app writes another",
                v.data_type()
            ))
        })
    }
}
impl Kind<NaiveDate> for Day {
    fn read(check: &Check, v: ValueRef<'_>, _: &str) -> Result<NaiveDate, RowError> {
        check.date(v)
    }
}
impl Kind<i64> for Tokens {
    fn read(check: &Check, v: ValueRef<'_>, column: &str) -> Result<i64, RowError> {
        check.count(v, crate::checks::bounds::MAX_TOKENS, column)
    }
}
impl Kind<i64> for Requests {
    fn read(check: &Check, v: ValueRef<'_>, column: &str) -> Result<i64, RowError> {
        check.count(v, crate::checks::bounds::MAX_REQUESTS, column)
    }
}
impl Kind<i32> for Users {
    fn read(check: &Check, v: ValueRef<'_>, column: &str) -> Result<i32, RowError> {
        check.count(v, i32::MAX.into(), column).map(|n| n as i32)
    }
}
impl Kind<Decimal> for Money {
    fn read(check: &Check, v: ValueRef<'_>, column: &str) -> Result<Decimal, RowError> {
        check.money(v, column)
    }
}
impl Kind<i64> for Stamp {
    fn read(check: &Check, v: ValueRef<'_>, _: &str) -> Result<i64, RowError> {
        check.stamp(v)
    }
}

usage_table! {
    /// A tenant's usage per day (`client_daily_usage`).
    pub struct DailyRow in "client_daily_usage" => "usage_daily" key [usage_date] {
        usage_date: NaiveDate = Day as "date",
        client_org_id: String = Plain as "text",
        total_tokens: i64 = Tokens as "int8",
        total_requests: i64 = Requests as "int8",
        raw_cost: Decimal = Money as "numeric",
        markup_cost: Decimal = Money as "numeric",
        primary_model: Option<String> = Plain as "text",
        unique_users: i32 = Users as "int4",
        updated_at: i64 = Stamp as "int8",
    }
}

usage_table! {
    /// A user's usage per day (`client_user_daily_usage`).
    pub struct UserRow in "client_user_daily_usage" => "usage_user_daily" key [user_id, usage_date] {
        user_id: String = Plain as "text",
        usage_date: NaiveDate = Day as "date",
        openrouter_user_id: Option<String> = Plain as "text",
        total_tokens: i64 = Tokens as "int8",
        total_requests: i64 = Requests as "int8",
        raw_cost: Decimal = Money as "numeric",
        markup_cost: Decimal = Money as "numeric",
        updated_at: i64 = Stamp as "int8",
    }
}

usage_table! {
    /// A model's usage per day (`client_model_daily_usage`).
    pub struct ModelRow in "client_model_daily_usage" => "usage_model_daily" key [model_name, usage_date] {
        model_name: String = Plain as "text",
        usage_date: NaiveDate = Day as "date",
        provider: Option<String> = Plain as "text",
        total_tokens: i64 = Tokens as "int8",
        total_requests: i64 = Requests as "int8",
        raw_cost: Decimal = Money as "numeric",
        markup_cost: Decimal = Money as "numeric",
        updated_at: i64 = Stamp as "int8",
    }
}

/// The store's time stamp column, kept as `source_updated_at` in the fleet.
const STAMP: &str = "updated_at";

fn fleet_column(column: &str) -> &str {
    if column == STAMP {
        "source_updated_at"
    } else {
        column
    }
}

/// The store query of a table: its columns in order, then the row's `id` (named when
/// a row is refused), of one organization, changed since a watermark.
pub fn store_select<T: UsageTable>() -> String {
    let columns: Vec<&str> = T::COLUMNS.iter().map(|(c, _)| *c).collect();
    format!(
        "SELECT {}, id FROM {} WHERE client_org_id = ?1 AND {STAMP} >= ?2",
        columns.join(", "),
        T::STORE
    )
}

/// The columns a store must have for the table to be read.
pub fn store_required<T: UsageTable>() -> Vec<&'static str> {
    let mut wanted = vec!["client_org_id"];
    wanted.extend(
        T::COLUMNS
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| *c != "client_org_id"),
    );
    wanted
}

/// The fleet upsert of a table. `$1` is the tenant, `$2..` the columns as arrays,
/// the last parameter the host. Rows whose figures went down in the store are kept
/// out (fleet history never goes backwards) and returned by key; rows equal to what
/// the fleet has are not rewritten. Returns (rows written, keys that went back).
pub fn fleet_upsert<T: UsageTable>() -> String {
    let n = T::COLUMNS.len();
    let host = n + 2;
    let arrays: Vec<String> = T::COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, pg))| format!("${}::{pg}[]", i + 2))
        .collect();
    let names: Vec<&str> = T::COLUMNS.iter().map(|(c, _)| *c).collect();
    let fleet_names: Vec<&str> = names.iter().map(|c| fleet_column(c)).collect();
    let key_join: Vec<String> = T::KEY.iter().map(|k| format!("u.{k} = i.{k}")).collect();
    let key_i: Vec<String> = T::KEY.iter().map(|k| format!("i.{k}")).collect();
    let key_text: Vec<String> = T::KEY.iter().map(|k| format!("{k}::text")).collect();
    let values: Vec<&str> = names
        .iter()
        .copied()
        .filter(|c| !T::KEY.contains(c))
        .collect();
    let set: Vec<String> = values
        .iter()
        .map(|c| format!("{0} = EXCLUDED.{0}", fleet_column(c)))
        .collect();
    // What the fleet mirrors: every value but the time stamp.
    let compared: Vec<&str> = values.iter().copied().filter(|c| *c != STAMP).collect();
    let fleet = T::FLEET;
    format!(
        "WITH incoming AS (
             SELECT * FROM UNNEST({arrays}) AS i ({names})),
         went_back AS (
             SELECT {key_i} FROM incoming i JOIN {fleet} u ON u.tenant_id = $1 AND {key_join}
             WHERE i.total_tokens < u.total_tokens OR i.total_requests < u.total_requests OR i.raw_cost < u.raw_cost),
         written AS (
             INSERT INTO {fleet} (host, tenant_id, {fleet_names})
             SELECT ${host}, $1, i.* FROM incoming i WHERE ({key_i}) NOT IN (SELECT {keys} FROM went_back)
             ON CONFLICT (tenant_id, {keys}) DO UPDATE SET host = EXCLUDED.host, {set}, synced_at = now()
             WHERE ({fleet_compared}) IS DISTINCT FROM ({excluded_compared})
             RETURNING 1)
         SELECT (SELECT count(*) FROM written), ARRAY(SELECT concat_ws(' ', {key_text}) FROM went_back)",
        arrays = arrays.join(", "),
        names = names.join(", "),
        key_i = key_i.join(", "),
        key_join = key_join.join(" AND "),
        fleet_names = fleet_names.join(", "),
        keys = T::KEY.join(", "),
        set = set.join(", "),
        fleet_compared = compared
            .iter()
            .map(|c| format!("{fleet}.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        excluded_compared = compared
            .iter()
            .map(|c| format!("EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        key_text = key_text.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_names_its_key_among_its_columns_and_ends_with_its_stamp() {
        fn check<T: UsageTable>() {
            let names: Vec<&str> = T::COLUMNS.iter().map(|(c, _)| *c).collect();
            assert!(T::KEY.iter().all(|k| names.contains(k)), "{}", T::STORE);
            assert_eq!(names.last(), Some(&STAMP), "{}", T::STORE);
            let sql = fleet_upsert::<T>();
            assert!(sql.contains(&format!("${}, $1, i.*", T::COLUMNS.len() + 2)));
            assert!(store_select::<T>().ends_with(">= ?2"));
        }
        check::<DailyRow>();
        check::<UserRow>();
        check::<ModelRow>();
    }
}
