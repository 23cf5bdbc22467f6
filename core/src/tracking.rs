//! A tenant's usage-tracking verdict and its store's status: written by the agent,
//! read by the controller's pages, alerts and `status`. One enum each, one string
//! mapping each (serde, Postgres and `Display` all go through `as_str`).

#[derive(Debug, thiserror::Error)]
#[error("`{value}` is not a {what}")]
pub struct UnknownValue {
    what: &'static str,
    value: String,
}

impl UnknownValue {
    /// `value` is kept short: it may be anybody's text.
    pub fn new(what: &'static str, value: &str) -> Self {
        Self {
            what,
            value: value.chars().take(40).collect(),
        }
    }
}

/// Declares a string-valued enum with its one string mapping (`as_str`), used by
/// serde, sqlx (as TEXT), `FromStr` and `Display` alike.
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::tracking::UnknownValue;
            fn from_str(s: &str) -> Result<Self, $crate::tracking::UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::tracking::UnknownValue::new($what, s)),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::tracking::UnknownValue;
            fn try_from(s: String) -> Result<Self, $crate::tracking::UnknownValue> {
                s.parse()
            }
        }

        impl From<$name> for &'static str {
            fn from(v: $name) -> &'static str {
                v.as_str()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::sqlx::Type<::sqlx::Postgres> for $name {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> ::sqlx::Encode<'q, ::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $name {
            fn decode(value: ::sqlx::postgres::PgValueRef<'r>) -> Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                Ok(text.parse()?)
            }
        }
    };
}

text_enum! {
    /// Whether a tenant's usage is being recorded.
    pub enum Tracking, "tracking state" {
        /// Everything the agent checks is in order.
        Active = "active",
        /// Something stops usage from being recorded; the health's reasons say what.
        Inactive = "inactive",
        /// No agent has reported the tenant yet.
        Unknown = "unknown",
    }
}

text_enum! {
    /// What the agent found of a tenant's usage store.
    pub enum StoreStatus, "store status" {
        Ok = "ok",
        Missing = "missing",
        Unreadable = "unreadable",
        UnknownSchema = "unknown_schema",
        /// Not something the agent may open or read within its budget.
        Refused = "refused",
        NoDataMount = "no_data_mount",
    }
}

impl Tracking {
    pub fn is_active(self) -> bool {
        self == Tracking::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mapping_both_ways() {
        for t in Tracking::ALL {
            assert_eq!(t.as_str().parse::<Tracking>().unwrap(), *t);
            assert_eq!(
                serde_json::to_string(t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
        for s in StoreStatus::ALL {
            assert_eq!(s.to_string().parse::<StoreStatus>().unwrap(), *s);
        }
        assert!("ACTIVE".parse::<Tracking>().is_err());
        assert!(serde_json::from_str::<Tracking>("\"bogus\"").is_err());
    }
}
