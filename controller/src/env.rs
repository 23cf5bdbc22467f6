//! The one place the library reads the process environment. Callers name their
//! variable here and get it back set or not; parsing and defaults stay with them.
//! (The `controller` binary's clap arguments read their own `env =` variables.)

use std::ffi::OsString;

/// The variable's value when it is set to something other than blanks.
pub fn text(name: &str) -> Option<String> {
    raw(name).filter(|v| !v.trim().is_empty())
}

/// The variable's value when it is set at all (blank included) and is Unicode.
pub fn raw(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The variable as the OS holds it (a path need not be Unicode).
pub fn os(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}
